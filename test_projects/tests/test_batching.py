"""Batches: up to K jobs in one worker transaction, each atomic on its own."""

import os
import socket

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from shop.models import Mark

from async_jobs import Group, Job, schedule
from async_jobs import worker as worker_module
from async_jobs.conf import jobs_settings
from async_jobs.signals import job_finished, job_started

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def events():
    """'started N' when a job's function is called; 'committed N' once its
    outcome has committed (job_finished is sent from on_commit)."""
    seen = []

    def started(job, **kwargs):
        seen.append(f"started {job.args[0]}")

    def finished(job, **kwargs):
        seen.append(f"committed {job.args[0]}")

    job_started.connect(started)
    job_finished.connect(finished)
    yield seen
    job_started.disconnect(started)
    job_finished.disconnect(finished)


def schedule_in_order(*calls):
    """Schedule (function, label) pairs so that they run in this order."""
    return [
        schedule(f"shop.tasks.{function}", args=[label], meta={"priority": -n})
        for n, (function, label) in enumerate(calls)
    ]


def test_one_job_per_transaction_by_default(flush_queue, events):
    schedule_in_order(("record", "a"), ("record", "b"))

    flush_queue()

    assert events == ["started a", "committed a", "started b", "committed b"]


def test_a_batch_commits_its_jobs_together(flush_queue, events):
    schedule_in_order(*[("record", label) for label in "abcde"])

    assert "Ran 5 jobs" in flush_queue("--batch", "3")

    assert events == [
        "started a",
        "started b",
        "started c",
        "committed a",
        "committed b",
        "committed c",
        "started d",
        "started e",
        "committed d",
        "committed e",
    ]
    assert Job.objects.filter(status=Job.Status.SUCCEEDED).count() == 5


def test_a_failing_job_in_a_batch_rolls_back_alone(flush_queue):
    ok_before, failing, ok_after = schedule_in_order(
        ("record", "before"), ("write_then_fail", "lost"), ("record", "after")
    )

    output = flush_queue("--batch", "10")

    assert "Ran 3 jobs" in output
    assert "2 succeeded, 1 to retry, 0 failed." in output
    assert sorted(Mark.objects.values_list("label", flat=True)) == ["after", "before"]
    for job in (ok_before, ok_after):
        job.refresh_from_db()
        assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)
    failing.refresh_from_db()
    assert (failing.status, failing.attempts) == (Job.Status.PENDING, 1)
    assert "failed after writing lost" in failing.errors.get().exception


@pytest.mark.parametrize("batch", ["1", "10"])
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nul", "result[1]['k']: str holds a NUL character"),
        ("surrogate", "result: key '\\ud800': str holds '\\ud800', a lone surrogate"),
        ("large float", "result['total']: float 1e+23 would not come back"),
        ("cycle", "result[1]: contains itself"),
    ],
)
def test_a_result_json_cannot_give_back_fails_the_job(
    flush_queue, batch, kind, message
):
    ok = schedule("shop.tasks.record", args=["kept"])
    bad = schedule("shop.tasks.write_then_return_unstorable", args=["lost", kind])

    assert "1 succeeded, 1 to retry" in flush_queue("--batch", batch)

    assert list(Mark.objects.values_list("label", flat=True)) == ["kept"]
    ok.refresh_from_db()
    assert (ok.status, ok.result) == (Job.Status.SUCCEEDED, "kept")
    bad.refresh_from_db()
    assert (bad.status, bad.result) == (Job.Status.PENDING, None)
    assert message in bad.errors.get().exception


@override_settings(ASYNC_JOBS={"BATCH_SIZE": 2})
def test_the_batch_size_setting_is_the_default(flush_queue, events):
    schedule_in_order(("record", "a"), ("record", "b"), ("record", "c"))

    flush_queue()

    assert events[:4] == ["started a", "started b", "committed a", "committed b"]


def test_jobs_option_caps_the_batch(flush_queue, events):
    schedule_in_order(("record", "a"), ("record", "b"), ("record", "c"))

    assert "Ran 2 jobs" in flush_queue("--batch", "10", "--jobs", "2")

    assert events == ["started a", "started b", "committed a", "committed b"]
    assert Job.objects.filter(status=Job.Status.PENDING).count() == 1


def test_a_batch_past_its_time_limit_starts_no_new_job(
    flush_queue, events, monkeypatch
):
    monkeypatch.setattr(worker_module, "BATCH_TIME_LIMIT", 0)
    schedule_in_order(("record", "a"), ("record", "b"))

    assert "Ran 2 jobs" in flush_queue("--batch", "10")

    # b was claimed with a, released untouched, and claimed again.
    assert events == ["started a", "committed a", "started b", "committed b"]


def test_max_seconds_starts_no_job_after_the_deadline(flush_queue, tmp_path):
    jobs = [
        schedule(
            "shop.tasks.record_then_sleep",
            args=[str(n), str(tmp_path / str(n)), 0.4],
            meta={"priority": -n},
        )
        for n in range(6)
    ]

    output = flush_queue("--max-seconds", "1")

    ran = Job.objects.filter(status=Job.Status.SUCCEEDED).count()
    assert f"Ran {ran} job" in output
    assert 1 <= ran <= 3  # started before the second was up, at 0.4s each
    assert Job.objects.filter(status=Job.Status.PENDING, attempts=0).count() == (
        len(jobs) - ran
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"BATCH_SIZE": 0}, "BATCH_SIZE'] must be an integer of at least 1"),
        ({"BATCH_SIZE": "10"}, "BATCH_SIZE'] must be an integer of at least 1"),
        ({"BATCH_SIZE": True}, "BATCH_SIZE'] must be an integer of at least 1"),
        ({"POLL_INTERVAL": 0}, r"POLL_INTERVAL'\] must be a number of seconds > 0"),
        ({"POLL_INTERVAL": "1"}, r"POLL_INTERVAL'\] must be a number of seconds"),
        ({"POLL_INTERVAL": float("nan")}, r"POLL_INTERVAL'\] must be a number"),
    ],
)
def test_bad_worker_settings_are_refused(value, message):
    with (
        override_settings(ASYNC_JOBS=value),
        pytest.raises(ImproperlyConfigured, match=message),
    ):
        jobs_settings()


def test_worker_settings_defaults():
    config = jobs_settings()
    assert (config.batch_size, config.poll_interval) == (1, 1.0)
    with override_settings(ASYNC_JOBS={"BATCH_SIZE": 50, "POLL_INTERVAL": 0.25}):
        config = jobs_settings()
        assert (config.batch_size, config.poll_interval) == (50, 0.25)


def test_a_batch_records_each_attempt_in_the_attempt_log(flush_queue):
    # Several successes are written by one UPDATE on PostgreSQL: the log too.
    jobs = schedule_in_order(("record", "a"), ("write_then_fail", "b"), ("record", "c"))
    Job.objects.filter(pk=jobs[0].pk).update(
        attempt_log=[{"worker": "earlier:1", "started": "2020-01-01T00:00:00+00:00"}]
    )

    flush_queue("--batch", "10")

    worker = f"{socket.gethostname()}:{os.getpid()}"
    a, b, c = (Job.objects.get(pk=job.pk) for job in jobs)
    assert [entry["worker"] for entry in a.attempt_log] == ["earlier:1", worker]
    for job in (a, b, c):
        assert job.attempt_log[-1] == {
            "worker": worker,
            "started": job.started.isoformat(),
        }
    assert (a.status, b.status, c.status) == ("succeeded", "pending", "succeeded")


def test_a_batch_settles_series_and_groups_in_its_transaction(flush_queue):
    # Two series and a group's last two jobs, all in one batch: the next
    # occurrences are inserted and the group closes once, with the batch.
    schedule("shop.tasks.record", args=["every minute"], meta={"repeat": 60})
    schedule(
        "shop.tasks.write_then_fail",
        args=["failing"],
        meta={"repeat": 60, "max_attempts": 1},
    )
    for label in ("m1", "m2"):
        schedule("shop.tasks.record", args=[label], meta={"group": "g"})
    completion = schedule(
        "shop.tasks.count_unfinished_members", args=["g"], meta={"completes": "g"}
    )

    assert "Ran 5 jobs" in flush_queue("--batch", "10", "--jobs", "5")

    nexts = Job.objects.filter(status=Job.Status.PENDING).exclude(pk=completion.pk)
    assert sorted(nexts.values_list("name", flat=True)) == [
        "shop.tasks.record",
        "shop.tasks.write_then_fail",
    ]
    completion.refresh_from_db()
    assert completion.status == Job.Status.SUCCEEDED
    assert completion.result == 0  # it ran after both members had succeeded
    assert Group.objects.get(reference="g").finished is not None


@pytest.mark.parametrize("batch", ["1", "3"])
def test_a_job_rolled_back_takes_its_on_commit_hooks_with_it(flush_queue, batch):
    # The job's savepoint is the worker's own, not atomic()'s: the hooks a
    # rolled-back job registered must go with its writes all the same.
    for n, (label, outcome) in enumerate(
        [("kept", "return"), ("failed", "fail"), ("discarded", "discard"), ("last", "")]
    ):
        schedule("shop.tasks.hook_then", args=[label, outcome], meta={"priority": -n})

    flush_queue("--batch", batch)

    assert sorted(Mark.objects.values_list("label", flat=True)) == [
        "hook kept",
        "hook last",
        "kept",
        "last",
    ]
    statuses = dict(Job.objects.values_list("args__0", "status"))
    assert statuses == {
        "kept": "succeeded",
        "failed": "pending",
        "discarded": "succeeded",
        "last": "succeeded",
    }
