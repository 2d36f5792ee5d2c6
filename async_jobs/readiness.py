"""Whether the jobs' database can be used: reachable, and migrated.

Commands run from cron check this first, so a down or unmigrated database
gives one clear line and a non-zero exit instead of a traceback per job.
"""

from __future__ import annotations

from django.db import DatabaseError, connections
from django.db.migrations.loader import MigrationLoader


class DatabaseNotReady(Exception):
    """The jobs' database can't be used; the message says why."""


def check_database_ready(using: str) -> None:
    connection = connections[using]
    where = f"database {using!r} ({connection.vendor})"
    try:
        connection.ensure_connection()
    except DatabaseError as exc:
        raise DatabaseNotReady(f"Can't connect to {where}: {exc}".strip()) from exc
    try:
        loader = MigrationLoader(connection, ignore_no_migrations=True)
    except DatabaseError as exc:
        raise DatabaseNotReady(
            f"Can't read the applied migrations of {where}: {exc}".strip()
        ) from exc
    missing = unapplied_migrations(loader)
    if missing:
        applied_none = len(missing) == len(app_migrations(loader))
        raise DatabaseNotReady(
            f"The async_jobs migrations are not applied to {where} "
            + (
                f"(none of them is: {', '.join(missing)}); "
                if applied_none
                else f"(missing {', '.join(missing)}); "
            )
            + f"run 'python manage.py migrate async_jobs --database {using}'."
        )


def app_migrations(loader: MigrationLoader) -> list[str]:
    """The names of async_jobs' migrations, in the order they apply."""
    names = [
        name
        for leaf in loader.graph.leaf_nodes("async_jobs")
        for app, name in loader.graph.forwards_plan(leaf)
        if app == "async_jobs"
    ]
    return list(dict.fromkeys(names))


def unapplied_migrations(loader: MigrationLoader) -> list[str]:
    """Every async_jobs migration not applied yet, not only the newest."""
    return [
        name
        for name in app_migrations(loader)
        if ("async_jobs", name) not in loader.applied_migrations
    ]
