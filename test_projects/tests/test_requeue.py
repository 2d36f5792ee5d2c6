"""Job.requeue(): a failed or cancelled job runs again, its history kept."""

from datetime import timedelta

import pytest
from django.utils import timezone
from freezegun import freeze_time
from shop.models import Mark

from async_jobs import Group, Job, schedule
from async_jobs.models import HELD

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


# Jobs tied to others: groups, series, unique jobs


def test_a_member_of_an_open_group_holds_the_group_until_it_ran_again(flush_queue):
    done = schedule("shop.tasks.record", args=["completed"], meta={"completes": "g"})
    failed = schedule(
        "shop.tasks.write_then_fail", args=["x"], meta={"group": "g", "max_attempts": 1}
    )
    later = schedule(
        "shop.tasks.record",
        args=["later"],
        meta={"group": "g"},
        run_after=timedelta(hours=1),
    )
    flush_queue()
    group = Group.objects.get()

    failed.requeue()
    later.cancel()  # the group's last pending job: without the requeue, it would close

    group.refresh_from_db()
    done.refresh_from_db()
    assert group.finished is None
    assert done.run_after == HELD
    # The requeued job fails again, which closes the group: then its completion runs.
    assert "Ran 2 jobs" in flush_queue()
    group.refresh_from_db()
    failed.refresh_from_db()
    assert failed.finished <= group.finished
    assert Mark.objects.get().label == "completed"


def test_a_member_of_a_finished_group_runs_alone_and_the_completion_runs_once(
    flush_queue,
):
    schedule("shop.tasks.record", args=["completed"], meta={"completes": "g"})
    failed = schedule(
        "shop.tasks.write_then_fail", args=["x"], meta={"group": "g", "max_attempts": 1}
    )
    flush_queue()  # the member fails, the group finishes...
    flush_queue()  # ...and its completion job runs
    assert list(Mark.objects.values_list("label", flat=True)) == ["completed"]

    failed.requeue()
    flush_queue()

    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == (Job.Status.FAILED, 1)
    assert list(Mark.objects.values_list("label", flat=True)) == ["completed"]
    assert Job.objects.filter(status=Job.Status.PENDING).count() == 0


def test_a_cancelled_completion_job_stays_held_while_its_group_is_open(flush_queue):
    done = schedule("shop.tasks.record", args=["completed"], meta={"completes": "g"})
    member = schedule(
        "shop.tasks.record",
        args=["member"],
        meta={"group": "g"},
        run_after=timedelta(hours=1),
    )
    done.cancel()

    done.requeue()

    assert done.run_after == HELD
    done.refresh_from_db()
    assert (done.status, done.run_after) == (Job.Status.PENDING, HELD)
    member.cancel()  # the group finishes: its completion is released
    assert "1 succeeded" in flush_queue()
    assert Mark.objects.get().label == "completed"


def test_a_failed_occurrence_runs_again_once_without_forking_its_series(flush_queue):
    first = schedule(
        "shop.tasks.write_then_fail",
        args=["x"],
        meta={"repeat": 3600, "max_attempts": 1},
    )
    flush_queue()
    assert Job.objects.filter(status=Job.Status.PENDING).count() == 1  # the next one

    first.requeue()
    assert first.meta == {"max_attempts": 1}
    flush_queue()

    first.refresh_from_db()
    assert first.status == Job.Status.FAILED
    assert Job.objects.filter(status=Job.Status.PENDING).count() == 1  # still one


def test_a_cancelled_occurrence_run_again_carries_its_series_on(flush_queue):
    first = schedule("shop.tasks.noop", meta={"repeat": 3600})
    first.cancel()

    first.requeue()
    flush_queue()

    assert first.meta == {"repeat": 3600}
    assert Job.objects.filter(status=Job.Status.PENDING).count() == 1  # the next one


def test_a_unique_job_is_not_run_again_next_to_a_pending_twin(flush_queue):
    first = schedule("shop.tasks.add", args=[1, 2], meta={"unique": True})
    first.cancel()
    twin = schedule("shop.tasks.add", args=[1, 2], meta={"unique": True})

    with pytest.raises(
        ValueError,
        match=f"Job {first.pk} is unique and job {twin.pk} with the same key is pending",
    ):
        first.requeue()

    first.refresh_from_db()
    assert first.status == Job.Status.CANCELLED
    twin.execute()
    first.requeue()
    assert Job.objects.get(status=Job.Status.PENDING) == first
