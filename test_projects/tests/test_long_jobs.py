"""Non-atomic jobs (long jobs): no transaction while they run, a lease renewed
by heartbeats, outcomes fenced by the lease, rescue of a lost worker's job,
cancelling a running job. Real ``flush_queue`` processes, on both databases.
"""

import os
import signal
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import close_old_connections, connection, transaction
from shop.models import Mark, Order

from async_jobs import Group, Job, schedule
from async_jobs.conf import jobs_settings
from async_jobs.models import held

from .conftest import env_with_settings, finish, jobs_run, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]

#: A short lease, and retries at once, so the tests need not wait.
SHORT_LEASE = 'ASYNC_JOBS = {**ASYNC_JOBS, "LEASE": 2, "BACKOFF_BASE": 0}'


def long_job(label, started, seconds, **meta) -> Job:
    return schedule(
        "shop.tasks.long_job",
        args=[label, str(started), seconds],
        meta={"atomic": False, **meta},
    )


def where(started) -> tuple[int, int | None]:
    """The worker process running the job, and its PostgreSQL backend."""
    pid, _, backend = started.read_text().partition(" ")
    return int(pid), int(backend) if backend.strip() else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def rescue(job: Job, run_manage, env: dict) -> tuple[int, str, str]:
    """Wait for the job's lease to expire, then run the queue once."""
    wait_until(
        lambda: Job.objects.lease_expired().filter(pk=job.pk).exists(),
        "the lease to expire",
        timeout=10,
    )
    return run_manage("flush_queue", "--settings=changed_settings", env=env)


def idle_in_transaction() -> list:
    """Sessions of the test database idle in a transaction for more than a
    moment, this one aside. A worker's transaction is idle for an instant
    between two of its statements (its rescue, then its claim): that holds
    nothing for long, and is not what is looked for."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, state, query FROM pg_stat_activity WHERE datname = "
            "current_database() AND pid <> pg_backend_pid() AND state LIKE "
            "'idle in transaction%%' "
            "AND clock_timestamp() - state_change > interval '0.25 seconds'"
        )
        return cursor.fetchall()


def test_atomic_by_meta_decorator_and_queue_setting(settings):
    assert schedule("shop.tasks.noop").atomic
    assert not schedule("shop.tasks.noop", meta={"atomic": False}).atomic
    from shop.tasks import long_by_default

    assert not long_by_default.schedule("x").atomic
    with pytest.raises(ValueError, match=r"meta\['atomic'\] is 1; it must be a bool"):
        schedule("shop.tasks.noop", meta={"atomic": 1})
    settings.ASYNC_JOBS = {"NON_ATOMIC_QUEUES": ["reports"]}
    assert not schedule("shop.tasks.noop", meta={"queue": "reports"}).atomic
    assert schedule("shop.tasks.noop", meta={"queue": "reports", "atomic": True}).atomic
    assert jobs_settings().lease == 60


def test_non_atomic_job_commits_as_it_goes_under_a_lease(start_manage, tmp_path):
    started = tmp_path / "started"
    job = long_job("long", started, 2)
    worker = start_manage("flush_queue")
    wait_until(started.exists, "the job to start", process=worker)

    pid, _backend = where(started)
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING
    assert job.worker == f"{socket.gethostname()}:{pid}"
    assert job.attempts == 1 and job.started is not None
    assert job.attempt_log[-1]["worker"] == job.worker
    assert job.heartbeat is not None and job.lease_expires > job.heartbeat
    assert list(Job.objects.running()) == [job]
    # Its write committed as it made it, while it runs.
    assert Mark.objects.filter(label="long#1").exists()

    code, out, err = finish(worker)
    assert code == 0, err
    assert jobs_run(out) == 1
    job.refresh_from_db()
    assert (job.status, job.attempts, job.result) == (Job.Status.SUCCEEDED, 1, "long")
    assert job.lease_expires is None and not job.errors.exists()
    assert not Job.objects.running().exists()


def test_a_worker_whose_lease_was_taken_over_records_nothing(
    start_manage, run_manage, tmp_path
):
    env = env_with_settings(tmp_path, SHORT_LEASE)
    started = tmp_path / "started"
    job = long_job("taken", started, 5, max_attempts=3)
    first = start_manage("flush_queue", "--settings=changed_settings", env=env)
    wait_until(started.exists, "the job to start", process=first)
    pid, _backend = where(started)
    started.unlink()

    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(
            lambda: Job.objects.lease_expired().filter(pk=job.pk).exists(),
            "the frozen worker's lease to expire",
            timeout=10,
        )
        code, out, err = run_manage(
            "flush_queue", "--settings=changed_settings", env=env
        )
        assert code == 0, err
        assert jobs_run(out) == 1
        job.refresh_from_db()
        assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 2)
    finally:
        os.kill(pid, signal.SIGCONT)
    code, out, err = finish(first)

    assert code == 0, err
    assert jobs_run(out) == 0
    assert f"Job {job.pk} shop.tasks.long_job: attempt 1 lost its lease" in err
    job.refresh_from_db()
    # Exactly one outcome: the rescuer's.
    assert (job.status, job.attempts, job.result) == (
        Job.Status.SUCCEEDED,
        2,
        "taken",
    )
    [lost] = job.errors.all()
    assert lost.attempt == 1
    assert lost.exception.startswith(
        f"async_jobs.execution.WorkerLost: worker lost: {socket.gethostname()}:{pid} "
        "stopped renewing the lease of attempt 1 of 3 (last heartbeat "
    )
    assert set(Mark.objects.values_list("label", flat=True)) == {"taken#1", "taken#2"}


def test_a_killed_workers_job_is_rescued_after_its_lease(
    start_manage, run_manage, tmp_path
):
    env = env_with_settings(tmp_path, SHORT_LEASE)
    started = tmp_path / "started"
    job = long_job("killed", started, 60, max_attempts=1, group="g")
    schedule("shop.tasks.count_unfinished_members", args=["g"], meta={"completes": "g"})
    worker = start_manage("flush_queue", "--settings=changed_settings", env=env)
    wait_until(started.exists, "the job to start", process=worker)
    pid, _backend = where(started)

    worker.send_signal(signal.SIGKILL)  # its child, the job's worker, dies too
    finish(worker)
    wait_until(lambda: not alive(pid), "the child to die", timeout=10)
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING
    last_heartbeat = job.heartbeat

    code, _out, err = rescue(job, run_manage, env)

    assert code == 0, err
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.FAILED, 1)
    assert job.lease_expires is None
    [lost] = job.errors.all()
    assert "worker lost" in lost.exception
    assert f":{pid} stopped renewing" in lost.exception
    assert last_heartbeat.isoformat() in lost.exception
    # The features were told: the group finished and its completion job ran.
    assert Mark.objects.filter(label="completed g").exists()


def test_the_supervisor_rescues_its_dead_childs_job_at_once(start_manage, tmp_path):
    env = env_with_settings(
        tmp_path, 'ASYNC_JOBS = {**ASYNC_JOBS, "LEASE": 600, "BACKOFF_BASE": 0}'
    )
    started = tmp_path / "started"
    job = long_job("orphan", started, 1, max_attempts=2)
    worker = start_manage("flush_queue", "--settings=changed_settings", env=env)
    wait_until(started.exists, "the job to start", process=worker)
    pid, _backend = where(started)
    began = time.monotonic()

    os.kill(pid, signal.SIGKILL)
    code, _out, err = finish(worker, timeout=60)

    assert code == 0, err
    assert time.monotonic() - began < 30  # far from the 600 s lease
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 2)
    [died] = job.errors.all()
    assert "killed by signal 9 (SIGKILL) while running attempt 1 of 2" in died.exception


def unique_twins(tmp_path, **meta) -> tuple[Job, Path, Path]:
    """A unique non-atomic job that holds until released, then fails; its
    ``started`` and ``release`` files."""
    started, release = tmp_path / "started", tmp_path / "release"
    job = schedule(
        "shop.tasks.write_hold_then_fail",
        args=["first", str(started), str(release)],
        meta={"atomic": False, "unique": "k", "max_attempts": 3, **meta},
    )
    return job, started, release


def pending_twin(tmp_path) -> Job:
    """Schedule the job's twin while it runs (``running``, not ``pending``):
    a second job, pending, due in an hour."""
    return schedule(
        "shop.tasks.write_hold_then_fail",
        args=["twin", str(tmp_path / "x"), str(tmp_path / "y")],
        meta={"atomic": False, "unique": "k"},
        run_after=timedelta(hours=1),
    )


def assert_yielded_to(job: Job, twin: Job, cause: str) -> None:
    job.refresh_from_db()
    twin.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.FAILED, 1)
    assert job.finished is not None and job.lease_expires is None
    assert twin.status == Job.Status.PENDING
    [error] = job.errors.all()
    assert cause in error.exception
    assert error.exception.endswith(
        f"(not retried: job {twin.pk}, its unique twin, was scheduled while it "
        "ran and is pending; it runs in its place)"
    )


def test_a_unique_job_failing_beside_its_pending_twin_yields_to_it(
    start_manage, tmp_path
):
    job, started, release = unique_twins(tmp_path)
    worker = start_manage("flush_queue")
    wait_until(started.exists, "the job to start", process=worker)
    twin = pending_twin(tmp_path)
    assert twin.pk != job.pk
    release.touch()
    code, out, err = finish(worker)

    assert code == 0, err
    assert jobs_run(out) == 1
    assert_yielded_to(job, twin, "RuntimeError: failed after holding first")


def test_a_unique_job_rescued_beside_its_pending_twin_yields_to_it(
    start_manage, run_manage, tmp_path
):
    env = env_with_settings(tmp_path, SHORT_LEASE)
    job, started, _release = unique_twins(tmp_path)
    worker = start_manage("flush_queue", "--settings=changed_settings", env=env)
    wait_until(started.exists, "the job to start", process=worker)
    twin = pending_twin(tmp_path)
    worker.send_signal(signal.SIGKILL)  # its child, the job's worker, dies too
    finish(worker)
    code, _out, err = rescue(job, run_manage, env)

    assert code == 0, err
    assert_yielded_to(job, twin, "worker lost")


def test_cancel_stops_a_running_non_atomic_job(start_manage, tmp_path):
    env = env_with_settings(tmp_path, SHORT_LEASE)
    started = tmp_path / "started"
    job = long_job("stopped", started, 60)
    worker = start_manage("flush_queue", "--settings=changed_settings", env=env)
    wait_until(started.exists, "the job to start", process=worker)
    began = time.monotonic()

    job.cancel()  # asks its worker to stop it; no error
    assert (job.status, job.cancel_requested) == (Job.Status.RUNNING, True)
    code, out, err = finish(worker, timeout=30)

    assert code == 0, err
    assert time.monotonic() - began < 10  # within a heartbeat (2/3 s), not 60 s
    assert "1 cancelled while running" in out
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and job.finished is not None
    assert not job.cancel_requested and job.lease_expires is None
    [error] = job.errors.all()
    assert error.exception == (
        "async_jobs.execution.CancelledWhileRunning: cancelled while running, "
        "on attempt 1"
    )
    with pytest.raises(ValueError, match="is cancelled"):
        job.cancel()


def test_postgresql_no_session_idle_in_transaction_while_a_long_job_runs(
    start_manage, tmp_path, on_postgres
):
    if not on_postgres:
        pytest.skip("pg_stat_activity and idle_in_transaction are PostgreSQL's")
    env = env_with_settings(
        tmp_path,
        'ASYNC_JOBS = {**ASYNC_JOBS, "LEASE": 1.5}\n'
        'DATABASES["default"]["OPTIONS"] = {**DATABASES["default"].get("OPTIONS", '
        '{}), "options": "-c idle_in_transaction_session_timeout=3000"}',
    )
    started = tmp_path / "started"
    job = long_job("ten seconds", started, 10)
    worker = start_manage("flush_queue", "--settings=changed_settings", env=env)
    wait_until(started.exists, "the job to start", process=worker)
    _pid, backend = where(started)

    samples = 0
    while worker.poll() is None and samples < 200:
        assert idle_in_transaction() == []
        samples += 1
        time.sleep(0.05)
    code, out, err = finish(worker, timeout=30)

    assert code == 0, err
    assert samples > 50
    assert jobs_run(out) == 1
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)
    assert not job.errors.exists()
    assert backend is not None


def test_sqlite_a_request_writes_at_once_while_a_long_job_runs(
    start_manage, tmp_path, on_postgres
):
    if on_postgres:
        pytest.skip("SQLite's single write lock")
    started = tmp_path / "started"
    job = long_job("eight seconds", started, 8)
    worker = start_manage("flush_queue")
    wait_until(started.exists, "the job to start", process=worker)

    slowest = 0.0
    for total in range(10):
        began = time.monotonic()
        with transaction.atomic():  # Django's default: a deferred transaction
            Order.objects.create(total=total)
        slowest = max(slowest, time.monotonic() - began)
        time.sleep(0.2)
    assert worker.poll() is None  # the job was running all along

    assert slowest < 0.5
    code, _out, err = finish(worker)
    assert code == 0, err
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED


def test_sqlite_idle_workers_take_no_write_lock(start_manage, on_postgres):
    if on_postgres:
        pytest.skip("SQLite's single write lock")
    workers = [start_manage("flush_queue", "--loop", "--sleep", "0.1") for _ in "ab"]
    for worker in workers:
        assert "Waiting for jobs" in worker.stdout.readline()
    time.sleep(0.5)

    failures: list[BaseException] = []

    def requests() -> None:
        try:
            for _ in range(600):
                with transaction.atomic():  # read, then write: deferred
                    count = Order.objects.count()
                    Order.objects.create(total=count)
        except BaseException as exc:
            failures.append(exc)
        finally:
            close_old_connections()
            connection.close()

    thread = threading.Thread(target=requests)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    for worker in workers:
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        code, _out, err = finish(worker)
        assert code == 0, err

    assert failures == []
    assert Order.objects.count() == 600


def test_a_group_waits_for_its_running_member(start_manage, tmp_path):
    # A non-atomic member is `running` while it runs, not `pending`: the group
    # must not finish, nor release its completion job, when another member
    # finishes meanwhile.
    started, release = tmp_path / "started", tmp_path / "release"
    running = schedule(
        "shop.tasks.write_then_hold",
        args=["slow", str(started), str(release)],
        meta={"atomic": False, "group": "g", "priority": 10},
    )
    quick = schedule("shop.tasks.record", args=["quick"], meta={"group": "g"})
    completion = schedule(
        "shop.tasks.count_unfinished_members", args=["g"], meta={"completes": "g"}
    )
    worker = start_manage("flush_queue", "--jobs", "1")
    wait_until(started.exists, "the long job to start", process=worker)
    try:
        quick.execute()

        group = Group.objects.get(reference="g")
        completion.refresh_from_db()
        assert group.finished is None
        assert completion.run_after == held()
        progress = group.progress()
        assert (progress.running, progress.succeeded, progress.done) == (1, 1, 1)
        assert not progress.finished
    finally:
        release.touch()
    code, _out, err = finish(worker)
    assert code == 0, err
    running.refresh_from_db()
    assert running.status == Job.Status.SUCCEEDED
    group.refresh_from_db()
    completion.refresh_from_db()
    assert group.finished is not None
    assert completion.run_after == group.finished
