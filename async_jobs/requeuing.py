"""Running a failed or cancelled job again: ``Job.requeue()``.

The job goes back to ``pending``, due now, with its attempts at zero; its
``Error`` rows stay. Jobs tied to others need more, decided under the locks
their own code takes, in the same order (a completed group, the job, the
group it belongs to), so nothing deadlocks and no group closes half-way:

* a job of a group that is still open is pending again before the group can
  close, so the group (and its completion job) waits for it. If the group has
  finished meanwhile, the job runs on its own and doesn't reopen it;
* a group's completion job stays held while its group is open;
* a failed occurrence of a recurring job already scheduled its series' next
  occurrence, so it runs again once, without ``repeat``: continuing the series
  a second time would fork it. A cancelled occurrence ended its series; run
  again, it carries it on;
* a unique job can't be pending next to a pending twin: that is refused.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from async_jobs.conf import jobs_database
from async_jobs.groups import held
from async_jobs.models import Group, Job
from async_jobs.notifications import notify_on_commit

#: The statuses a job can be run again from.
REQUEUABLE = (Job.Status.FAILED, Job.Status.CANCELLED)

#: ``meta`` keys that continue a series; dropped from a failed occurrence.
SERIES_KEYS = ("repeat", "repeat_until")


def requeue(job: Job) -> None:
    """Make ``job`` pending again (see the module's docstring); update it."""
    using = job._state.db or jobs_database()
    with transaction.atomic(using=using):
        completes = list(
            Group.objects.using(using)
            .select_for_update()
            .filter(completion_id=job.pk)
            .order_by("pk")
        )
        locked = (
            Job.objects.using(using)
            .select_for_update()
            .only("status", "meta", "group_id", "queue")
            .filter(pk=job.pk)
            .first()
        )
        if locked is None:
            raise ValueError(f"Job {job.pk} no longer exists.")
        if locked.status not in REQUEUABLE:
            job.status = locked.status
            raise ValueError(
                f"Job {job.pk} is {locked.status}; only a failed or cancelled job "
                "can be run again."
            )
        if locked.group_id is not None:
            list(
                Group.objects.using(using)
                .select_for_update()
                .filter(pk=locked.group_id)
            )
        waits = any(group.finished is None for group in completes)
        changes = {
            "status": Job.Status.PENDING,
            "attempts": 0,
            "run_after": held() if waits else timezone.now(),
            "started": None,
            "finished": None,
            "result": None,
        }
        if locked.status == Job.Status.FAILED and "repeat" in locked.meta:
            changes["meta"] = {
                key: value
                for key, value in locked.meta.items()
                if key not in SERIES_KEYS
            }
        try:
            with transaction.atomic(using=using):
                Job.objects.using(using).filter(pk=job.pk).update(**changes)
        except IntegrityError:
            twin = _pending_twin(job, using)
            if twin is None:
                raise
            raise ValueError(
                f"Job {job.pk} is unique and job {twin} with the same key is "
                "pending; it can run again once that one has run."
            ) from None
        if not waits:
            locked.run_after = changes["run_after"]
            notify_on_commit(using, [locked])
    for field, value in changes.items():
        setattr(job, field, value)


def _pending_twin(job: Job, using: str) -> int | None:
    key = Job.objects.using(using).values_list("unique_key", flat=True).get(pk=job.pk)
    return (
        Job.objects.using(using)
        .filter(unique_key=key, status=Job.Status.PENDING)
        .values_list("pk", flat=True)
        .first()
    )
