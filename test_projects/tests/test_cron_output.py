"""flush_queue from cron: one line per failed attempt on stderr, tracebacks at
``-v 2`` and in the project's logs.

Real processes, as cron runs them: what matters is what lands on stderr, which
Python's last-resort logging handler would fill with tracebacks.
"""

import re

import pytest

from async_jobs import schedule

from .conftest import env_with_settings

pytestmark = pytest.mark.django_db(transaction=True)

NO_LOGGING = "del LOGGING  # the project configures no logging at all"
FAILED_LINE = re.compile(
    r"^Job \d+ shop\.tasks\.write_then_fail raised on attempt 1 of (1|3) in "
    r"[\d.]+s, (failed for good|retry at \S+): RuntimeError: failed after "
    r"writing (x|y)$"
)


def schedule_failures():
    schedule("shop.tasks.write_then_fail", args=["x"], meta={"max_attempts": 1})
    schedule("shop.tasks.write_then_fail", args=["y"], meta={"max_attempts": 3})
    schedule("shop.tasks.record", args=["fine"])


def test_one_line_per_failed_attempt_without_logging(run_manage, tmp_path):
    schedule_failures()
    env = env_with_settings(tmp_path, NO_LOGGING)

    code, out, err = run_manage("flush_queue", "--settings=changed_settings", env=env)

    assert code == 0, err
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert all(FAILED_LINE.match(line) for line in lines), err
    assert "failed for good" in lines[0]
    assert "retry at" in lines[1]
    assert "Traceback" not in err
    assert out.strip().endswith("1 succeeded, 1 to retry, 1 failed.")


def test_tracebacks_at_verbosity_2(run_manage, tmp_path):
    schedule_failures()
    env = env_with_settings(tmp_path, NO_LOGGING)

    code, _out, err = run_manage(
        "flush_queue", "-v", "2", "--settings=changed_settings", env=env
    )

    assert code == 0, err
    assert err.count("Traceback (most recent call last):") == 2, err
    assert 'in write_then_fail\n    raise RuntimeError(f"failed after writing' in err
    assert len([line for line in err.splitlines() if FAILED_LINE.match(line)]) == 2


def test_nothing_at_verbosity_0(run_manage, tmp_path):
    schedule_failures()
    env = env_with_settings(tmp_path, NO_LOGGING)

    code, _out, err = run_manage(
        "flush_queue", "-v", "0", "--settings=changed_settings", env=env
    )

    assert code == 0, err
    assert err == ""


def test_the_projects_log_keeps_the_tracebacks(run_manage, tmp_path):
    schedule_failures()
    log = tmp_path / "jobs.log"
    env = env_with_settings(
        tmp_path,
        "LOGGING = {'version': 1, 'disable_existing_loggers': False, "
        f"'handlers': {{'file': {{'class': 'logging.FileHandler', "
        f"'filename': {str(log)!r}}}}}, "
        "'loggers': {'async_jobs': {'handlers': ['file'], 'level': 'INFO'}}}",
    )

    code, _out, err = run_manage("flush_queue", "--settings=changed_settings", env=env)

    assert code == 0, err
    assert len(err.splitlines()) == 2, err
    assert "Traceback" not in err
    logged = log.read_text()
    assert logged.count("Traceback (most recent call last):") == 2
    assert "RuntimeError: failed after writing x" in logged
    assert "succeeded in" in logged  # INFO records go to the log, not stderr
    assert "succeeded" not in err
