"""``ASYNC_JOBS["ALLOWED_MODULES"]`` entries are checked at start-up.

Each test runs ``manage.py`` in a real process with changed settings, as
cron or a deploy would (``changed_settings`` is a top-level module, so no
settings package is allowed by default here).
"""

import pytest

from async_jobs import Job, schedule

from .conftest import env_with_settings

pytestmark = pytest.mark.django_db(transaction=True)


#: The test project's ``@task`` functions, which Django's tasks framework
#: validates (against the allow-list) as soon as they are imported.
TASKS = "shop.task_functions"


def run_with(run_manage, tmp_path, allowed: list[str], *args: str):
    allowed = [*allowed, TASKS]
    env = env_with_settings(
        tmp_path, f"ASYNC_JOBS = {{'ALLOWED_MODULES': {allowed!r}}}"
    )
    return run_manage(*args, "--settings=changed_settings", env=env)


def test_a_typo_stops_manage_py_check(run_manage, tmp_path):
    code, _out, err = run_with(run_manage, tmp_path, ["shopp"], "check")

    assert code != 0
    assert "async_jobs.E020" in err
    assert "lists 'shopp', which can't be imported" in err
    assert "shop, feedback" in err  # the hint lists the project's packages


def test_a_typo_stops_flush_queue_before_any_job_fails(run_manage, tmp_path):
    job = schedule("shop.tasks.noop")

    code, out, err = run_with(run_manage, tmp_path, ["shopp"], "flush_queue")

    assert code != 0
    assert "async_jobs.E020" in err
    assert out == ""
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.PENDING, 0)


def test_a_missing_submodule_is_an_error(run_manage, tmp_path):
    code, _out, err = run_with(run_manage, tmp_path, ["shop.taskz"], "check")

    assert code != 0
    assert "lists 'shop.taskz', which can't be imported" in err


def test_code_outside_the_project_is_a_warning(run_manage, tmp_path):
    code, _out, err = run_with(run_manage, tmp_path, ["shop", "freezegun"], "check")

    assert code == 0, err
    assert "async_jobs.W001" in err
    assert "lists 'freezegun', which holds none of the project's code" in err
    assert "'shop'" not in err


def test_the_warning_can_be_silenced(run_manage, tmp_path):
    env = env_with_settings(
        tmp_path,
        f"ASYNC_JOBS = {{'ALLOWED_MODULES': ['shop', 'freezegun', {TASKS!r}]}}\n"
        "SILENCED_SYSTEM_CHECKS = [*SILENCED_SYSTEM_CHECKS, 'async_jobs.W001']",
    )
    code, _out, err = run_manage("check", "--settings=changed_settings", env=env)

    assert code == 0, err
    assert "async_jobs" not in err


def test_project_modules_pass(run_manage, tmp_path):
    allowed = ["shop.tasks", "feedback"]
    code, out, err = run_with(run_manage, tmp_path, allowed, "check")

    assert code == 0, err
    assert "async_jobs" not in err
    assert "no issues" in out
