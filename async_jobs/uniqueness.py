"""Unique jobs (``meta["unique"]``) and ``deschedule()``.

A unique job's ``unique_key`` is a digest of its function and arguments (or of
its function and a key the caller gives). A partial unique index allows one
*pending* row per key, so two transactions scheduling the same unique job at
once can't both insert it: on PostgreSQL the second insert waits for the first
transaction, then fails, and ``schedule()`` returns the row that won. No
check-then-insert race.

The row that won may finish between the refused insert and the look for it
(workers run the job as fast as it is scheduled): then the insert is tried
again, as often as that keeps happening, up to :data:`_INSERT_TRIES` times;
each retry means a twin finished meanwhile, so the queue moved on. After that
many, :class:`UniqueJobContention` says so; never an ``IntegrityError``.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from django.db import IntegrityError, transaction

from async_jobs.allowlist import function_path
from async_jobs.conf import jobs_database
from async_jobs.inserting import insert_job
from async_jobs.models import Job
from async_jobs.validation import check_arguments

#: How often an insert that lost to a twin which then finished is tried again.
_INSERT_TRIES = 100
#: The longest pause (seconds) between two tries, so racing callers fall apart.
_MAX_PAUSE = 0.02


class UniqueJobContention(RuntimeError):
    """A unique ``schedule()`` kept losing to twins that finished at once.

    Each of its tries found a pending twin, which had finished by the time it
    looked for it. Not an ``IntegrityError``: nothing is wrong with the data;
    the caller may simply try again.
    """


#: deschedule() passes: each one sees occurrences added by runs it waited for.
_DESCHEDULE_PASSES = 10


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def identity(name: str, args: list, kwargs: dict) -> str:
    """A call's identity: its function and arguments, however dicts are ordered."""
    return _canonical([name, args, kwargs])


def unique_key(
    name: str, args: list, kwargs: dict, unique: bool | str | None
) -> str | None:
    """The digest that makes a job unique, or None if it isn't."""
    if not unique:
        return None
    if unique is True:
        source = identity(name, args, kwargs)
    else:
        source = _canonical([name, {"key": unique}])
    return hashlib.sha256(source.encode()).hexdigest()


def save_or_find_twin(job: Job, using: str) -> Job:
    """Insert the job, unless a pending job with its unique key exists: return that."""
    job.unique_key = unique_key(job.name, job.args, job.kwargs, job.meta.get("unique"))
    if job.unique_key is None:
        insert_job(job, using)
        return job
    for attempt in range(_INSERT_TRIES):
        try:
            with transaction.atomic(using=using):
                insert_job(job, using)
            return job
        except IntegrityError:
            twin = (
                Job.objects.using(using)
                .pending()
                .filter(unique_key=job.unique_key)
                .first()
            )
            if twin is not None:
                return twin
            if not _a_twin_finished(job, using):
                raise  # refused by something other than a pending twin
            # The twin finished between our insert and our look: try again.
            time.sleep(random.uniform(0, min(_MAX_PAUSE, 0.001 * 2**attempt)))
    raise UniqueJobContention(
        f"Could not schedule unique job {job.name}: {_INSERT_TRIES} times in a "
        "row a pending twin refused its insert, then finished before it could "
        "be returned (workers run it as fast as it is scheduled). Try again."
    )


def _a_twin_finished(job: Job, using: str) -> bool:
    """Whether a job with this unique key exists (so it refused the insert)."""
    return Job.objects.using(using).filter(unique_key=job.unique_key).exists()


def deschedule(
    function: str | Callable[..., Any],
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    key: str | None = None,
) -> int:
    """Cancel the pending jobs that call ``function`` with these arguments.

    With ``key``, cancel the pending unique job scheduled with
    ``meta={"unique": key}`` instead. Runs in the caller's transaction; a job
    running right now is waited for, and if it repeats, the occurrence it
    scheduled is cancelled too. Returns how many jobs were cancelled.
    """
    name = function_path(function)
    using = jobs_database()
    pending = Job.objects.using(using).pending().filter(name=name)
    if key is not None:
        if args is not None or kwargs is not None:
            raise TypeError("deschedule() takes either args/kwargs or key, not both.")
        if not isinstance(key, str) or not key:
            raise ValueError(f"key is {key!r}; it must be a non-empty string.")
        pending = pending.filter(unique_key=unique_key(name, [], {}, key))
        call = None
    else:
        args, kwargs = check_arguments(args, kwargs)
        call = identity(name, args, kwargs)
    cancelled = 0
    with transaction.atomic(using=using):
        for _ in range(_DESCHEDULE_PASSES):
            chosen = [
                row
                for row in pending.only("pk", "args", "kwargs")
                if call is None or identity(name, row.args, row.kwargs) == call
            ]
            if not chosen:
                break
            done = len(
                Job.objects.using(using)
                .filter(pk__in=[row.pk for row in chosen])
                .cancel()
            )
            cancelled += done
            if done == len(chosen):
                # Nothing was running: no run can have added an occurrence.
                break
    return cancelled
