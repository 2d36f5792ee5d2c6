"""flush_queue --loop --processes N: supervised worker processes under one
command. Real processes against the test database, every wait bounded."""

import signal

import pytest

from async_jobs import Job, schedule

from .conftest import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]


def done(job: Job, status: str = Job.Status.SUCCEEDED) -> bool:
    job.refresh_from_db()
    return job.status == status


def stop(process, timeout: float = 30) -> tuple[int, str, str]:
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_n_processes_share_the_work_and_stop_together(start_manage, on_postgres):
    pool = start_manage("flush_queue", "--loop", "--processes", "2", "--sleep", "0.2")
    jobs = [
        schedule("shop.tasks.write_then_sleep", args=[f"job-{n}", 0.3])
        for n in range(6)
    ]

    wait_until(lambda: all(done(job) for job in jobs), "the six jobs", timeout=60)
    workers = {job.attempt_log[0]["worker"] for job in jobs}

    code, out, err = stop(pool)
    assert code == 0, err
    # Two processes, neither of them the pool's. (SQLite lets one writer in at a
    # time, and one process may well take every job.)
    assert len(workers) == (2 if on_postgres else len(workers)), workers
    assert str(pool.pid) not in {worker.rpartition(":")[2] for worker in workers}
    # One summary for all, counting every process's jobs.
    assert out.count("Ran ") == 1, out
    assert "Ran 6 jobs" in out
    assert "(stopped by signal)" in out
    assert err.count("SIGTERM received") == 2  # once by each process


def test_a_dead_process_is_replaced_and_its_job_charged(start_manage):
    pool = start_manage("flush_queue", "--loop", "--processes", "2", "--sleep", "0.2")
    killer = schedule(
        "shop.tasks.end_own_process",
        args=["sigkill"],
        meta={"max_attempts": 1, "priority": 10},
    )
    wait_until(
        lambda: done(killer, Job.Status.FAILED), "the killer to fail", timeout=60
    )
    # The pool lives on, with a new process in place of the dead one.
    assert pool.poll() is None
    good = [schedule("shop.tasks.record", args=[f"after-{n}"]) for n in range(4)]
    wait_until(lambda: all(done(job) for job in good), "the jobs after", timeout=60)

    code, out, err = stop(pool)
    assert code == 0, err
    [error] = killer.errors.all()
    assert "killed by signal 9 (SIGKILL) while running attempt 1 of 1" in (
        error.exception
    )
    assert "Ran 5 jobs" in out
    assert "4 succeeded, 0 to retry, 1 failed" in out


def test_processes_need_loop(run_manage):
    code, _out, err = run_manage("flush_queue", "--processes", "2")
    assert code != 0
    assert "--processes only applies with --loop" in err
