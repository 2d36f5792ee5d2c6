from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

if TYPE_CHECKING:
    from async_jobs.groups import GroupProgress


class Job(models.Model):
    """One scheduled call of a function, kept after it runs for audit."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    name = models.CharField(max_length=255, help_text="Dotted path of the function.")
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    meta = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=100, default="default")
    priority = models.SmallIntegerField(default=0)
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.PENDING
    )
    run_after = models.DateTimeField(default=timezone.now)
    created = models.DateTimeField(default=timezone.now, editable=False)
    started = models.DateTimeField(
        null=True, blank=True, help_text="Start of the last attempt."
    )
    finished = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    attempt_log = models.JSONField(
        default=list,
        blank=True,
        help_text=(
            "One entry per attempt, in order: the worker that ran it "
            "(host:pid) and when it started."
        ),
    )
    max_attempts = models.PositiveIntegerField(default=1)
    result = models.JSONField(null=True, blank=True)
    group = models.ForeignKey(
        "Group",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="jobs",
        help_text="The group this job belongs to (meta['group']).",
    )
    # NULL, not "", for jobs that aren't unique: the unique index ignores NULLs.
    unique_key = models.CharField(  # noqa: DJ001
        max_length=64,
        null=True,
        blank=True,
        editable=False,
        help_text="Identity of a unique job (meta['unique']); one pending at a time.",
    )

    class Meta:
        constraints = [
            # Race-free unique jobs: a second pending twin can't be inserted.
            # Only unique jobs are in it (see the claim index below).
            models.UniqueConstraint(
                fields=["unique_key"],
                condition=Q(status="pending", unique_key__isnull=False),
                name="async_jobs_job_unique_pending",
            ),
        ]
        indexes = [
            # Serves the claim query: due pending jobs of some queues, best first.
            # It must be the only index of pending jobs: with stale statistics
            # (a backlog newer than the last ANALYZE) the planner might claim
            # through another, and sort every pending job for each claim.
            models.Index(
                fields=["queue", "-priority", "run_after", "id"],
                condition=Q(status="pending"),
                name="async_jobs_job_claim_idx",
            ),
            # Serves pruning (finished jobs of a status, oldest first), the
            # failures of the last hour and the admin's status filter: finished
            # jobs only.
            models.Index(
                fields=["status", "finished"],
                condition=~Q(status="pending"),
                name="async_jobs_job_finished_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk} ({self.status})"

    def execute(self) -> Any:
        """Run this pending job now, in this process, as a worker would.

        Returns the function's result. If the function raises, the failure is
        recorded (an ``Error`` row, a retry or ``failed``) and the exception is
        raised again.
        """
        from async_jobs.execution import execute_now

        return execute_now(self)

    __call__ = execute
    # A template that shows a job (the admin's does) must never run it.
    do_not_call_in_templates = True

    def cancel(self) -> None:
        """Cancel this job; only a pending job can be cancelled.

        A job that a worker is running right now is waited for, then refused.
        """
        from async_jobs.conf import jobs_database

        using = self._state.db or jobs_database()
        with transaction.atomic(using=using):
            now = timezone.now()
            cancelled = (
                Job.objects.using(using)
                .filter(pk=self.pk, status=Job.Status.PENDING)
                .update(status=Job.Status.CANCELLED, finished=now)
            )
            if not cancelled:
                self.refresh_from_db(using=using, fields=["status"])
                raise ValueError(
                    f"Job {self.pk} is {self.status}; only a pending job can be "
                    "cancelled."
                )
            from async_jobs.groups import jobs_settled

            jobs_settled([self.group_id], using)
        self.status = Job.Status.CANCELLED
        self.finished = now

    def requeue(self) -> None:
        """Put a failed or cancelled job back in the queue, due now.

        Its attempts start again from zero (it gets ``max_attempts`` fresh
        tries); its ``Error`` rows stay, as the history of the earlier runs.
        Groups, series and unique jobs stay consistent: see ``requeuing.py``.
        """
        from async_jobs.requeuing import requeue

        requeue(self)


class Group(models.Model):
    """Jobs scheduled with the same ``meta['group']`` reference, while it is open.

    A group is open until its last job has finished (succeeded, failed or
    cancelled); then ``finished`` is set, its completion job (if any) becomes
    due, and the next job scheduled with that reference starts a new group.
    """

    reference = models.CharField(max_length=255)
    created = models.DateTimeField(default=timezone.now, editable=False)
    finished = models.DateTimeField(
        null=True, blank=True, help_text="When the last job of the group finished."
    )
    completion = models.OneToOneField(
        Job,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="completed_group",
        help_text="Runs once every job of the group has finished (meta['completes']).",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["reference"],
                condition=Q(finished__isnull=True),
                name="async_jobs_group_one_open_per_reference",
            ),
        ]

    def __str__(self) -> str:
        return f"Group {self.reference} #{self.pk}"

    def progress(self) -> GroupProgress:
        """How many of the group's jobs are in each status (completion job aside)."""
        from async_jobs.groups import progress

        return progress(self)


class Error(models.Model):
    """One failed attempt of a job."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="errors")
    attempt = models.PositiveIntegerField()
    exception = models.TextField(help_text="Exception class path and message.")
    traceback = models.TextField()
    occurred = models.DateTimeField(default=timezone.now)

    class Meta:
        # In the order they happened: attempts count from 1 again when a job
        # is run again (requeue()), so they can't order a job's history.
        ordering = ["job", "pk"]
        indexes = [
            # Serves the count of failed attempts in the last hour.
            models.Index(fields=["occurred"], name="async_jobs_error_occurred_idx"),
        ]

    def __str__(self) -> str:
        return f"Job {self.job_id}, attempt {self.attempt}: {self.exception}"
