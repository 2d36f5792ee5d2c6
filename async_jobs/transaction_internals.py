"""The Django internals async_jobs relies on, and why: nothing else uses any.

Both save round trips on the hottest paths, where Django's public API would
cost one more per call; CI runs the tests that fail if Django changes them
(test_notifications.py, test_batching.py, test_flush_queue.py,
test_claiming.py) on both Django lines.

* ``live_hooks()``: Django keeps the ``on_commit`` hooks of a connection's
  transaction in ``connection.run_on_commit`` and puts a new list in its place
  when the transaction commits or rolls back, and when a savepoint rolls back.
  ``notifications.py`` compares these lists to send one ``NOTIFY`` per
  transaction, after its commit, for every job it made due, and none for jobs
  rolled back: no public API tells one transaction from the next.
* ``job_savepoint()``: a claimed job runs in a savepoint the worker sets itself
  (on PostgreSQL in the claim's own round trip) and never releases (the commit
  releases them all), where ``atomic()`` costs a ``SAVEPOINT`` and a
  ``RELEASE`` round trip per job. It does what ``atomic()`` does for its
  savepoint: a job that raises, or calls ``set_rollback(True)``, loses its
  writes and the ``on_commit`` hooks it registered (``run_on_commit`` sliced,
  ``needs_rollback`` reset), and one that swallowed a database error fails.
  Measured with ``benchmarks/run.py`` on PostgreSQL, ``atomic()`` per job
  drained 20-30% fewer jobs one per transaction and half as many with
  ``--batch 50`` (docs/benchmarks.rst).
* ``committing()``: the worker's last statement (the UPDATE that records its
  successes) carries the ``COMMIT`` of its transaction, in the same round
  trip; Django's commit at the end of the worker's ``atomic()`` block then
  finds nothing to commit (psycopg sends no ``COMMIT`` outside a
  transaction), and runs the ``on_commit`` hooks as always. Only in the
  worker's own outermost block, with nothing after that statement: one round
  trip fewer per batch (docs/benchmarks.rst).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import DatabaseError, InterfaceError, connections
from django.db.backends.base.base import BaseDatabaseWrapper

#: The job's savepoint: set again for each job of a batch (the most recent of
#: a name is the one rolled back to), released by the commit.
JOB_SAVEPOINT = "async_jobs_job"

#: libpq's PQTRANS_INERROR, as psycopg 3 and psycopg 2 both report it.
_PQTRANS_INERROR = 3


def live_hooks(connection: BaseDatabaseWrapper) -> object:
    """A token that stays the same until the connection's hooks are replaced."""
    return getattr(connection, "run_on_commit", None)


def savepoint_sql(connection: BaseDatabaseWrapper) -> str:
    return connection.ops.savepoint_create_sql(JOB_SAVEPOINT)


@contextmanager
def job_savepoint(using: str, already_set: bool = False) -> Iterator[None]:
    """Run a claimed job in the worker's savepoint, as ``atomic()`` would.

    ``already_set``: the claim set it. A ``DatabaseError`` after the job
    returned means it swallowed one (PostgreSQL refuses every statement after
    an error until a rollback): its writes are rolled back. A lost
    connection leaves ``needs_rollback`` set, for the caller to see.
    """
    connection = connections[using]
    if not already_set:
        with connection.cursor() as cursor:
            cursor.execute(savepoint_sql(connection))
    hooks = len(connection.run_on_commit)
    try:
        yield
    except BaseException:
        _roll_back(connection, hooks)
        raise
    if connection.needs_rollback:  # set_rollback(True), or a closed connection
        _roll_back(connection, hooks)
    elif _transaction_failed(connection):
        _roll_back(connection, hooks)
        raise DatabaseError("current transaction is aborted")


def _roll_back(connection: BaseDatabaseWrapper, hooks: int) -> None:
    connection.needs_rollback = False
    try:
        with connection.cursor() as cursor:
            cursor.execute(connection.ops.savepoint_rollback_sql(JOB_SAVEPOINT))
    except (DatabaseError, InterfaceError):
        connection.needs_rollback = True  # the transaction is lost
        return
    del connection.run_on_commit[hooks:]


def _transaction_failed(connection: BaseDatabaseWrapper) -> bool:
    if connection.vendor != "postgresql" or connection.connection is None:
        return False
    raw = connection.connection
    info = getattr(raw, "info", None)  # psycopg 3; psycopg 2 has no .info
    status = (
        info.transaction_status if info is not None else raw.get_transaction_status()
    )
    return bool(status == _PQTRANS_INERROR)


def runs_statements_together(cursor: object) -> bool:
    """Whether one ``execute()`` may send several statements and read the first's rows.

    psycopg 3's client-side binding cursor, Django's default, can. A
    server-side binding cursor can't, and psycopg 2 reads the last
    statement's rows.
    """
    try:
        from psycopg import ClientCursor
    except ImportError:
        return False
    return isinstance(getattr(cursor, "cursor", None), ClientCursor)


def committing(connection: BaseDatabaseWrapper, cursor: object, sql: str) -> str:
    """``sql`` followed by the ``COMMIT`` of the transaction, where it can be.

    For the worker's own transaction only, as its last statement: the caller
    makes sure nothing follows it. Not inside a nested ``atomic()`` block, a
    transaction marked for rollback, or where one ``execute()`` can't send
    two statements: then ``sql`` as it is, and Django commits as usual.
    """
    if (
        connection.vendor == "postgresql"
        and len(connection.atomic_blocks) == 1
        and not connection.needs_rollback
        and runs_statements_together(cursor)
    ):
        return f"{sql}; COMMIT"
    return sql
