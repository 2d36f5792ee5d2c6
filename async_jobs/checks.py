"""System checks: a bad ``ASYNC_JOBS`` setting stops ``manage.py`` at start-up.

Besides each key's own rule (``conf.py``), the entries of
``ALLOWED_MODULES`` must import and hold some of the project's code: a typo
(``["shopp"]``) is a valid list of names, and every due job would fail at the
next run.

On SQLite, the settings of the database that holds the jobs decide whether a
worker can make the site's own requests fail: ``check_sqlite_settings()``
warns when they can.
"""

from __future__ import annotations

import re
from importlib.util import find_spec
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import connections

from async_jobs.allowlist import default_allowed_modules
from async_jobs.conf import check, jobs_database, problems


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    return [
        Error(problem.message, hint=problem.hint or None, id=problem.id)
        for problem in check(getattr(settings, "ASYNC_JOBS", {}))
    ]


#: An entry that can't be imported: no job it allows could ever run.
NOT_IMPORTABLE = "async_jobs.E020"
#: An entry outside the project's own code: allowed, but rarely meant.
NOT_PROJECT_CODE = "async_jobs.W001"


def _importable(name: str) -> bool:
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):  # a parent that is missing, or no package
        return False


def _overlaps(name: str, package: str) -> bool:
    """Whether module ``name`` is inside ``package``, or contains it."""
    return (
        name == package
        or name.startswith(package + ".")
        or package.startswith(name + ".")
    )


@register(Tags.compatibility)
def check_allowed_modules(app_configs: Any = None, **kwargs: Any) -> list:
    raw = getattr(settings, "ASYNC_JOBS", {})
    if problems(raw) or raw.get("ALLOWED_MODULES") is None:
        return []  # check_settings reports a bad value; None is the default
    project = default_allowed_modules()
    found: list[CheckMessage] = []
    for name in raw["ALLOWED_MODULES"]:
        if not _importable(name):
            found.append(
                Error(
                    f"ASYNC_JOBS['ALLOWED_MODULES'] lists {name!r}, which can't "
                    "be imported: every job it was meant to allow would fail.",
                    hint=f"Check the spelling; the project's packages are "
                    f"{', '.join(project) or '(none)'}.",
                    id=NOT_IMPORTABLE,
                )
            )
        elif not any(_overlaps(name, package) for package in project):
            found.append(
                Warning(
                    f"ASYNC_JOBS['ALLOWED_MODULES'] lists {name!r}, which holds "
                    "none of the project's code (no installed app's package, nor "
                    "the settings' package): jobs may run any function in it.",
                    hint=f"The project's packages are {', '.join(project)}. If "
                    f"you mean to allow {name!r}, silence this with "
                    f"SILENCED_SYSTEM_CHECKS = [{NOT_PROJECT_CODE!r}].",
                    id=NOT_PROJECT_CODE,
                )
            )
    return found


#: The jobs' SQLite database is set up so that a worker can fail requests.
SQLITE_REQUESTS_MAY_FAIL = "async_jobs.W002"

#: What the docs and the hint recommend for a SQLite database that holds jobs.
SQLITE_OPTIONS = (
    '"OPTIONS": {"transaction_mode": "IMMEDIATE", '
    '"init_command": "PRAGMA journal_mode=WAL;", "timeout": 20}'
)

_SETS_WAL = re.compile(r"journal_mode\s*=\s*'?\"?wal\b", re.IGNORECASE)


def _journal_mode(alias: str, databases: Any) -> str | None:
    """The database's journal mode: asked when the check may use the
    database, else read from ``init_command``; ``None`` if unknown."""
    if databases and alias in databases:
        with connections[alias].cursor() as cursor:
            cursor.execute("PRAGMA journal_mode")
            return str(cursor.fetchone()[0]).lower()
    init_command = connections[alias].settings_dict["OPTIONS"].get("init_command")
    if init_command and _SETS_WAL.search(init_command):
        return "wal"
    return None


@register(Tags.database)
def check_sqlite_settings(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """Warn when a worker on the jobs' SQLite database can fail requests.

    Without ``databases`` (``manage.py check``, ``runserver``) the journal
    mode is known only from ``init_command``; ``flush_queue``, ``migrate``
    and ``check --database`` ask the database.
    """
    if problems(getattr(settings, "ASYNC_JOBS", {})):
        return []  # check_settings reports it
    alias = jobs_database()
    connection = connections[alias]
    if connection.vendor != "sqlite":
        return []
    name = str(connection.settings_dict["NAME"])
    if name == ":memory:" or "mode=memory" in name:
        return []  # one connection's own database: no worker shares it
    options = connection.settings_dict["OPTIONS"]
    mode = str(options.get("transaction_mode") or "DEFERRED").upper()
    found = []
    if mode not in ("IMMEDIATE", "EXCLUSIVE"):
        found.append(
            "transactions begin DEFERRED (transaction_mode): a request transaction "
            'that reads, then writes, fails at once with "database is locked" '
            "while a worker holds the write lock (SQLite refuses to upgrade a "
            "read to a write then, and the timeout doesn't apply)"
        )
    journal_mode = _journal_mode(alias, databases)
    if journal_mode is not None and journal_mode != "wal":
        found.append(
            f"the journal mode is {journal_mode}, not WAL: readers and a "
            "committing writer wait for each other"
        )
    if not found:
        return []
    return [
        Warning(
            f"DATABASES[{alias!r}], which holds the jobs, is SQLite and "
            + "; ".join(found)
            + ".",
            hint=f"Set {SQLITE_OPTIONS} in DATABASES[{alias!r}]: every "
            "transaction then takes the write lock as it begins, waiting up to "
            "the timeout (seconds) for it, and readers never wait. The docs' "
            "page 'Choosing a mode' says more (SQLite).",
            id=SQLITE_REQUESTS_MAY_FAIL,
        )
    ]
