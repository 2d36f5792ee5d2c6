"""Time arithmetic of recurring jobs: cron expressions and a series' next slot.

Cron expressions need croniter (``pip install django-async-jobs[cron]``);
without it, a cron series gets an error that says so.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

REPEAT_RULE = (
    "a number of seconds > 0, a timedelta, or a cron expression like "
    "'0 3 * * *' (needs croniter: pip install django-async-jobs[cron])"
)


def is_valid_cron(expression: str) -> bool:
    return bool(_croniter(expression).is_valid(expression))


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


def series_end(until: str) -> datetime:
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
