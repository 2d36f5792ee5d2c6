"""``schedule()``: turn a call into a ``Job`` row inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from async_jobs.conf import JobsSettings, is_number, jobs_database, jobs_settings
from async_jobs.functions import function_path, resolve
from async_jobs.notifications import notify_on_commit
from async_jobs.recurrence import (
    REPEAT_RULE,
    check_repeat,
    check_repeat_until,
    first_run_after,
)
from async_jobs.serialization import check_json
from async_jobs.signals import job_scheduled
from async_jobs.traceparent import RULE as TRACEPARENT_RULE
from async_jobs.traceparent import is_traceparent, stamp

if TYPE_CHECKING:
    from async_jobs.models import Job

#: One job or a list of them, as saved by ``save_job()`` or ``save_jobs()``.
Saved = TypeVar("Saved", "Job", "list[Job]")

#: The keys of a call given to ``schedule_many()``: ``schedule()``'s arguments.
SCHEDULE_ARGUMENTS = ("function", "args", "kwargs", "run_after", "meta")

META_KEYS = {
    "priority": "an int from -100 to 100, higher runs first (default 0)",
    "queue": "a queue name (default 'default')",
    "max_attempts": "an int >= 1",
    "timeout": "seconds, a number > 0",
    "repeat": REPEAT_RULE,
    "repeat_until": (
        "a datetime, aware unless USE_TZ is False; the series stops before it"
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
        if not (is_number(timeout) and timeout > 0):
            raise _meta_error("timeout", timeout)
    if "task_backend" in meta and not (
        isinstance(meta["task_backend"], str) and meta["task_backend"]
    ):
        raise _meta_error("task_backend", meta["task_backend"])
    if "traceparent" in meta and not is_traceparent(meta["traceparent"]):
        raise _meta_error("traceparent", meta["traceparent"])
    return _validate_scheduling_features(dict(meta))


def _is_reference(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 255


def _validate_scheduling_features(meta: dict) -> dict:
    """Recurrence, groups and uniqueness; values are normalised for JSON."""
    if "repeat" in meta:
        meta["repeat"] = check_repeat(meta["repeat"])
    if "repeat_until" in meta:
        if "repeat" not in meta:
            raise ValueError("meta['repeat_until'] needs meta['repeat'].")
        meta["repeat_until"] = check_repeat_until(meta["repeat_until"])
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


def resolve_run_after(run_after: datetime | timedelta | None) -> datetime:
    """When a job becomes due: now, now + a delta, or the datetime given."""
    now = timezone.now()
    if run_after is None:
        return now
    if isinstance(run_after, timedelta):
        return now + run_after
    if isinstance(run_after, datetime):
        check_awareness(run_after, "run_after", " or a timedelta")
        return run_after
    raise TypeError(
        "run_after must be a datetime, a timedelta or None, not "
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
    With ``meta["unique"]``, a pending twin is returned instead of a new job.
    """
    job = build_job(function, args, kwargs, run_after, meta)
    return _insert(job, jobs_database(), save_job)


#: What ``schedule_many()`` can't do in one INSERT, and why.
_ONE_AT_A_TIME = {
    "unique": "a unique job may turn out to be its pending twin instead",
    "completes": "a group's completion job is tied to its group on its own",
}


def schedule_many(calls: Iterable[Mapping[str, Any]]) -> list[Job]:
    """Schedule many calls with one INSERT; each is a dict of schedule()'s arguments.

    ``{"function": ..., "args": ..., "kwargs": ..., "run_after": ..., "meta": ...}``,
    ``function`` required. Every call is checked before any row is written, so
    one bad call schedules nothing; its error names its index. The rows join
    the caller's transaction exactly as ``schedule()``'s do. ``meta["unique"]``
    and ``meta["completes"]`` need ``schedule()``.
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
            job = build_job(**call, resolved=resolved)
        except (TypeError, ValueError, ImportError) as exc:
            raise type(exc)(f"{where}: {exc}") from exc
        for key, reason in _ONE_AT_A_TIME.items():
            if key in job.meta:
                raise ValueError(
                    f"{where}: meta[{key!r}] needs schedule(), not schedule_many(): "
                    f"{reason}."
                )
        jobs.append(job)
    if jobs:
        _insert(jobs, jobs_database(), save_jobs)
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
    meta = stamp(validate_meta(meta, config))
    return Job(
        name=name,
        args=args,
        kwargs=kwargs,
        meta=meta,
        queue=meta.get("queue", "default"),
        priority=meta.get("priority", 0),
        run_after=_first_run_after(meta, run_after, when),
        max_attempts=meta.get("max_attempts", config.max_attempts),
    )


def _first_run_after(
    meta: dict, run_after: datetime | timedelta | None, when: datetime
) -> datetime:
    if "completes" in meta:
        from async_jobs.groups import held_run_after

        return held_run_after(run_after)
    if run_after is None:
        return first_run_after(meta, when)
    return when


def save_job(job: Job, using: str) -> Job:
    """Write a new job, or find its pending unique twin; announce a new one.

    Every path that inserts a job goes through here (or ``save_jobs()``), so
    workers are woken and ``job_scheduled`` is sent for each.
    """
    from async_jobs.groups import save_in_group
    from async_jobs.uniqueness import save_or_find_twin

    if "group" in job.meta or "completes" in job.meta:
        save_in_group(job, using)
        saved = job
    else:
        saved = save_or_find_twin(job, using)
    if saved is job:
        _announce([job], using)
    return saved


def save_jobs(jobs: list[Job], using: str) -> list[Job]:
    """Write new jobs with one INSERT; announce them.

    Jobs that join a group take its lock first, as ``save()`` of one does.
    """
    from async_jobs.groups import join_open_groups
    from async_jobs.inserting import insert_jobs

    if any("group" in job.meta for job in jobs):
        with transaction.atomic(using=using):
            join_open_groups(jobs, using)
            insert_jobs(jobs, using)
    else:
        insert_jobs(jobs, using)
    _announce(jobs, using)
    return jobs


def _announce(jobs: list[Job], using: str) -> None:
    """Once the transaction commits: wake workers, then send ``job_scheduled``."""
    from async_jobs.models import Job

    notify_on_commit(using, jobs)
    for job in jobs:
        transaction.on_commit(
            # A lambda, not a partial: Django logs a robust hook's __qualname__.
            lambda job=job: job_scheduled.send(sender=Job, job=job),
            using=using,
            robust=True,  # the job is committed: a receiver's error can't undo it
        )


def _insert(jobs: Saved, using: str, save: Callable[[Saved, str], Saved]) -> Saved:
    """``save(jobs, using)`` in the caller's transaction, or after it when that
    is on another database."""
    caller = connections[DEFAULT_DB_ALIAS]
    if (
        using != DEFAULT_DB_ALIAS
        and caller.in_atomic_block
        and not connections[using].in_atomic_block
    ):
        # The caller's transaction is on another database: a row written now
        # would survive its rollback, so write it only once that commits.
        transaction.on_commit(lambda: save(jobs, using), using=DEFAULT_DB_ALIAS)
        return jobs
    return save(jobs, using)
