"""What every command checks before it touches the jobs' database.

A bad ``ASYNC_JOBS`` setting, a down or unmigrated database, or a queue name
no worker reads: each gets one clear line and a non-zero exit, which is what
cron mail and monitoring need, instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.core.checks import Tags
from django.core.management.base import BaseCommand, CommandError

from async_jobs.conf import jobs_database, jobs_settings
from async_jobs.readiness import DatabaseNotReady, check_database_ready


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
