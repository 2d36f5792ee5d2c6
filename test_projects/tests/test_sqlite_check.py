"""async_jobs.W002: SQLite settings under which a worker makes requests fail.

Real ``manage.py check`` processes, each with its own SQLite database (on the
PostgreSQL run too: the jobs' database is what the check looks at).
"""

import pytest

from .conftest import env_with_settings

pytestmark = pytest.mark.django_db(transaction=True)

WARNING = "async_jobs.W002"


def sqlite_settings(tmp_path, options: str) -> dict:
    """The test project's settings with a SQLite jobs database and W002 on."""
    return env_with_settings(
        tmp_path,
        "SILENCED_SYSTEM_CHECKS = []\n"
        "DATABASES = {**DATABASES, 'default': {"
        "'ENGINE': 'django.db.backends.sqlite3', "
        f"'NAME': {str(tmp_path / 'site.sqlite3')!r}, 'OPTIONS': {options}}}}}\n",
    )


def check(run_manage, env: dict, *args: str) -> tuple[int, str]:
    code, _out, err = run_manage("check", "--settings=changed_settings", *args, env=env)
    return code, err


def test_djangos_default_deferred_transactions_are_warned_about(run_manage, tmp_path):
    code, err = check(run_manage, sqlite_settings(tmp_path, "{}"))

    assert code == 0, err  # a warning: nothing stops
    assert (
        f"?: ({WARNING}) DATABASES['default'], which holds the jobs, is SQLite" in err
    )
    assert "transactions begin DEFERRED" in err
    assert 'fails at once with "database is locked"' in err
    assert '"transaction_mode": "IMMEDIATE"' in err
    assert '"init_command": "PRAGMA journal_mode=WAL;"' in err
    assert "journal mode" not in err  # unknown without the database


def test_the_journal_mode_is_asked_of_the_database(run_manage, tmp_path):
    env = sqlite_settings(tmp_path, "{'transaction_mode': 'IMMEDIATE'}")

    assert WARNING not in check(run_manage, env)[1]
    code, err = check(run_manage, env, "--database", "default")

    assert code == 0, err
    assert "the journal mode is delete, not WAL" in err
    assert "DEFERRED" not in err


def test_the_recommended_options_pass(run_manage, tmp_path):
    env = sqlite_settings(
        tmp_path,
        "{'transaction_mode': 'IMMEDIATE', "
        "'init_command': 'PRAGMA journal_mode=WAL;', 'timeout': 20}",
    )

    for args in ((), ("--database", "default")):
        code, err = check(run_manage, env, *args)
        assert (code, err) == (0, ""), args


def test_a_database_already_in_wal_mode_passes(run_manage, tmp_path):
    import sqlite3

    with sqlite3.connect(tmp_path / "site.sqlite3") as database:
        database.execute("PRAGMA journal_mode=WAL")
    env = sqlite_settings(tmp_path, "{'transaction_mode': 'IMMEDIATE'}")

    assert check(run_manage, env, "--database", "default") == (0, "")
