"""Deleting finished jobs once they are old enough, a batch at a time.

Each batch is its own short transaction: it locks at most ``batch_size`` job
rows (and their ``Error`` rows), deletes them, and commits, so workers,
``schedule()`` and the admin never wait long behind a prune of millions of
rows. The oldest jobs go first, found through the ``(status, finished)`` index.
Finished groups whose jobs are all gone go too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from django.db import connections, transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from async_jobs.conf import jobs_database
from async_jobs.models import Group, Job

#: The statuses that can be pruned. Pending jobs are never pruned.
PRUNABLE = (Job.Status.SUCCEEDED, Job.Status.CANCELLED, Job.Status.FAILED)

DEFAULT_BATCH_SIZE = 1000


def prunable(
    status: str, age: timedelta, using: str, now: datetime | None = None
) -> QuerySet[Job]:
    """The jobs of ``status`` that finished more than ``age`` ago."""
    if status not in PRUNABLE:
        raise ValueError(
            f"Only finished jobs can be pruned ({', '.join(PRUNABLE)}), "
            f"not {status!r} ones."
        )
    try:
        cutoff = (now or timezone.now()) - age
    except OverflowError:  # older than the calendar: nothing is
        return Job.objects.using(using).none()
    open_group = Group.objects.filter(pk=OuterRef("group_id"), finished__isnull=True)
    return (
        Job.objects.using(using)
        .filter(status=status, finished__lt=cutoff)
        # A group still open keeps all its jobs, so its progress stays whole.
        .filter(~Exists(open_group))
    )


def prune(
    ages: Mapping[str, timedelta | None],
    *,
    using: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    on_batch: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Delete the jobs of each status in ``ages`` older than its age.

    An age of ``None`` keeps that status. Returns the number of jobs deleted
    (or, with ``dry_run``, that would be) by status; ``on_batch(status, n)`` is
    called after each committed batch.
    """
    using = using or jobs_database()
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size!r}.")
    now = timezone.now()
    deleted = {}
    for status, age in ages.items():
        if age is None:
            continue
        jobs = prunable(status, age, using, now)
        if dry_run:
            deleted[status] = jobs.count()
            continue
        deleted[status] = 0
        while batch := _delete_batch(jobs.order_by("finished", "pk"), batch_size):
            deleted[status] += batch
            if on_batch is not None:
                on_batch(status, batch)
    return deleted


def prune_groups(
    *, using: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE
) -> int:
    """Delete finished groups whose jobs have all been pruned; return how many.

    A finished group is never reopened (the next job with its reference starts
    a new one), so once it has no jobs and no completion job it is history.
    """
    using = using or jobs_database()
    empty = (
        Group.objects.using(using)
        .filter(finished__isnull=False, completion__isnull=True)
        .filter(~Exists(Job.objects.filter(group=OuterRef("pk"))))
        .order_by("pk")
    )
    deleted = 0
    while batch := _delete_batch(empty, batch_size):
        deleted += batch
    return deleted


def _delete_batch(rows: QuerySet, batch_size: int) -> int:
    """Delete the first ``batch_size`` of ``rows`` in one transaction."""
    using = rows.db
    if connections[using].features.has_select_for_update_skip_locked:
        # Rows locked right now (an admin running the job again) are left for
        # the next prune rather than waited for or deleted as they change.
        rows = rows.select_for_update(skip_locked=True)
    with transaction.atomic(using=using):
        ids = list(rows.values_list("pk", flat=True)[:batch_size])
        if not ids:
            return 0
        rows.model.objects.using(using).filter(pk__in=ids).only("pk").delete()
    return len(ids)
