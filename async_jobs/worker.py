"""The worker: claim due jobs, run them, repeat until told to stop.

``flush_queue`` drives it. Jobs are claimed ``batch_size`` at a time (1 by
default) and a batch runs in one transaction, each job in a savepoint of its
own (see ``claiming.py`` for the lock, ``execution.py`` for the bookkeeping).

A non-atomic job (long jobs) is claimed alone: its claim commits it
``running`` under a lease, then it runs with no transaction open, and its
outcome is recorded in a transaction of its own. Before claiming, now and
then, the worker rescues the running jobs whose lease expired and, in a
transaction before the claim's, lets the features mend what a dead process
left half-done (``hooks.sweep()``: a group left open).

``run()`` stops when nothing is due. ``loop()`` then waits instead: for a
notification (PostgreSQL, see ``notifications.py``), for the next
``run_after`` it knows of, or for its poll interval; and when the database
connection breaks it logs it and reconnects, with growing pauses.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from itertools import takewhile
from typing import Any

from django.db import (
    DatabaseError,
    Error,
    OperationalError,
    close_old_connections,
    connections,
    transaction,
)

from async_jobs import failures, hooks
from async_jobs.claiming import UnreadableRow, claim, claim_transaction, worth_claiming
from async_jobs.conf import jobs_settings
from async_jobs.execution import (
    AttemptLost,
    LostAttempt,
    Outcome,
    WorkerAborted,
    charge,
    lost_attempt,
    rescue_expired,
    run_claimed_jobs,
    run_non_atomic,
    start_non_atomic,
)
from async_jobs.models import Job
from async_jobs.notifications import Listener, ListenerLost, Wakeup, listens

logger = logging.getLogger("async_jobs")

#: A batch starts no new job once it has run this long (seconds): the jobs it
#: claimed but has not started are locked away from other workers meanwhile.
BATCH_TIME_LIMIT = 1.0
#: Pauses before reconnecting after a database failure: doubling, capped.
RECONNECT_FIRST_PAUSE = 0.1
RECONNECT_MAX_PAUSE = 10.0
#: A job run alone whose transaction the database's trouble loses this many
#: times in a row is charged the attempt: trouble that comes back every time
#: is the job's, and it would hold up the queue for ever.
TROUBLE_STRIKES = 3
#: The longest a worker goes between two looks for expired leases (seconds);
#: it looks every quarter of ``ASYNC_JOBS["LEASE"]`` if that is shorter.
RESCUE_INTERVAL = 5.0


__all__ = ["Worker", "WorkerAborted", "stop_on_signals", "summary", "what_failed"]


def what_failed(exc: BaseException) -> str:
    """What led to ``exc``, first cause first.

    A lost connection often raises twice: the job's query meets the server's
    "terminating connection", then Django's attempt to reconnect is refused.
    Both are worth a line in the operator's mail.
    """
    messages: list[str] = []
    link: BaseException | None = exc
    while link is not None and len(messages) < 5:
        message = " ".join(failures.message(link).split()) or type(link).__name__
        if message not in messages:
            messages.insert(0, message)
        link = link.__cause__ or link.__context__
    return ", then: ".join(messages)


#: SQLSTATE classes and codes of errors that are the database's trouble, not
#: the job's: connection lost (08), transaction rollback (40: serialization
#: failure, deadlock), insufficient resources (53), a lock not available
#: (55P03), the server shutting down (57P01-57P03).
_TRANSIENT_SQLSTATES = ("08", "40", "53", "55P03", "57P")


def _databases_trouble(error: DatabaseError) -> bool:
    """Whether the jobs' transaction failed for the database's sake, not for
    what the jobs did: the jobs then run again, uncharged, once it answers.

    An ``OperationalError`` without a known SQLSTATE (SQLite's "database is
    locked", a closed connection) is; one with another SQLSTATE, such as a
    statement timeout in a deferred trigger at the commit, is the job's: it
    would fail the same way every time.
    """
    if not isinstance(error, OperationalError):
        return False
    cause = error.__cause__
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return not sqlstate or sqlstate.startswith(_TRANSIENT_SQLSTATES)


#: Signals a job may take over that the worker needs back as it set them: its
#: stop signals, and SIGALRM (not on Windows), which ends the process by default.
_KEPT_SIGNALS = tuple(
    sig
    for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGALRM", None))
    if sig is not None
)


@dataclass
class Worker:
    using: str
    queues: Sequence[str] = ()
    max_jobs: int | None = None
    batch_size: int = 1
    max_seconds: float | None = None
    on_outcome: Callable[[Outcome], None] | None = None
    #: Told of each attempt just before it starts (see ``supervisor.py``).
    on_attempt: Callable[[Job], None] | None = None
    counts: Counter = field(default_factory=Counter)
    stop_requested: bool = False
    started: float = field(default_factory=time.monotonic)
    #: Attempts whose transaction was lost, to record once the database answers.
    owed: list[LostAttempt] = field(default_factory=list)
    #: Claims left to make one job at a time (after a batch's commit failed).
    alone: int = 0
    #: Times in a row the database's trouble lost a job's transaction, by id.
    strikes: dict[int, int] = field(default_factory=dict)
    #: Whether jobs ran on the connection since the worker last closed it.
    used: bool = False
    #: The handlers of ``_KEPT_SIGNALS`` as the worker set them, before any job.
    handlers: dict[int, Any] | None = None
    #: Whether the alarm timer is the jobs': it wasn't armed before the first.
    jobs_timer: bool = False
    # loop() only: when the jobs it knows of are due (a heap, monotonic clock),
    # when it last looked for due jobs, and the socket pair a stop request wakes.
    due_times: list[float] = field(default_factory=list)
    last_claim: float = -math.inf
    last_rescue: float = -math.inf
    _waker: tuple[socket.socket, socket.socket] | None = None

    @property
    def processed(self) -> int:
        return self.counts.total()

    @property
    def deadline(self) -> float:
        if self.max_seconds is None:
            return math.inf
        return self.started + self.max_seconds

    def may_continue(self) -> bool:
        return (
            not self.stop_requested
            and (self.max_jobs is None or self.processed < self.max_jobs)
            and time.monotonic() < self.deadline
        )

    def request_stop(self) -> None:
        """Finish the running job, then stop; wakes a waiting ``loop()``."""
        self.stop_requested = True
        if self._waker is not None:
            with suppress(OSError):
                self._waker[1].send(b"\0")

    def run(self) -> Counter:
        """Run due jobs until none is left, ``max_jobs`` ran, time is up or a stop."""
        while self.may_continue() and self.run_batch():
            pass
        return self.counts

    def run_batch(self) -> bool:
        """Claim due jobs and run them in one transaction; False when none was due."""
        limit = 1 if self.alone else self.batch_size
        self.alone = max(0, self.alone - 1)
        if self.max_jobs is not None:
            limit = min(limit, self.max_jobs - self.processed)
        self._pay_owed()
        self._tidy_process()
        self.last_claim = time.monotonic()
        if not worth_claiming(self.using, self.queues):
            return False  # SQLite: nothing due, so no write lock taken
        rescuing = self._rescue_due()
        if rescuing:
            self._sweep()
        long_job: Job | None = None
        attempted: list[Job] = []

        def starting(job: Job) -> None:
            if attempted:
                self._tidy_process()
            attempted.append(job)
            self.used = True
            if self.on_attempt is not None:
                self.on_attempt(job)

        try:
            with claim_transaction(self.using):
                if self.stop_requested:
                    # Asked while waiting for SQLite's write lock, which keeps a
                    # signal handler from running until it is granted.
                    return False
                if rescuing:
                    self._rescue()
                jobs = claim(self.using, self.queues, limit, savepoint=True)
                # Atomic jobs run here; a non-atomic job alone, after its claim
                # commits. Claimed jobs the batch stops before are released.
                atomic_jobs = list(takewhile(lambda job: job.atomic, jobs))
                if jobs and not atomic_jobs:
                    long_job = jobs[0]
                    start_non_atomic(long_job, self.using, self.on_attempt)
                    outcomes = []
                else:
                    outcomes = run_claimed_jobs(
                        atomic_jobs,
                        self.using,
                        self._batch_may_continue,
                        starting,
                        savepoint_set=True,
                        commit=True,
                    )
        except AttemptLost as lost:
            # The whole batch rolled back; the attempt that lost it is charged.
            self.owed.append(lost.lost)
            logger.error("Job %s: %s", lost.lost.job_id, lost.lost.reason)
            self._drop_connection()
            self._pay_owed()
            return True
        except Exception as error:
            if long_job is not None:
                raise
            if not attempted:
                if not self._claim_failed(error):
                    raise
                return True
            if not isinstance(error, DatabaseError):
                raise
            times = 1
            if _databases_trouble(error):
                if not self._struck_out(attempted, error):
                    return True
                times = TROUBLE_STRIKES
            self._refused(attempted, error, times)
            return True
        for outcome in outcomes:
            self.strikes.pop(outcome.job.pk, None)
            self._count(outcome)
        if long_job is not None:
            self.used = True
            recorded = run_non_atomic(long_job, self.using)
            if recorded is not None:  # None: its lease was taken over
                self._count(recorded)
        return bool(jobs)

    def _tidy_process(self) -> None:
        """Put back what jobs left of the process's signals, between jobs.

        A job may arm ``signal.alarm()`` and fail before it disarms it: the
        alarm would end the process during a later job, which would be
        charged. Or it may ignore SIGTERM, and the worker could not be
        stopped. Main thread only: signals are handled there.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        if self.handlers is None:
            self.handlers = {sig: signal.getsignal(sig) for sig in _KEPT_SIGNALS}
            # One the process armed before the worker started is left alone.
            self.jobs_timer = hasattr(signal, "getitimer") and not any(
                signal.getitimer(signal.ITIMER_REAL)
            )
            return
        if self.jobs_timer and any(signal.getitimer(signal.ITIMER_REAL)):
            signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in self.handlers.items():
            if handler is not None and signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)

    def _claim_failed(self, error: Exception) -> bool:
        """The claim (or the rescue before it) failed, before any job ran;
        False if that is the database's failure, for the caller to raise.

        On a connection jobs ran on, it is made again on a new one, once:
        they may have changed its session in ways that outlast their
        transaction (``SET default_transaction_read_only``, ``SET
        DateStyle``, a timeout that ended it). Else a row no worker can read
        is failed unread.
        """
        if self.used:
            logger.warning(
                "The claim failed on a connection jobs have run on (%s); one may "
                "have changed its session. Claiming again on a new connection.",
                what_failed(error),
            )
            self._drop_connection()
        elif isinstance(error, UnreadableRow):
            logger.error("%s: it fails, unread.", error)
            if Job.objects.using(self.using).fail_unreadable(error.job_id, error):
                self.counts[Outcome.FAILED] += 1
        else:
            return False
        return True

    def _drop_connection(self) -> None:
        """Close the jobs' connection after its transaction failed: the next
        statement opens a new one, in a session no job has changed."""
        self.used = False
        with suppress(Error):
            connections[self.using].close()

    def _struck_out(self, attempted: list[Job], error: DatabaseError) -> bool:
        """The database's trouble lost the jobs' transaction once they had run
        (a serialization failure, a deadlock, the connection lost at the
        commit): they run again, uncharged, after a pause; a batch's one at a
        time. True when a job run alone has lost it ``TROUBLE_STRIKES`` times
        in a row: it is then charged, as if refused. While the database is
        away, the next claim fails before any job runs, and no strike counts.
        """
        self._drop_connection()
        if len(attempted) > 1:
            self.alone = len(attempted)
            strikes = 1
            what = f"A batch of {len(attempted)} jobs"
            again = "them again one at a time"
        else:
            job_id = attempted[0].pk
            strikes = self.strikes.pop(job_id, 0) + 1
            if strikes >= TROUBLE_STRIKES:
                return True
            self.strikes[job_id] = strikes
            if len(self.strikes) > 100:  # ids of jobs other workers ran since
                del self.strikes[next(iter(self.strikes))]
            what = f"Job {job_id}"
            again = f"it again ({strikes} in a row; at {TROUBLE_STRIKES} it is charged)"
        pause = RECONNECT_FIRST_PAUSE * 2 ** (strikes - 1)
        logger.warning(
            "%s: the database lost the transaction (%s); uncharged, running %s, "
            "in %.1fs.",
            what,
            what_failed(error),
            again,
            pause,
        )
        self._pause(pause)
        return False

    def _refused(
        self, attempted: list[Job], error: DatabaseError, times: int = 1
    ) -> None:
        """The database refused the jobs' transaction once they had run: most
        often at the commit, where deferred constraints (Django's foreign keys
        are deferred on PostgreSQL and SQLite) and constraint triggers are
        checked. Nothing was written, their attempts included. A job run alone
        is charged the attempt; a batch's jobs are claimed again one at a time,
        so that the one at fault is."""
        self._drop_connection()
        if len(attempted) > 1:
            logger.error(
                "The database refused the transaction of a batch of %s jobs (%s); "
                "running them one at a time to find the job at fault.",
                len(attempted),
                what_failed(error),
            )
            self.alone = len(attempted)
            return
        in_a_row = f" {times} times in a row" if times > 1 else ""
        lost = lost_attempt(
            attempted[0],
            f"the database refused its transaction{in_a_row}: {error}",
            error,
        )
        logger.error("Job %s: %s", lost.job_id, lost.reason)
        self.owed.append(lost)
        self._pay_owed()

    def _rescue_due(self) -> bool:
        """Whether to look again for what dead workers left behind."""
        now = time.monotonic()
        if now - self.last_rescue < min(RESCUE_INTERVAL, jobs_settings().lease / 4):
            return False
        self.last_rescue = now
        return True

    def _sweep(self) -> None:
        """Let the features mend what a dead process left half-done (a group
        left open), in a short transaction of its own: what they lock is not
        held while the batch's jobs run."""
        with transaction.atomic(using=self.using):
            hooks.sweep(self.using)

    def _rescue(self) -> None:
        """In the claim's transaction: charge the running jobs whose lease
        expired (their worker is gone), so they run again."""
        for outcome in rescue_expired(self.using):
            if outcome.status == Outcome.RETRY:
                self._expect(outcome.job.run_after.timestamp() - time.time())

    def _pay_owed(self) -> None:
        """Record the attempts whose transaction was lost (a DatabaseError if the
        database is still away: they wait for the next try)."""
        while self.owed:
            lost = self.owed[0]
            outcome = charge(lost, self.using)
            self.owed.pop(0)
            if outcome is not None:
                self._count(outcome)

    def _batch_may_continue(self) -> bool:
        return (
            not self.stop_requested
            and time.monotonic() - self.last_claim < BATCH_TIME_LIMIT
            and time.monotonic() < self.deadline
        )

    def _count(self, outcome: Outcome) -> None:
        self.counts[outcome.status] += 1
        if outcome.status == Outcome.RETRY:
            self._expect(outcome.job.run_after.timestamp() - time.time())
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def _expect(self, delay: float) -> None:
        heapq.heappush(self.due_times, time.monotonic() + delay)

    def loop(self, sleep: float) -> Counter:
        """Run jobs as they fall due until a stop, ``max_jobs`` or ``max_seconds``.

        Looks for due jobs at least every ``sleep`` seconds; on PostgreSQL a
        notification wakes it as soon as a transaction schedules one.
        """
        listener = Listener(self.using) if listens(self.using) else None
        failures = 0
        with self._waking():
            try:
                while self.may_continue():
                    try:
                        # As a request does: drop a connection past its
                        # CONN_MAX_AGE, or broken, before the next batch.
                        close_old_connections()
                        if listener is not None:
                            if not listener.connected:
                                listener.connect()
                            self._heed(listener.receive())  # drained while busy too
                        if not self.run_batch():
                            self._wait(listener, sleep)
                        failures = 0
                    except ListenerLost as exc:
                        logger.warning(
                            "Lost the LISTEN connection to %r (%s); reconnecting.",
                            self.using,
                            exc,
                        )
                        assert listener is not None  # only a listener raises it
                        listener.close()
                    except Error as exc:
                        failures += 1
                        pause = min(
                            RECONNECT_MAX_PAUSE,
                            RECONNECT_FIRST_PAUSE * 2 ** (failures - 1),
                        )
                        logger.error(
                            "Database %r failed (%s); the jobs in flight were rolled "
                            "back and stay pending. Reconnecting in %.1fs.",
                            self.using,
                            what_failed(exc),
                            pause,
                        )
                        self._disconnect(listener)
                        self._pause(pause)
            finally:
                if listener is not None:
                    listener.close()
        return self.counts

    def _wait(self, listener: Listener | None, sleep: float) -> None:
        """Return when a job may be due: announced, expected, or time to poll."""
        while self.due_times and self.due_times[0] <= self.last_claim:
            heapq.heappop(self.due_times)  # looked for already
        poll = time.monotonic() + sleep
        while self.may_continue():
            now = time.monotonic()
            next_due = self.due_times[0] if self.due_times else math.inf
            until = min(poll, next_due, self.deadline)
            if until <= now:
                if listener is not None and now >= poll:
                    listener.check()  # a silently broken connection shows no data
                return
            if (
                self._sleep(until - now, listener)
                and listener is not None  # True from _sleep says so
                and self._heed(listener.receive())
            ):
                return

    def _heed(self, wakeups: Iterable[Wakeup]) -> bool:
        """Note the announced jobs this worker runs; True if one is due now."""
        due = False
        for wakeup in wakeups:
            if wakeup.concerns(self.queues):
                delay = wakeup.delay()
                if delay <= 0:
                    due = True
                else:
                    self._expect(delay)
        return due

    def _sleep(self, seconds: float, listener: Listener | None = None) -> bool:
        """Sleep until a stop request, or data on the listener: True for the latter."""
        assert self._waker is not None, "only inside _waking()"
        waker = self._waker[0]
        watched: list[socket.socket | int] = (
            [waker] if listener is None else [waker, listener.fileno()]
        )
        readable, _, _ = select.select(watched, [], [], max(0.0, seconds))
        if waker in readable:
            with suppress(OSError):
                waker.recv(4096)
        return listener is not None and listener.fileno() in readable

    def _pause(self, seconds: float) -> None:
        seconds = max(0.0, min(seconds, self.deadline - time.monotonic()))
        if self._waker is None:
            time.sleep(seconds)  # run(): a short pause, no stop request to heed
        else:
            self._sleep(seconds)

    def _disconnect(self, listener: Listener | None) -> None:
        """Drop both connections; the next attempt opens fresh ones."""
        if listener is not None:
            listener.close()
        with suppress(Error):
            connections[self.using].close()

    @contextmanager
    def _waking(self) -> Iterator[None]:
        self._waker = socket.socketpair()
        for end in self._waker:
            end.setblocking(False)
        try:
            yield
        finally:
            waker, self._waker = self._waker, None
            for end in waker:
                end.close()

    def summary(self) -> str:
        return summary(
            self.counts, time.monotonic() - self.started, stopped=self.stop_requested
        )


def summary(counts: Counter, elapsed: float, *, stopped: bool) -> str:
    """The one line a run ends with."""
    parts = ", ".join(
        f"{counts[status]} {label}"
        for status, label in (
            (Outcome.SUCCEEDED, "succeeded"),
            (Outcome.RETRY, "to retry"),
            (Outcome.FAILED, "failed"),
        )
    )
    if counts[Outcome.CANCELLED]:
        parts += f", {counts[Outcome.CANCELLED]} cancelled while running"
    jobs = "job" if counts.total() == 1 else "jobs"
    stopped_by = " (stopped by signal)" if stopped else ""
    return f"Ran {counts.total()} {jobs} in {elapsed:.2f}s: {parts}{stopped_by}."


def _say(line: str) -> None:
    """Write to stderr from a signal handler.

    Unbuffered: the signal may have interrupted a write to ``sys.stderr``,
    which a buffered write would re-enter.
    """
    with suppress(AttributeError, OSError, ValueError):  # no usable stderr
        if sys.__stderr__ is not None:
            os.write(sys.__stderr__.fileno(), f"{line}\n".encode())


@contextmanager
def stop_on_signals(worker: Worker) -> Iterator[None]:
    """First SIGTERM/SIGINT: finish the running job, then stop. Second: abort it."""

    def handle(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if worker.stop_requested:
            raise WorkerAborted(f"aborted by a second {name}")
        worker.request_stop()
        _say(
            f"{name} received: stopping after the running job; {name} again aborts it."
        )

    previous = {
        sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
