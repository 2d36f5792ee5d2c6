"""``meta["timeout"]``: stop a job that runs longer than it may.

A watchdog thread waits out the limit, then sends the main thread
:data:`TIMEOUT_SIGNAL`, whose handler raises ``JobTimeout``. A signal
interrupts Python code wherever it is (a sleep, a loop, a slow HTTP call, a
PostgreSQL query, which psycopg then cancels) and the job fails like any
other: its savepoint rolls back, an ``Error`` is recorded, it is retried.

Not ``SIGALRM``: that belongs to the job. A job may install its own
``SIGALRM`` handler, or call ``signal.alarm()`` or ``setitimer()``, which
share one timer per process; the limit neither uses nor disturbs them. It
holds unless the job itself takes :data:`TIMEOUT_SIGNAL` (installs a handler
for it, blocks it with ``pthread_sigmask``), which nothing does by accident.

Signals only reach the main thread's handlers, so a job run from another
thread (``job.execute()`` in a threaded server) runs without a limit.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: What the watchdog sends the main thread when a job's time is up: a
#: real-time signal (on Linux, ``SIGRTMAX - 2``), which no library sends by
#: accident; where there is none, ``SIGVTALRM``.
TIMEOUT_SIGNAL: int | None = (
    signal.SIGRTMAX - 2
    if hasattr(signal, "SIGRTMAX")
    else getattr(signal, "SIGVTALRM", None)
)


class JobTimeout(KeyboardInterrupt):
    """The job ran longer than its ``meta["timeout"]``.

    Like ``KeyboardInterrupt`` it is not an ``Exception``: a job's own
    ``except Exception`` can't swallow it, and psycopg cancels a query it
    interrupts, leaving the connection usable for the rollback.
    """


def can_time_out() -> bool:
    return (
        TIMEOUT_SIGNAL is not None
        and hasattr(signal, "pthread_kill")
        and hasattr(signal, "sigwait")
        and threading.current_thread() is threading.main_thread()
    )


class Interruption:
    """Raise an exception in the main thread, from any thread, while armed.

    ``time_limit()`` arms it around a job; a non-atomic job's heartbeat uses
    it to stop the job whose lease was lost or which was cancelled.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.armed = False
        self.pending: BaseException | None = None

    def interrupt(self, exc: BaseException) -> bool:
        """Raise ``exc`` in the main thread's job; False if none is armed."""
        with self.lock:
            if not self.armed or self.pending is not None:
                return False
            assert TIMEOUT_SIGNAL is not None  # armed only where it exists
            main = threading.main_thread().ident
            assert main is not None
            self.pending = exc
            signal.pthread_kill(main, TIMEOUT_SIGNAL)
            return True


@contextmanager
def time_limit(
    seconds: float | None, interruption: Interruption | None = None
) -> Iterator[None]:
    """Raise ``JobTimeout`` in this block once ``seconds`` have passed, and what
    ``interruption.interrupt()`` is given, from another thread, until it ends."""
    if (seconds is None and interruption is None) or not can_time_out():
        yield
        return
    assert TIMEOUT_SIGNAL is not None
    # The signal is only sent under the lock while armed: once the block has
    # disarmed it, none is sent, and one sent before but not yet handled is
    # drained before the previous handler is put back (SIG_DFL would end the
    # process).
    interrupts = interruption or Interruption()

    def expire(signum: int, frame: object) -> None:
        with interrupts.lock:
            exc, interrupts.pending = interrupts.pending, None
            if exc is not None:
                interrupts.armed = False
        if exc is not None:
            raise exc

    def fire() -> None:
        interrupts.interrupt(
            JobTimeout(f"the job ran longer than its timeout of {seconds}s")
        )

    previous = signal.signal(TIMEOUT_SIGNAL, expire)
    with interrupts.lock:
        interrupts.armed, interrupts.pending = True, None
    watchdog = None if seconds is None else threading.Timer(seconds, fire)
    if watchdog is not None:
        watchdog.daemon = True
        watchdog.start()
    try:
        yield
    finally:
        try:
            with interrupts.lock:
                interrupts.armed, interrupts.pending = False, None
        finally:
            if watchdog is not None:
                watchdog.cancel()
                watchdog.join()
            _restore(TIMEOUT_SIGNAL, previous)


def _restore(signum: int, previous: object) -> None:
    """Put ``previous`` back as the handler of ``signum``, none left pending."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
    try:
        if signum in signal.sigpending():
            signal.sigwait({signum})
        signal.signal(signum, previous)  # type: ignore[arg-type]
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
