"""Recurring jobs: ``meta["repeat"]`` as seconds or a cron expression.

A series is a chain of ``Job`` rows. When one occurrence finishes for good
(succeeded or failed), the next is inserted in the same transaction that
records the outcome, under the row lock: a worker that dies mid-run rolls both
back, so the series neither loses nor doubles an occurrence.

After downtime the overdue occurrence runs once, and the next one goes to the
first slot after *now*: missed slots are skipped, not run one by one.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils import timezone

from async_jobs.conf import is_number

if TYPE_CHECKING:
    from async_jobs.models import Job

REPEAT_RULE = (
    "a number of seconds > 0, a timedelta, or a cron expression like "
    "'0 3 * * *' (needs croniter: pip install django-async-jobs[cron])"
)


def _croniter(expression: str) -> Any:
    """croniter's class, or an error that says how to install it."""
    try:
        from croniter import croniter
    except ImportError:
        raise ImportError(
            f"meta['repeat'] is the cron expression {expression!r}, which needs "
            "croniter: pip install django-async-jobs[cron]"
        ) from None
    return croniter


def check_repeat(value: object) -> int | float | str:
    """Validate ``meta['repeat']``; return it as stored (seconds or cron)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        value = int(seconds) if seconds.is_integer() else seconds
    if is_number(value) and value > 0:
        return value
    if isinstance(value, str) and value.strip():
        if _croniter(value).is_valid(value):
            return value
        raise ValueError(f"meta['repeat'] {value!r} is not a valid cron expression.")
    raise ValueError(f"meta['repeat'] is {value!r}; it must be {REPEAT_RULE}.")


def check_repeat_until(value: object) -> str:
    """Validate ``meta['repeat_until']``; return it as an ISO 8601 string."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise ValueError(
            f"meta['repeat_until'] is {value!r}; it must be a datetime "
            "(or its ISO 8601 string)."
        )
    from async_jobs.scheduling import check_awareness

    check_awareness(value, "meta['repeat_until']")
    return value.isoformat()


def _series_end(until: str) -> datetime:
    """A stored ``repeat_until``, comparable with this process's datetimes.

    A series scheduled before USE_TZ was switched keeps the other kind of
    datetime: it is read in settings.TIME_ZONE rather than stop the worker.
    """
    end = datetime.fromisoformat(until)
    if settings.USE_TZ and timezone.is_naive(end):
        return timezone.make_aware(end)
    if not settings.USE_TZ and timezone.is_aware(end):
        return timezone.make_naive(end)
    return end


def _cron_after(expression: str, moment: datetime) -> datetime:
    """The first cron slot after ``moment``, read in settings.TIME_ZONE."""
    if timezone.is_aware(moment):
        moment = timezone.localtime(moment, timezone.get_default_timezone())
    return _croniter(expression)(expression, moment).get_next(datetime)


def first_run_after(meta: dict, now: datetime) -> datetime:
    """When a new series starts if no run_after is given: a cron's next slot."""
    repeat = meta.get("repeat")
    if isinstance(repeat, str):
        return _cron_after(repeat, now)
    return now


def next_slot(repeat: int | float | str, slot: datetime, now: datetime) -> datetime:
    """The series' first slot after both this occurrence's ``slot`` and ``now``."""
    if isinstance(repeat, str):
        return _cron_after(repeat, max(slot, now))
    step = timedelta(seconds=repeat)
    return slot + step * max(1, (now - slot) // step + 1)


def schedule_next(job: Job, using: str) -> Job | None:
    """Insert the next occurrence of a finished repeating job, if any."""
    from async_jobs.models import Job
    from async_jobs.scheduling import save_job

    repeat = job.meta.get("repeat")
    if repeat is None or job.status == Job.Status.CANCELLED:
        return None
    when = next_slot(repeat, job.run_after, timezone.now())
    until = job.meta.get("repeat_until")
    if until is not None and when > _series_end(until):
        return None
    return save_job(
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
