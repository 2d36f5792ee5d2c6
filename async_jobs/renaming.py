"""Pending jobs whose function was renamed or removed by a deploy.

A job names its function by dotted path; a worker resolves the path when the
job runs, so a path that no longer resolves fails the job. These functions
find such jobs before a worker does, and point them at the new path.
"""

from __future__ import annotations

from django.db import transaction

from async_jobs.allowlist import resolve
from async_jobs.models import Job
from async_jobs.signatures import check_call


def unresolvable_functions(using: str) -> dict[str, tuple[int, str]]:
    """Each path pending jobs name that doesn't resolve now: (jobs, why)."""
    pending = Job.objects.using(using).filter(status=Job.Status.PENDING)
    found = {}
    for name in pending.order_by("name").values_list("name", flat=True).distinct():
        try:
            resolve(name)
        except (ImportError, ValueError) as exc:
            found[name] = (pending.filter(name=name).count(), str(exc))
    return found


def rename_pending(old: str, new: str, using: str) -> int:
    """Point every pending job of ``old`` at ``new``; return how many.

    ``new`` must resolve, and every job's arguments must fit its signature,
    else ``ValueError`` (or ``TypeError``) and nothing changes. Jobs a worker
    is running now are waited for (their row lock), then renamed if still
    pending. A unique job keeps its key, computed from the old path.
    """
    resolve(new)
    with transaction.atomic(using=using):
        jobs = list(
            Job.objects.using(using)
            .select_for_update()
            .filter(status=Job.Status.PENDING, name=old)
            .only("pk", "args", "kwargs")
        )
        misfits = []
        for job in jobs:
            try:
                check_call(new, job.args, job.kwargs)
            except TypeError as exc:
                misfits.append(f"job {job.pk}: {exc}")
        if misfits:
            raise TypeError(
                f"Renamed nothing: {len(misfits)} pending job(s) of {old} don't "
                f"fit {new}: " + "; ".join(misfits[:10])
            )
        return (
            Job.objects.using(using)
            .filter(pk__in=[job.pk for job in jobs])
            .update(name=new)
        )
