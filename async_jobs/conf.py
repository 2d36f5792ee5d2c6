"""The ``ASYNC_JOBS`` setting: its defaults, and the rules a value must follow.

Every key is optional. A bad value is reported by the system checks at start-up
(see ``checks.py``) and, should code run without them, raised as
``ImproperlyConfigured`` the first time the setting is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from functools import cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS, router
from django.dispatch import receiver

#: How long ``prune_jobs`` keeps a finished job, by status; failures the longest,
#: as they are what someone comes back to look at.
PRUNE_AFTER_DEFAULTS = {
    "succeeded": timedelta(days=7),
    "cancelled": timedelta(days=7),
    "failed": timedelta(days=30),
}

DEFAULTS = {
    "DATABASE": None,
    "QUEUES": None,
    "MAX_ATTEMPTS": 3,
    "BACKOFF_BASE": 10,
    "BACKOFF_MAX": 3600,
    "BACKOFF_JITTER": 0.25,
    "ALLOWED_MODULES": None,
    "BATCH_SIZE": 1,
    "POLL_INTERVAL": 1.0,
    # A dict given in the setting is merged over this one.
    "PRUNE_AFTER": PRUNE_AFTER_DEFAULTS,
}


@dataclass(frozen=True)
class JobsSettings:
    database: str | None
    queues: tuple[str, ...] | None
    max_attempts: int
    backoff_base: float
    backoff_max: float
    backoff_jitter: float
    allowed_modules: tuple[str, ...] | None
    batch_size: int
    poll_interval: float
    prune_after: dict[str, timedelta | None]


def is_number(value: object) -> bool:
    """A finite int or float, not a bool: what every "seconds" value must be."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _is_str_list(value: object) -> bool:
    return isinstance(value, list | tuple) and all(
        isinstance(item, str) and item for item in value
    )


def _as_age(value: object) -> timedelta | None:
    """A prune age as a ``timedelta``: from a ``timedelta`` or seconds."""
    if value is None or isinstance(value, timedelta):
        return value
    return timedelta(seconds=value)


def _prune_after_problems(value: object) -> list[str]:
    if not isinstance(value, dict):
        return [
            "ASYNC_JOBS['PRUNE_AFTER'] must be a dict of ages by status, "
            f"not {value!r}."
        ]
    found = []
    unknown = sorted(set(value) - set(PRUNE_AFTER_DEFAULTS), key=str)
    if unknown:
        found.append(
            f"ASYNC_JOBS['PRUNE_AFTER'] has unknown status(es) "
            f"{', '.join(map(repr, unknown))}; allowed are "
            f"{', '.join(map(repr, PRUNE_AFTER_DEFAULTS))} (pending jobs are "
            "never pruned)."
        )
    for status, age in value.items():
        if status not in PRUNE_AFTER_DEFAULTS or age is None:
            continue
        if not (
            (isinstance(age, timedelta) and age >= timedelta(0))
            or (is_number(age) and 0 <= age <= timedelta.max.total_seconds())
        ):
            found.append(
                f"ASYNC_JOBS['PRUNE_AFTER'][{status!r}] must be a timedelta, a "
                f"number of seconds >= 0, or None to keep them, not {age!r}."
            )
    return found


def problems(raw: object) -> list[str]:
    """Describe everything wrong with a raw ``ASYNC_JOBS`` value."""
    if not isinstance(raw, dict):
        return [f"ASYNC_JOBS must be a dict, not {type(raw).__name__}."]
    found = []
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        found.append(
            f"ASYNC_JOBS has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed keys are {', '.join(DEFAULTS)}."
        )
    value = {**DEFAULTS, **raw}
    if value["DATABASE"] is not None and value["DATABASE"] not in settings.DATABASES:
        found.append(
            f"ASYNC_JOBS['DATABASE'] is {value['DATABASE']!r}, which is not a key "
            f"of DATABASES ({', '.join(map(repr, settings.DATABASES))})."
        )
    if value["QUEUES"] is not None and not (
        _is_str_list(value["QUEUES"]) and value["QUEUES"]
    ):
        found.append(
            "ASYNC_JOBS['QUEUES'] must be None or a non-empty list of queue names, "
            f"not {value['QUEUES']!r}."
        )
    max_attempts = value["MAX_ATTEMPTS"]
    if not (isinstance(max_attempts, int) and not isinstance(max_attempts, bool)) or (
        max_attempts < 1
    ):
        found.append(
            f"ASYNC_JOBS['MAX_ATTEMPTS'] must be an integer of at least 1, "
            f"not {max_attempts!r}."
        )
    for key in ("BACKOFF_BASE", "BACKOFF_MAX"):
        if not is_number(value[key]) or value[key] < 0:
            found.append(
                f"ASYNC_JOBS[{key!r}] must be a number of seconds >= 0, "
                f"not {value[key]!r}."
            )
    jitter = value["BACKOFF_JITTER"]
    if not is_number(jitter) or not 0 <= jitter <= 1:
        found.append(
            f"ASYNC_JOBS['BACKOFF_JITTER'] must be a number from 0 to 1, "
            f"not {jitter!r}."
        )
    if value["ALLOWED_MODULES"] is not None and not _is_str_list(
        value["ALLOWED_MODULES"]
    ):
        found.append(
            "ASYNC_JOBS['ALLOWED_MODULES'] must be None or a list of module names, "
            f"not {value['ALLOWED_MODULES']!r}."
        )
    found.extend(_prune_after_problems(value["PRUNE_AFTER"]))
    found.extend(_worker_problems(value))
    return found


def _worker_problems(value: dict) -> list[str]:
    found = []
    batch_size = value["BATCH_SIZE"]
    if (
        not isinstance(batch_size, int)
        or isinstance(batch_size, bool)
        or batch_size < 1
    ):
        found.append(
            "ASYNC_JOBS['BATCH_SIZE'] must be an integer of at least 1 (jobs per "
            f"worker transaction), not {batch_size!r}."
        )
    if not is_number(value["POLL_INTERVAL"]) or value["POLL_INTERVAL"] <= 0:
        found.append(
            "ASYNC_JOBS['POLL_INTERVAL'] must be a number of seconds > 0, "
            f"not {value['POLL_INTERVAL']!r}."
        )
    return found


@cache
def jobs_settings() -> JobsSettings:
    """The validated ``ASYNC_JOBS`` setting, merged over the defaults."""
    raw = getattr(settings, "ASYNC_JOBS", {})
    found = problems(raw)
    if found:
        raise ImproperlyConfigured(" ".join(found))
    value = {**DEFAULTS, **raw}
    return JobsSettings(
        database=value["DATABASE"],
        queues=None if value["QUEUES"] is None else tuple(value["QUEUES"]),
        max_attempts=value["MAX_ATTEMPTS"],
        backoff_base=value["BACKOFF_BASE"],
        backoff_max=value["BACKOFF_MAX"],
        backoff_jitter=value["BACKOFF_JITTER"],
        allowed_modules=(
            None
            if value["ALLOWED_MODULES"] is None
            else tuple(value["ALLOWED_MODULES"])
        ),
        batch_size=value["BATCH_SIZE"],
        poll_interval=value["POLL_INTERVAL"],
        prune_after={
            status: _as_age(age)
            for status, age in {**PRUNE_AFTER_DEFAULTS, **value["PRUNE_AFTER"]}.items()
        },
    )


def jobs_database() -> str:
    """The alias of the database that holds the jobs."""
    from async_jobs.models import Job

    return jobs_settings().database or router.db_for_write(Job) or DEFAULT_DB_ALIAS


@receiver(setting_changed)
def _forget_settings(*, setting: str, **kwargs: object) -> None:
    if setting in ("ASYNC_JOBS", "DATABASES", "INSTALLED_APPS"):
        jobs_settings.cache_clear()
