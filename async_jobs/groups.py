"""Groups of jobs, and the completion job that runs once all of them finished.

``meta={"group": "import-42"}`` puts a job in the open group with that
reference (creating it); ``meta={"completes": "import-42"}`` makes a job that
group's completion job. The completion job waits, pending with ``run_after``
at :data:`HELD`, until the group's last job has finished.

The lock order, one for everything: **job rows, then group rows, and nothing
that holds a job's row lock waits for a group's lock.**

* Scheduling into a group (a member or the completion job) locks the group's
  row (``SELECT ... FOR UPDATE``, waiting) until its transaction ends, so no
  group can close while a job is being added to it: the group is closed only
  by a transaction that holds that lock, hence never before the new member
  has committed (or rolled back).
* Whoever gives jobs of a group a final status (a worker recording an
  outcome, ``cancel()``, ``deschedule()``, ``job.execute()``,
  :func:`delete_jobs`) holds those jobs' row locks, then *tries* each
  group's lock without waiting (``FOR UPDATE SKIP LOCKED``). Got it: it
  counts the group's unfinished jobs (pending, or running: a non-atomic
  job) and closes the group if none is left, in
  the transaction that wrote the statuses. Someone else holds it (another
  worker deciding, or a transaction that schedules into the group or cancels
  one of its jobs): it decides nothing now, and once its own transaction has
  committed it takes each such group's lock, waiting this time with no job
  row locked, one group per short transaction, and checks again.

Why no deadlock with a running worker: a worker waits for no lock at all once
it holds its jobs' rows, so nothing can wait for it while it waits. A
transaction that scheduled into group G (holding G) and then cancels a member
a worker is running waits for that worker; the worker, finding G taken,
records the member's outcome and commits; the cancel then sees the member
finished and refuses it; the worker checks G once the canceller's
transaction ends.

Why exactly once, never too early, never left open (READ COMMITTED, Django's
default): a group is closed only under its row lock, by a statement that
reads the latest committed row (``finished`` still unset) and counts the
committed unfinished jobs after the lock is granted; no transaction adding a
job to it can be in flight then (it would hold the lock). Once closed,
``finished`` is set and no later check closes it again; a job scheduled with
its reference starts a new group. Each transaction that finishes a group's
job checks the group under its lock after that job's status is committed or
as part of it: inside its own transaction if it got the lock (anyone
finishing another job meanwhile finds the lock taken and checks again after
its own commit, seeing both), else after its commit. So the last of them to
check sees every job finished. The one gap: a process that dies between
its commit and that later check (a worker killed at that moment) leaves the
group open with no unfinished job: every worker looks for such groups now and
then (:func:`close_stranded_groups`) and closes them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

from django.db import DatabaseError, OperationalError, connections, transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from async_jobs.inserting import insert_job
from async_jobs.models import FINISHED, Group, Job, held
from async_jobs.notifications import notify_on_commit

logger = logging.getLogger("async_jobs")


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

    Must run in the transaction that recorded those jobs' statuses, which may
    hold job row locks: a group whose lock another transaction holds is not
    waited for, but checked again once this transaction has committed.
    """
    taken = []
    for group_id in sorted({pk for pk in group_ids if pk is not None}):
        group = (
            Group.objects.using(using)
            .select_for_update(skip_locked=True)
            .filter(pk=group_id)
            .first()
        )
        if group is None:  # locked by another transaction (or deleted)
            taken.append(group_id)
        else:
            _close_if_finished(group, using)
    if taken:
        transaction.on_commit(
            lambda: _close_after_commit(taken, using), using=using, robust=True
        )


def _close_after_commit(group_ids: list[int], using: str) -> None:
    """Check groups again, waiting for their locks; one short transaction each.

    Runs after the commit that finished their jobs, so with no job row locked;
    it holds one group's lock at a time, so it can't take part in a deadlock.
    """
    for group_id in group_ids:
        with transaction.atomic(using=using):
            group = (
                Group.objects.using(using)
                .select_for_update()
                .filter(pk=group_id)
                .first()
            )
            if group is not None:
                _close_if_finished(group, using)


def delete_jobs(jobs: QuerySet[Job]) -> None:
    """Delete jobs, and close the groups left with none unfinished.

    A bare ``delete()`` of a group's last unfinished job would leave the group
    open for ever, and its completion job held.
    """
    using = jobs.db
    with transaction.atomic(using=using):
        group_ids = list(jobs.order_by().values_list("group_id", flat=True))
        jobs.delete()
        _close_finished(group_ids, using)


def close_stranded_groups(using: str, limit: int = 100) -> None:
    """Close the open groups whose jobs have all finished but that no check
    closed: the process that was to check one after its commit died first.

    Every worker calls it now and then (``hooks.sweep()``), in a short
    transaction with no job locked. Each group's lock is tried without
    waiting: one whose lock is taken is being decided by its holder. Only
    where the database can skip locked rows (PostgreSQL, not SQLite, where
    the group's lock is always had at once, so no check waits for a commit).
    A group that can't be closed is logged and left to the next sweep, so
    that the others are closed and the worker goes on.
    """
    if not connections[using].features.has_select_for_update_skip_locked:
        return
    members = Job.objects.filter(group=OuterRef("pk"))
    stranded = (
        Group.objects.using(using)
        .select_for_update(skip_locked=True)
        .filter(Exists(members), finished=None)
        .exclude(Exists(members.exclude(status__in=FINISHED)))
        .order_by("pk")[:limit]
    )
    for group in stranded:
        # Read before the lock was granted: _close_if_finished() counts again.
        try:
            with transaction.atomic(using=using):
                _close_if_finished(group, using)
        except DatabaseError as exc:
            if isinstance(exc, OperationalError):
                raise
            logger.error("Could not close %s: %s", group, exc)


def _close_if_finished(group: Group, using: str) -> None:
    """With the group locked: if its last job has finished, release its completion.

    ``Group.progress()`` says what finished means (no job pending or running),
    for this check and for whoever follows a group alike.
    """
    if group.finished is not None or not group.progress(using).finished:
        return
    group.finished = timezone.now()
    group.save(using=using, update_fields=["finished"])
    if group.completion_id is not None:
        released = Job.objects.using(using).pending().filter(pk=group.completion_id)
        if released.update(run_after=group.finished):
            notify_on_commit(using, released.only("queue", "run_after"))
