"""Signals at the right moment (after commit, never on rollback), the
``async_jobs`` log lines, and flush_queue's line per job."""

import logging
import threading
from contextlib import contextmanager

import pytest
from django.db import connection, transaction
from shop.models import Mark

from async_jobs import Job, schedule
from async_jobs.execution import Outcome
from async_jobs.signals import job_finished, job_scheduled, job_started

pytestmark = pytest.mark.django_db(transaction=True)


class Boom(Exception):
    pass


@contextmanager
def receiving(signal, receiver=None):
    """Collect what ``signal`` sends (or call ``receiver``) within the block."""
    sent = []

    def collect(sender, **kwargs):
        sent.append(kwargs)
        if receiver is not None:
            receiver(**{key: value for key, value in kwargs.items() if key != "signal"})

    signal.connect(collect, sender=Job, weak=False)
    try:
        yield sent
    finally:
        signal.disconnect(collect, sender=Job)


def status_seen_from_another_connection(pk: int) -> str:
    """What a worker or the admin would see: a read on a separate connection."""
    seen = []

    def read():
        try:
            seen.append(Job.objects.get(pk=pk).status)
        finally:
            connection.close()

    thread = threading.Thread(target=read)
    thread.start()
    thread.join(timeout=10)
    return seen[0]


# job_scheduled


def test_job_scheduled_is_sent_once_the_transaction_commits():
    with receiving(job_scheduled) as sent, transaction.atomic():
        job = schedule("shop.tasks.noop")
        assert sent == []

    assert sent == [{"signal": job_scheduled, "job": job}]


def test_job_scheduled_is_never_sent_for_a_rolled_back_job():
    with receiving(job_scheduled) as sent:
        with pytest.raises(Boom), transaction.atomic():
            schedule("shop.tasks.noop")
            raise Boom
        with transaction.atomic():
            kept = schedule("shop.tasks.noop")
            with pytest.raises(Boom), transaction.atomic():
                schedule("shop.tasks.noop")  # its savepoint rolls back
                raise Boom

    assert [message["job"] for message in sent] == [kept]
    assert list(Job.objects.values_list("pk", flat=True)) == [kept.pk]


def test_job_scheduled_outside_a_transaction_is_sent_at_once():
    with receiving(job_scheduled) as sent:
        job = schedule("shop.tasks.noop")

    assert [message["job"] for message in sent] == [job]


def test_a_failing_job_scheduled_receiver_is_logged_and_the_job_kept(caplog):
    def broken(**kwargs):
        raise Boom("receiver bug")

    with receiving(job_scheduled, broken), transaction.atomic():
        job = schedule("shop.tasks.noop")

    assert Job.objects.get().pk == job.pk
    assert any(
        record.exc_info and record.exc_info[0] is Boom for record in caplog.records
    )


# job_started


def test_job_started_is_sent_in_the_jobs_transaction_before_it_runs(flush_queue):
    job = schedule("shop.tasks.record", args=["ran"])
    seen = []

    def started(job):
        seen.append(
            (
                job.status,
                job.attempts,
                connection.in_atomic_block,
                Mark.objects.exists(),
            )
        )

    with receiving(job_started, started) as sent:
        flush_queue()

    assert [message["job"].pk for message in sent] == [job.pk]
    assert seen == [(Job.Status.PENDING, 1, True, False)]


def test_job_started_receivers_writes_roll_back_with_a_failing_job(flush_queue):
    schedule("shop.tasks.write_then_fail", args=["job"])

    with receiving(job_started, lambda job: Mark.objects.create(label="receiver")):
        flush_queue()

    assert not Mark.objects.exists()


# job_finished


@pytest.mark.parametrize(
    "function, args, max_attempts, status",
    [
        ("shop.tasks.add", [1, 2], 3, Outcome.SUCCEEDED),
        ("shop.tasks.write_then_fail", ["x"], 3, Outcome.RETRY),
        ("shop.tasks.write_then_fail", ["x"], 1, Outcome.FAILED),
    ],
)
def test_job_finished_is_sent_after_commit_with_the_outcome(
    flush_queue, function, args, max_attempts, status
):
    job = schedule(function, args=args, meta={"max_attempts": max_attempts})
    committed = []

    def finished(job, outcome):
        committed.append(status_seen_from_another_connection(job.pk))

    with receiving(job_finished, finished) as sent:
        flush_queue()

    (message,) = sent
    outcome = message["outcome"]
    assert message["job"].pk == outcome.job.pk == job.pk
    assert outcome.status == status
    assert outcome.duration >= 0
    assert (outcome.exception is None) == (status == Outcome.SUCCEEDED)
    expected = {
        Outcome.SUCCEEDED: Job.Status.SUCCEEDED,
        Outcome.RETRY: Job.Status.PENDING,
        Outcome.FAILED: Job.Status.FAILED,
    }[status]
    assert committed == [expected]  # already visible to everyone


def test_job_finished_is_never_sent_when_the_run_rolls_back():
    job = schedule("shop.tasks.add", args=[1, 2])

    with receiving(job_finished) as sent, pytest.raises(Boom), transaction.atomic():
        assert job.execute() == 3
        raise Boom

    assert sent == []
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.PENDING, 0)


def test_a_failing_job_finished_receiver_does_not_stop_the_worker(flush_queue):
    for label in ("a", "b"):
        schedule("shop.tasks.record", args=[label])

    def broken(**kwargs):
        raise Boom("receiver bug")

    with receiving(job_finished, broken) as sent:
        output = flush_queue()

    assert "Ran 2 jobs" in output and "2 succeeded" in output
    assert len(sent) == 2
    assert sorted(Mark.objects.values_list("label", flat=True)) == ["a", "b"]


# Logging


@pytest.fixture
def job_log(caplog):
    caplog.set_level(logging.INFO, logger="async_jobs")
    return lambda: [record for record in caplog.records if record.name == "async_jobs"]


def test_a_successful_run_logs_one_info_line(flush_queue, job_log):
    job = schedule("shop.tasks.add", args=[1, 2])

    flush_queue()

    (record,) = job_log()
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith(f"Job {job.pk} shop.tasks.add succeeded in ")
    assert record.exc_info is None


def test_a_failed_run_logs_its_traceback_at_error(flush_queue, job_log):
    retried = schedule("shop.tasks.write_then_fail", args=["x"], meta={"priority": 1})
    failed = schedule(
        "shop.tasks.write_then_fail", args=["y"], meta={"max_attempts": 1}
    )

    flush_queue()

    first, second = job_log()
    assert first.levelno == second.levelno == logging.ERROR
    assert first.getMessage().startswith(
        f"Job {retried.pk} shop.tasks.write_then_fail raised on attempt 1 of 3 in "
    )
    retried.refresh_from_db()
    assert first.getMessage().endswith(f", retry at {retried.run_after.isoformat()}")
    assert second.getMessage().endswith(", failed for good")
    assert f"Job {failed.pk} " in second.getMessage()
    for record, label in ((first, "x"), (second, "y")):
        assert record.exc_info[0] is RuntimeError
        assert str(record.exc_info[1]) == f"failed after writing {label}"


def test_nothing_is_logged_for_a_run_that_rolled_back(job_log):
    job = schedule("shop.tasks.add", args=[1, 2])

    with pytest.raises(Boom), transaction.atomic():
        job.execute()
        raise Boom

    assert job_log() == []


# flush_queue -v 2


def test_flush_queue_verbosity_2_prints_id_name_outcome_and_duration(flush_queue):
    ok = schedule("shop.tasks.add", args=[1, 2], meta={"priority": 2})
    failed = schedule(
        "shop.tasks.write_then_fail", args=["x"], meta={"max_attempts": 1}
    )

    lines = flush_queue("-v", "2").splitlines()

    assert len(lines) == 3
    assert lines[0].startswith(f"{ok.pk} shop.tasks.add succeeded (attempt 1/3, ")
    assert lines[0].endswith("s)")
    assert lines[1].startswith(
        f"{failed.pk} shop.tasks.write_then_fail failed (attempt 1/1, "
    )
    assert lines[1].endswith("s): RuntimeError: failed after writing x")
    assert lines[2].startswith("Ran 2 jobs")


def test_flush_queue_default_verbosity_prints_only_the_summary(flush_queue):
    schedule("shop.tasks.add", args=[1, 2])

    lines = flush_queue().splitlines()

    assert len(lines) == 1 and lines[0].startswith("Ran 1 job in ")


def test_job_scheduled_reaches_a_receiver_connected_before_the_commit():
    """Receivers are looked up when the transaction commits, as Django does."""
    late = receiving(job_scheduled)
    try:
        with transaction.atomic():
            job = schedule("shop.tasks.noop")
            sent = late.__enter__()  # connected after schedule(), before COMMIT
    finally:
        late.__exit__(None, None, None)
    assert [message["job"] for message in sent] == [job]
