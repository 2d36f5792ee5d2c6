"""The worker: claim a due job, run it, repeat until told to stop.

``flush_queue`` drives it. Each job gets its own transaction (see
``claiming.py`` for the lock, ``execution.py`` for the bookkeeping).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from async_jobs.claiming import claim, claim_transaction
from async_jobs.execution import Outcome, run_claimed


class WorkerAborted(KeyboardInterrupt):
    """A second stop signal: abandon the running job, roll it back.

    A ``KeyboardInterrupt`` so that, like Ctrl-C, psycopg cancels a query it
    interrupts: otherwise the server would go on running it, holding the job's
    row lock, long after the worker gave up.
    """


@dataclass
class Worker:
    using: str
    queues: Sequence[str] = ()
    max_jobs: int | None = None
    on_outcome: Callable[[Outcome], None] | None = None
    counts: Counter = field(default_factory=Counter)
    stop_requested: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def processed(self) -> int:
        return self.counts.total()

    def run(self) -> Counter:
        """Run due jobs until none is left, ``max_jobs`` ran, or a stop."""
        while not self.stop_requested and (
            self.max_jobs is None or self.processed < self.max_jobs
        ):
            if not self.run_one():
                break
        return self.counts

    def run_one(self) -> bool:
        """Claim and run one due job; False when none was due."""
        with claim_transaction(self.using):
            if self.stop_requested:
                # Asked while waiting for SQLite's write lock, which keeps a
                # signal handler from running until it is granted.
                return False
            jobs = claim(self.using, self.queues, limit=1)
            if not jobs:
                return False
            outcome = run_claimed(jobs[0], self.using)
        self.counts[outcome.status] += 1
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        return True

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        parts = ", ".join(
            f"{self.counts[status]} {label}"
            for status, label in (
                (Outcome.SUCCEEDED, "succeeded"),
                (Outcome.RETRY, "to retry"),
                (Outcome.FAILED, "failed"),
            )
        )
        jobs = "job" if self.processed == 1 else "jobs"
        stopped = " (stopped by signal)" if self.stop_requested else ""
        return f"Ran {self.processed} {jobs} in {elapsed:.2f}s: {parts}{stopped}."


def _say(line: str) -> None:
    """Write to stderr from a signal handler.

    Unbuffered: the signal may have interrupted a write to ``sys.stderr``,
    which a buffered write would re-enter.
    """
    with suppress(AttributeError, OSError, ValueError):  # no usable stderr
        os.write(sys.__stderr__.fileno(), f"{line}\n".encode())


@contextmanager
def stop_on_signals(worker: Worker) -> Iterator[None]:
    """First SIGTERM/SIGINT: finish the running job, then stop. Second: abort it."""

    def handle(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if worker.stop_requested:
            raise WorkerAborted(f"aborted by a second {name}")
        worker.stop_requested = True
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
