import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from shop.models import Mark

from async_jobs import Job

PROJECT_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture
def flush_queue():
    """Run ``flush_queue`` in this process; return what it printed."""

    def run(*args: str) -> str:
        from io import StringIO

        out = StringIO()
        call_command("flush_queue", *args, stdout=out)
        return out.getvalue()

    return run


def worker_env(**overrides: str) -> dict:
    """Environment for a process that must use this test run's database."""
    env = {**os.environ, "ASYNC_JOBS_DB_NAME": connection.settings_dict["NAME"]}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")])
    )
    env.update(overrides)
    return env


def env_with_settings(directory: Path, lines: str) -> dict:
    """``worker_env()`` for a process whose settings are the test project's
    plus ``lines``: pass it with ``--settings=changed_settings``."""
    (directory / "changed_settings.py").write_text(
        f"from testproject.settings import *\n{lines}\n"
    )
    return worker_env(PYTHONPATH=f"{directory}{os.pathsep}{worker_env()['PYTHONPATH']}")


def manage(*args: str, env: dict | None = None, **popen_kwargs) -> subprocess.Popen:
    """Start ``manage.py`` in a real process against the test database."""
    popen_kwargs = {
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        **popen_kwargs,
    }
    return subprocess.Popen(
        [sys.executable, str(PROJECT_DIR / "manage.py"), *args],
        env=env or worker_env(),
        text=True,
        **popen_kwargs,
    )


@pytest.fixture
def run_manage():
    """Run ``manage.py`` in a real process to its end; return (code, out, err)."""

    def run(*args: str, env: dict | None = None, timeout: float = 60):
        process = manage(*args, env=env)
        out, err = process.communicate(timeout=timeout)
        return process.returncode, out, err

    return run


@pytest.fixture
def start_manage():
    """Start ``manage.py`` processes; any still running at teardown is killed.

    A worker left behind would hold locks the test database's flush waits on.
    """
    started: list[subprocess.Popen] = []

    def start(*args: str, env: dict | None = None, **popen_kwargs) -> subprocess.Popen:
        process = manage(*args, env=env, **popen_kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def finish(process: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    """Wait for a started process; return (code, out, err)."""
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def wait_until(
    condition: Callable[[], bool],
    what: str = "",
    *,
    timeout: float = 30,
    process: subprocess.Popen | None = None,
) -> None:
    """Poll ``condition``; fail the test after ``timeout`` or if ``process`` ends."""
    what = what or repr(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(
                f"process exited with {process.returncode} before {what}:\n{out}{err}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout}s waiting for {what}")
        time.sleep(0.01)


def jobs_run(summary: str) -> int:
    """How many jobs a flush_queue summary line says it ran."""
    found = re.search(r"^Ran (\d+) jobs? in ", summary, re.MULTILINE)
    assert found, f"no summary line in {summary!r}"
    return int(found.group(1))


def assert_untouched(job: Job) -> None:
    """The job is as if no worker had ever taken it."""
    assert not Mark.objects.exists()
    job.refresh_from_db()
    assert (job.status, job.attempts, job.started) == (Job.Status.PENDING, 0, None)
    assert not job.errors.exists()


def backend_gone(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        return cursor.fetchone()[0] == 0


def assert_session_ends(started: Path) -> None:
    """The worker's PostgreSQL session, named in ``started``, ends promptly.

    While it lasts it may hold the job's row lock and uncommitted writes.
    """
    backend = int(started.read_text())
    wait_until(lambda: backend_gone(backend), f"backend {backend} to end", timeout=5)


def assert_next_run_completes_it_once(job: Job, run_manage, release: Path) -> None:
    release.touch()
    code, out, err = run_manage("flush_queue")
    assert code == 0, err
    assert jobs_run(out) == 1
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)
    assert list(Mark.objects.values_list("label", flat=True)) == [job.args[0]]
    assert not job.errors.exists()


@pytest.fixture
def on_postgres():
    return connection.vendor == "postgresql"
