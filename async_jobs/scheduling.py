"""``schedule()``: turn a call into a ``Job`` row inside the caller's transaction.

The arguments are checked (``validation.py``, ``allowlist.py``), the row is
built, and it is written by the feature it asks for (a group, a unique job) or
plainly (``inserting.py``), which announces it once the transaction commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import cache
from types import NoneType
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from async_jobs.allowlist import function_path, resolve
from async_jobs.conf import jobs_database, jobs_settings
from async_jobs.cron import first_run_after
from async_jobs.groups import held_run_after, join_open_groups, save_in_group
from async_jobs.inserting import insert_jobs
from async_jobs.models import Job, init_observed
from async_jobs.signatures import check_call
from async_jobs.traceparent import stamp
from async_jobs.uniqueness import save_or_find_twin
from async_jobs.validation import check_arguments, resolve_run_after, validate_meta

#: One job or a list of them, as saved by ``save_job()`` or ``save_jobs()``.
Saved = TypeVar("Saved", Job, list[Job])


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


#: The keys of a call given to ``schedule_many()``: ``schedule()``'s arguments.
SCHEDULE_ARGUMENTS = ("function", "args", "kwargs", "run_after", "meta")
_ARGUMENT_KEYS = frozenset(SCHEDULE_ARGUMENTS)

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
    jobs: list[Job] = []
    resolved: set[str] = set()
    # One instant for the whole call: the rows are written by one statement,
    # and alike columns travel once (inserting.py).
    now = timezone.now()
    for index, call in enumerate(calls):
        where = f"calls[{index}]"
        if not isinstance(call, Mapping):
            raise TypeError(
                f"{where} must be a dict of schedule()'s arguments, not "
                f"{type(call).__name__}."
            )
        if not _ARGUMENT_KEYS.issuperset(call):
            unknown = sorted(set(call) - _ARGUMENT_KEYS, key=str)
            raise TypeError(
                f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(SCHEDULE_ARGUMENTS)}."
            )
        if "function" not in call:
            raise TypeError(f"{where} has no 'function'.")
        try:
            job = build_job(**call, resolved=resolved, now=now)
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
    now: datetime | None = None,
) -> Job:
    """Check schedule()'s arguments and return the unsaved ``Job`` they make.

    ``resolved``: dotted paths already checked by this caller, to skip.
    ``now``: the job's ``created``, and what ``run_after`` counts from.
    """
    config = jobs_settings()
    name = function_path(function)
    if resolved is None or name not in resolved:
        resolve(name)
        if resolved is not None:
            resolved.add(name)
    args, kwargs = check_arguments(args, kwargs)
    check_call(name, args, kwargs)
    if now is None:
        now = timezone.now()
    when = resolve_run_after(run_after, now)
    meta = stamp(validate_meta(meta, config))
    return _new_job(
        name=name,
        args=args,
        kwargs=kwargs,
        meta=meta,
        queue=meta.get("queue", "default"),
        priority=meta.get("priority", 0),
        run_after=_first_run_after(meta, run_after, when),
        max_attempts=meta.get("max_attempts", config.max_attempts),
        created=now,
    )


def _new_job(**values: Any) -> Job:
    """``Job(**values)``, three times as fast (``Job.without_init()``), the
    defaults of the fields not given set as ``Model.__init__()`` sets them."""
    if init_observed():
        return Job(**values)
    fixed, made = _defaults()
    attributes = dict(fixed)
    for attname, default in made:
        if attname not in values:
            attributes[attname] = default()
    attributes.update(values)
    return Job.without_init(attributes)


@cache
def _defaults() -> tuple[dict[str, Any], list[tuple[str, Callable[[], Any]]]]:
    """The default of each concrete field, as ``Job()`` sets it: the values
    that can be shared (None, str, int, bool), by attribute, and for the others
    (``timezone.now``, ``list``...) what makes a new one each time."""
    fixed: dict[str, Any] = {}
    made = []
    for field in Job._meta.concrete_fields:
        if field.has_default() and callable(field.default):
            made.append((field.attname, field.default))
            continue
        # No default (NOT_PROVIDED, itself callable: a class), or a value.
        value = field.get_default()
        if type(value) in (NoneType, str, int, bool):
            fixed[field.attname] = value
        else:
            made.append((field.attname, field.get_default))
    return fixed, made


def _first_run_after(
    meta: dict, run_after: datetime | timedelta | None, when: datetime
) -> datetime:
    if "completes" in meta:
        return held_run_after(run_after)
    if run_after is None:
        return first_run_after(meta, when)
    return when


def save_job(job: Job, using: str) -> Job:
    """Write a new job, or find its pending unique twin; a new one is announced."""
    if "group" in job.meta or "completes" in job.meta:
        save_in_group(job, using)
        return job
    return save_or_find_twin(job, using)


def save_jobs(jobs: list[Job], using: str) -> list[Job]:
    """Write new jobs with one INSERT; announce them.

    Jobs that join a group take its lock first, as ``save_job()`` of one does.
    """
    if any("group" in job.meta for job in jobs):
        with transaction.atomic(using=using):
            join_open_groups(jobs, using)
            insert_jobs(jobs, using)
    else:
        insert_jobs(jobs, using)
    return jobs


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
