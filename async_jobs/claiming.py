"""Claiming due jobs: the one query that decides which job a worker runs next.

On PostgreSQL the claim is the function ``async_jobs_claim`` (migration 0002
says why), and the claimed rows are locked with ``FOR UPDATE SKIP LOCKED`` in
the worker's transaction: other workers pass over them without waiting, and the
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
from importlib import import_module
from weakref import WeakKeyDictionary

from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
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


def claim(
    using: str,
    queues: Sequence[str] = (),
    limit: int = 1,
    savepoint: str | None = None,
) -> list[Job]:
    """Lock and return up to ``limit`` due jobs, best first.

    Must run inside ``claim_transaction()``: the lock ends with it. With
    ``savepoint``, also set that savepoint (for the first job to run in) once
    the jobs are locked: in the claim's own round trip, where the driver
    allows it.
    """
    connection = connections[using]
    now = timezone.now()
    if connection.vendor == "postgresql":
        jobs, savepoint_set = _claim_on_postgresql(using, queues, limit, now, savepoint)
    else:
        jobs, savepoint_set = _claim(using, queues, limit, now), False
    if savepoint is not None and not savepoint_set:
        with connection.cursor() as cursor:
            cursor.execute(connection.ops.savepoint_create_sql(savepoint))
    return jobs


def _claim(using: str, queues: Sequence[str], limit: int, now: datetime) -> list[Job]:
    jobs = Job.objects.using(using).filter(
        status=Job.Status.PENDING, run_after__lte=now
    )
    if queues:
        jobs = jobs.filter(queue__in=queues)
    if connections[using].features.has_select_for_update_skip_locked:
        jobs = jobs.select_for_update(skip_locked=True)
    return list(jobs.order_by("-priority", "run_after", "id")[:limit])


# PostgreSQL: the claim is the function ``async_jobs_claim`` (see migration
# 0002 for why, and for how it picks the queue).
_CLAIM = "SELECT {columns} FROM async_jobs_claim(%s::varchar[], %s, %s::integer)"


def _claim_on_postgresql(
    using: str,
    queues: Sequence[str],
    limit: int,
    now: datetime,
    savepoint: str | None,
) -> tuple[list[Job], bool]:
    """The claimed jobs, and whether ``savepoint`` was set with them."""
    connection = connections[using]
    reading = _rows_to_jobs(connection)
    params = [list(queues) or None, now, limit]
    with connection.cursor() as cursor:
        together = savepoint is not None and _runs_statements_together(cursor)
        query = reading.query
        if together:
            query += f"; {connection.ops.savepoint_create_sql(savepoint)}"
        cursor.execute(query, params)
        rows = cursor.fetchall()
    return [reading.job(connection, row) for row in rows], together


class _RowsToJobs:
    """The claim's query, and what the ORM would make of its rows.

    Made once per connection: a claim is the worker's hottest path, and
    working out the columns' converters took as long as reading the rows.
    """

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        fields = Job._meta.concrete_fields
        quote = connection.ops.quote_name
        self.query = _CLAIM.format(
            columns=", ".join(quote(field.column) for field in fields)
        )
        self.attnames = [field.attname for field in fields]
        self.converters = []
        for index, field in enumerate(fields):
            column = field.get_col(Job._meta.db_table)
            for function in connection.ops.get_db_converters(
                column
            ) + column.get_db_converters(connection):
                self.converters.append((index, function, column))

    def job(self, connection: BaseDatabaseWrapper, row: Sequence[object]) -> Job:
        values = list(row)
        for index, function, column in self.converters:
            values[index] = function(values[index], column, connection)
        return Job.from_db(connection.alias, self.attnames, values)


_readers: WeakKeyDictionary[BaseDatabaseWrapper, _RowsToJobs] = WeakKeyDictionary()


def _rows_to_jobs(connection: BaseDatabaseWrapper) -> _RowsToJobs:
    if connection not in _readers:
        _readers[connection] = _RowsToJobs(connection)
    return _readers[connection]


#: The migration that creates the claim function, whose SQL
#: ``create_claim_function()`` runs where migrations didn't. (A later
#: migration that replaces the function takes its place here.)
_CLAIM_FUNCTION_MIGRATION = "async_jobs.migrations.0002_claim_function"


def create_claim_function(*, using: str, **kwargs: object) -> None:
    """``post_migrate``: create the claim function if the jobs table lacks it.

    A database made without migrations (a test database with ``"MIGRATE":
    False`` or pytest-django's ``--nomigrations``) gets the table from the
    model but not the function, and every claim would fail.
    """
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND to_regprocedure("
            "'async_jobs_claim(varchar[], timestamptz, integer)') IS NULL",
            [Job._meta.db_table],
        )
        (missing,) = cursor.fetchone()
        if missing:
            cursor.execute(import_module(_CLAIM_FUNCTION_MIGRATION).CREATE)


def _runs_statements_together(cursor) -> bool:
    """Whether one ``execute()`` may send several statements, and read the first's rows.

    psycopg 3's client-side binding cursor, Django's default, can: it sends
    the statements as one simple query. A server-side binding cursor can't,
    and psycopg 2 reads the last statement's rows.
    """
    try:
        from psycopg import ClientCursor
    except ImportError:
        return False
    return isinstance(cursor.cursor, ClientCursor)
