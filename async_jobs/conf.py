"""The ``ASYNC_JOBS`` setting: each key declared once, with its default and rule.

Every key is optional. A bad value is reported by the system checks at start-up
(``checks.py``), each kind of problem under its own id, and, should code run
without them, raised as ``ImproperlyConfigured`` the first time the setting is
read. ``docs/settings.rst`` documents every key; a test holds the two together.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any, NamedTuple, TypeGuard

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS, router
from django.dispatch import receiver

#: How long ``prune_jobs`` keeps a finished job, by status; failures the longest,
#: as they are what someone comes back to look at.
PRUNE_AFTER_DEFAULTS: dict[str, timedelta | None] = {
    "succeeded": timedelta(days=7),
    "cancelled": timedelta(days=7),
    "failed": timedelta(days=30),
}

#: The most attempts a job may be given, by ``meta`` or by default: far more
#: than any job needs, and far within the ``attempts`` column of every
#: database (PostgreSQL's ``integer`` stops at 2,147,483,647).
MAX_ATTEMPTS_LIMIT = 1_000_000


def is_number(value: object) -> TypeGuard[int | float]:
    """A finite int or float, not a bool: what every "seconds" value must be."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str_list(value: object) -> bool:
    return isinstance(value, list | tuple) and all(
        isinstance(item, str) and item for item in value
    )


class Problem(NamedTuple):
    """One thing wrong with the setting: its check id, message and hint."""

    id: str
    message: str
    hint: str = ""


@dataclass(frozen=True)
class Setting:
    """One key of ``ASYNC_JOBS``: its default, its rule, and how it is used."""

    name: str
    default: Any
    #: The check id a bad value is reported under.
    check_id: str
    #: The messages for a bad value (none when it is good).
    validate: Callable[[Any], list[str]]
    #: What it is for, in a line: the hint of a check that reports it.
    doc: str = ""
    #: The value as the code uses it (a tuple for a list, say).
    convert: Callable[[Any], Any] = lambda value: value

    @property
    def attribute(self) -> str:
        return self.name.lower()


def _rule(test: Callable[[Any], bool], must: str) -> Callable[[Any], list[str]]:
    """A validator from a test and the rule it states, for a one-line message."""

    def validate(value: Any) -> list[str]:
        return [] if test(value) else [must.format(value=value)]

    return validate


def _database_problems(value: object) -> list[str]:
    if value is None or value in settings.DATABASES:
        return []
    return [
        f"ASYNC_JOBS['DATABASE'] is {value!r}, which is not a key of DATABASES "
        f"({', '.join(map(repr, settings.DATABASES))})."
    ]


def _as_age(value: object) -> timedelta | None:
    """A prune age as a ``timedelta``: from a ``timedelta`` or seconds."""
    if value is None or isinstance(value, timedelta):
        return value
    assert isinstance(value, int | float)
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


def _optional_tuple(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


#: Every key of ``ASYNC_JOBS``, in the order docs/settings.rst gives them.
SETTINGS = (
    Setting(
        "DATABASE",
        None,
        "async_jobs.E010",
        _database_problems,
        doc="The alias of the database that holds the jobs (None: the routers').",
    ),
    Setting(
        "QUEUES",
        None,
        "async_jobs.E011",
        _rule(
            lambda value: value is None or (_is_str_list(value) and bool(value)),
            "ASYNC_JOBS['QUEUES'] must be None or a non-empty list of queue names, "
            "not {value!r}.",
        ),
        doc="The only queue names schedule() and flush_queue accept (None: any).",
        convert=_optional_tuple,
    ),
    Setting(
        "MAX_ATTEMPTS",
        3,
        "async_jobs.E012",
        _rule(
            lambda value: is_int(value) and 1 <= value <= MAX_ATTEMPTS_LIMIT,
            "ASYNC_JOBS['MAX_ATTEMPTS'] must be an integer from 1 to "
            f"{MAX_ATTEMPTS_LIMIT:,}, not {{value!r}}.",
        ),
        doc="How many times a job is tried before it is failed.",
    ),
    Setting(
        "BACKOFF_BASE",
        10,
        "async_jobs.E013",
        _rule(
            lambda value: is_number(value) and value >= 0,
            "ASYNC_JOBS['BACKOFF_BASE'] must be a number of seconds >= 0, "
            "not {value!r}.",
        ),
        doc="Seconds before the first retry; each further one waits twice as long.",
    ),
    Setting(
        "BACKOFF_MAX",
        3600,
        "async_jobs.E014",
        _rule(
            lambda value: is_number(value) and value >= 0,
            "ASYNC_JOBS['BACKOFF_MAX'] must be a number of seconds >= 0, "
            "not {value!r}.",
        ),
        doc="The longest wait between two attempts, in seconds, before jitter.",
    ),
    Setting(
        "BACKOFF_JITTER",
        0.25,
        "async_jobs.E015",
        _rule(
            lambda value: is_number(value) and 0 <= value <= 1,
            "ASYNC_JOBS['BACKOFF_JITTER'] must be a number from 0 to 1, not {value!r}.",
        ),
        doc="How much each wait varies at random, as a fraction.",
    ),
    Setting(
        "ALLOWED_MODULES",
        None,
        "async_jobs.E016",
        _rule(
            lambda value: value is None or _is_str_list(value),
            "ASYNC_JOBS['ALLOWED_MODULES'] must be None or a list of module names, "
            "not {value!r}.",
        ),
        doc="The modules whose functions jobs may run (None: the project's own).",
        convert=_optional_tuple,
    ),
    Setting(
        "BATCH_SIZE",
        1,
        "async_jobs.E017",
        _rule(
            lambda value: is_int(value) and value >= 1,
            "ASYNC_JOBS['BATCH_SIZE'] must be an integer of at least 1 (jobs per "
            "worker transaction), not {value!r}.",
        ),
        doc="How many due jobs a worker claims and runs per transaction.",
    ),
    Setting(
        "POLL_INTERVAL",
        1.0,
        "async_jobs.E018",
        _rule(
            lambda value: is_number(value) and value > 0,
            "ASYNC_JOBS['POLL_INTERVAL'] must be a number of seconds > 0, "
            "not {value!r}.",
        ),
        doc="How often, in seconds, an idle flush_queue --loop looks for due jobs.",
    ),
    Setting(
        "PRUNE_AFTER",
        PRUNE_AFTER_DEFAULTS,
        "async_jobs.E019",
        _prune_after_problems,
        doc="How long prune_jobs keeps a finished job, by status (merged over "
        "the default).",
        convert=lambda value: {
            status: _as_age(age)
            for status, age in {**PRUNE_AFTER_DEFAULTS, **value}.items()
        },
    ),
    Setting(
        "NON_ATOMIC_QUEUES",
        (),
        "async_jobs.E021",
        _rule(
            lambda value: isinstance(value, list | tuple) and _is_str_list(value),
            "ASYNC_JOBS['NON_ATOMIC_QUEUES'] must be a list of queue names, "
            "not {value!r}.",
        ),
        doc="The queues whose jobs run non-atomically unless their meta says "
        "otherwise (long jobs).",
        convert=tuple,
    ),
    Setting(
        "LEASE",
        60,
        "async_jobs.E022",
        _rule(
            lambda value: is_number(value) and value > 0,
            "ASYNC_JOBS['LEASE'] must be a number of seconds > 0, not {value!r}.",
        ),
        doc="Seconds a worker holds a non-atomic job without renewing its lease; "
        "it renews it every third of that.",
    ),
)

#: The default of every key, by name.
DEFAULTS = {setting.name: setting.default for setting in SETTINGS}

#: ``ASYNC_JOBS`` is not a dict; it has a key that isn't one of ``SETTINGS``.
NOT_A_DICT = "async_jobs.E001"
UNKNOWN_KEY = "async_jobs.E002"


@dataclass(frozen=True)
class JobsSettings:
    """The validated setting, as the code reads it: ``jobs_settings().queues``."""

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
    non_atomic_queues: tuple[str, ...]
    lease: float


def check(raw: object) -> list[Problem]:
    """Everything wrong with a raw ``ASYNC_JOBS`` value, each with its check id."""
    if not isinstance(raw, dict):
        return [
            Problem(NOT_A_DICT, f"ASYNC_JOBS must be a dict, not {type(raw).__name__}.")
        ]
    found = []
    unknown = sorted(set(raw) - set(DEFAULTS), key=str)
    if unknown:
        found.append(
            Problem(
                UNKNOWN_KEY,
                f"ASYNC_JOBS has unknown key(s) {', '.join(map(repr, unknown))}; "
                f"allowed keys are {', '.join(DEFAULTS)}.",
            )
        )
    for setting in SETTINGS:
        value = raw.get(setting.name, setting.default)
        found += [
            Problem(setting.check_id, message, setting.doc)
            for message in setting.validate(value)
        ]
    return found


def problems(raw: object) -> list[str]:
    """The messages of :func:`check`."""
    return [problem.message for problem in check(raw)]


@cache
def jobs_settings() -> JobsSettings:
    """The validated ``ASYNC_JOBS`` setting, merged over the defaults."""
    raw = getattr(settings, "ASYNC_JOBS", {})
    found = problems(raw)
    if found:
        raise ImproperlyConfigured(" ".join(found))
    return JobsSettings(
        **{
            setting.attribute: setting.convert(raw.get(setting.name, setting.default))
            for setting in SETTINGS
        }
    )


def jobs_database() -> str:
    """The alias of the database that holds the jobs."""
    return (
        jobs_settings().database
        or router.db_for_write(apps.get_model("async_jobs", "Job"))
        or DEFAULT_DB_ALIAS
    )


@receiver(setting_changed)
def _forget_settings(*, setting: str, **kwargs: object) -> None:
    if setting in ("ASYNC_JOBS", "DATABASES", "INSTALLED_APPS"):
        jobs_settings.cache_clear()
