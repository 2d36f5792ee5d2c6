"""The tutorial's feedback app, as the docs show it, works as the docs say."""

import socket

import django
import pytest
from django.core import mail
from django.db import transaction
from django.test import override_settings
from feedback.models import Feedback

from async_jobs import Job

pytestmark = pytest.mark.django_db(transaction=True)

ADA = {"name": "Ada", "email": "ada@example.com", "message": "Love it."}


class Boom(Exception):
    pass


@pytest.fixture
def closed_port():
    """A port on 127.0.0.1 where connecting is refused: a mail server that's down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_posting_the_form_saves_the_feedback_and_schedules_its_email(client):
    response = client.post("/feedback/", ADA)

    assert response.status_code == 302
    assert response.headers["Location"] == "/feedback/thanks/"
    feedback = Feedback.objects.get()
    job = Job.objects.get()
    assert job.name == "feedback.tasks.email_summary"
    assert job.args == [feedback.pk]
    assert job.status == Job.Status.PENDING


def test_an_invalid_form_saves_and_schedules_nothing(client):
    response = client.post("/feedback/", {**ADA, "email": "not an address"})

    assert response.status_code == 200
    assert b"Enter a valid email address." in response.content
    assert not Feedback.objects.exists()
    assert not Job.objects.exists()


def test_the_form_page_renders(client):
    response = client.get("/feedback/")

    assert response.status_code == 200
    assert b'name="message"' in response.content


def test_a_request_rolled_back_after_the_view_leaves_no_feedback_and_no_job(client):
    with pytest.raises(Boom), transaction.atomic():
        assert client.post("/feedback/", ADA).status_code == 302
        raise Boom

    assert not Feedback.objects.exists()
    assert not Job.objects.exists()


def test_flush_queue_emails_the_summary_and_records_it(client, flush_queue):
    client.post("/feedback/", ADA)

    output = flush_queue()

    assert "1 succeeded, 0 to retry, 0 failed." in output
    (message,) = mail.outbox
    assert message.to == ["ada@example.com"]
    assert message.subject == "We got your feedback"
    assert "Hello Ada," in message.body
    assert "Love it." in message.body
    job = Job.objects.get()
    assert job.status == Job.Status.SUCCEEDED
    assert job.result == "emailed ada@example.com"
    assert Feedback.objects.get().emailed is not None


def test_a_mail_server_that_is_down_rolls_the_job_back_for_a_retry(
    client, flush_queue, closed_port
):
    client.post("/feedback/", ADA)
    backend = "django.core.mail.backends.smtp.EmailBackend"
    options = {"host": "127.0.0.1", "port": closed_port, "timeout": 5}
    if django.VERSION >= (6, 1):
        smtp = {"MAILERS": {"default": {"BACKEND": backend, "OPTIONS": options}}}
    else:
        smtp = {"EMAIL_BACKEND": backend}
        smtp.update({f"EMAIL_{key.upper()}": value for key, value in options.items()})

    with override_settings(**smtp):
        output = flush_queue()

    assert "0 succeeded, 1 to retry, 0 failed." in output
    assert Feedback.objects.get().emailed is None  # the job's write was rolled back
    job = Job.objects.get()
    assert job.status == Job.Status.PENDING
    assert job.errors.get().exception.startswith("builtins.ConnectionRefusedError")
