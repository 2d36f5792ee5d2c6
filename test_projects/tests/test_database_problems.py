"""flush_queue against a database it can't use: a clear message, a non-zero exit."""

import socket
import uuid

import pytest
from django.db import connection

from async_jobs import schedule

from .conftest import worker_env

pytestmark = pytest.mark.django_db(transaction=True)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_down(run_manage, tmp_path, on_postgres):
    if on_postgres:
        settings = connection.settings_dict
        url = f"postgres://{settings['USER']}@127.0.0.1:{closed_port()}/jobs"
        env = worker_env(ASYNC_JOBS_DATABASE_URL=url, ASYNC_JOBS_DB_NAME="jobs")
    else:
        env = worker_env(ASYNC_JOBS_DB_NAME=str(tmp_path / "no" / "such" / "db"))

    code, out, err = run_manage("flush_queue", env=env)

    assert code != 0
    assert "CommandError: Can't connect to database 'default'" in err
    assert "Traceback" not in err
    assert out == ""


@pytest.fixture
def empty_database(tmp_path, on_postgres):
    """A database with no tables: reachable but never migrated."""
    if not on_postgres:
        yield str(tmp_path / "empty.sqlite3")
        return
    name = f"async_jobs_empty_{uuid.uuid4().hex[:8]}"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    yield name
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_database_not_migrated(run_manage, empty_database):
    code, _out, err = run_manage(
        "flush_queue", env=worker_env(ASYNC_JOBS_DB_NAME=empty_database)
    )

    assert code != 0
    assert "The async_jobs migrations are not applied to database 'default'" in err
    assert "(none of them is: 0001_initial, 0002_claim_function, 0003_lease)" in err
    assert "run 'python manage.py migrate async_jobs --database default'" in err
    assert "Traceback" not in err


def test_database_partly_migrated_names_what_is_missing(run_manage, empty_database):
    env = worker_env(ASYNC_JOBS_DB_NAME=empty_database)
    code, _out, err = run_manage("migrate", "async_jobs", "0001", env=env)
    assert code == 0, err

    code, _out, err = run_manage("flush_queue", env=env)

    assert code != 0
    assert "(missing 0002_claim_function, 0003_lease)" in err
    assert "0001_initial" not in err
    assert "Traceback" not in err


def test_a_real_process_runs_due_jobs_and_exits_zero(run_manage):
    schedule("shop.tasks.record", args=["from a process"])

    code, out, err = run_manage("flush_queue")

    assert code == 0, err
    assert out.startswith("Ran 1 job in ")
    assert out.strip().endswith("1 succeeded, 0 to retry, 0 failed.")


def test_bad_setting_stops_the_command(run_manage, tmp_path):
    settings_file = tmp_path / "bad_settings.py"
    settings_file.write_text(
        "from testproject.settings import *\n"
        "ASYNC_JOBS = {'MAX_ATTEMPTS': 0, 'QUEUS': ['mail']}\n"
    )
    env = worker_env(PYTHONPATH=f"{tmp_path}:{worker_env()['PYTHONPATH']}")

    code, _out, err = run_manage("flush_queue", "--settings=bad_settings", env=env)

    assert code != 0
    assert "(async_jobs.E002) ASYNC_JOBS has unknown key(s) 'QUEUS'" in err
    assert "(async_jobs.E012) ASYNC_JOBS['MAX_ATTEMPTS']" in err
    assert "unknown key(s) 'QUEUS'" in err
    assert "ASYNC_JOBS['MAX_ATTEMPTS'] must be an integer from 1 to 1,000,000" in err
