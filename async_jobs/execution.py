"""Running claimed jobs and recording what happened, atomically.

The worker's transaction holds the row locks of its jobs (one, or a batch).
Each job's function runs inside a savepoint of that transaction:

* it returns: the row is marked ``succeeded`` with its ``result`` (a batch's
  successes by one UPDATE, before the commit) and the transaction commits
  the job's writes and that marker together;
* it raises: the savepoint is rolled back (the job's writes vanish), then an
  ``Error`` row and the retry or ``failed`` status are written in the same
  transaction, still under the row lock, so no other worker can run the job
  between the failure and its record;
* the process dies: the database rolls the whole transaction back and the row
  is ``pending`` and unlocked again.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NoReturn

from asgiref.sync import async_to_sync
from django.db import DatabaseError, InterfaceError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from async_jobs.conf import jobs_database, jobs_settings
from async_jobs.functions import FunctionNotAllowed, resolve
from async_jobs.groups import jobs_settled
from async_jobs.models import Error, Job
from async_jobs.recurrence import schedule_next
from async_jobs.retrying import retry_delay
from async_jobs.serialization import check_json
from async_jobs.signals import job_finished, job_started
from async_jobs.tasks_framework import is_task
from async_jobs.timeouts import JobTimeout, time_limit

logger = logging.getLogger("async_jobs")

#: Errors no retry can fix: the job fails at once.
PERMANENT_ERRORS = (FunctionNotAllowed,)

#: The savepoint each job runs in: set again for each job of a batch (the
#: most recent of a name is the one rolled back to), released by the commit.
JOB_SAVEPOINT = "async_jobs_job"

_RECORDED_FIELDS = [
    "status",
    "result",
    "attempts",
    "attempt_log",
    "started",
    "finished",
    "run_after",
]
#: What a success changes (its status aside): written for a batch at once.
_SUCCESS_FIELDS = ["result", "attempts", "attempt_log", "started", "finished"]


@dataclass(frozen=True)
class Outcome:
    """What one attempt of a job came to."""

    SUCCEEDED = "succeeded"
    RETRY = "retry"
    FAILED = "failed"

    job: Job
    status: str
    duration: float
    exception: BaseException | None = None


_current_job: ContextVar[Job | None] = ContextVar("current_job", default=None)


def current_job() -> Job | None:
    """The job whose function is running in this context, if any."""
    return _current_job.get()


@contextmanager
def _running(job: Job) -> Iterator[None]:
    token = _current_job.set(job)
    try:
        yield
    finally:
        _current_job.reset(token)


def worker_id() -> str:
    """Names this process in a job's ``attempt_log``: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def call(job: Job) -> Any:
    """Call the job's function; a coroutine function is run to completion.

    A job that names a ``Task`` of Django's tasks framework runs through it
    (see ``async_jobs.backends``), which gives the task its context.
    """
    function = resolve(job.name)
    if is_task(function):
        from async_jobs.backends import task_runner

        function = task_runner(job, function)
    elif inspect.iscoroutinefunction(function):
        function = async_to_sync(function)
    with _running(job), time_limit(job.meta.get("timeout")):
        return function(*job.args, **job.kwargs)


def run_claimed(job: Job, using: str) -> Outcome:
    """Run a job whose row the current transaction has locked; record it."""
    [outcome] = run_claimed_jobs([job], using)
    return outcome


def run_claimed_jobs(
    jobs: Sequence[Job],
    using: str,
    keep_going: Callable[[], bool] = lambda: True,
    savepoint_set: bool = False,
) -> list[Outcome]:
    """Run jobs whose rows the current transaction has locked; record them.

    Each job runs in a savepoint of its own (``savepoint_set``: the claim set
    the first job's). A failure is recorded at once; the successes together,
    by one UPDATE, before the transaction commits: a job's writes still
    commit exactly when its success does. Then the jobs that won't run again
    are settled, and each outcome is logged and signalled once it has
    committed. ``keep_going()`` is asked before each job after the first.
    """
    outcomes: list[Outcome] = []
    for job in jobs:
        if outcomes and not keep_going():
            break
        outcomes.append(_attempt(job, using, savepoint_set and not outcomes))
    _record_successes(
        [outcome.job for outcome in outcomes if outcome.status == Outcome.SUCCEEDED],
        using,
    )
    _settled(
        [
            outcome.job
            for outcome in outcomes
            if outcome.job.status != Job.Status.PENDING
        ],
        using,
    )
    for outcome in outcomes:
        # Robust: a faulty receiver is logged, and can't stop the worker's loop.
        transaction.on_commit(
            lambda outcome=outcome: _finished(outcome), using=using, robust=True
        )
    return outcomes


def _attempt(job: Job, using: str, savepoint_set: bool) -> Outcome:
    connection = connections[using]
    job.attempts += 1
    job.started = timezone.now()
    job.attempt_log = [
        *job.attempt_log,
        {"worker": worker_id(), "started": job.started.isoformat()},
    ]
    if not savepoint_set:
        with connection.cursor() as cursor:
            cursor.execute(connection.ops.savepoint_create_sql(JOB_SAVEPOINT))
    hooks = len(connection.run_on_commit)
    began = time.monotonic()
    try:
        job_started.send(sender=Job, job=job)
        result = call(job)
        check_json(result, "result")
        _check_transaction_usable(connection)
    except (Exception, JobTimeout, SystemExit) as exc:
        _roll_back_job(job, using, hooks, exc)
        return _record_failure(job, using, exc, time.monotonic() - began)
    if connection.needs_rollback:
        # The job asked for it (set_rollback()): its writes go, as atomic() does.
        _roll_back_job(job, using, hooks)
    job.status = Job.Status.SUCCEEDED
    job.result = result
    job.finished = timezone.now()
    return Outcome(job, Outcome.SUCCEEDED, time.monotonic() - began)


#: libpq's PQTRANS_INERROR, as psycopg 3 and psycopg 2 both report it: the
#: transaction has failed and refuses every statement until a rollback.
_PQTRANS_INERROR = 3


def _check_transaction_usable(connection: BaseDatabaseWrapper) -> None:
    """Raise if the job left its transaction failed on PostgreSQL.

    A job that catches a database error (a ``NOWAIT`` lock refused, say) and
    returns leaves PostgreSQL refusing every later statement. ``atomic()``
    would have raised as it released the savepoint; so does this, before the
    success is recorded, so that the attempt counts as failed. Had the
    record failed instead, the worker's whole transaction would roll back and
    the job would run again, for ever, without an attempt counted.
    """
    if connection.vendor != "postgresql" or connection.connection is None:
        return
    raw = connection.connection
    info = getattr(raw, "info", None)  # psycopg 3; psycopg 2 has no .info
    status = (
        info.transaction_status if info is not None else raw.get_transaction_status()
    )
    if status == _PQTRANS_INERROR:
        raise DatabaseError(
            "The job returned, but a database error it caught left its "
            "transaction failed (PostgreSQL refuses every statement after an "
            "error until a rollback): its writes are rolled back. Run the "
            "statement that may fail inside its own atomic() block."
        )


def _roll_back_job(
    job: Job, using: str, hooks: int, exc: BaseException | None = None
) -> None:
    """Undo what the job did: its writes and its ``on_commit`` hooks.

    What ``atomic()`` does for a savepoint, for the job's savepoint, which is
    set without ``atomic()`` (the claim sets the first in its round trip) and
    never released (the commit releases them all): two statements fewer per
    job. Afterwards the worker's transaction is usable again, unless it is
    lost.
    """
    connection = connections[using]
    connection.needs_rollback = False
    try:
        with connection.cursor() as cursor:
            cursor.execute(connection.ops.savepoint_rollback_sql(JOB_SAVEPOINT))
    except (DatabaseError, InterfaceError) as error:
        connection.needs_rollback = True
        _raise_transaction_lost(job, using, exc or error)
    del connection.run_on_commit[hooks:]


def _record(job: Job, using: str) -> None:
    """Write the attempt's outcome to the job's row with one UPDATE.

    Built by hand rather than by ``job.save()``: it is the worker's one
    statement per job, and the ORM's work to compile it took as long as the
    round trip. (So no ``pre_save``/``post_save``: ``job_finished`` tells.)
    """
    connection = connections[using]
    quote = connection.ops.quote_name
    fields = [Job._meta.get_field(name) for name in _RECORDED_FIELDS]
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in fields)
    values = [
        field.get_db_prep_save(getattr(job, field.attname), connection)
        for field in fields
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {quote(Job._meta.db_table)} SET {assignments} "
            f"WHERE {quote(Job._meta.pk.column)} = %s",
            [*values, job.pk],
        )


def _record_successes(jobs: list[Job], using: str) -> None:
    """Mark jobs succeeded: on PostgreSQL all with one UPDATE … FROM (VALUES …)."""
    connection = connections[using]
    if len(jobs) < 2 or connection.vendor != "postgresql":
        for job in jobs:
            _record(job, using)
        return
    quote = connection.ops.quote_name
    table, pk = quote(Job._meta.db_table), quote(Job._meta.pk.column)
    fields = [Job._meta.get_field(name) for name in _SUCCESS_FIELDS]
    columns = [quote(field.column) for field in fields]
    assignments = ", ".join(
        f"{column} = v.{column}::{field.db_type(connection)}"
        for column, field in zip(columns, fields, strict=True)
    )
    row = f"(%s{', %s' * len(fields)})"
    values = [Job.Status.SUCCEEDED]
    for job in jobs:
        values.append(job.pk)
        values += [
            field.get_db_prep_save(getattr(job, field.attname), connection)
            for field in fields
        ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {quote('status')} = %s, {assignments} "
            f"FROM (VALUES {', '.join([row] * len(jobs))}) "
            f"AS v({pk}, {', '.join(columns)}) WHERE {table}.{pk} = v.{pk}",
            values,
        )


def _settled(jobs: list[Job], using: str) -> None:
    """The jobs won't run again: their series go on, their groups may be finished.

    In the transaction that records the outcomes, after they are written, so
    all commit together or not at all. The groups are locked in one call, in
    a fixed order, so two workers' batches can't deadlock on them.
    """
    for job in jobs:
        schedule_next(job, using)
    if jobs:
        jobs_settled([job.group_id for job in jobs], using)


def _finished(outcome: Outcome) -> None:
    """Log and announce an outcome, once it has committed (so it is true)."""
    job = outcome.job
    if outcome.exception is None:
        logger.info("Job %s %s succeeded in %.3fs", job.pk, job.name, outcome.duration)
    else:
        then = (
            "failed for good"
            if outcome.status == Outcome.FAILED
            else f"retry at {job.run_after.isoformat()}"
        )
        logger.error(
            "Job %s %s raised on attempt %s of %s in %.3fs, %s",
            job.pk,
            job.name,
            job.attempts,
            job.max_attempts,
            outcome.duration,
            then,
            exc_info=outcome.exception,
        )
    job_finished.send(sender=Job, job=job, outcome=outcome)


def _raise_transaction_lost(job: Job, using: str, exc: BaseException) -> NoReturn:
    """The job's savepoint could not be rolled back: its transaction is lost.

    That happens when the connection is gone (dropped, terminated, the server
    restarted). Nothing more can be written in the transaction and the
    database rolls it back whole, so the job stays pending, untouched. Raise
    what caused it, as a ``DatabaseError`` for the worker to stop on, rather
    than the error of a vain attempt to record the failure.
    """
    if isinstance(exc, DatabaseError):
        raise exc
    raise DatabaseError(
        f"Job {job.pk} raised {type(exc).__name__}: {exc}, and its transaction "
        f"on database {using!r} could not be rolled back to before the job"
    ) from exc


def _record_failure(
    job: Job, using: str, exc: BaseException, duration: float
) -> Outcome:
    now = timezone.now()
    Error.objects.using(using).create(
        job=job,
        attempt=job.attempts,
        exception=f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}",
        traceback="".join(traceback.format_exception(exc)),
        occurred=now,
    )
    job.status = Job.Status.PENDING
    job.result = None
    if job.attempts >= job.max_attempts or isinstance(exc, PERMANENT_ERRORS):
        job.status = Job.Status.FAILED
        job.finished = now
        status = Outcome.FAILED
    else:
        job.run_after = now + retry_delay(job.attempts, jobs_settings())
        status = Outcome.RETRY
    _record(job, using)
    return Outcome(job, status, duration, exc)


def execute_now(job: Job) -> Any:
    """Run a pending job in this process, with a worker's bookkeeping."""
    if job.pk is None:
        raise ValueError("This job has not been saved yet, so it can't run.")
    using = job._state.db or jobs_database()
    with transaction.atomic(using=using):
        # Waits for a worker that is running it right now, then sees its outcome.
        locked = Job.objects.using(using).select_for_update().get(pk=job.pk)
        if locked.status != Job.Status.PENDING:
            raise ValueError(
                f"Job {job.pk} is {locked.status}; only a pending job can run."
            )
        outcome = run_claimed(locked, using)
    for field in _RECORDED_FIELDS:
        setattr(job, field, getattr(locked, field))
    if outcome.exception is not None:
        raise outcome.exception
    return locked.result
