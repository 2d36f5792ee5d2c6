"""Time arithmetic of recurring jobs: cron expressions and a series' next slot.

Cron expressions need croniter (``pip install django-async-jobs[cron]``);
without it, a cron series gets an error that says so.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

#: The shortest and longest interval of a series, in seconds. Below a second
#: a series would keep its workers busy with nothing else (and a step that
#: rounds to no time at all can't advance); beyond ten years it would outlive
#: any deployment, and its arithmetic would soon overflow Python's datetimes.
REPEAT_MIN = 1
REPEAT_MAX = 3650 * 86400

REPEAT_RULE = (
    f"a number of seconds from {REPEAT_MIN} to {REPEAT_MAX} (3650 days), a "
    "timedelta in that range, or a cron expression like '0 3 * * *' that has "
    "a next date (needs croniter: pip install django-async-jobs[cron])"
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
    try:
        end = datetime.fromisoformat(until)
    except (TypeError, ValueError):
        raise ValueError(
            f"meta['repeat_until'] is {until!r}; stored, it must be a datetime's "
            "ISO 8601 string."
        ) from None
    if settings.USE_TZ and timezone.is_naive(end):
        return timezone.make_aware(end)
    if not settings.USE_TZ and timezone.is_aware(end):
        return timezone.make_naive(end)
    return end


def cron_after(expression: str, moment: datetime) -> datetime:
    """The first cron slot after ``moment``, read in settings.TIME_ZONE.

    ``ValueError`` naming the expression when there is none: an invalid
    expression, or one with no next date ("0 0 31 2 *", February 31st).
    """
    croniter = _croniter(expression)
    if timezone.is_aware(moment):
        moment = timezone.localtime(moment, timezone.get_default_timezone())
    try:
        return croniter(expression, moment).get_next(datetime)
    except (ValueError, TypeError, OverflowError, KeyError) as exc:
        # croniter's own errors are ValueErrors; the others come from odd input.
        raise ValueError(
            f"meta['repeat'] {expression!r} has no next date after "
            f"{moment.isoformat()} ({type(exc).__name__}: {exc}); it must be "
            f"{REPEAT_RULE}."
        ) from None


def first_run_after(meta: dict, now: datetime) -> datetime:
    """When a new series starts if no run_after is given: a cron's next slot."""
    repeat = meta.get("repeat")
    if isinstance(repeat, str):
        return cron_after(repeat, now)
    return now


def next_slot(repeat: int | float | str, slot: datetime, now: datetime) -> datetime:
    """The series' first slot after both this occurrence's ``slot`` and ``now``.

    ``ValueError`` naming ``repeat`` when it can't be computed: a stored
    ``repeat`` that is no interval nor cron expression, an interval too short
    to advance or so long the slot overflows, a cron expression with no next
    date.
    """
    if isinstance(repeat, str):
        return cron_after(repeat, max(slot, now))
    if isinstance(repeat, bool) or not isinstance(repeat, int | float):
        raise ValueError(
            f"meta['repeat'] is {repeat!r}; the series' next slot can't be "
            f"computed: it must be {REPEAT_RULE}."
        )
    try:
        step = timedelta(seconds=repeat)
        return slot + step * max(1, (now - slot) // step + 1)
    except (ZeroDivisionError, OverflowError, ValueError) as exc:
        raise ValueError(
            f"meta['repeat'] is {repeat!r}; the series' next slot after "
            f"{slot.isoformat()} can't be computed ({type(exc).__name__}: {exc}): "
            f"it must be {REPEAT_RULE}."
        ) from None
