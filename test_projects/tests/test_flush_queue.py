"""flush_queue: each job runs in its own transaction and its outcome is recorded."""

from datetime import timedelta

import pytest
from django.core.management import CommandError
from django.test import override_settings
from django.utils import timezone
from freezegun import freeze_time
from shop.models import Mark, Order, Receipt

from async_jobs import Error, Job, schedule

pytestmark = pytest.mark.django_db(transaction=True)

NO_JITTER = {"BACKOFF_BASE": 10, "BACKOFF_MAX": 3600, "BACKOFF_JITTER": 0}


def test_a_job_commits_its_writes_with_its_success(flush_queue):
    order = Order.objects.create(total=5)
    job = schedule("shop.tasks.send_receipt", args=[order.pk])

    output = flush_queue()

    assert output == "Ran 1 job in " + output.split(" in ")[1]
    assert "1 succeeded, 0 to retry, 0 failed." in output
    job.refresh_from_db()
    receipt = Receipt.objects.get()
    assert receipt.order_id == order.pk
    assert job.status == Job.Status.SUCCEEDED
    assert job.result == receipt.pk
    assert job.attempts == 1
    assert job.started is not None and job.finished >= job.started
    assert not job.errors.exists()


def test_a_failing_job_loses_its_writes_and_keeps_its_error(flush_queue):
    job = schedule("shop.tasks.write_then_fail", args=["lost"])

    output = flush_queue()

    assert "0 succeeded, 1 to retry, 0 failed." in output
    assert not Mark.objects.exists()
    job.refresh_from_db()
    assert job.status == Job.Status.PENDING
    assert job.attempts == 1
    assert job.result is None
    error = job.errors.get()
    assert error.attempt == 1
    assert error.exception == "builtins.RuntimeError: failed after writing lost"
    assert "Traceback (most recent call last)" in error.traceback
    assert "in write_then_fail" in error.traceback


def test_a_result_that_is_not_json_fails_the_job_and_drops_its_writes(flush_queue):
    job = schedule("shop.tasks.write_then_return_datetime", args=["lost"])

    flush_queue()

    assert not Mark.objects.exists()
    job.refresh_from_db()
    assert job.status == Job.Status.PENDING
    assert "result: BigAutoField is not JSON serializable" in job.errors.get().exception


def test_one_failing_job_does_not_stop_the_run(flush_queue):
    schedule("shop.tasks.record", args=["first"], meta={"priority": 3})
    schedule("shop.tasks.write_then_fail", args=["middle"], meta={"priority": 2})
    schedule("shop.tasks.record", args=["last"], meta={"priority": 1})

    output = flush_queue()

    assert "Ran 3 jobs" in output
    assert "2 succeeded, 1 to retry, 0 failed." in output
    assert sorted(Mark.objects.values_list("label", flat=True)) == ["first", "last"]


@override_settings(ASYNC_JOBS=NO_JITTER)
def test_backoff_moves_run_after_until_max_attempts_then_fails(flush_queue):
    with freeze_time("2030-01-01 12:00:00") as clock:
        job = schedule(
            "shop.tasks.write_then_fail", args=["x"], meta={"max_attempts": 3}
        )
        start = timezone.now()

        assert "1 to retry" in flush_queue()
        job.refresh_from_db()
        assert (job.attempts, job.status) == (1, Job.Status.PENDING)
        assert job.run_after == start + timedelta(seconds=10)

        assert "Ran 0 jobs" in flush_queue()  # not due yet
        clock.tick(timedelta(seconds=9))
        assert "Ran 0 jobs" in flush_queue()
        clock.tick(timedelta(seconds=1))

        assert "1 to retry" in flush_queue()
        job.refresh_from_db()
        assert job.attempts == 2
        assert job.run_after == start + timedelta(seconds=10 + 20)

        clock.tick(timedelta(seconds=20))
        assert "1 failed" in flush_queue()
        job.refresh_from_db()
        assert (job.attempts, job.status) == (3, Job.Status.FAILED)
        assert job.finished == start + timedelta(seconds=30)
        assert list(job.errors.values_list("attempt", flat=True)) == [1, 2, 3]

        clock.tick(timedelta(days=1))
        assert "Ran 0 jobs" in flush_queue()
    assert not Mark.objects.exists()


@override_settings(ASYNC_JOBS={"BACKOFF_BASE": 100, "BACKOFF_JITTER": 0.5})
def test_backoff_jitter_stays_within_its_band(flush_queue):
    with freeze_time("2030-01-01 12:00:00"):
        jobs = [
            schedule("shop.tasks.write_then_fail", args=[str(n)]) for n in range(20)
        ]
        flush_queue()
        delays = {
            (job.run_after - timezone.now()).total_seconds()
            for job in Job.objects.filter(pk__in=[j.pk for j in jobs])
        }
    assert all(50 <= delay <= 150 for delay in delays)
    assert len(delays) > 1  # spread, not all at the same second


@override_settings(
    ASYNC_JOBS={"BACKOFF_BASE": 10, "BACKOFF_MAX": 15, "BACKOFF_JITTER": 0}
)
def test_backoff_is_capped(flush_queue):
    with freeze_time("2030-01-01 12:00:00") as clock:
        job = schedule(
            "shop.tasks.write_then_fail", args=["x"], meta={"max_attempts": 5}
        )
        for delay in (10, 15, 15):
            flush_queue()
            job.refresh_from_db()
            assert job.run_after == timezone.now() + timedelta(seconds=delay)
            clock.tick(timedelta(seconds=delay))


@override_settings(
    ASYNC_JOBS={"BACKOFF_BASE": 0.5, "BACKOFF_MAX": 15, "BACKOFF_JITTER": 0}
)
def test_backoff_is_capped_however_many_attempts_came_before(flush_queue):
    """2 ** 1100 is beyond a float: the cap applies, no OverflowError."""
    job = schedule(
        "shop.tasks.write_then_fail", args=["x"], meta={"max_attempts": 5000}
    )
    Job.objects.filter(pk=job.pk).update(attempts=1100)

    with freeze_time("2030-01-01 12:00:00"):
        assert "1 to retry" in flush_queue()
        job.refresh_from_db()
        assert job.run_after == timezone.now() + timedelta(seconds=15)
    assert job.attempts == 1101


def test_due_jobs_run_by_priority_then_run_after_then_id(flush_queue):
    now = timezone.now()
    schedule("shop.tasks.record", args=["low"], meta={"priority": -5})
    schedule("shop.tasks.record", args=["high-late"], meta={"priority": 9})
    schedule(
        "shop.tasks.record",
        args=["high-early"],
        run_after=now - timedelta(minutes=5),
        meta={"priority": 9},
    )
    schedule("shop.tasks.record", args=["zero-a"])
    schedule("shop.tasks.record", args=["zero-b"], run_after=now - timedelta(seconds=1))
    schedule("shop.tasks.record", args=["future"], run_after=timedelta(hours=1))
    # Same priority and run_after: the older id first.
    Job.objects.filter(name="shop.tasks.record", args=["zero-a"]).update(
        run_after=now - timedelta(seconds=1)
    )

    flush_queue()

    assert list(Mark.objects.order_by("pk").values_list("label", flat=True)) == [
        "high-early",
        "high-late",
        "zero-a",
        "zero-b",
        "low",
    ]
    assert Job.objects.get(args=["future"]).status == Job.Status.PENDING


def test_jobs_option_limits_the_run(flush_queue):
    for n in range(5):
        schedule("shop.tasks.record", args=[str(n)], meta={"priority": -n})

    assert "Ran 2 jobs" in flush_queue("--jobs", "2")

    assert sorted(Mark.objects.values_list("label", flat=True)) == ["0", "1"]
    assert Job.objects.filter(status=Job.Status.PENDING).count() == 3


def test_queue_option_limits_the_run(flush_queue):
    for queue in ("mail", "reports", "default"):
        schedule("shop.tasks.record", args=[queue], meta={"queue": queue})

    assert "Ran 2 jobs" in flush_queue("--queue", "mail", "--queue", "reports")

    assert sorted(Mark.objects.values_list("label", flat=True)) == ["mail", "reports"]
    assert Job.objects.get(queue="default").status == Job.Status.PENDING


@override_settings(ASYNC_JOBS={"QUEUES": ["default", "mail"]})
def test_unknown_queue_option_is_refused(flush_queue):
    with pytest.raises(CommandError, match="Unknown queue.*'mial'"):
        flush_queue("--queue", "mial")


def test_cancelled_and_finished_jobs_are_not_run(flush_queue):
    schedule("shop.tasks.record", args=["cancelled"]).cancel()
    assert "Ran 0 jobs" in flush_queue()
    assert not Mark.objects.exists()


def test_verbosity_2_prints_a_line_per_job(flush_queue):
    ok = schedule("shop.tasks.add", args=[1, 2])
    bad = schedule("shop.tasks.write_then_fail", args=["x"])

    output = flush_queue("-v", "2")

    assert f"{ok.pk} shop.tasks.add succeeded (attempt 1/3, " in output
    assert f"{bad.pk} shop.tasks.write_then_fail retry (attempt 1/3, " in output
    assert "RuntimeError: failed after writing x" in output


def test_execute_runs_one_job_now_with_the_same_bookkeeping():
    job = schedule("shop.tasks.add", args=[2, 3], run_after=timedelta(hours=1))

    assert job.execute() == 5

    assert (job.status, job.result, job.attempts) == (Job.Status.SUCCEEDED, 5, 1)
    job.refresh_from_db()
    assert (job.status, job.result, job.attempts) == (Job.Status.SUCCEEDED, 5, 1)
    with pytest.raises(ValueError, match="is succeeded; only a pending job can run"):
        job.execute()


def test_calling_a_job_executes_it_and_a_failure_is_recorded_then_raised():
    job = schedule("shop.tasks.write_then_fail", args=["x"], meta={"max_attempts": 1})

    with pytest.raises(RuntimeError, match="failed after writing x"):
        job()

    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert Error.objects.filter(job=job, attempt=1).exists()
    assert not Mark.objects.exists()


def test_cancel_only_cancels_a_pending_job():
    job = schedule("shop.tasks.noop")
    job.cancel()
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    assert job.finished is not None

    with pytest.raises(ValueError, match="is cancelled; only a pending job can be"):
        job.cancel()
    done = schedule("shop.tasks.noop")
    done.execute()
    with pytest.raises(ValueError, match="is succeeded"):
        done.cancel()


def test_a_job_that_swallows_a_database_error_fails_rather_than_loop(flush_queue):
    # On PostgreSQL the caught error leaves the transaction refusing every
    # statement: the attempt must be recorded as failed, its write rolled
    # back, not lose the worker's whole transaction and run again for ever.
    # SQLite has no failed-transaction state: there the job succeeds.
    from django.db import connection

    job = schedule("shop.tasks.swallow_database_error", args=["swallowed"])

    flush_queue("--jobs", "1")

    job.refresh_from_db()
    assert job.attempts == 1
    if connection.vendor == "postgresql":
        assert job.status == Job.Status.PENDING
        [error] = job.errors.all()
        assert "caught left its transaction failed" in error.exception
        assert not Mark.objects.exists()
    else:
        assert job.status == Job.Status.SUCCEEDED
        assert Mark.objects.get().label == "swallowed"
