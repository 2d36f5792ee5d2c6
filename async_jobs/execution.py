"""Running claimed jobs and recording what happened, atomically.

The worker's transaction holds the row locks of its jobs (one, or a batch).
Each job's function runs in a savepoint of that transaction, as in
``transaction.atomic()`` (``transaction_internals.job_savepoint()``):

* it returns: the row is marked ``succeeded`` with its ``result`` (a batch's
  successes by one UPDATE, which may carry the commit) and the transaction
  commits the job's writes and that marker together;
* it raises: its writes are rolled back, then an ``Error`` row and the
  retry or ``failed`` status are written in the same transaction, still under
  the row lock, so no other worker can run the job between the failure and
  its record;
* the process dies: the database rolls the whole transaction back and the row
  is ``pending`` and unlocked again.

A non-atomic job (``Job.atomic`` False: long jobs) is different. Its claim
commits it ``running`` under a lease (``start_non_atomic()``); its function
runs with no transaction open (``run_non_atomic()``) while a heartbeat thread
renews the lease on a connection of its own; its outcome is recorded in a
short transaction fenced by the lease: if the lease was taken over, nothing
is recorded. A job whose lease expired is rescued (``rescue_expired()``).
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from asgiref.sync import async_to_sync
from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from async_jobs import hooks
from async_jobs.allowlist import FunctionNotAllowed, resolve
from async_jobs.claiming import claim_transaction, read_jobs
from async_jobs.conf import jobs_database, jobs_settings
from async_jobs.failures import described
from async_jobs.models import Job
from async_jobs.serialization import check_json
from async_jobs.signals import job_finished, job_started
from async_jobs.timeouts import Interruption, time_limit
from async_jobs.transaction_internals import job_savepoint
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

#: The most ``attempts`` holds on every database (PostgreSQL's ``integer``).
ATTEMPTS_CEILING = 2**31 - 1


class WorkerAborted(KeyboardInterrupt):
    """A second stop signal: abandon the running job, roll it back.

    The one exception a job's attempt lets through. A ``KeyboardInterrupt``
    so that, like Ctrl-C, psycopg cancels a query it interrupts: otherwise the
    server would go on running it, holding the job's row lock, long after the
    worker gave up.
    """


class WorkerDied(Exception):
    """The worker running an attempt died before it could record it."""


class WorkerLost(Exception):
    """A non-atomic job's worker stopped renewing its lease; it was rescued."""


class LeaseLost(KeyboardInterrupt):
    """A non-atomic job's lease was taken over while it ran: it is stopped,
    and its worker records nothing (the job is another worker's now)."""


class CancelledWhileRunning(KeyboardInterrupt):
    """``cancel()`` asked the worker of a running non-atomic job to stop it."""


@dataclass(frozen=True)
class LostAttempt:
    """An attempt that started but whose record was lost with its transaction."""

    job_id: int
    attempt: int
    worker: str
    started: datetime
    reason: str
    #: What the attempt is charged with: ``WorkerDied(reason)`` if None.
    error: Exception | None = None


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
    CANCELLED = "cancelled"

    job: Job
    status: str
    duration: float
    exception: BaseException | None = None

    @classmethod
    def failure(cls, job: Job, duration: float, exception: BaseException) -> Outcome:
        """A failed attempt recorded on ``job``: ``failed``, or to retry."""
        status = cls.FAILED if job.status == Job.Status.FAILED else cls.RETRY
        return cls(job, status, duration, exception)


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
    return _worker_id(os.getpid())  # a fork changes it


@cache
def _worker_id(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}"


def call(job: Job, interruption: Interruption | None = None) -> Any:
    """Call the job's function; a coroutine function is run to completion.

    A job that names a wrapped function (a ``Task`` of Django's tasks
    framework) is called as its wrapper says (``hooks.Wrapper``).
    ``interruption`` lets another thread stop it (a non-atomic job's heartbeat).
    """
    function = resolve(job.name)
    wrapper = hooks.wrapper_of(function)
    if wrapper is not None:
        function = wrapper.runner(job, function)
    elif inspect.iscoroutinefunction(function):
        function = async_to_sync(function)
    pid = os.getpid()
    try:
        with _running(job), time_limit(job.meta.get("timeout"), interruption):
            result = function(*job.args, **job.kwargs)
    except BaseException as exc:
        _leave_if_forked(pid, exc)
        raise
    _leave_if_forked(pid, None)
    return result


def _leave_if_forked(pid: int, exc: BaseException | None) -> None:
    """End a process the job forked, as it leaves the job's function.

    A child that returns, or calls ``sys.exit()`` rather than ``os._exit()``,
    would otherwise go on as a second worker, on its parent's connection.
    It exits as ``sys.exit()`` would have, with nothing of the worker run.
    """
    if os.getpid() == pid:
        return
    code = 0 if exc is None else 1
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    os._exit(code)


def run_claimed_jobs(
    jobs: Sequence[Job],
    using: str,
    keep_going: Callable[[], bool] = lambda: True,
    starting: Callable[[Job], None] | None = None,
    savepoint_set: bool = False,
    commit: bool = False,
) -> list[Outcome]:
    """Run jobs whose rows the current transaction has locked; record them.

    Each job runs in a savepoint of its own, as in ``atomic()``
    (``transaction_internals.job_savepoint()``; ``savepoint_set``: the claim
    set the first one). A failure is recorded at once; the
    successes together, by one UPDATE, last or just before the commit: a
    job's writes still commit exactly when its success does. Then the
    features are told of the jobs that won't run again, and each outcome is
    logged and signalled once it has committed. ``keep_going()`` is asked
    before each job after the first; ``starting(job)`` is told of each
    attempt just before it starts (a supervisor charges it if this process
    dies). ``commit``: the transaction is the worker's own, and the successes'
    UPDATE may commit it when nothing else is left to write.
    """
    outcomes: list[Outcome] = []
    for job in jobs:
        if outcomes and not keep_going():
            break
        outcomes.append(_attempt(job, using, starting, savepoint_set and not outcomes))
    concerned = _concerned([o.job for o in outcomes])
    # A connection lost after the last job's last statement shows here, and
    # could have been lost at the commit: no job is charged for it here (the
    # worker runs them again, and charges a job that keeps losing it).
    Job.objects.using(using).record_successes(
        [o.job for o in outcomes if o.status == Outcome.SUCCEEDED],
        commit=commit and not concerned,
    )
    _tell(concerned, using)
    _announce(outcomes, using)
    return outcomes


def _settle(jobs: list[Job], using: str) -> None:
    """Tell the features jobs won't run again; what they can't do is logged.

    All together first (the groups are then locked in one fixed order), in a
    savepoint: a feature that fails (a series whose next date can't be
    computed) must not undo the outcomes, nor stop the worker. If it fails,
    job by job, so that only the job at fault misses what follows it.
    """
    _tell(_concerned(jobs), using)


def _concerned(jobs: list[Job]) -> list[Job]:
    """The jobs among these that won't run again and that a feature must be told of."""
    return hooks.concerned([job for job in jobs if job.status != Job.Status.PENDING])


def _tell(jobs: list[Job], using: str) -> None:
    """``_settle()`` for jobs ``_concerned()`` returned."""
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


def _begin(job: Job, starting: Callable[[Job], None] | None) -> None:
    """Count an attempt that starts now, and log who runs it."""
    # A count written by hand at the column's limit stays there: counted past
    # it, the attempt could never be recorded.
    job.attempts = min(job.attempts + 1, ATTEMPTS_CEILING)
    job.started = timezone.now()
    job.log_attempt(worker_id(), job.started)
    if starting is not None:
        starting(job)


def _attempt(
    job: Job,
    using: str,
    starting: Callable[[Job], None] | None = None,
    savepoint_set: bool = False,
) -> Outcome:
    _begin(job, starting)
    began = time.monotonic()
    try:
        check_stored(job)
    except (ValueError, ImportError) as exc:
        # A row no retry can mend fails at once; a missing module may come.
        job.record_failure(using, exc, permanent=isinstance(exc, ValueError))
        return Outcome.failure(job, time.monotonic() - began, exc)
    returned = False
    try:
        with job_savepoint(using, already_set=savepoint_set):
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
        return Outcome.failure(job, time.monotonic() - began, exc)
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
        lost_attempt(
            job,
            f"the job's transaction on database {using!r} was lost"
            + ("" if exc is None else f": {described(exc)}".rstrip(": ")),
        )
    ) from exc


def lost_attempt(job: Job, reason: str, error: Exception | None = None) -> LostAttempt:
    """The attempt this process started of ``job``, whose record was lost."""
    return LostAttempt(
        job_id=job.pk,
        attempt=job.attempts,
        worker=worker_id(),
        started=job.started or timezone.now(),
        reason=reason,
        error=error,
    )


def charge(lost: LostAttempt, using: str) -> Outcome | None:
    """Record an attempt whose own record was lost: an ``Error``, then a retry or
    ``failed``, as if it had raised ``lost.error`` (``WorkerDied`` by default).

    Nothing is written if the job is no longer pending at that attempt: it
    was recorded after all, or another worker has run it since.
    """
    with claim_transaction(using):
        job = (
            Job.objects.using(using).select_for_update().filter(pk=lost.job_id).first()
        )
        if job is None:
            return None
        if (
            job.status == Job.Status.RUNNING
            and job.worker == lost.worker
            and job.attempts == lost.attempt
        ):
            # A non-atomic job whose claim committed: its worker, the lease
            # holder, is dead, so it is rescued now rather than at lease expiry.
            pass
        elif job.status != Job.Status.PENDING or job.attempts != lost.attempt - 1:
            return None
        else:
            job.attempts = lost.attempt
            job.started = lost.started
            job.log_attempt(lost.worker, lost.started)
        error = lost.error or WorkerDied(lost.reason)
        job.record_failure(using, error)
        outcome = Outcome.failure(job, 0.0, error)
        _settle([job], using)
        _announce([outcome], using)
    return outcome


def _announce(outcomes: Sequence[Outcome], using: str) -> None:
    """Log and signal each outcome once the transaction that recorded it
    commits. Robust: a faulty receiver is logged, and can't stop the worker."""
    for outcome in outcomes:
        # A function, not a partial: Django names it when it logs its error.
        def finished(outcome: Outcome = outcome) -> None:
            _finished(outcome)

        transaction.on_commit(finished, using=using, robust=True)


def _finished(outcome: Outcome) -> None:
    """Log and announce an outcome, once it has committed (so it is true)."""
    job = outcome.job
    if outcome.exception is None:
        logger.info("Job %s %s succeeded in %.3fs", job.pk, job.name, outcome.duration)
    elif outcome.status == Outcome.CANCELLED:
        logger.warning(
            "Job %s %s was cancelled while running, on attempt %s, after %.3fs",
            job.pk,
            job.name,
            job.attempts,
            outcome.duration,
        )
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


# Non-atomic jobs ----------------------------------------------------------


def start_non_atomic(
    job: Job, using: str, starting: Callable[[Job], None] | None = None
) -> None:
    """Claim a non-atomic job whose row the current transaction locked.

    Counts the attempt and writes it ``running``, held by this worker for
    ``ASYNC_JOBS["LEASE"]`` seconds; the caller then commits, and runs it
    with ``run_non_atomic()``.
    """
    _begin(job, starting)
    job.start_lease(using, worker_id(), jobs_settings().lease)


class Heartbeat(threading.Thread):
    """Renews a running non-atomic job's lease, every third of it, on a
    connection of its own (Django gives each thread one; closed at the end).

    If the lease was taken over, or ``cancel()`` asks the job to stop, the job
    is interrupted (as a timeout interrupts it) with ``LeaseLost`` or
    ``CancelledWhileRunning``.
    """

    def __init__(
        self, job: Job, using: str, lease: float, interruption: Interruption
    ) -> None:
        super().__init__(name=f"async_jobs heartbeat of job {job.pk}", daemon=True)
        self.job, self.using, self.lease = job, using, lease
        self.interruption = interruption
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.wait(self.lease / 3):
                try:
                    state = self.job.renew_lease(self.using, self.lease)
                except DatabaseError as error:
                    # Tried again next beat; the lease lasts three of them.
                    logger.warning(
                        "Job %s: could not renew its lease: %s", self.job.pk, error
                    )
                    connections[self.using].close_if_unusable_or_obsolete()
                    continue
                if state == "lost":
                    self.interruption.interrupt(
                        LeaseLost(
                            f"the lease of attempt {self.job.attempts} was taken "
                            "over by another worker"
                        )
                    )
                    return
                if state == "cancel":
                    self.interruption.interrupt(
                        CancelledWhileRunning(
                            f"cancelled while running, on attempt {self.job.attempts}"
                        )
                    )
                    return
        finally:
            connections[self.using].close()

    def stop(self) -> None:
        self.done.set()
        self.join()


def run_non_atomic(job: Job, using: str) -> Outcome | None:
    """Run a non-atomic job claimed by ``start_non_atomic()``; record its outcome.

    The function runs with no transaction open (autocommit: its writes commit
    as it makes them), while a ``Heartbeat`` renews the lease. The outcome is
    recorded in a short transaction fenced by the lease; None if the lease was
    taken over, and nothing is recorded. ``WorkerAborted`` (a second stop
    signal) is recorded as a failure, then raised again.
    """
    began = time.monotonic()
    result: Any = None
    exc: BaseException | None = None
    permanent = False
    try:
        check_stored(job)
    except (ValueError, ImportError) as error:
        exc, permanent = error, isinstance(error, ValueError)
    else:
        interruption = Interruption()
        heartbeat = Heartbeat(job, using, jobs_settings().lease, interruption)
        heartbeat.start()
        try:
            job_started.send(sender=Job, job=job)
            result = call(job, interruption)
            check_json(result, "result")
        except BaseException as error:  # whatever the job raised: recorded
            exc = error
        finally:
            heartbeat.stop()
    duration = time.monotonic() - began
    # The job may have closed or broken the connection: record on a new one.
    connections[using].close_if_unusable_or_obsolete()
    try:
        outcome = _record_non_atomic(job, using, result, exc, permanent, duration)
    except Exception as error:
        # Or it changed its session for good (``SET
        # default_transaction_read_only``, ``SET DateStyle``); a new
        # connection for every record would cost a connect per job.
        logger.warning(
            "Job %s %s: its outcome could not be recorded (%s); the job may "
            "have changed its connection's session. Recording it on a new one.",
            job.pk,
            job.name,
            described(error),
        )
        connections[using].close()
        outcome = _record_non_atomic(job, using, result, exc, permanent, duration)
    if isinstance(exc, WorkerAborted):
        raise exc
    return outcome


def _record_non_atomic(
    job: Job,
    using: str,
    result: Any,
    exc: BaseException | None,
    permanent: bool,
    duration: float,
) -> Outcome | None:
    with claim_transaction(using):
        held = Job.objects.using(using).held(job)
        if held is None:
            logger.warning(
                "Job %s %s: attempt %s lost its lease to another worker (it was "
                "rescued); its outcome (%s) is not recorded.",
                job.pk,
                job.name,
                job.attempts,
                "succeeded" if exc is None else described(exc),
            )
            return None
        if isinstance(exc, CancelledWhileRunning):
            held.record_cancelled(using, exc)
            outcome = Outcome(held, Outcome.CANCELLED, duration, exc)
        elif exc is not None:
            held.record_failure(
                using, exc, permanent=permanent or isinstance(exc, PERMANENT_ERRORS)
            )
            outcome = Outcome.failure(held, duration, exc)
        else:
            held.status = Job.Status.SUCCEEDED
            held.result = result
            held.finished = timezone.now()
            held.record(using)
            outcome = Outcome(held, Outcome.SUCCEEDED, duration)
        _settle([held], using)
        _announce([outcome], using)
    return outcome


def rescue_expired(using: str, limit: int = 100) -> list[Outcome]:
    """Charge running jobs whose lease expired: their worker stopped renewing it
    (killed, frozen, its machine lost). Each gets an ``Error`` (worker lost),
    then a retry or ``failed``; its attempt was counted at its claim.

    In the claim's transaction (locked ``FOR UPDATE SKIP LOCKED``); the
    outcomes are logged and signalled once it commits.
    """
    jobs = Job.objects.using(using).lease_expired()
    if connections[using].features.has_select_for_update_skip_locked:
        jobs = jobs.select_for_update(skip_locked=True)
    outcomes = []
    for job in read_jobs(jobs.order_by("lease_expires", "pk")[:limit]):
        heartbeat = job.heartbeat.isoformat() if job.heartbeat else "never"
        error = WorkerLost(
            f"worker lost: {job.worker} stopped renewing the lease of attempt "
            f"{job.attempts} of {job.max_attempts} (last heartbeat {heartbeat})"
            if job.lease_expires is not None
            else f"worker lost: attempt {job.attempts} of {job.max_attempts} was "
            "running with no lease, so no worker held it"
        )
        logger.error("Job %s %s: %s.", job.pk, job.name, error)
        job.record_failure(using, error)
        outcomes.append(Outcome.failure(job, 0.0, error))
    _settle([o.job for o in outcomes], using)
    _announce(outcomes, using)
    return outcomes
