"""Running one claimed job and recording what happened, atomically.

The worker's transaction holds the job's row lock. The function runs inside a
savepoint of that transaction:

* it returns: the row is marked ``succeeded`` with its ``result`` and the
  transaction commits the job's writes and that marker together;
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
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from django.db import connections, transaction
from django.utils import timezone

from async_jobs.conf import jobs_database, jobs_settings
from async_jobs.functions import FunctionNotAllowed, resolve
from async_jobs.models import Error, Job
from async_jobs.retrying import retry_delay
from async_jobs.serialization import check_json, check_storable
from async_jobs.signals import job_finished, job_started
from async_jobs.timeouts import JobTimeout, time_limit

logger = logging.getLogger("async_jobs")

#: Errors no retry can fix: the job fails at once.
PERMANENT_ERRORS = (FunctionNotAllowed,)

_RECORDED_FIELDS = ["status", "result", "attempts", "started", "finished", "run_after"]
_SUCCESS_FIELDS = ["result", "attempts", "started", "finished"]


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


def call(job: Job) -> Any:
    """Call the job's function; a coroutine function is run to completion."""
    function = resolve(job.name)
    if inspect.iscoroutinefunction(function):
        function = async_to_sync(function)
    with _running(job), time_limit(job.meta.get("timeout")):
        return function(*job.args, **job.kwargs)


def run_claimed(job: Job, using: str) -> Outcome:
    """Run a job whose row the current transaction has locked; record it."""
    [outcome] = run_claimed_jobs([job], using)
    return outcome


def run_claimed_jobs(
    jobs: Sequence[Job], using: str, keep_going: Callable[[], bool] = lambda: True
) -> list[Outcome]:
    """Run jobs whose rows the current transaction has locked; record them.

    Each job runs in a savepoint of its own. A failure is recorded at once;
    the successes together, by one UPDATE, before the transaction commits: a
    job's writes still commit exactly when its success does. ``keep_going()``
    is asked before each job after the first.
    """
    outcomes: list[Outcome] = []
    for job in jobs:
        if outcomes and not keep_going():
            break
        outcomes.append(_attempt(job, using))
    _record_successes(
        [outcome.job for outcome in outcomes if outcome.status == Outcome.SUCCEEDED],
        using,
    )
    return outcomes


def _attempt(job: Job, using: str) -> Outcome:
    job.attempts += 1
    job.started = timezone.now()
    began = time.monotonic()
    try:
        with transaction.atomic(using=using):
            job_started.send(sender=Job, job=job)
            result = call(job)
            check_json(result, "result")
            check_storable(result, "result")
    except (Exception, JobTimeout) as exc:
        outcome = _record_failure(job, using, exc, time.monotonic() - began)
    else:
        job.status = Job.Status.SUCCEEDED
        job.result = result
        job.finished = timezone.now()
        outcome = Outcome(job, Outcome.SUCCEEDED, time.monotonic() - began)
        logger.info("Job %s %s succeeded in %.3fs", job.pk, job.name, outcome.duration)
    transaction.on_commit(
        lambda: job_finished.send(sender=Job, job=job, outcome=outcome), using=using
    )
    return outcome


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
        then = "failed for good"
    else:
        job.run_after = now + retry_delay(job.attempts, jobs_settings())
        status = Outcome.RETRY
        then = f"retry at {job.run_after.isoformat()}"
    _record(job, using)
    logger.error(
        "Job %s %s raised on attempt %s of %s, %s",
        job.pk,
        job.name,
        job.attempts,
        job.max_attempts,
        then,
        exc_info=exc,
    )
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
