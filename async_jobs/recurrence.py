"""Recurring jobs: ``meta["repeat"]`` as seconds or a cron expression.

A series is a chain of ``Job`` rows. When one occurrence finishes for good
(succeeded or failed), the next is inserted in the same transaction that
records the outcome, under the row lock: a worker that dies mid-run rolls both
back, so the series neither loses nor doubles an occurrence.

After downtime the overdue occurrence runs once, and the next one goes to the
first slot after *now*: missed slots are skipped, not run one by one. The time
arithmetic is ``cron.py``'s.

A series ends when its next slot would fall after ``repeat_until``, or after
the last year a job may be scheduled in (``validation.LATEST_YEAR``). One
whose stored ``meta`` no longer validates (a row written by hand or by an
older version) ends too, with an error logged: it can't stop the worker that
finished its occurrence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.utils import timezone

from async_jobs.cron import next_slot, series_end
from async_jobs.models import Job
from async_jobs.uniqueness import save_or_find_twin
from async_jobs.validation import check_storable, check_stored_meta

logger = logging.getLogger("async_jobs")


def schedule_next_occurrences(jobs: Sequence[Job], using: str) -> None:
    """``hooks.settled``: insert the next occurrence of each finished series.

    A series whose next occurrence can't be computed from its stored
    ``meta`` ends there, logged: the occurrence's outcome is recorded, and
    the worker goes on.
    """
    for job in jobs:
        try:
            schedule_next(job, using)
        except ValueError as exc:
            logger.error("Job %s %s: its series ends: %s", job.pk, job.name, exc)


def schedule_next(job: Job, using: str) -> Job | None:
    """Insert the next occurrence of a finished repeating job, if any.

    ``ValueError`` naming the value when the job's stored ``meta`` doesn't
    validate, so that its next slot can't be computed.
    """
    if job.status == Job.Status.CANCELLED:  # a cancel ends the series
        return None
    if not isinstance(job.meta, dict) or job.meta.get("repeat") is None:
        return None  # not a series (a meta that isn't a dict has no repeat)
    meta = check_stored_meta(job.meta)
    when = next_slot(meta["repeat"], job.run_after, timezone.now())
    until = meta.get("repeat_until")
    if until is not None and when > series_end(until):
        return None
    try:
        check_storable(when, "The series' next slot")
    except ValueError:
        return None  # past the last year a job can be scheduled in: it ends
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
