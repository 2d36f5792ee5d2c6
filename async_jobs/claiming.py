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
    jobs = Job.objects.using(using).filter(
        status=Job.Status.PENDING, run_after__lte=timezone.now()
    )
    if queues:
        jobs = jobs.filter(queue__in=queues)
    if connections[using].features.has_select_for_update_skip_locked:
        jobs = jobs.select_for_update(skip_locked=True)
    return list(jobs.order_by("-priority", "run_after", "id")[:limit])
