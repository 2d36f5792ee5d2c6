"""``meta["timeout"]``: stop a job that runs longer than it may.

The limit is a ``SIGALRM`` timer, so it interrupts Python code wherever it is
(a sleep, a loop, a slow HTTP call) and the job fails like any other: its
savepoint rolls back, an ``Error`` is recorded, it is retried. Signals only
reach the main thread, so a job run from another thread (``job.execute()`` in
a threaded server) runs without a limit.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class JobTimeout(KeyboardInterrupt):
    """The job ran longer than its ``meta["timeout"]``.

    Like ``KeyboardInterrupt`` it is not an ``Exception``: a job's own
    ``except Exception`` can't swallow it, and psycopg cancels a query it
    interrupts, leaving the connection usable for the rollback.
    """


def can_time_out() -> bool:
    return hasattr(signal, "setitimer") and (
        threading.current_thread() is threading.main_thread()
    )


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``JobTimeout`` in this block once ``seconds`` have passed."""
    if seconds is None or not can_time_out():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise JobTimeout(f"the job ran longer than its timeout of {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
