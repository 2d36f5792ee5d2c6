"""Claiming due jobs: the one query that decides which job a worker runs next.

On PostgreSQL the claimed rows are locked with ``FOR UPDATE SKIP LOCKED`` in the
worker's transaction: other workers pass over them without waiting, and the
lock lasts exactly as long as the job's transaction, so a worker that dies
releases its job at once. SQLite has no row locks; there the worker's
transaction begins with ``BEGIN IMMEDIATE``, taking the database's single
write lock before it reads, so a second worker waits rather than reading the
same job.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from django.db import connections, transaction
from django.utils import timezone

from async_jobs.models import Job

#: How long a SQLite worker waits for the write lock before asking again (ms).
SQLITE_LOCK_WAIT_MS = 24 * 60 * 60 * 1000


@contextmanager
def claim_transaction(using: str) -> Iterator[None]:
    """The transaction a worker claims and runs its jobs in."""
    connection = connections[using]
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        with transaction.atomic(using=using):
            yield
        return
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_LOCK_WAIT_MS}")
    previous = connection.transaction_mode
    connection.transaction_mode = "IMMEDIATE"
    try:
        with transaction.atomic(using=using):
            connection.transaction_mode = previous
            yield
    finally:
        connection.transaction_mode = previous


def claim(using: str, queues: Sequence[str] = (), limit: int = 1) -> list[Job]:
    """Lock and return up to ``limit`` due jobs, best first.

    Must run inside ``claim_transaction()``: the lock ends with it.
    """
    now = timezone.now()
    if connections[using].vendor != "postgresql" or len(queues) == 1:
        return _claim(using, queues, limit, now)
    # The claim index leads with the queue: an ordered index scan serves one
    # queue, so the worker looks at the best due job of each queue (one cheap
    # probe per queue) and claims from the best queue first.
    claimed: list[Job] = []
    for queue in _queues_by_best_due_job(using, queues, now):
        claimed += _claim(using, [queue], limit - len(claimed), now)
        if len(claimed) == limit:
            break
    return claimed


def _claim(using: str, queues: Sequence[str], limit: int, now: datetime) -> list[Job]:
    jobs = Job.objects.using(using).filter(
        status=Job.Status.PENDING, run_after__lte=now
    )
    if queues:
        jobs = jobs.filter(queue__in=queues)
    if connections[using].features.has_select_for_update_skip_locked:
        jobs = jobs.select_for_update(skip_locked=True)
    return list(jobs.order_by("-priority", "run_after", "id")[:limit])


# The names of the queues that hold pending jobs, read from the claim index
# one distinct value at a time (a loose index scan).
_ALL_QUEUES = """
    WITH RECURSIVE queues(name) AS (
        SELECT MIN(queue) FROM {job} WHERE status = %(pending)s
        UNION ALL
        SELECT (
            SELECT MIN(queue) FROM {job}
            WHERE status = %(pending)s AND queue > queues.name
        ) FROM queues WHERE queues.name IS NOT NULL
    )
"""
_SOME_QUEUES = "WITH queues(name) AS (SELECT unnest(%(queues)s::varchar[]))"
_BEST_FIRST = """
    SELECT queues.name FROM queues CROSS JOIN LATERAL (
        SELECT priority, run_after, id FROM {job}
        WHERE status = %(pending)s AND queue = queues.name AND run_after <= %(now)s
        ORDER BY priority DESC, run_after, id
        LIMIT 1
    ) AS best
    ORDER BY best.priority DESC, best.run_after, best.id
"""


def _queues_by_best_due_job(
    using: str, queues: Sequence[str], now: datetime
) -> list[str]:
    """The queues that have a due job, the one with the best due job first.

    Jobs that other workers hold locked count too: claiming from a queue
    skips them, and moves on to the next queue if that leaves it short.
    """
    connection = connections[using]
    query = (_SOME_QUEUES if queues else _ALL_QUEUES) + _BEST_FIRST
    params = {"pending": Job.Status.PENDING, "now": now, "queues": list(queues)}
    with connection.cursor() as cursor:
        cursor.execute(
            query.format(job=connection.ops.quote_name(Job._meta.db_table)), params
        )
        return [name for (name,) in cursor.fetchall()]
