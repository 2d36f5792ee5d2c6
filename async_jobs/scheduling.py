"""``schedule()``: turn a call into a ``Job`` row inside the caller's transaction."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from async_jobs.conf import JobsSettings, jobs_database, jobs_settings
from async_jobs.functions import function_path, resolve
from async_jobs.notifications import announcement
from async_jobs.serialization import check_json
from async_jobs.signals import job_scheduled

if TYPE_CHECKING:
    from async_jobs.models import Job

#: The keys of a call given to ``schedule_many()``: ``schedule()``'s arguments.
SCHEDULE_ARGUMENTS = ("function", "args", "kwargs", "run_after", "meta")

META_KEYS = {
    "priority": "an int from -100 to 100, higher runs first (default 0)",
    "queue": "a queue name (default 'default')",
    "max_attempts": "an int >= 1",
    "timeout": "seconds, a number > 0",
}


def _meta_error(key: str, value: object) -> ValueError:
    return ValueError(f"meta[{key!r}] is {value!r}; it must be {META_KEYS[key]}.")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_meta(meta: Mapping[str, Any] | None, config: JobsSettings) -> dict:
    """Check the execution controls; return them as stored in ``Job.meta``."""
    if meta is None:
        meta = {}
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict, not {type(meta).__name__}.")
    unknown = sorted(set(meta) - set(META_KEYS), key=str)
    if unknown:
        allowed = "; ".join(f"{key!r}: {rule}" for key, rule in META_KEYS.items())
        raise ValueError(
            f"Unknown meta key(s) {', '.join(map(repr, unknown))}. Allowed: {allowed}."
        )
    if "priority" in meta and not (
        _is_int(meta["priority"]) and -100 <= meta["priority"] <= 100
    ):
        raise _meta_error("priority", meta["priority"])
    if "queue" in meta:
        queue = meta["queue"]
        if not isinstance(queue, str) or not queue or len(queue) > 100:
            raise _meta_error("queue", queue)
    queue = meta.get("queue", "default")
    if config.queues is not None and queue not in config.queues:
        raise ValueError(
            f"Queue {queue!r} is not in ASYNC_JOBS['QUEUES'] "
            f"({', '.join(map(repr, config.queues))}); no worker would run it."
        )
    if "max_attempts" in meta and not (
        _is_int(meta["max_attempts"]) and meta["max_attempts"] >= 1
    ):
        raise _meta_error("max_attempts", meta["max_attempts"])
    if "timeout" in meta:
        timeout = meta["timeout"]
        if not (
            isinstance(timeout, int | float)
            and not isinstance(timeout, bool)
            and math.isfinite(timeout)
            and timeout > 0
        ):
            raise _meta_error("timeout", timeout)
    return dict(meta)


def resolve_run_after(run_after: datetime | timedelta | None) -> datetime:
    """When a job becomes due: now, now + a delta, or an aware datetime."""
    now = timezone.now()
    if run_after is None:
        return now
    if isinstance(run_after, timedelta):
        return now + run_after
    if isinstance(run_after, datetime):
        if settings.USE_TZ and timezone.is_naive(run_after):
            raise ValueError(
                f"run_after {run_after.isoformat()} is a naive datetime while "
                "USE_TZ is True; pass an aware datetime (django.utils.timezone."
                "make_aware) or a timedelta."
            )
        return run_after
    raise TypeError(
        "run_after must be an aware datetime, a timedelta or None, not "
        f"{type(run_after).__name__}."
    )


def _check_arguments(
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


def schedule(
    function: str | Callable[..., Any],
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    run_after: datetime | timedelta | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Job:
    """Schedule ``function(*args, **kwargs)`` to run in a worker.

    The row is inserted on the jobs' database connection, so inside
    ``transaction.atomic()`` it commits or rolls back with the caller's writes.
    """
    job = build_job(function, args, kwargs, run_after, meta)
    _insert([job], jobs_database())
    return job


def schedule_many(calls: Iterable[Mapping[str, Any]]) -> list[Job]:
    """Schedule many calls with one INSERT; each is a dict of schedule()'s arguments.

    ``{"function": ..., "args": ..., "kwargs": ..., "run_after": ..., "meta": ...}``,
    ``function`` required. Every call is checked before any row is written, so
    one bad call schedules nothing; its error names its index. The rows join
    the caller's transaction exactly as ``schedule()``'s do.
    """
    jobs, resolved = [], set()
    for index, call in enumerate(calls):
        where = f"calls[{index}]"
        if not isinstance(call, Mapping):
            raise TypeError(
                f"{where} must be a dict of schedule()'s arguments, not "
                f"{type(call).__name__}."
            )
        unknown = sorted(set(call) - set(SCHEDULE_ARGUMENTS), key=str)
        if unknown:
            raise TypeError(
                f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(SCHEDULE_ARGUMENTS)}."
            )
        if "function" not in call:
            raise TypeError(f"{where} has no 'function'.")
        try:
            jobs.append(build_job(**call, resolved=resolved))
        except (TypeError, ValueError, ImportError) as exc:
            raise type(exc)(f"{where}: {exc}") from exc
    if jobs:
        _insert(jobs, jobs_database())
    return jobs


def build_job(
    function: str | Callable[..., Any],
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    run_after: datetime | timedelta | None = None,
    meta: Mapping[str, Any] | None = None,
    *,
    resolved: set[str] | None = None,
) -> Job:
    """Check schedule()'s arguments and return the unsaved ``Job`` they make.

    ``resolved``: dotted paths already checked by this caller, to skip.
    """
    from async_jobs.models import Job

    config = jobs_settings()
    name = function_path(function)
    if resolved is None or name not in resolved:
        resolve(name)
        if resolved is not None:
            resolved.add(name)
    args, kwargs = _check_arguments(args, kwargs)
    when = resolve_run_after(run_after)
    meta = validate_meta(meta, config)
    job = Job(
        name=name,
        args=args,
        kwargs=kwargs,
        meta=meta,
        queue=meta.get("queue", "default"),
        priority=meta.get("priority", 0),
        run_after=when,
        max_attempts=meta.get("max_attempts", config.max_attempts),
    )
    return job


def _insert(jobs: list[Job], using: str) -> None:
    """Insert in the caller's transaction, or after it when that is elsewhere."""
    from async_jobs.models import Job

    def insert() -> None:
        if len(jobs) == 1:
            jobs[0].save(using=using, force_insert=True)
        else:
            Job.objects.using(using).bulk_create(jobs)
        wake_workers = announcement(using, jobs)

        def scheduled() -> None:
            wake_workers()
            for job in jobs:
                job_scheduled.send(sender=Job, job=job)

        transaction.on_commit(scheduled, using=using)

    caller = connections[DEFAULT_DB_ALIAS]
    if (
        using != DEFAULT_DB_ALIAS
        and caller.in_atomic_block
        and not connections[using].in_atomic_block
    ):
        # The caller's transaction is on another database: a row written now
        # would survive its rollback, so write it only once that commits.
        transaction.on_commit(insert, using=DEFAULT_DB_ALIAS)
    else:
        insert()
