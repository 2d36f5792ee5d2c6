"""Recurring jobs: ``meta["repeat"]`` as seconds or a cron expression.

A series is a chain of ``Job`` rows. When one occurrence finishes for good
(succeeded or failed), the next is inserted in the same transaction that
records the outcome, under the row lock: a worker that dies mid-run rolls both
back, so the series neither loses nor doubles an occurrence.

After downtime the overdue occurrence runs once, and the next one goes to the
first slot after *now*: missed slots are skipped, not run one by one. The time
arithmetic is ``cron.py``'s.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.utils import timezone

from async_jobs.cron import next_slot, series_end
from async_jobs.models import Job
from async_jobs.uniqueness import save_or_find_twin


def schedule_next_occurrences(jobs: Sequence[Job], using: str) -> None:
    """``hooks.settled``: insert the next occurrence of each finished series."""
    for job in jobs:
        schedule_next(job, using)


def schedule_next(job: Job, using: str) -> Job | None:
    """Insert the next occurrence of a finished repeating job, if any."""
    if job.status == Job.Status.CANCELLED:  # a cancel ends the series
        return None
    repeat = job.meta.get("repeat")
    if repeat is None:
        return None
    when = next_slot(repeat, job.run_after, timezone.now())
    until = job.meta.get("repeat_until")
    if until is not None and when > series_end(until):
        return None
    return save_or_find_twin(
        Job(
            name=job.name,
            args=job.args,
            kwargs=job.kwargs,
            meta=dict(job.meta),
            queue=job.queue,
            priority=job.priority,
            max_attempts=job.max_attempts,
            run_after=when,
        ),
        using,
    )
