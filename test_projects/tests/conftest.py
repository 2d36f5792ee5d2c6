import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection

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


def manage(*args: str, env: dict | None = None, **popen_kwargs) -> subprocess.Popen:
    """Start ``manage.py`` in a real process against the test database."""
    return subprocess.Popen(
        [sys.executable, str(PROJECT_DIR / "manage.py"), *args],
        env=env or worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen_kwargs,
    )


def wait_until(predicate, timeout: float) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        time.sleep(0.02)


@pytest.fixture
def run_manage():
    """Run ``manage.py`` in a real process to its end; return (code, out, err)."""

    def run(*args: str, env: dict | None = None, timeout: float = 60):
        process = manage(*args, env=env)
        out, err = process.communicate(timeout=timeout)
        return process.returncode, out, err

    return run


@pytest.fixture
def on_postgres():
    return connection.vendor == "postgresql"
