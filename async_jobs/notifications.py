"""Waking idle workers the moment jobs commit: PostgreSQL's LISTEN/NOTIFY.

Scheduling side: a transaction that made jobs due (scheduled them, or a
series' next occurrence, a group's completion job released, a job run again)
sends one ``NOTIFY`` once it has committed, however many jobs it made due,
carrying their queues and the earliest ``run_after`` among them. It is sent
from ``transaction.on_commit``, not inside the transaction: a transaction
that notifies takes a database-wide lock from its commit until it is durable
(PostgreSQL orders notifications that way), so notifying inside it would
serialise the commits of every request that schedules a job. On its own,
after the commit, a ``NOTIFY`` costs one round trip and no disk flush. If the
process dies between the commit and the ``NOTIFY``, workers find the job at
their next poll.

Worker side: ``Listener`` holds a connection of its own that ``LISTEN``\\s, so
the worker's connection stays free for its transactions and can be dropped and
re-opened without missing a notification for long.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol
from weakref import WeakKeyDictionary

from django.db import DatabaseError, OperationalError, connections, transaction

from async_jobs.transaction_internals import live_hooks

if TYPE_CHECKING:
    import psycopg


class Due(Protocol):
    """What an announcement reads of a job (this module sits below the models)."""

    queue: str
    run_after: datetime


logger = logging.getLogger("async_jobs")

#: NOTIFY payloads are limited to 8000 bytes; past this, name no queues.
MAX_PAYLOAD = 7000

#: The channel jobs are announced on: the jobs table's name (a test holds the
#: two together; this module sits below the models and can't ask them).
CHANNEL = "async_jobs_job"


def listens(using: str) -> bool:
    """Whether workers on this database can be woken by notifications."""
    return connections[using].vendor == "postgresql" and _psycopg3()


@cache
def _psycopg3() -> bool:
    """Whether Django's PostgreSQL backend runs on psycopg 3 (asked once: the
    import costs more than the rest of ``listens()``, called per job)."""
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return is_psycopg3


class _Announcement:
    """The NOTIFY one transaction owes, gathered over the jobs it made due."""

    def __init__(self, using: str, hooks: object) -> None:
        self.using = using
        # Which transaction (and savepoint) it belongs to: see transaction_internals.py.
        self.hooks = hooks
        self.queues: set[str] = set()
        self.earliest: float = math.inf
        self.sent = False
        # One made later in the same transaction, after a savepoint rollback.
        self.successor: _Announcement | None = None

    def add(self, jobs: Iterable[Due]) -> None:
        for job in jobs:
            self.queues.add(job.queue)
            self.earliest = min(self.earliest, job.run_after.timestamp())

    def send(self) -> None:
        if self.sent:
            return
        queues: set[str] = set()
        earliest = math.inf
        announcement: _Announcement | None = self
        while announcement is not None:
            announcement.sent = True
            queues |= announcement.queues
            earliest = min(earliest, announcement.earliest)
            announcement = announcement.successor
        payload = json.dumps({"queues": sorted(queues), "at": earliest})
        if len(payload.encode()) > MAX_PAYLOAD:
            payload = json.dumps({"at": earliest})
        try:
            with connections[self.using].cursor() as cursor:
                cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, payload])
        except DatabaseError as exc:
            # The jobs are committed: workers find them at their next poll.
            logger.warning(
                "Could not notify workers of new jobs on %r (%s); they will find "
                "them at their next poll.",
                self.using,
                exc,
            )


# One pending announcement per connection (connections are per thread).
_announcements: WeakKeyDictionary = WeakKeyDictionary()


def notify_on_commit(using: str, jobs: Iterable[Due]) -> None:
    """Wake the workers once the current transaction on ``using`` commits.

    ``announcement()`` registered as an ``on_commit`` hook.
    """
    send = announcement(using, jobs)
    if send is not None:
        transaction.on_commit(send, using=using, robust=True)


def announcement(using: str, jobs: Iterable[Due]) -> Callable[[], None] | None:
    """What to call once the current transaction on ``using`` commits to wake
    the workers, or None when they aren't woken by notifications. The caller
    registers it with ``transaction.on_commit()`` (alone, or inside a hook of
    its own: ``inserting.announce()`` sends ``job_scheduled`` in the same
    hook), at once: the hook must belong to the savepoint the jobs were
    written in.

    For every path that makes jobs due: new rows (``schedule()``,
    ``schedule_many()``, a series' next occurrence), a group's completion job
    released, a job run again. Only ``queue`` and ``run_after`` of ``jobs``
    are read.

    Every call's hook is registered on its own; all the calls of one
    transaction share one announcement, and the first hook to run sends it. A
    rolled-back transaction's announcement is never sent, and the next
    transaction starts a new one. After a savepoint rollback the hooks of
    earlier calls may or may not survive, so a new announcement starts and is
    linked to the earlier one: whichever runs first sends both.
    """
    if not listens(using):
        return None
    connection = connections[using]
    hooks = live_hooks(connection)
    pending = _announcements.get(connection)
    if pending is None or pending.sent or pending.hooks is not hooks:
        fresh = _Announcement(using, hooks)
        if pending is not None and not pending.sent:
            pending.successor = fresh
        pending = _announcements[connection] = fresh
    pending.add(jobs)
    return pending.send


@dataclass(frozen=True)
class Wakeup:
    """What a notification says: jobs of these queues, due from ``at``."""

    queues: frozenset[str] | None
    at: float

    @classmethod
    def from_payload(cls, payload: str) -> Wakeup:
        try:
            data = json.loads(payload)
            queues = data.get("queues")
            return cls(
                queues=None if queues is None else frozenset(queues),
                at=float(data["at"]),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls(queues=None, at=-math.inf)  # unknown: look now

    def concerns(self, queues: Sequence[str]) -> bool:
        return not queues or self.queues is None or not self.queues.isdisjoint(queues)

    def delay(self) -> float:
        """Seconds until the earliest job it announced is due (<= 0: now)."""
        return self.at - time.time()


class ListenerLost(Exception):
    """The LISTEN connection broke; notifications may have been missed."""


class Listener:
    """A connection of the worker's own, listening for announced jobs."""

    def __init__(self, using: str) -> None:
        self.using = using
        self.connection: psycopg.Connection[Any] | None = None

    @property
    def connected(self) -> bool:
        return self.connection is not None

    def connect(self) -> None:
        """Open the connection and LISTEN; a failure is an ``OperationalError``."""
        import psycopg
        from psycopg import sql

        params = connections[self.using].get_connection_params()
        try:
            self.connection = psycopg.connect(**params, autocommit=True)
            self.connection.execute(
                sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL))
            )
        except psycopg.Error as exc:
            self.close()
            raise OperationalError(f"Can't LISTEN on {self.using!r}: {exc}") from exc

    def fileno(self) -> int:
        assert self.connection is not None, "not connected"
        return self.connection.fileno()

    def receive(self) -> list[Wakeup]:
        """The notifications that have arrived, without waiting for more."""
        import psycopg

        assert self.connection is not None, "not connected"
        try:
            return [
                Wakeup.from_payload(notify.payload)
                for notify in self.connection.notifies(timeout=0)
            ]
        except psycopg.Error as exc:
            raise ListenerLost(str(exc)) from exc

    def check(self) -> None:
        """Make sure the connection still works (a silent loss shows no data)."""
        import psycopg

        assert self.connection is not None, "not connected"
        try:
            self.connection.execute("SELECT 1")
        except psycopg.Error as exc:
            raise ListenerLost(str(exc)) from exc

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None
