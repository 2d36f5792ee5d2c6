"""Claiming due jobs: the one query that decides which job a worker runs next.

On PostgreSQL the claim is the function ``async_jobs_claim`` (migration 0002
says why; its SQL is in ``sql/``), and the claimed rows are locked with ``FOR
UPDATE SKIP LOCKED`` in the worker's transaction: other workers pass over them
without waiting, and the lock lasts exactly as long as the job's transaction,
so a worker that dies releases its job at once. SQLite has no row locks; there
the worker's transaction writes first (an UPDATE of no row), which takes the
database's single write lock before it reads, so a second worker waits rather
than reading the same job. It does so only when a job is due, or a lease
expired (``worth_claiming()``, a read in autocommit, says so first): an idle
worker polling SQLite takes no write lock, and so makes no request's
transaction fail.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import cast
from weakref import WeakKeyDictionary

from django.db import DatabaseError, DataError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import QuerySet
from django.utils import timezone

from async_jobs.failures import described
from async_jobs.models import Job, init_observed
from async_jobs.transaction_internals import runs_statements_together, savepoint_sql

#: What reading a row written by hand can raise: a timestamp out of Python's
#: range (psycopg's ``DataError``), an integer of more digits than Python reads
#: (``ValueError``), JSON nested too deep (``RecursionError``); on SQLite, which
#: stores any value in any column, a date that isn't one (``ValueError``), a
#: number where a date or JSON belongs (``TypeError``, ``AttributeError``,
#: ``OverflowError``). Only where a row can't be read alone is it the data's.
UNREADABLE = (
    DataError,
    ValueError,
    TypeError,
    AttributeError,
    OverflowError,
    RecursionError,
)

#: How long a SQLite worker waits for the write lock before asking again (ms).
SQLITE_LOCK_WAIT_MS = 24 * 60 * 60 * 1000


@contextmanager
def claim_transaction(using: str) -> Iterator[None]:
    """The transaction a worker claims and runs its jobs in."""
    connection = connections[using]
    if connection.vendor == "sqlite":
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_LOCK_WAIT_MS}")
    with transaction.atomic(using=using):
        if connection.vendor == "sqlite":
            _take_sqlite_write_lock(connection)
        yield


def worth_claiming(using: str, queues: Sequence[str] = ()) -> bool:
    """Whether a claim transaction may find work: on SQLite, a read in
    autocommit of whether a job is due (of these queues) or a non-atomic job's
    lease has expired, so that an idle worker takes no write lock. Elsewhere
    True: the claim itself is as cheap, and locks nothing it doesn't claim.
    """
    connection = connections[using]
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        return True
    now = timezone.now()
    jobs = Job.objects.using(using)
    return (jobs.due(now).in_queues(queues) | jobs.lease_expired(now)).exists()


def _take_sqlite_write_lock(connection: BaseDatabaseWrapper) -> None:
    """Take SQLite's write lock now, before the claim reads.

    A statement that may write takes it when it starts, whatever rows it
    matches; a read first would let two workers read the same due job.
    """
    quote = connection.ops.quote_name
    pk = quote(Job._meta.pk.column)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {quote(Job._meta.db_table)} SET {pk} = {pk} WHERE {pk} IS NULL"
        )


def claim(
    using: str, queues: Sequence[str] = (), limit: int = 1, savepoint: bool = False
) -> list[Job]:
    """Lock and return up to ``limit`` due jobs, best first.

    Must run inside ``claim_transaction()``: the lock ends with it. With
    ``savepoint``, also set the first job's savepoint (see
    ``transaction_internals.py``): on PostgreSQL in the claim's own round trip
    where the driver allows it.
    """
    connection = connections[using]
    now = timezone.now()
    if connection.vendor == "postgresql":
        try:
            jobs, set_together = _claim_on_postgresql(
                using, queues, limit, now, savepoint
            )
        except UNREADABLE:
            # The same rows again, as ids: this transaction's locks don't
            # hide them from its own claim.
            with suppress(DatabaseError), connection.cursor() as cursor:
                cursor.execute(
                    _CLAIM.format(columns="id"), [list(queues) or None, now, limit]
                )
                find_unreadable(using, [pk for (pk,) in cursor.fetchall()])
            raise
    else:
        found = Job.objects.using(using).due(now).in_queues(queues)
        if connection.features.has_select_for_update_skip_locked:
            found = found.select_for_update(skip_locked=True)
        found = found.order_by("-priority", "run_after", "id")[:limit]
        jobs = read_jobs(found)
        set_together = False
    if savepoint and jobs and not set_together:
        with connection.cursor() as cursor:
            cursor.execute(savepoint_sql(connection))
    return jobs


class UnreadableRow(Exception):
    """A job's row holds a value Python can't read (written by hand: a
    timestamp of year 10000, JSON nested 3,000 deep): no worker can run the
    job, and every claim that meets it would fail. It is failed unread
    (``JobQuerySet.fail_unreadable()``), and the queue goes on."""

    def __init__(self, job_id: int, cause: BaseException) -> None:
        super().__init__(f"Job {job_id}'s row can't be read ({described(cause)})")
        self.job_id = job_id


def read_jobs(jobs: QuerySet[Job]) -> list[Job]:
    """The jobs; ``UnreadableRow`` if one of them can't be read."""
    try:
        return list(jobs)
    except UNREADABLE:
        ids = list(jobs.values_list("pk", flat=True))
        find_unreadable(jobs.db, ids)
        raise


def find_unreadable(using: str, ids: Iterable[int]) -> None:
    """Raise ``UnreadableRow`` for the first job of ``ids`` that can't be read
    alone: reading them together failed. If each can, the failure was not the
    data's doing, and the caller raises it."""
    columns = [field.attname for field in Job._meta.concrete_fields]
    for pk in ids:
        try:
            # Values, not a Job: only the columns' converters run, no
            # receiver of pre_init or post_init, whose bug would read as bad data.
            Job.objects.using(using).filter(pk=pk).values_list(*columns).get()
        except UNREADABLE as cause:
            raise UnreadableRow(pk, cause) from cause


# PostgreSQL: the claim is the function ``async_jobs_claim`` (see migration
# 0002 for why, and for how it picks the queue).
_CLAIM = "SELECT {columns} FROM async_jobs_claim(%s::varchar[], %s, %s::integer)"


def _claim_on_postgresql(
    using: str, queues: Sequence[str], limit: int, now: datetime, savepoint: bool
) -> tuple[list[Job], bool]:
    """The claimed jobs, and whether the savepoint was set with them."""
    connection = connections[using]
    reading = _rows_to_jobs(connection)
    with connection.cursor() as cursor:
        together = savepoint and runs_statements_together(cursor)
        query = reading.query
        if together:
            query += f"; {savepoint_sql(connection)}"
        cursor.execute(query, [list(queues) or None, now, limit])
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
            columns=", ".join(quote(cast(str, field.column)) for field in fields)
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
        if init_observed():
            return Job.from_db(connection.alias, self.attnames, values)
        attributes = dict(zip(self.attnames, values, strict=True))
        return Job.without_init(attributes, db=connection.alias)


_readers: WeakKeyDictionary[BaseDatabaseWrapper, _RowsToJobs] = WeakKeyDictionary()


def _rows_to_jobs(connection: BaseDatabaseWrapper) -> _RowsToJobs:
    if connection not in _readers:
        _readers[connection] = _RowsToJobs(connection)
    return _readers[connection]


#: The SQL that creates the claim function, as its latest migration runs it;
#: ``create_claim_function()`` runs it where migrations didn't.
CLAIM_FUNCTION_SQL = Path(__file__).parent / "sql" / "0002_claim_function.sql"


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
            cursor.execute(CLAIM_FUNCTION_SQL.read_text())
