"""A worker that dies, or loses its connection, mid-job loses nothing.

The job's writes and its "succeeded" marker share one transaction, so a worker
that never commits leaves the job exactly as it was: pending, unlocked, with no
trace of the writes, and the next run completes it once.
"""

import signal

import pytest
from django.db import connection
from shop.models import Mark

from async_jobs import Job, schedule

from .conftest import (
    assert_next_run_completes_it_once,
    assert_session_ends,
    assert_untouched,
    finish,
    wait_until,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]


def test_sigkill_mid_job_rolls_back_its_writes_and_the_next_run_completes_it(
    start_manage, run_manage, on_postgres, tmp_path
):
    started, release = tmp_path / "started", tmp_path / "release"
    job = schedule(
        "shop.tasks.write_then_hold", args=["once", str(started), str(release)]
    )
    worker = start_manage("flush_queue")
    wait_until(started.exists, "the job to write and announce itself", process=worker)

    worker.send_signal(signal.SIGKILL)
    code, _out, _err = finish(worker)

    assert code == -signal.SIGKILL
    if on_postgres:
        # The server ends the dead client's session and rolls it back at once
        # (the kernel closed the socket); no lease has to expire.
        assert_session_ends(started)
    assert_untouched(job)
    assert_next_run_completes_it_once(job, run_manage, release)


def cut_mid_job(start_manage, started, release) -> tuple[int, str, str]:
    """Run ``flush_queue``; once the job has announced itself in ``started``,
    terminate its connection, then let it go on (``release``)."""
    worker = start_manage("flush_queue")
    wait_until(started.exists, "the job to write and announce itself", process=worker)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [int(started.read_text())])
    release.touch()
    return finish(worker, timeout=30)


@pytest.mark.parametrize("where", ["inside a query", "then raises"])
def test_connection_terminated_mid_job_is_charged_and_the_run_goes_on(
    where, start_manage, run_manage, on_postgres, tmp_path
):
    # The database is still there: only the job's transaction is lost, and
    # the job met it (its query failed; it raised). The worker reconnects and
    # records the attempt, so a job whose connection keeps being cut
    # (idle_in_transaction_session_timeout, a crashing extension) can't run
    # again uncounted for ever (#14).
    if not on_postgres:
        pytest.skip("pg_terminate_backend is PostgreSQL's")
    started, release = tmp_path / "started", tmp_path / "release"
    if where == "inside a query":
        job = schedule("shop.tasks.write_then_query", args=["once", str(started), 60])
    else:
        job = schedule(
            "shop.tasks.write_hold_then_fail", args=["once", str(started), str(release)]
        )
    code, out, err = cut_mid_job(start_manage, started, release)

    assert code == 0, err
    assert out.strip().endswith("0 succeeded, 1 to retry, 0 failed."), out
    assert not Mark.objects.exists()  # its write went with its transaction
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.PENDING, 1)
    [error] = job.errors.all()
    assert error.exception.startswith(
        "async_jobs.execution.WorkerDied: the job's transaction on database "
        "'default' was lost: "
    )
    if where == "then raises":
        assert "RuntimeError: failed after holding once" in error.exception
    else:
        assert "terminating connection due to administrator command" in (
            error.exception
        )
    if where == "inside a query":
        job.args[2] = 0  # the next run need not sleep a minute
        job.save(update_fields=["args"])
    # The next run, once its retry is due, completes it as attempt 2.
    Job.objects.filter(pk=job.pk).update(run_after=job.created)
    code, out, err = run_manage("flush_queue")
    assert code == 0, err
    job.refresh_from_db()
    if where == "then raises":
        assert (job.status, job.attempts) == (Job.Status.PENDING, 2)
    else:
        assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 2)
        assert list(Mark.objects.values_list("label", flat=True)) == ["once"]


def test_connection_terminated_between_a_jobs_queries_is_not_charged(
    start_manage, on_postgres, tmp_path
):
    # The job returns without meeting the loss: the worker meets it in the
    # statement that records the job and commits, and can't tell it from a
    # loss at the commit itself (a server restarted, a failover). The job runs
    # again, uncharged; one that loses it three times in a row is charged
    # (test_no_job_stops_the_queue.py, "cut").
    if not on_postgres:
        pytest.skip("pg_terminate_backend is PostgreSQL's")
    started, release = tmp_path / "started", tmp_path / "release"
    job = schedule(
        "shop.tasks.write_then_hold", args=["once", str(started), str(release)]
    )

    code, out, err = cut_mid_job(start_manage, started, release)

    assert code == 0, err
    assert out.strip().endswith("1 succeeded, 0 to retry, 0 failed."), out
    assert "the database lost the transaction" in err, err
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)
    assert not job.errors.exists()
    assert list(Mark.objects.values_list("label", flat=True)) == ["once"]


def test_the_documented_keepalive_settings_are_applied(run_manage, on_postgres):
    """docs/guarantees.rst: what makes a lost worker machine's lock go in seconds."""
    if not on_postgres:
        pytest.skip("TCP keepalives are for PostgreSQL connections")
    server = [
        "tcp_keepalives_idle",
        "tcp_keepalives_interval",
        "tcp_keepalives_count",
        "tcp_user_timeout",
        "client_connection_check_interval",
    ]
    client = ["keepalives", "keepalives_idle", "keepalives_interval"]
    client += ["keepalives_count", "tcp_user_timeout"]
    job = schedule("shop.tasks.connection_settings", args=[client, server])

    code, _out, err = run_manage(
        "flush_queue", "--settings=testproject.keepalive_settings"
    )

    assert code == 0, err
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.errors.get().traceback
    assert job.result == {
        "client": {
            "keepalives": "1",
            "keepalives_idle": "10",
            "keepalives_interval": "5",
            "keepalives_count": "3",
            "tcp_user_timeout": "25000",
        },
        # Set by this connection ("client"), not by the server's configuration.
        "server": {
            "tcp_keepalives_idle": "10s from client",
            "tcp_keepalives_interval": "5s from client",
            "tcp_keepalives_count": "3 from client",
            "tcp_user_timeout": "25000ms from client",
            "client_connection_check_interval": "5000ms from client",
        },
    }
