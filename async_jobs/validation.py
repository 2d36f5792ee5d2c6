"""Checking what ``schedule()`` is given: meta, arguments, datetimes, repeats.

Everything here raises ``TypeError`` or ``ValueError`` naming the value and
the rule it breaks, before anything is written. The JSON rule for arguments
and results is ``serialization.py``'s; the allow-list is ``allowlist.py``'s.

``check_stored()`` applies the same rules to a row already written (by hand,
in SQL, or by an older version), so that a job whose row can't run fails
alone instead of stopping its worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from async_jobs.conf import MAX_ATTEMPTS_LIMIT, JobsSettings, is_int, is_number
from async_jobs.cron import (
    REPEAT_MAX,
    REPEAT_MIN,
    REPEAT_RULE,
    cron_after,
    is_valid_cron,
)
from async_jobs.models import Group, Job
from async_jobs.serialization import check_json
from async_jobs.traceparent import RULE as TRACEPARENT_RULE
from async_jobs.traceparent import is_traceparent


def _max_length(model: type[models.Model], name: str) -> int:
    field = model._meta.get_field(name)
    assert isinstance(field, models.CharField) and field.max_length is not None
    return field.max_length


#: The longest queue name and group reference: what their columns hold.
QUEUE_MAX_LENGTH = _max_length(Job, "queue")
REFERENCE_MAX_LENGTH = _max_length(Group, "reference")  # Job.group's model

#: The last year a job's datetimes may fall in, in UTC. Python's datetimes end
#: with year 9999: a later moment written to the database (9999-12-31 23:00
#: at UTC-5 is year 10000 in UTC) can't be read back, and every query that
#: reads its row fails. Year 9999 stays free for the arithmetic done on them
#: (a retry's backoff, a series' next slot).
LATEST_YEAR = 9998

#: The shortest and longest ``meta["timeout"]``, in seconds. Shorter than a
#: millisecond no job can run; longer than 30 days means no limit, and the
#: timer's own limit (a few decades of seconds, ``setitimer``) is far beyond.
TIMEOUT_MIN = 0.001
TIMEOUT_MAX = 30 * 86400

META_KEYS = {
    "priority": "an int from -100 to 100, higher runs first (default 0)",
    "queue": "a queue name (default 'default')",
    "max_attempts": f"an int from 1 to {MAX_ATTEMPTS_LIMIT:,}",
    "timeout": (f"seconds, a number from {TIMEOUT_MIN} to {TIMEOUT_MAX} (30 days)"),
    "repeat": REPEAT_RULE,
    "repeat_until": (
        "a datetime, aware unless USE_TZ is False, up to the end of year "
        f"{LATEST_YEAR} in UTC; the series stops before it"
    ),
    "group": "the reference of the group the job joins, a non-empty str",
    "completes": (
        "the reference of the group this job completes: it runs once every job "
        "of that group has finished"
    ),
    "unique": (
        "True (one pending job per function and arguments) or a key str (one "
        "pending job per function and key)"
    ),
    "task_backend": (
        "the TASKS alias of the async_jobs.backends.JobsBackend that enqueued it "
        "(set by that backend)"
    ),
    "traceparent": TRACEPARENT_RULE,
    "atomic": (
        "a bool: True runs the job inside the transaction that records it, False "
        "runs it with no transaction open, under a lease (long jobs; default "
        "True, or False in ASYNC_JOBS['NON_ATOMIC_QUEUES'])"
    ),
}

#: Controls that can't be combined, and why.
_CONFLICTS = {
    ("group", "repeat"): "a repeating job would keep its group from ever finishing",
    ("completes", "repeat"): "a completion job runs once, when its group finishes",
    ("group", "unique"): "a unique job may stand for a twin outside the group",
    ("completes", "unique"): "a group has exactly one completion job already",
}


def _meta_error(key: str, value: object) -> ValueError:
    return ValueError(f"meta[{key!r}] is {value!r}; it must be {META_KEYS[key]}.")


def validate_meta(meta: Mapping[str, Any] | None, config: JobsSettings) -> dict:
    """Check the execution controls; return them as stored in ``Job.meta``."""
    if (meta is None or (type(meta) is dict and not meta)) and _queue_allowed(
        "default", config
    ):
        return {}  # most calls: nothing to check
    if meta is None:
        meta = {}
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict, not {type(meta).__name__}.")
    return _check_meta(meta, config)


def _queue_allowed(queue: str, config: JobsSettings | None) -> bool:
    """Whether a worker may run the queue: ASYNC_JOBS["QUEUES"], if set, names
    it (``config`` None: not checked)."""
    return config is None or config.queues is None or queue in config.queues


def _check_meta(
    meta: Mapping[str, Any], config: JobsSettings | None, *, stored: bool = False
) -> dict:
    """Check each control; ``config`` None skips the QUEUES setting's check.

    ``stored``: ``meta`` as read from a row, so ``repeat_until`` is its ISO
    string, of either kind (see ``cron.series_end()``), and a cron
    expression is only checked where croniter is installed.
    """
    unknown = set(meta).difference(META_KEYS)
    if unknown:
        named = ", ".join(map(repr, sorted(unknown, key=str)))
        allowed = "; ".join(f"{key!r}: {rule}" for key, rule in META_KEYS.items())
        raise ValueError(f"Unknown meta key(s) {named}. Allowed: {allowed}.")
    if "priority" in meta and not (
        is_int(meta["priority"]) and -100 <= meta["priority"] <= 100
    ):
        raise _meta_error("priority", meta["priority"])
    if "queue" in meta:
        queue = meta["queue"]
        if not isinstance(queue, str) or not queue or len(queue) > QUEUE_MAX_LENGTH:
            raise _meta_error("queue", queue)
    queue = meta.get("queue", "default")
    if not _queue_allowed(queue, config):
        assert config is not None and config.queues is not None
        raise ValueError(
            f"Queue {queue!r} is not in ASYNC_JOBS['QUEUES'] "
            f"({', '.join(map(repr, config.queues))}); no worker would run it."
        )
    if "max_attempts" in meta and not (
        is_int(meta["max_attempts"]) and 1 <= meta["max_attempts"] <= MAX_ATTEMPTS_LIMIT
    ):
        raise _meta_error("max_attempts", meta["max_attempts"])
    if "timeout" in meta:
        timeout = meta["timeout"]
        if not (is_number(timeout) and TIMEOUT_MIN <= timeout <= TIMEOUT_MAX):
            raise _meta_error("timeout", timeout)
    if "task_backend" in meta and not (
        isinstance(meta["task_backend"], str) and meta["task_backend"]
    ):
        raise _meta_error("task_backend", meta["task_backend"])
    if "atomic" in meta and not isinstance(meta["atomic"], bool):
        raise _meta_error("atomic", meta["atomic"])
    if "traceparent" in meta and not is_traceparent(meta["traceparent"]):
        raise _meta_error("traceparent", meta["traceparent"])
    return _validate_scheduling_features(dict(meta), stored=stored)


def _is_reference(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= REFERENCE_MAX_LENGTH


def _validate_scheduling_features(meta: dict, *, stored: bool = False) -> dict:
    """Recurrence, groups and uniqueness; values are normalised for JSON."""
    if "repeat" in meta:
        meta["repeat"] = check_repeat(meta["repeat"], stored=stored)
    if "repeat_until" in meta:
        if "repeat" not in meta:
            raise ValueError("meta['repeat_until'] needs meta['repeat'].")
        meta["repeat_until"] = check_repeat_until(meta["repeat_until"], stored=stored)
    for key in ("group", "completes", "unique"):
        value = meta.get(key)
        if key in meta and not (
            _is_reference(value) or (key == "unique" and isinstance(value, bool))
        ):
            raise _meta_error(key, value)
    if "group" in meta and meta.get("group") == meta.get("completes"):
        raise ValueError(
            f"meta['group'] and meta['completes'] are both {meta['group']!r}; a job "
            "can't complete the group it belongs to."
        )
    for (first, second), reason in _CONFLICTS.items():
        if meta.get(first) and meta.get(second):
            raise ValueError(
                f"meta[{first!r}] and meta[{second!r}] can't be combined: {reason}."
            )
    return meta


def check_awareness(value: datetime, what: str, alternative: str = "") -> None:
    """Refuse a datetime that USE_TZ would store as another moment, or not at all."""
    if settings.USE_TZ and timezone.is_naive(value):
        raise ValueError(
            f"{what} {value.isoformat()} is a naive datetime while USE_TZ is True; "
            f"pass an aware datetime (django.utils.timezone.make_aware){alternative}."
        )
    if not settings.USE_TZ and timezone.is_aware(value):
        raise ValueError(
            f"{what} {value.isoformat()} is an aware datetime while USE_TZ is False; "
            "pass a naive datetime in settings.TIME_ZONE (django.utils.timezone."
            f"make_naive){alternative}."
        )


def check_storable(value: datetime, what: str) -> datetime:
    """Refuse a datetime outside years 1 to ``LATEST_YEAR`` once in UTC.

    A naive one is read in settings.TIME_ZONE, as Django stores it.
    """
    aware = value
    if timezone.is_naive(value):
        aware = value.replace(tzinfo=timezone.get_default_timezone())
    try:
        year = aware.astimezone(dt_timezone.utc).year
    except OverflowError:  # before year 1 or after 9999 in UTC
        year = 0
    if not 1 <= year <= LATEST_YEAR:
        raise ValueError(
            f"{what} {value.isoformat()} is outside years 1 to {LATEST_YEAR} in "
            "UTC, where a job's datetimes must fall: a later one can't be "
            "stored and read back, and retries and a series' next slots need "
            "room after it."
        )
    return value


def resolve_run_after(
    run_after: datetime | timedelta | None, now: datetime | None = None
) -> datetime:
    """When a job becomes due: now, now + a delta, or the datetime given."""
    if now is None:
        now = timezone.now()
    if run_after is None:
        return now
    if isinstance(run_after, timedelta):
        what = f"run_after (now + {run_after!r})"
        try:
            when = now + run_after
        except OverflowError:
            raise ValueError(
                f"{what} is outside years 1 to {LATEST_YEAR} in UTC, where a "
                "job's datetimes must fall."
            ) from None
        return check_storable(when, what)
    if isinstance(run_after, datetime):
        check_awareness(run_after, "run_after", " or a timedelta")
        return check_storable(run_after, "run_after")
    raise TypeError(
        "run_after must be a datetime, a timedelta or None, not "
        f"{type(run_after).__name__}."
    )


def check_arguments(
    args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
) -> tuple[list, dict]:
    if args is None:
        args = []
    elif isinstance(args, list | tuple):
        args = list(args)
    else:
        raise TypeError(f"args must be a list or a tuple, not {type(args).__name__}.")
    if kwargs is None:
        kwargs = {}
    elif isinstance(kwargs, dict):
        kwargs = dict(kwargs)
    else:
        raise TypeError(f"kwargs must be a dict, not {type(kwargs).__name__}.")
    check_json(args, "args")
    check_json(kwargs, "kwargs")
    return args, kwargs


def check_repeat(value: object, *, stored: bool = False) -> int | float | str:
    """Validate ``meta['repeat']``; return it as stored (seconds or cron).

    A cron expression must have a next date: its next slot is computed.
    Without croniter a cron expression raises ``ImportError``, saying so: a
    worker then fails the attempt, to be retried once croniter is installed.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        value = int(seconds) if seconds.is_integer() else seconds
    if is_number(value) and REPEAT_MIN <= value <= REPEAT_MAX:
        return value
    if isinstance(value, str) and value.strip():
        if not is_valid_cron(value):
            raise ValueError(
                f"meta['repeat'] {value!r} is not a valid cron expression."
            )
        cron_after(value, timezone.now())  # ValueError if there's no next date
        return value
    raise ValueError(f"meta['repeat'] is {value!r}; it must be {REPEAT_RULE}.")


def check_repeat_until(value: object, *, stored: bool = False) -> str:
    """Validate ``meta['repeat_until']``; return it as an ISO 8601 string.

    ``stored``: its ISO string as read from a row, aware or naive (one
    written before USE_TZ was switched is read in settings.TIME_ZONE).
    """
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise ValueError(
            f"meta['repeat_until'] is {value!r}; it must be a datetime "
            "(or its ISO 8601 string)."
        )
    if not stored:
        check_awareness(value, "meta['repeat_until']")
    check_storable(value, "meta['repeat_until']")
    return value.isoformat()


def check_stored_meta(meta: object) -> dict:
    """``ValueError`` unless a row's ``meta`` is what ``schedule()`` would store."""
    if not isinstance(meta, dict):
        raise ValueError(
            f"meta is {type(meta).__name__} {_shown(meta)}; it must be a dict "
            "(a JSON object)."
        )
    return _check_meta(meta, None, stored=True)


def check_stored(job: Job) -> None:
    """Re-check a claimed job's stored ``args``, ``kwargs`` and ``meta``.

    For a row written by hand, in SQL, or by an older version: ``ValueError``
    naming the first value ``schedule()`` would have refused, so that the job
    fails (no retry can mend its row) rather than its worker.
    """
    try:
        if not isinstance(job.args, list):
            raise ValueError(
                f"args is {type(job.args).__name__} {_shown(job.args)}; it must be "
                "a list (a JSON array)."
            )
        if not isinstance(job.kwargs, dict):
            raise ValueError(
                f"kwargs is {type(job.kwargs).__name__} {_shown(job.kwargs)}; it "
                "must be a dict (a JSON object) with str keys."
            )
        for key in job.kwargs:
            if not isinstance(key, str):
                raise ValueError(
                    f"kwargs: key {key!r} is {type(key).__name__}; keys must be str."
                )
        check_stored_meta(job.meta)
    except ValueError as exc:
        raise ValueError(
            f"Job {job.pk}'s row holds a value schedule() refuses, so it can't "
            f"run: {exc}"
        ) from None


def _shown(value: object, limit: int = 100) -> str:
    """``repr(value)``, cut short: a stored value may be huge."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."
