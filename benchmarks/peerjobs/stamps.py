"""The latency runs' jobs, the same for every system: each writes the moment
its function starts, so that commit-to-start is measured to the same point for
all (each system's own "started" stamp is taken at a different step of its
claim), then does what the drain's job of its kind does."""

import os
import time

from shop.models import Mark

#: The file the worker appends ``label time`` lines to (set by peers.py).
STAMPS = "ASYNC_JOBS_BENCH_STAMPS"


def stamp(label: str) -> None:
    started = time.time()
    with open(os.environ[STAMPS], "a") as stamps:
        stamps.write(f"{label} {started!r}\n")


def noop(label: str) -> None:
    """async_jobs' job: a no-op."""
    stamp(label)


def record(label: str) -> str:
    """async_jobs' job: one row."""
    stamp(label)
    Mark.objects.create(label=label)
    return label
