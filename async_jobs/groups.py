"""Groups of jobs, and the completion job that runs once all of them finished.

``meta={"group": "import-42"}`` puts a job in the open group with that
reference (creating it); ``meta={"completes": "import-42"}`` makes a job that
group's completion job. The completion job waits, pending with ``run_after``
at :data:`HELD`, until the group's last job has finished.

Exactly once, even with many workers: every change to a group's membership and
every job of a group reaching a final status takes the group's row lock
(``SELECT ... FOR UPDATE``) in the transaction that makes the change, then
counts the group's pending jobs. Under READ COMMITTED (Django's default) the
last of two workers finishing the group's last two jobs waits for the first to
commit, then sees both jobs finished: only it closes the group and releases
the completion job, in the same transaction that records its job's outcome.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from async_jobs.inserting import insert_job
from async_jobs.models import Group, Job, held
from async_jobs.notifications import notify_on_commit


def held_run_after(run_after: object) -> datetime:
    """A completion job's ``run_after``: held until its group finishes."""
    if run_after is not None:
        raise ValueError(
            "A job with meta['completes'] runs as soon as its group has finished; "
            "it can't take a run_after."
        )
    return held()


def _lock_open_group(reference: str, using: str) -> Group:
    """The open group with this reference, created if needed, row-locked."""
    group, _ = (
        Group.objects.using(using)
        .select_for_update()
        .get_or_create(reference=reference, finished=None)
    )
    return group


def _lock_open_groups(references: Iterable[str], using: str) -> dict[str, Group]:
    """The open groups with these references, created if needed, row-locked.

    In a fixed order, so two transactions locking groups can't deadlock.
    """
    return {
        reference: _lock_open_group(reference, using)
        for reference in sorted(set(references))
    }


def save_in_group(job: Job, using: str) -> None:
    """Insert a job that joins and/or completes a group, under the group locks."""
    member_of = job.meta.get("group")
    completes = job.meta.get("completes")
    with transaction.atomic(using=using):
        locked = _lock_open_groups({member_of, completes} - {None}, using)
        if member_of is not None:
            job.group = locked[member_of]
        if completes is not None:
            group = locked[completes]
            if group.completion_id is not None:
                raise ValueError(
                    f"Group {completes!r} (#{group.pk}) already has a completion "
                    f"job, #{group.completion_id}."
                )
        insert_job(job, using)
        if completes is not None:
            group.completion = job
            group.save(using=using, update_fields=["completion"])
            _close_if_finished(group, using)


def join_open_groups(jobs: Sequence[Job], using: str) -> None:
    """Put the jobs that have ``meta['group']`` in its open group.

    The groups stay locked until the transaction ends: it must be the one that
    inserts the jobs, so no group can close before they are in it.
    """
    locked = _lock_open_groups(
        (job.meta["group"] for job in jobs if "group" in job.meta), using
    )
    for job in jobs:
        if "group" in job.meta:
            job.group = locked[job.meta["group"]]


def close_finished_groups(jobs: Sequence[Job], using: str) -> None:
    """``hooks.settled``: the groups of these jobs may have finished; close them."""
    _close_finished([job.group_id for job in jobs], using)


def _close_finished(group_ids: Iterable[int | None], using: str) -> None:
    """Close the groups, among these, whose last job has finished.

    Must run in the transaction that recorded those jobs' statuses. The
    groups are locked in a fixed order, so two workers can't deadlock on them.
    """
    for group_id in sorted({pk for pk in group_ids if pk is not None}):
        group = Group.objects.using(using).select_for_update().get(pk=group_id)
        _close_if_finished(group, using)


def delete_jobs(jobs: QuerySet[Job]) -> None:
    """Delete jobs, and close the groups left with none pending.

    A bare ``delete()`` of a group's last pending job would leave the group
    open for ever, and its completion job held.
    """
    using = jobs.db
    with transaction.atomic(using=using):
        group_ids = list(jobs.order_by().values_list("group_id", flat=True))
        jobs.delete()
        _close_finished(group_ids, using)


def _close_if_finished(group: Group, using: str) -> None:
    """With the group locked: if its last job has finished, release its completion."""
    if group.finished is not None:
        return
    counts = group.jobs.using(using).aggregate(
        total=Count("id"), pending=Count("id", filter=Q(status=Job.Status.PENDING))
    )
    if not counts["total"] or counts["pending"]:
        return
    group.finished = timezone.now()
    group.save(using=using, update_fields=["finished"])
    if group.completion_id is not None:
        released = Job.objects.using(using).pending().filter(pk=group.completion_id)
        if released.update(run_after=group.finished):
            notify_on_commit(using, released.only("queue", "run_after"))
