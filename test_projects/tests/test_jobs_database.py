"""Jobs kept in another database than the caller's transaction."""

import pytest
from django.db import transaction
from django.test import override_settings
from shop.models import Order

from async_jobs import Job, schedule

pytestmark = [
    pytest.mark.django_db(transaction=True, databases=["default", "other"]),
    pytest.mark.usefixtures("jobs_in_other_database"),
]


class Boom(Exception):
    pass


@pytest.fixture
def jobs_in_other_database():
    with override_settings(ASYNC_JOBS={"DATABASE": "other"}):
        yield


def test_insert_waits_for_the_callers_commit():
    with transaction.atomic():
        order = Order.objects.create()
        job = schedule("shop.tasks.send_receipt", args=[order.pk])
        assert job.pk is None
        assert not Job.objects.using("other").exists()

    assert job.pk is not None
    assert Job.objects.using("other").get().args == [order.pk]
    assert not Job.objects.using("default").exists()


def test_callers_rollback_means_no_job():
    with pytest.raises(Boom), transaction.atomic():
        schedule("shop.tasks.noop")
        raise Boom

    assert not Job.objects.using("other").exists()


def test_a_transaction_on_the_jobs_database_is_joined():
    with pytest.raises(Boom), transaction.atomic(using="other"):
        job = schedule("shop.tasks.noop")
        assert job.pk is not None
        raise Boom

    assert not Job.objects.using("other").exists()


def test_flush_queue_runs_jobs_from_that_database(flush_queue):
    order = Order.objects.create()
    job = schedule("shop.tasks.send_receipt", args=[order.pk])

    assert "1 succeeded" in flush_queue()

    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED


class ReadsFromDefault:
    """A router that sends every read to "default", as to a replica."""

    def db_for_read(self, model, **hints):
        return "default"


def test_a_group_closes_on_its_database_whatever_the_routers_say():
    from async_jobs import Group

    with transaction.atomic(using="other"):
        schedule("shop.tasks.noop", meta={"completes": "import"})
        member = schedule("shop.tasks.noop", meta={"group": "import"})
    group = Group.objects.using("other").get()

    with override_settings(DATABASE_ROUTERS=[f"{__name__}.ReadsFromDefault"]):
        # The router would count the group's jobs on "default": none there.
        assert group.progress().total == 0
        assert group.progress("other").total == 1
        member.cancel()

    group.refresh_from_db(using="other")
    assert group.finished is not None
