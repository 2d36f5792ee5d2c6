"""What every command checks before it touches the jobs' database.

A bad ``ASYNC_JOBS`` setting, a down or unmigrated database, or a queue name
no worker reads: each gets one clear line and a non-zero exit, which is what
cron mail and monitoring need, instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.core.checks import Tags
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connections
from django.db.migrations.loader import MigrationLoader

from async_jobs.conf import jobs_database, jobs_settings


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


def check_queue_names(queues: Sequence[str]) -> None:
    """Refuse queue names that ``ASYNC_JOBS['QUEUES']`` doesn't list."""
    configured = jobs_settings().queues
    unknown = [name for name in queues if configured and name not in configured]
    if unknown:
        assert configured  # without it, no name is unknown
        raise CommandError(
            f"Unknown queue(s) {', '.join(map(repr, unknown))}; "
            f"ASYNC_JOBS['QUEUES'] is {', '.join(map(repr, configured))}."
        )


def ready_database(command: BaseCommand, queues: Sequence[str] = ()) -> str:
    """Check the setting, the queue names and the database; return its alias.

    The system checks that may connect to the database run only once it is
    known to be up, so a down database gets its own one-line message.
    """
    command.check(tags=[Tags.compatibility])  # ASYNC_JOBS itself; no database
    check_queue_names(queues)
    using = jobs_database()
    try:
        check_database_ready(using)
    except DatabaseNotReady as exc:
        raise CommandError(str(exc)) from exc
    command.check(databases=[using])
    return using
