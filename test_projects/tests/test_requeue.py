"""Job.requeue(): a failed or cancelled job runs again, its history kept."""

from datetime import timedelta

import pytest
from django.utils import timezone
from freezegun import freeze_time
from shop.models import Mark

from async_jobs import Job, schedule

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_failed_job_runs_again_with_fresh_attempts_and_keeps_its_errors(
    flush_queue,
):
    with freeze_time("2030-01-01 12:00:00") as clock:
        job = schedule(
            "shop.tasks.write_then_fail", args=["x"], meta={"max_attempts": 1}
        )
        flush_queue()
        job.refresh_from_db()
        assert job.status == Job.Status.FAILED
        clock.tick(timedelta(hours=1))

        job.requeue()

        assert (job.status, job.attempts, job.run_after) == (
            Job.Status.PENDING,
            0,
            timezone.now(),
        )
        job.refresh_from_db()
        assert (job.status, job.attempts, job.finished, job.started) == (
            Job.Status.PENDING,
            0,
            None,
            None,
        )
        clock.tick(timedelta(seconds=1))
        assert "1 failed" in flush_queue()  # it ran again, and failed again

    job.refresh_from_db()
    assert job.attempts == 1
    errors = list(job.errors.order_by("occurred").values_list("attempt", "occurred"))
    assert [attempt for attempt, _ in errors] == [1, 1]
    assert errors[1][1] - errors[0][1] == timedelta(hours=1, seconds=1)


def test_a_cancelled_job_runs_again(flush_queue):
    job = schedule("shop.tasks.record", args=["later"], run_after=timedelta(days=1))
    job.cancel()

    job.requeue()
    flush_queue()

    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert Mark.objects.get().label == "later"


@pytest.mark.parametrize("status", ["pending", "succeeded"])
def test_only_failed_or_cancelled_jobs_can_be_requeued(status):
    job = schedule("shop.tasks.noop")
    if status == "succeeded":
        job.execute()
    stale = Job.objects.get(pk=job.pk)

    with pytest.raises(
        ValueError,
        match=f"Job {job.pk} is {status}; only a failed or cancelled job can be run again",
    ):
        stale.requeue()
    job.refresh_from_db()
    assert job.status == status


def test_a_stale_copy_cannot_requeue_a_job_that_ran_again_meanwhile():
    job = schedule("shop.tasks.noop")
    job.cancel()
    stale = Job.objects.get(pk=job.pk)
    job.requeue()
    job.execute()

    with pytest.raises(ValueError, match="is succeeded"):
        stale.requeue()
    assert stale.status == Job.Status.SUCCEEDED
