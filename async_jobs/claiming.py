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
    if connections[using].vendor != "postgresql":
        return _claim(using, queues, limit, now)
    if len(queues) == 1:
        return _claim_from_queue(using, limit, now, queue=queues[0])
    # The claim index leads with the queue, so one ordered index scan serves
    # one queue: claim from the queue whose best due job is best (found with
    # one cheap probe per queue), then, if that leaves the batch short, from
    # the next queues in the same order.
    claimed = _claim_from_queue(using, limit, now, among=queues)
    if len(claimed) < limit:
        done = {job.queue for job in claimed}
        for queue in _queues_by_best_due_job(using, queues, now):
            if queue not in done:
                claimed += _claim_from_queue(
                    using, limit - len(claimed), now, queue=queue
                )
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


# PostgreSQL. The claim index leads with the queue, so one ordered scan of it
# serves one queue. The queues a worker serves are those it names, or every
# queue that holds a pending job, read from the index one distinct name at a
# time (a loose index scan).
_NAMED_QUEUES = "queues(name) AS (SELECT unnest(%(queues)s::varchar[]))"
_ALL_QUEUES = """
    queues(name) AS (
        SELECT MIN(queue) FROM {job} WHERE status = %(pending)s
        UNION ALL
        SELECT (
            SELECT MIN(queue) FROM {job}
            WHERE status = %(pending)s AND queue > queues.name
        ) FROM queues WHERE queues.name IS NOT NULL
    )
"""
# Of those, the queues with a due job, the one whose best due job is best first.
_BY_BEST_DUE_JOB = """
    SELECT queues.name FROM queues CROSS JOIN LATERAL (
        SELECT priority, run_after, id FROM {job}
        WHERE status = %(pending)s AND queue = queues.name AND run_after <= %(now)s
        ORDER BY priority DESC, run_after, id
        LIMIT 1
    ) AS best
    ORDER BY best.priority DESC, best.run_after, best.id
"""
_CLAIM = """
    SELECT {columns} FROM {job}
    WHERE status = %(pending)s AND queue = {queue} AND run_after <= %(now)s
    ORDER BY priority DESC, run_after, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
"""


def _claim_from_queue(
    using: str,
    limit: int,
    now: datetime,
    queue: str | None = None,
    among: Sequence[str] = (),
) -> list[Job]:
    """Claim from ``queue``, or else from the queue (of ``among``, or of all)
    whose best due job is best: either way, one ordered scan of the index."""
    if queue is not None:
        query = _query(using, _CLAIM, queue="%(queue)s")
    else:
        query = _query(
            using,
            f"WITH RECURSIVE {_queues(among)}, "
            f"best(name) AS ({_BY_BEST_DUE_JOB} LIMIT 1) {_CLAIM}",
            queue="(SELECT name FROM best)",
        )
    params = {
        "pending": Job.Status.PENDING,
        "now": now,
        "limit": limit,
        "queue": queue,
        "queues": list(among),
    }
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        rows = cursor.fetchall()
    # What the ORM would make of these rows, without compiling a query for them.
    fields = Job._meta.concrete_fields
    columns = [field.get_col(Job._meta.db_table) for field in fields]
    converters = [
        connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        for column in columns
    ]
    jobs = []
    for row in rows:
        values = list(row)
        for index, functions in enumerate(converters):
            for function in functions:
                values[index] = function(values[index], columns[index], connection)
        jobs.append(Job.from_db(using, [field.attname for field in fields], values))
    return jobs


def _queues_by_best_due_job(
    using: str, queues: Sequence[str], now: datetime
) -> list[str]:
    """The queues that have a due job, the one with the best due job first.

    Jobs that other workers hold locked count too: claiming from a queue
    skips them, and moves on to the next queue if that leaves it short.
    """
    query = _query(using, f"WITH RECURSIVE {_queues(queues)} {_BY_BEST_DUE_JOB}")
    params = {"pending": Job.Status.PENDING, "now": now, "queues": list(queues)}
    with connections[using].cursor() as cursor:
        cursor.execute(query, params)
        return [name for (name,) in cursor.fetchall()]


def _queues(among: Sequence[str]) -> str:
    return _NAMED_QUEUES if among else _ALL_QUEUES


def _query(using: str, template: str, **names: str) -> str:
    """``template`` with the jobs table and its columns named."""
    quote = connections[using].ops.quote_name
    return template.format(
        job=quote(Job._meta.db_table),
        columns=", ".join(quote(field.column) for field in Job._meta.concrete_fields),
        **names,
    )
