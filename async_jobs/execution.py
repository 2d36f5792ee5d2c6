"""Running claimed jobs and recording what happened, atomically.

The worker's transaction holds the row locks of its jobs (one, or a batch).
Each job's function runs in ``transaction.atomic()``, a savepoint of that
transaction:

* it returns: the row is marked ``succeeded`` with its ``result`` (a batch's
  successes by one UPDATE, before the commit) and the transaction commits
  the job's writes and that marker together;
* it raises: ``atomic()`` rolls its writes back, then an ``Error`` row and the
  retry or ``failed`` status are written in the same transaction, still under
  the row lock, so no other worker can run the job between the failure and
  its record;
* the process dies: the database rolls the whole transaction back and the row
  is ``pending`` and unlocked again.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asgiref.sync import async_to_sync
from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from async_jobs import hooks
from async_jobs.allowlist import FunctionNotAllowed, resolve
from async_jobs.claiming import claim_transaction
from async_jobs.conf import jobs_database
from async_jobs.models import Job
from async_jobs.serialization import check_json
from async_jobs.signals import job_finished, job_started
from async_jobs.timeouts import time_limit
from async_jobs.validation import check_stored

logger = logging.getLogger("async_jobs")

#: What an attempt changes on the job, copied back by ``execute_now()``.
_OUTCOME_FIELDS = (
    "status",
    "result",
    "attempts",
    "attempt_log",
    "started",
    "finished",
    "run_after",
)

#: Errors no retry can fix: the job fails at once.
PERMANENT_ERRORS = (FunctionNotAllowed,)


class WorkerAborted(KeyboardInterrupt):
    """A second stop signal: abandon the running job, roll it back.

    The one exception a job's attempt lets through. A ``KeyboardInterrupt``
    so that, like Ctrl-C, psycopg cancels a query it interrupts: otherwise the
    server would go on running it, holding the job's row lock, long after the
    worker gave up.
    """


class WorkerDied(Exception):
    """The worker running an attempt died before it could record it."""


@dataclass(frozen=True)
class LostAttempt:
    """An attempt that started but whose record was lost with its transaction."""

    job_id: int
    attempt: int
    worker: str
    started: datetime
    reason: str


class AttemptLost(DatabaseError):
    """The job's transaction was lost mid-attempt (its connection closed).

    The worker charges the attempt in a new transaction (``charge()``): a job
    that closes its connection, or has it closed, can't run for ever.
    """

    def __init__(self, lost: LostAttempt) -> None:
        super().__init__(lost.reason)
        self.lost = lost


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

    A job that names a wrapped function (a ``Task`` of Django's tasks
    framework) is called as its wrapper says (``hooks.Wrapper``).
    """
    function = resolve(job.name)
    wrapper = hooks.wrapper_of(function)
    if wrapper is not None:
        function = wrapper.runner(job, function)
    elif inspect.iscoroutinefunction(function):
        function = async_to_sync(function)
    with _running(job), time_limit(job.meta.get("timeout")):
        return function(*job.args, **job.kwargs)


def run_claimed_jobs(
    jobs: Sequence[Job],
    using: str,
    keep_going: Callable[[], bool] = lambda: True,
    starting: Callable[[Job], None] | None = None,
) -> list[Outcome]:
    """Run jobs whose rows the current transaction has locked; record them.

    Each job runs in ``atomic()``. A failure is recorded at once; the
    successes together, by one UPDATE, before the transaction commits: a
    job's writes still commit exactly when its success does. Then the
    features are told of the jobs that won't run again, and each outcome is
    logged and signalled once it has committed. ``keep_going()`` is asked
    before each job after the first; ``starting(job)`` is told of each
    attempt just before it starts (a supervisor charges it if this process
    dies).
    """
    outcomes: list[Outcome] = []
    for job in jobs:
        if outcomes and not keep_going():
            break
        outcomes.append(_attempt(job, using, starting))
    Job.objects.using(using).record_successes(
        [outcome.job for outcome in outcomes if outcome.status == Outcome.SUCCEEDED]
    )
    _settle([o.job for o in outcomes if o.job.status != Job.Status.PENDING], using)
    for outcome in outcomes:
        # Robust: a faulty receiver is logged, and can't stop the worker's loop.
        # (mypy can't infer a lambda whose argument has a default.)
        transaction.on_commit(
            lambda outcome=outcome: _finished(outcome),  # type: ignore[misc]
            using=using,
            robust=True,
        )
    return outcomes


def _settle(jobs: list[Job], using: str) -> None:
    """Tell the features jobs won't run again; what they can't do is logged.

    All together first (the groups are then locked in one fixed order), in a
    savepoint: a feature that fails (a series whose next date can't be
    computed) must not undo the outcomes, nor stop the worker. If it fails,
    job by job, so that only the job at fault misses what follows it.
    """
    jobs = hooks.concerned(jobs)
    if not jobs or _settled(jobs, using) or len(jobs) == 1:
        return
    for job in jobs:
        _settled([job], using)


def _settled(jobs: list[Job], using: str) -> bool:
    try:
        with transaction.atomic(using=using):
            hooks.settled(jobs, using)
    except Exception as error:
        if connections[using].needs_rollback:
            raise
        if len(jobs) == 1:
            logger.error(
                "Job %s %s finished, but what follows it failed: %s",
                jobs[0].pk,
                jobs[0].name,
                error,
                exc_info=error,
            )
        return False
    return True


def _attempt(
    job: Job, using: str, starting: Callable[[Job], None] | None = None
) -> Outcome:
    job.attempts += 1
    job.started = timezone.now()
    job.attempt_log = [
        *job.attempt_log,
        {"worker": worker_id(), "started": job.started.isoformat()},
    ]
    if starting is not None:
        starting(job)
    began = time.monotonic()
    try:
        check_stored(job)
    except (ValueError, ImportError) as exc:
        # A row no retry can mend fails at once; a missing module may come.
        job.record_failure(using, exc, permanent=isinstance(exc, ValueError))
        status = Outcome.FAILED if job.status == Job.Status.FAILED else Outcome.RETRY
        return Outcome(job, status, time.monotonic() - began, exc)
    returned = False
    try:
        with transaction.atomic(using=using):
            job_started.send(sender=Job, job=job)
            result = call(job)
            check_json(result, "result")
            returned = True
    except WorkerAborted:
        raise
    except BaseException as exc:  # whatever the job raised: recorded
        _check_transaction_kept(job, using, exc)
        if returned and isinstance(exc, DatabaseError):
            exc = _swallowed(exc)
        job.record_failure(using, exc, permanent=isinstance(exc, PERMANENT_ERRORS))
        status = Outcome.FAILED if job.status == Job.Status.FAILED else Outcome.RETRY
        return Outcome(job, status, time.monotonic() - began, exc)
    # A job that closed the connection returns normally; its transaction is lost.
    _check_transaction_kept(job, using, None)
    job.status = Job.Status.SUCCEEDED
    job.result = result
    job.finished = timezone.now()
    return Outcome(job, Outcome.SUCCEEDED, time.monotonic() - began)


def _swallowed(error: DatabaseError) -> DatabaseError:
    """Why ``atomic()`` refused a job that returned: it swallowed a database error.

    A job that catches a database error (a ``NOWAIT`` lock refused, say) and
    returns leaves PostgreSQL refusing every later statement, so the savepoint
    can't be released; its writes are rolled back and the attempt fails.
    """
    swallowed = DatabaseError(
        "The job returned, but a database error it caught left its "
        "transaction failed (PostgreSQL refuses every statement after an "
        "error until a rollback): its writes are rolled back. Run the "
        "statement that may fail inside its own atomic() block."
    )
    swallowed.__cause__ = error
    return swallowed


def _check_transaction_kept(job: Job, using: str, exc: BaseException | None) -> None:
    """Raise ``AttemptLost`` if the job's transaction is lost.

    That happens when the connection is gone (closed by the job, dropped,
    terminated, the server restarted): ``atomic()`` then leaves the worker's
    transaction marked for rollback, and the database rolls it back whole.
    The worker records the attempt in a new transaction once it can.
    """
    if not connections[using].needs_rollback:
        return
    raise AttemptLost(
        LostAttempt(
            job_id=job.pk,
            attempt=job.attempts,
            worker=worker_id(),
            started=job.started or timezone.now(),
            reason=f"the job's transaction on database {using!r} was lost"
            + ("" if exc is None else f": {type(exc).__name__}: {exc}".rstrip(": ")),
        )
    ) from exc


def charge(lost: LostAttempt, using: str, error: Exception) -> Outcome | None:
    """Record an attempt whose own record was lost: an ``Error``, then a retry or
    ``failed``, as if it had raised ``error``.

    Nothing is written if the job is no longer pending at that attempt: it
    was recorded after all, or another worker has run it since.
    """
    with claim_transaction(using):
        job = (
            Job.objects.using(using).select_for_update().filter(pk=lost.job_id).first()
        )
        if (
            job is None
            or job.status != Job.Status.PENDING
            or job.attempts != lost.attempt - 1
        ):
            return None
        job.attempts = lost.attempt
        job.started = lost.started
        job.attempt_log = [
            *job.attempt_log,
            {"worker": lost.worker, "started": lost.started.isoformat()},
        ]
        job.record_failure(using, error)
        if job.status != Job.Status.PENDING:
            _settle([job], using)
        status = Outcome.FAILED if job.status == Job.Status.FAILED else Outcome.RETRY
        outcome = Outcome(job, status, 0.0, error)
        transaction.on_commit(lambda: _finished(outcome), using=using, robust=True)
    return outcome


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
        [outcome] = run_claimed_jobs([locked], using)
    for field in _OUTCOME_FIELDS:
        setattr(job, field, getattr(locked, field))
    if outcome.exception is not None:
        raise outcome.exception
    return locked.result
