"""flush_queue --loop: a long-lived worker, woken by NOTIFY, that survives lost
connections. Real processes against the test database, every wait bounded."""

import signal
import subprocess
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from shop.models import Mark

from async_jobs import Job, schedule

from .conftest import wait_until, worker_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]

# Long enough that a job run well within it was not found by polling.
NO_POLLING = "60"


def succeeded(job: Job) -> bool:
    job.refresh_from_db()
    return job.status == Job.Status.SUCCEEDED


@pytest.fixture
def start_worker(start_manage):
    """Start ``flush_queue --loop ...`` processes; killed at the end if need be."""

    def start(*args: str) -> subprocess.Popen:
        return start_manage("flush_queue", "--loop", *args)

    return start


def stop(process: subprocess.Popen, timeout: float = 15) -> tuple[int, str, str]:
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def run_and_wait(label: str, timeout: float = 10) -> Job:
    job = schedule("shop.tasks.record", args=[label])
    wait_until(lambda: succeeded(job), f"job {label!r} to run", timeout=timeout)
    return job


def start_slow_job(tmp_path, label: str, seconds: float, **schedule_kwargs) -> Job:
    started = tmp_path / f"{label}.started"
    return schedule(
        "shop.tasks.record_then_sleep",
        args=[label, str(started), seconds],
        **schedule_kwargs,
    )


def wait_started(tmp_path, label: str, worker: subprocess.Popen) -> None:
    started = tmp_path / f"{label}.started"
    wait_until(started.exists, f"{label} to start", process=worker)


@pytest.fixture
def postgres_only(on_postgres):
    if not on_postgres:
        pytest.skip("LISTEN/NOTIFY and pg_terminate_backend are PostgreSQL's")


@pytest.fixture
def idle_worker(start_worker, postgres_only):
    """A worker on PostgreSQL that has run a first job and polls once a minute."""
    worker = start_worker("--sleep", NO_POLLING)
    run_and_wait("ready", timeout=30)
    return worker


def test_a_notification_wakes_the_worker(idle_worker):
    # Polling is off for a minute, so only the NOTIFY can wake it this fast.
    for label in ("first", "second", "third"):
        run_and_wait(label)

    code, out, err = stop(idle_worker)
    assert code == 0, err
    assert "Ran 4 jobs" in out
    assert "(stopped by signal)" in out


def test_jobs_committed_together_all_run(idle_worker):
    with transaction.atomic():
        jobs = [schedule("shop.tasks.record", args=[str(n)]) for n in range(5)]

    wait_until(lambda: all(succeeded(job) for job in jobs), "the five jobs", timeout=10)
    assert stop(idle_worker)[0] == 0


def test_a_job_due_later_wakes_the_worker_on_time(idle_worker):
    job = schedule("shop.tasks.record", args=["later"], run_after=timedelta(seconds=1))
    time.sleep(0.5)
    assert not succeeded(job)
    wait_until(lambda: succeeded(job), "the job due in a second", timeout=10)
    assert job.started >= job.run_after
    assert stop(idle_worker)[0] == 0


def test_a_series_wakes_the_worker_for_its_next_occurrence(idle_worker):
    # The worker inserts the next occurrence itself, due a second later; the
    # notification of its own commit tells it when.
    schedule("shop.tasks.noop", meta={"repeat": 1})

    def occurrences() -> int:
        return Job.objects.filter(name="shop.tasks.noop", status="succeeded").count()

    wait_until(lambda: occurrences() >= 2, "the second occurrence", timeout=10)
    assert stop(idle_worker)[0] == 0


def test_a_released_completion_job_wakes_the_worker(idle_worker):
    member = schedule(
        "shop.tasks.noop", run_after=timedelta(hours=1), meta={"group": "g"}
    )
    completion = schedule(
        "shop.tasks.count_unfinished_members", args=["g"], meta={"completes": "g"}
    )

    member.cancel()  # the group's last job: its completion job is due now

    wait_until(lambda: succeeded(completion), "the completion job", timeout=10)
    assert stop(idle_worker)[0] == 0


def test_a_job_run_again_wakes_the_worker(idle_worker):
    job = schedule("shop.tasks.write_then_fail", args=["x"], meta={"max_attempts": 1})
    wait_until(lambda: job.errors.count() == 1, "the first attempt", timeout=10)

    Job.objects.get(pk=job.pk).requeue()

    wait_until(lambda: job.errors.count() == 2, "the job run again", timeout=10)
    assert stop(idle_worker)[0] == 0


def test_without_notifications_the_worker_polls(start_worker):
    worker = start_worker("--sleep", "0.2")
    # A row written directly sends no NOTIFY: only polling can find it (and on
    # SQLite polling is the only wake-up there is).
    job = Job.objects.create(name="shop.tasks.record", args=["polled"])

    wait_until(lambda: succeeded(job), "the polled job", timeout=30)
    code, _out, err = stop(worker)
    assert code == 0, err
    assert Mark.objects.get().label == "polled"


def test_max_seconds_ends_the_loop(run_manage, on_postgres):
    code, out, err = run_manage(
        "flush_queue", "--loop", "--max-seconds", "1", "--sleep", NO_POLLING, timeout=30
    )
    assert code == 0, err
    started, summary = out.splitlines()
    woken = "woken by NOTIFY, " if on_postgres else ""
    assert started == (
        "Waiting for jobs in database 'default' (queues: all; batch 1; "
        f"{woken}polling every 60s)."
    )
    assert summary.startswith("Ran 0 jobs in ")


def test_jobs_ends_the_loop(start_worker):
    worker = start_worker("--jobs", "2", "--sleep", "0.2")
    for label in ("a", "b", "c"):
        schedule("shop.tasks.record", args=[label])

    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert "Ran 2 jobs" in out
    assert Mark.objects.count() == 2


def test_sigterm_stops_a_waiting_worker_at_once(start_worker):
    worker = start_worker("--sleep", NO_POLLING)
    job = Job.objects.create(name="shop.tasks.record", args=["ready"])
    # Found by the first look, which comes before the first wait.
    wait_until(lambda: succeeded(job), "the worker to start", timeout=30)

    code, out, err = stop(worker, timeout=10)  # well within the poll interval
    assert code == 0, err
    assert "Ran 1 job" in out


def test_sigterm_mid_job_finishes_the_job_then_exits(start_worker, tmp_path):
    worker = start_worker("--sleep", "0.2")
    job = start_slow_job(tmp_path, "slow", 1.0)
    wait_started(tmp_path, "slow", worker)

    code, out, err = stop(worker)

    assert code == 0, err
    assert "Ran 1 job" in out
    assert succeeded(job)
    assert Mark.objects.get().label == "slow"


def test_sigterm_mid_batch_commits_what_ran_and_leaves_the_rest(start_worker, tmp_path):
    jobs = [
        start_slow_job(tmp_path, str(n), 1.0, meta={"priority": -n}) for n in range(3)
    ]
    worker = start_worker("--batch", "3", "--sleep", "0.2")
    wait_started(tmp_path, "0", worker)

    code, out, err = stop(worker)

    assert code == 0, err
    assert "Ran 1 job" in out
    assert succeeded(jobs[0])
    for job in jobs[1:]:
        job.refresh_from_db()
        assert (job.status, job.attempts) == (Job.Status.PENDING, 0)
    assert list(Mark.objects.values_list("label", flat=True)) == ["0"]


def backend_pids(listening: bool) -> list[int]:
    """The worker's connections to the test database: LISTEN or the other one."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
            "AND (query LIKE 'LISTEN %%') = %s",
            [listening],
        )
        return [pid for (pid,) in cursor.fetchall()]


def terminate(pid: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_a_lost_listen_connection_is_reopened(idle_worker):
    [listener] = backend_pids(listening=True)

    terminate(listener)
    wait_until(
        lambda: backend_pids(listening=True) not in ([], [listener]),
        "a new LISTEN connection",
        timeout=15,
    )
    run_and_wait("after")  # woken by a notification on the new connection

    code, out, err = stop(idle_worker)
    assert code == 0, err
    assert "Lost the LISTEN connection" in err
    assert "Ran 2 jobs" in out


def test_a_lost_worker_connection_is_reopened(idle_worker):
    [worker_connection] = backend_pids(listening=False)

    terminate(worker_connection)
    # The notification wakes the worker, its claim finds the connection gone;
    # it claims again on a new one, and runs the job.
    run_and_wait("after")

    code, out, err = stop(idle_worker)
    assert code == 0, err
    assert "The claim failed on a connection jobs have run on (terminating" in err
    assert "Claiming again on a new connection." in err
    assert "Ran 2 jobs" in out


def test_a_connection_lost_mid_job_runs_the_job_again(
    start_worker, tmp_path, postgres_only
):
    # Cut while the job sleeps, the loss shows only in the statement that
    # records it and commits, as a loss at the commit would: the worker
    # reconnects and runs the job again, uncharged.
    worker = start_worker("--sleep", "0.2")
    job = start_slow_job(tmp_path, "once", 1.0)
    wait_started(tmp_path, "once", worker)
    [worker_connection] = backend_pids(listening=False)

    terminate(worker_connection)
    (tmp_path / "once.started").unlink()
    wait_started(tmp_path, "once", worker)  # run again
    wait_until(lambda: succeeded(job), "the job to succeed", timeout=15)

    code, _out, err = stop(worker)
    assert code == 0, err
    assert "terminating connection due to administrator command" in err
    assert "the database lost the transaction" in err
    assert job.attempts == 1
    assert not job.errors.exists()
    assert list(Mark.objects.values_list("label", flat=True)) == ["once"]


def test_sleep_needs_loop(run_manage):
    code, _out, err = run_manage("flush_queue", "--sleep", "1")
    assert code != 0
    assert "--sleep only applies with --loop" in err


@pytest.mark.parametrize(("max_age", "connections_used"), [("0", 3), ("", 1)])
def test_a_loop_worker_honours_conn_max_age_between_batches(
    start_manage, postgres_only, max_age, connections_used
):
    # CONN_MAX_AGE = 0 (Django's default): a new connection for every batch,
    # as for every request; None (the test project's): one for the worker.
    worker = start_manage(
        "flush_queue",
        "--loop",
        "--sleep",
        "0.1",
        env=worker_env(ASYNC_JOBS_CONN_MAX_AGE=max_age),
    )
    pids = []
    for _ in range(3):
        job = schedule("shop.tasks.backend_pid")
        wait_until(lambda job=job: succeeded(job), "the job to run", timeout=15)
        pids.append(job.result)

    code, _out, err = stop(worker)
    assert code == 0, err
    assert len(set(pids)) == connections_used, pids


def test_a_loop_worker_starts_every_job_it_was_told_of_on_time(idle_worker):
    # Polling is off for a minute: only the due times the NOTIFYs carried can
    # start these. The worker once kept only the earliest, and forgot the
    # second job once it had run the first.
    soon = schedule("shop.tasks.record", args=["soon"], run_after=timedelta(seconds=2))
    later = schedule(
        "shop.tasks.record", args=["later"], run_after=timedelta(seconds=4)
    )

    wait_until(lambda: succeeded(later), "the later job", timeout=15)
    assert succeeded(soon)
    for job in (soon, later):
        assert (job.started - job.run_after).total_seconds() < 1.5, job
    assert stop(idle_worker)[0] == 0
