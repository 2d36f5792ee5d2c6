"""Stopping a job: its timeout, and the operator's SIGTERM or Ctrl-C.

A job stopped by its timeout fails like any other (rolled back, an Error,
retried); a worker asked to stop finishes its job first, and abandons it
cleanly only when asked twice.
"""

import signal
import time
from pathlib import Path

import pytest
from django.utils import timezone
from shop.models import Mark

from async_jobs import Job, schedule

from .conftest import (
    assert_next_run_completes_it_once,
    assert_session_ends,
    assert_untouched,
    finish,
    jobs_run,
    wait_until,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]

TIMEOUT_ERROR = "async_jobs.timeouts.JobTimeout: the job ran longer than its timeout"


def test_a_job_over_its_timeout_is_stopped_rolled_back_and_retried(run_manage):
    job = schedule(
        "shop.tasks.write_then_sleep",
        args=["late", 60],
        meta={"timeout": 0.5, "max_attempts": 2},
    )

    # Each run is bounded well below the job's 60 s sleep: it must be stopped.
    code, out, err = run_manage("flush_queue", timeout=30)

    assert code == 0, err
    assert out.strip().endswith("0 succeeded, 1 to retry, 0 failed.")
    assert not Mark.objects.exists()
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.PENDING, 1)
    assert job.errors.get().exception == f"{TIMEOUT_ERROR} of 0.5s"

    Job.objects.filter(pk=job.pk).update(run_after=timezone.now())
    code, out, err = run_manage("flush_queue", timeout=30)

    assert code == 0, err
    assert out.strip().endswith("0 succeeded, 0 to retry, 1 failed.")
    assert not Mark.objects.exists()
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.FAILED, 2)
    assert list(job.errors.values_list("attempt", flat=True)) == [1, 2]


def test_the_timeout_holds_when_the_job_takes_sigalrm_for_itself(start_manage):
    """The job installs its own SIGALRM handler and clears and re-arms the
    process's alarm timer: the limit, which doesn't use SIGALRM, still stops
    it. Before issue 14 it slept its 60 seconds out."""
    job = schedule(
        "shop.tasks.take_sigalrm_then_sleep",
        args=["own alarm", 60],
        meta={"timeout": 0.5, "max_attempts": 1},
    )
    schedule("shop.tasks.record", args=["after"])

    # Bounded well below the job's 60 s sleep: it must be stopped.
    code, out, err = finish(start_manage("flush_queue"), timeout=30)

    assert code == 0, err
    assert out.strip().endswith("1 succeeded, 0 to retry, 1 failed.")
    assert list(Mark.objects.values_list("label", flat=True)) == ["after"]
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.FAILED, 1)
    assert job.errors.get().exception == f"{TIMEOUT_ERROR} of 0.5s"


def test_a_timeout_cancels_a_running_query_and_the_worker_goes_on(
    run_manage, on_postgres, tmp_path
):
    if not on_postgres:
        pytest.skip("SQLite has no long-running query to cancel (pg_sleep)")
    stuck = schedule(
        "shop.tasks.write_then_query",
        args=["stuck", str(tmp_path / "started"), 60],
        meta={"timeout": 0.5, "max_attempts": 1, "priority": 1},
    )
    schedule("shop.tasks.record", args=["after"])

    code, out, err = run_manage("flush_queue", timeout=30)

    assert code == 0, err
    assert out.strip().endswith("1 succeeded, 0 to retry, 1 failed.")
    # The cancelled query left the connection usable for the next job.
    assert list(Mark.objects.values_list("label", flat=True)) == ["after"]
    stuck.refresh_from_db()
    assert stuck.status == Job.Status.FAILED
    assert stuck.errors.get().exception == f"{TIMEOUT_ERROR} of 0.5s"


STOP_SIGNALS = [signal.SIGTERM, signal.SIGINT]


def stop_once(worker, stop: signal.Signals, stderr: Path) -> None:
    """Send ``stop`` and wait until the worker says it will stop."""
    worker.send_signal(stop)
    wait_until(
        lambda: "stopping after the running job" in stderr.read_text(),
        f"the worker to acknowledge {stop.name}",
        process=worker,
    )


@pytest.mark.parametrize("stop", STOP_SIGNALS, ids=lambda s: s.name)
def test_a_stop_signal_lets_the_job_finish_then_the_worker_exits_0(
    stop, start_manage, tmp_path
):
    started, release, stderr = (
        tmp_path / name for name in ("started", "release", "err")
    )
    job = schedule(
        "shop.tasks.write_then_hold",
        args=["finished", str(started), str(release)],
        meta={"priority": 1},
    )
    waiting = schedule("shop.tasks.record", args=["not started"])
    with stderr.open("w") as err:
        worker = start_manage("flush_queue", stderr=err)
    wait_until(started.exists, "the job to write and announce itself", process=worker)

    stop_once(worker, stop, stderr)
    assert worker.poll() is None  # the job is still running
    release.touch()
    code, out, _ = finish(worker, timeout=30)

    assert code == 0, stderr.read_text()
    assert stderr.read_text() == (
        f"{stop.name} received: stopping after the running job; "
        f"{stop.name} again aborts it.\n"
    )
    assert jobs_run(out) == 1
    assert out.strip().endswith(
        "1 succeeded, 0 to retry, 0 failed (stopped by signal)."
    )
    assert list(Mark.objects.values_list("label", flat=True)) == ["finished"]
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)
    waiting.refresh_from_db()
    assert (waiting.status, waiting.attempts) == (Job.Status.PENDING, 0)


@pytest.mark.parametrize("stop", STOP_SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("where", ["between queries", "inside a query"])
def test_a_second_stop_signal_aborts_the_job_which_stays_pending(
    where, stop, start_manage, run_manage, on_postgres, tmp_path
):
    started, release, stderr = (
        tmp_path / name for name in ("started", "release", "err")
    )
    if where == "inside a query":
        if not on_postgres:
            pytest.skip("SQLite has no long-running query to cancel (pg_sleep)")
        job = schedule("shop.tasks.write_then_query", args=["once", str(started), 60])
    else:
        job = schedule(
            "shop.tasks.write_then_hold", args=["once", str(started), str(release)]
        )
    with stderr.open("w") as err:
        worker = start_manage("flush_queue", stderr=err)
    wait_until(started.exists, "the job to write and announce itself", process=worker)

    stop_once(worker, stop, stderr)
    worker.send_signal(stop)
    code, out, _ = finish(worker, timeout=10)

    assert code == 1
    assert out == ""
    err = stderr.read_text()
    assert f"CommandError: aborted by a second {stop.name}" in err
    assert "the running job was rolled back and stays pending" in err
    assert "Traceback" not in err
    if on_postgres:
        # Even a query the job was in is cancelled, not left running on the
        # server holding the job's row lock.
        assert_session_ends(started)
    assert_untouched(job)
    if where == "inside a query":
        job.args[2] = 0
        job.save(update_fields=["args"])
    assert_next_run_completes_it_once(job, run_manage, release)


def test_a_sqlite_worker_stopped_while_waiting_for_the_lock_runs_no_job(
    start_manage, on_postgres, tmp_path
):
    if on_postgres:
        pytest.skip("PostgreSQL workers don't wait for each other")
    started, release, stderr = (
        tmp_path / name for name in ("started", "release", "err")
    )
    schedule(
        "shop.tasks.write_then_hold",
        args=["gate", str(started), str(release)],
        meta={"priority": 1},
    )
    waiting = schedule("shop.tasks.record", args=["not started"])
    first = start_manage("flush_queue", "--jobs", "1")
    wait_until(started.exists, "the first worker to hold the gate", process=first)
    with stderr.open("w") as err:
        second = start_manage("flush_queue", stderr=err)
    time.sleep(2)  # time to start and block on SQLite's write lock
    assert second.poll() is None

    # Blocked inside SQLite, it can only act on the signal once it gets the lock.
    second.send_signal(signal.SIGTERM)
    release.touch()
    code, out, _ = finish(second, timeout=30)

    assert code == 0, stderr.read_text()
    assert out.strip().endswith("0 failed (stopped by signal).")
    assert jobs_run(out) == 0
    assert finish(first)[0] == 0
    waiting.refresh_from_db()
    assert (waiting.status, waiting.attempts) == (Job.Status.PENDING, 0)
