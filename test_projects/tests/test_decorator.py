"""@job is sugar over schedule(); async def jobs run inside the job's transaction."""

from datetime import timedelta

import pytest
from django.utils import timezone
from shop import tasks
from shop.models import Mark

from async_jobs import Job, job, schedule

pytestmark = pytest.mark.django_db(transaction=True)


def test_schedule_on_a_decorated_function_uses_its_options():
    before = timezone.now()

    scheduled = tasks.notify.schedule("hi", suffix="!", run_after=timedelta(minutes=5))

    scheduled.refresh_from_db()
    assert (scheduled.name, scheduled.args, scheduled.kwargs) == (
        "shop.tasks.notify",
        ["hi"],
        {"suffix": "!"},
    )
    assert (scheduled.queue, scheduled.priority, scheduled.max_attempts) == (
        "mail",
        5,
        2,
    )
    assert scheduled.meta == {"queue": "mail", "priority": 5, "max_attempts": 2}
    assert scheduled.run_after >= before + timedelta(minutes=5)
    assert tasks.notify.schedule.meta == scheduled.meta


def test_a_decorated_function_still_runs_when_called():
    assert tasks.notify("direct") == "direct"
    assert Mark.objects.get().label == "direct"
    assert not Job.objects.exists()


def test_schedule_itself_ignores_the_decorators_options():
    plain = schedule(tasks.notify, args=["x"])
    assert (plain.queue, plain.priority, plain.meta) == ("default", 0, {})


def test_a_decorated_job_runs_in_a_worker(flush_queue):
    scheduled = tasks.notify.schedule("from a worker")

    assert "1 succeeded" in flush_queue("--queue", "mail")

    scheduled.refresh_from_db()
    assert scheduled.result == "from a worker"


def test_bad_options_fail_when_decorating():
    with pytest.raises(ValueError, match="Unknown meta key.*'colour'"):
        job(colour="red")
    with pytest.raises(ValueError, match=r"meta\['priority'\] is 500"):
        job(priority=500)
    with pytest.raises(TypeError, match="pass options by name"):
        job("mail")


def test_a_nested_function_fails_when_decorated():
    with pytest.raises(ValueError, match="not a module-level function"):

        @job
        def nested() -> None:
            pass


def test_an_async_job_runs_to_completion_in_the_jobs_transaction(flush_queue):
    scheduled = tasks.async_record.schedule("async")

    assert "1 succeeded" in flush_queue()

    scheduled.refresh_from_db()
    assert scheduled.result == {"job": scheduled.pk, "in_transaction": True}
    assert Mark.objects.get().label == "async"


def test_an_async_jobs_writes_roll_back_when_it_fails(flush_queue):
    scheduled = schedule(
        tasks.async_write_then_fail, args=["lost"], meta={"max_attempts": 1}
    )

    assert "1 failed" in flush_queue()

    assert not Mark.objects.exists()
    scheduled.refresh_from_db()
    assert scheduled.status == Job.Status.FAILED
    assert "async job failed after writing lost" in scheduled.errors.get().exception
