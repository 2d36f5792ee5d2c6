"""The jobs, their groups and errors; the queries callers ask about; every state change.

A job's status changes only here: ``cancel()``, ``requeue()``, the lease of a
non-atomic job (``start_lease()``, ``renew_lease()``) and the recording of an
attempt's outcome (``record_failure()``, ``record_cancelled()``,
``JobQuerySet.record_successes()``). What the scheduling features do when a
job reaches a final status is reached through ``hooks.settled()``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from functools import cache
from typing import Any, cast

from django.conf import settings
from django.db import IntegrityError, connections, models, transaction
from django.db.models import Count, Field, Q
from django.db.models.base import ModelState
from django.db.models.signals import post_init, pre_init
from django.utils import timezone

from async_jobs import hooks
from async_jobs.conf import JobsSettings, jobs_database, jobs_settings
from async_jobs.failures import message, traceback_text
from async_jobs.notifications import notify_on_commit
from async_jobs.transaction_internals import committing

#: ``run_after`` of a group's completion job while its group has not finished.
HELD = datetime(9999, 1, 1, tzinfo=dt_timezone.utc)


def held() -> datetime:
    """:data:`HELD` as a datetime the database takes: naive without ``USE_TZ``."""
    return HELD if settings.USE_TZ else timezone.make_naive(HELD, dt_timezone.utc)


class JobQuerySet(models.QuerySet):
    """The shapes of jobs callers ask about."""

    def pending(self) -> JobQuerySet:
        return self.filter(status=Job.Status.PENDING)

    def due(self, now: datetime | None = None) -> JobQuerySet:
        """Pending jobs whose ``run_after`` has passed: what a worker runs next."""
        return self.pending().filter(run_after__lte=now or timezone.now())

    def running(self) -> JobQuerySet:
        """Non-atomic jobs a worker holds the lease of (or held, until rescued)."""
        return self.filter(status=Job.Status.RUNNING)

    def lease_expired(self, now: datetime | None = None) -> JobQuerySet:
        """Running jobs whose worker stopped renewing their lease: to rescue.

        With no lease at all (a row written by hand: a worker writes
        ``running`` and the lease in one statement), no worker holds it.
        """
        return self.running().filter(
            Q(lease_expires__lt=now or timezone.now()) | Q(lease_expires__isnull=True)
        )

    def held(self, job: Job) -> Job | None:
        """Lock and return ``job``'s row if its worker still holds its lease.

        The fence of a non-atomic job's outcome: the row must still be
        ``running``, held by the same worker at the same attempt. None if the
        lease was taken over (rescued, and perhaps run again since).
        """
        return (
            self.select_for_update()
            .filter(
                pk=job.pk,
                status=Job.Status.RUNNING,
                worker=job.worker,
                attempts=job.attempts,
            )
            .first()
        )

    def finished(self) -> JobQuerySet:
        return self.filter(status__in=FINISHED)

    def in_queues(self, queues: Sequence[str]) -> JobQuerySet:
        """Jobs of these queues; of every queue when none is named."""
        return self.filter(queue__in=queues) if queues else self

    def cancel(self) -> list[Job]:
        """Cancel the pending jobs among these; return the jobs cancelled.

        A job a worker is running right now is waited for (its row lock), then
        left alone unless it is pending again. The features are told in the
        same transaction (a group may finish; a series ends). A running
        non-atomic job is asked to stop (``cancel_requested``): its worker
        interrupts it within a heartbeat and records it ``cancelled``; it is
        not among the jobs returned.
        """
        using = self.db
        with transaction.atomic(using=using):
            self.running().filter(cancel_requested=False).update(cancel_requested=True)
            jobs = list(
                self.pending()
                .select_for_update()
                .only("pk", "status", "group_id", "meta")
                .order_by("pk")
            )
            if jobs:
                now = timezone.now()
                Job.objects.using(using).filter(pk__in=[job.pk for job in jobs]).update(
                    status=Job.Status.CANCELLED, finished=now
                )
                for job in jobs:
                    job.status, job.finished = Job.Status.CANCELLED, now
                hooks.settled(jobs, using)
        return jobs

    def fail_unreadable(self, pk: int, exc: BaseException) -> bool:
        """Fail a job whose row can't be read (``claiming.UnreadableRow``),
        without reading it: an ``Error`` row naming ``exc``, then ``failed``.
        No worker could run it, and no retry mend it. Nor can it be told to
        ``hooks.settled()`` or ``job_finished``, which take a ``Job``: a group
        it belongs to closes at the next sweep (PostgreSQL). False if it had
        finished meanwhile (another worker failed it first)."""
        with transaction.atomic(using=self.db):
            found = (
                self.select_for_update()
                .filter(pk=pk)
                .exclude(status__in=FINISHED)
                .values_list("attempts", flat=True)
                .first()
            )
            if found is None:
                return False
            error = Job(pk=pk, attempts=found)._write_error(self.db, exc)
            self.filter(pk=pk).update(
                status=Job.Status.FAILED,
                finished=error.occurred,
                lease_expires=None,
                cancel_requested=False,
            )
        return True

    def record_successes(self, jobs: Sequence[Job], *, commit: bool = False) -> None:
        """Write the outcome of attempts that succeeded.

        On PostgreSQL a batch's successes are written by one ``UPDATE ... FROM
        (VALUES ...)``. ``commit``: it is the last statement of the worker's
        transaction, and may carry its ``COMMIT`` (``committing()``).
        """
        connection = connections[self.db]
        if len(jobs) < 2 or connection.vendor != "postgresql":
            for index, job in enumerate(jobs, 1):
                job.record(self.db, commit=commit and index == len(jobs))
            return
        quote = connection.ops.quote_name
        table, pk = quote(Job._meta.db_table), quote(Job._meta.pk.column)
        fields = [cast(Field, Job._meta.get_field(name)) for name in _SUCCESS_FIELDS]
        columns = [quote(cast(str, field.column)) for field in fields]
        assignments = ", ".join(
            f"{column} = v.{column}::{field.db_type(connection)}"
            for column, field in zip(columns, fields, strict=True)
        )
        row = f"(%s{', %s' * len(fields)})"
        values: list[Any] = [Job.Status.SUCCEEDED]
        for job in jobs:
            values.append(job.pk)
            values += [
                field.get_db_prep_save(getattr(job, field.attname), connection)
                for field in fields
            ]
        sql = (
            f"UPDATE {table} SET {quote('status')} = %s, {assignments} "
            f"FROM (VALUES {', '.join([row] * len(jobs))}) "
            f"AS v({pk}, {', '.join(columns)}) WHERE {table}.{pk} = v.{pk}"
        )
        with connection.cursor() as cursor:
            if commit:
                sql = committing(connection, cursor, sql)
            cursor.execute(sql, values)


def init_observed() -> bool:
    """Whether ``pre_init`` or ``post_init`` has a receiver for ``Job``: then
    jobs are made by ``Model.__init__()``, which sends them."""
    return pre_init.has_listeners(Job) or post_init.has_listeners(Job)


#: What recording an attempt writes.
_RECORDED_FIELDS = [
    "status",
    "result",
    "attempts",
    "attempt_log",
    "started",
    "finished",
    "run_after",
]
#: What a non-atomic job's lease adds to the record of its start and outcome.
_LEASE_FIELDS = ["worker", "lease_expires", "heartbeat", "cancel_requested"]
#: What a success changes (its status aside): written for a batch at once.
_SUCCESS_FIELDS = ["result", "attempts", "attempt_log", "started", "finished"]


@cache
def _record_update(alias: str, leased: bool) -> tuple[str, list[Field]]:
    """``Job.record()``'s UPDATE (the job's pk its last value), and its fields:
    built once, as the worker sends it for every job."""
    quote = connections[alias].ops.quote_name
    names = _RECORDED_FIELDS + _LEASE_FIELDS if leased else _RECORDED_FIELDS
    fields = [cast(Field, Job._meta.get_field(name)) for name in names]
    assignments = ", ".join(
        f"{quote(cast(str, field.column))} = %s" for field in fields
    )
    sql = (
        f"UPDATE {quote(Job._meta.db_table)} SET {assignments} "
        f"WHERE {quote(Job._meta.pk.column)} = %s"
    )
    return sql, fields


def _storable(text: str) -> str:
    """An exception's text as a text column takes it: PostgreSQL refuses NUL
    characters, and an error that can't be recorded would be retried for ever."""
    return text.replace("\x00", "\\x00")


def retry_delay(attempt: int, config: JobsSettings) -> timedelta:
    """The wait before the attempt after ``attempt`` (1 for the first).

    Exponential, with jitter: the retries of jobs that failed together (a
    flaky API, a deploy) don't all come back at the same second.
    """
    try:
        delay = min(config.backoff_max, config.backoff_base * 2 ** (attempt - 1))
    except OverflowError:  # a float base after some 1,000 attempts
        delay = config.backoff_max
    delay *= 1 + random.uniform(-config.backoff_jitter, config.backoff_jitter)
    return timedelta(seconds=delay)


class Job(models.Model):
    """One scheduled call of a function, kept after it runs for audit."""

    class Status(models.TextChoices):
        PENDING = "pending"
        #: A non-atomic job while a worker holds its lease (``meta["atomic"]``).
        RUNNING = "running"
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
    # A non-atomic job's lease, while it is running: the worker that holds it,
    # until when, and when that worker last renewed it.
    # Database defaults too, for the columns added since 0001: a row written
    # by hand in SQL (or by an older version's raw INSERT) may leave them out.
    worker = models.CharField(
        max_length=255,
        blank=True,
        default="",
        db_default="",
        help_text="The worker (host:pid) running this non-atomic job.",
    )
    lease_expires = models.DateTimeField(
        null=True,
        blank=True,
        help_text="A running non-atomic job is rescued once this has passed.",
    )
    heartbeat = models.DateTimeField(
        null=True, blank=True, help_text="When its worker last renewed the lease."
    )
    cancel_requested = models.BooleanField(
        default=False,
        db_default=False,
        help_text="cancel() of a running non-atomic job: its worker stops it.",
    )
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

    objects = JobQuerySet.as_manager()

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
            # Serves the rescue of running non-atomic jobs whose lease expired.
            models.Index(
                fields=["lease_expires"],
                condition=Q(status="running"),
                name="async_jobs_job_lease_idx",
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
        return hooks.execute(self)

    __call__ = execute
    # A template that shows a job (the admin's does) must never run it.
    do_not_call_in_templates = True

    @classmethod
    def without_init(cls, attributes: dict[str, Any], db: str | None = None) -> Job:
        """What ``Model.__init__()`` makes of a value for every field (and, with
        ``db``, ``from_db()``), without its walk over the fields: a third of
        ``schedule_many()``'s time, and of making claimed rows into jobs.

        Only when ``init_observed()`` is False: ``pre_init`` and ``post_init``
        are not sent.
        """
        job = cls.__new__(cls)
        job._state = ModelState()
        if db is not None:
            job._state.adding = False
            job._state.db = db
        job.__dict__.update(attributes)
        return job

    @property
    def atomic(self) -> bool:
        """Whether it runs in the transaction that records it (``meta["atomic"]``,
        else False in ``ASYNC_JOBS["NON_ATOMIC_QUEUES"]``, else True)."""
        atomic = self.meta.get("atomic") if isinstance(self.meta, dict) else None
        if isinstance(atomic, bool):
            return atomic
        return self.queue not in jobs_settings().non_atomic_queues

    def cancel(self) -> None:
        """Cancel this job: a pending job now, a running non-atomic job soon.

        A pending job is ``cancelled`` when this returns. A running non-atomic
        job is asked to stop (``cancel_requested``); its worker interrupts it
        within a heartbeat and records it ``cancelled``, unless it finishes
        first. An atomic job that a worker is running right now is waited
        for, then refused; so is a finished job.
        """
        using = self._state.db or jobs_database()
        cancelled = Job.objects.using(using).filter(pk=self.pk).cancel()
        if not cancelled:
            self.refresh_from_db(using=using, fields=["status", "cancel_requested"])
            if self.status == Job.Status.RUNNING and self.cancel_requested:
                return
            raise ValueError(
                f"Job {self.pk} is {self.status}; only a pending job can be "
                "cancelled (or a running non-atomic one, asked to stop)."
            )
        self.status, self.finished = cancelled[0].status, cancelled[0].finished

    def requeue(self) -> None:
        """Put a failed or cancelled job back in the queue, due now.

        Its attempts start again from zero (it gets ``max_attempts`` fresh
        tries); its ``Error`` rows stay, as the history of the earlier runs.
        Jobs tied to others need more, decided under the locks their own code
        takes, in the same order (a completed group, the job, the group it
        belongs to), so nothing deadlocks and no group closes half-way:

        * a job of a group that is still open is pending again before the
          group can close, so the group (and its completion job) waits for it.
          If the group has finished meanwhile, the job runs on its own;
        * a group's completion job stays held while its group is open;
        * a failed occurrence of a recurring job already scheduled its series'
          next occurrence, so it runs again once, without ``repeat``:
          continuing the series a second time would fork it. A cancelled
          occurrence ended its series; run again, it carries it on;
        * a unique job can't be pending next to a pending twin: that is refused.
        """
        using = self._state.db or jobs_database()
        with transaction.atomic(using=using):
            completes = list(
                Group.objects.using(using)
                .select_for_update()
                .filter(completion_id=self.pk)
                .order_by("pk")
            )
            locked = (
                Job.objects.using(using)
                .select_for_update()
                .only("status", "meta", "group_id", "queue")
                .filter(pk=self.pk)
                .first()
            )
            if locked is None:
                raise ValueError(f"Job {self.pk} no longer exists.")
            if locked.status not in REQUEUABLE:
                self.status = locked.status
                raise ValueError(
                    f"Job {self.pk} is {locked.status}; only a failed or cancelled "
                    "job can be run again."
                )
            if locked.group_id is not None:
                list(
                    Group.objects.using(using)
                    .select_for_update()
                    .filter(pk=locked.group_id)
                )
            waits = any(group.finished is None for group in completes)
            changes: dict[str, Any] = {
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
                    Job.objects.using(using).filter(pk=self.pk).update(**changes)
            except IntegrityError:
                twin = self._pending_twin(using)
                if twin is None:
                    raise
                raise ValueError(
                    f"Job {self.pk} is unique and job {twin} with the same key is "
                    "pending; it can run again once that one has run."
                ) from None
            if not waits:
                locked.run_after = changes["run_after"]
                notify_on_commit(using, [locked])
        for field, value in changes.items():
            setattr(self, field, value)

    def _pending_twin(self, using: str) -> int | None:
        key = (
            Job.objects.using(using)
            .values_list("unique_key", flat=True)
            .get(pk=self.pk)
        )
        return (
            Job.objects.using(using)
            .pending()
            .filter(unique_key=key)
            .values_list("pk", flat=True)
            .first()
        )

    def start_lease(self, using: str, worker: str, lease: float) -> None:
        """Write a non-atomic job's claim: ``running``, held by ``worker`` for
        ``lease`` seconds, with the attempt (counted, started, logged) that the
        caller has set on it. In the claim's transaction, which then commits."""
        now = timezone.now()
        self.status = Job.Status.RUNNING
        self.worker = worker
        self.heartbeat = now
        self.lease_expires = now + timedelta(seconds=lease)
        self.cancel_requested = False
        self.record(using, leased=True)

    def renew_lease(self, using: str, lease: float) -> str:
        """Extend the lease of this running job, if its worker still holds it.

        Fenced as its outcome is (status, worker, attempt). Returns ``"held"``,
        ``"cancel"`` (held, and ``cancel()`` asked it to stop) or ``"lost"``.
        Runs in autocommit: each statement commits at once.
        """
        now = timezone.now()
        mine = Job.objects.using(using).filter(
            pk=self.pk,
            status=Job.Status.RUNNING,
            worker=self.worker,
            attempts=self.attempts,
        )
        if not mine.update(lease_expires=now + timedelta(seconds=lease), heartbeat=now):
            return "lost"
        if mine.filter(cancel_requested=True).exists():
            return "cancel"
        return "held"

    def record(
        self, using: str, *, leased: bool | None = None, commit: bool = False
    ) -> None:
        """Write an attempt's outcome to the job's row with one UPDATE.

        Built by hand rather than by ``save()``: it is the worker's one
        statement per job, and the ORM's work to compile it took as long as the
        round trip. (So no ``pre_save``/``post_save``: ``job_finished`` tells.)
        The outcome of a non-atomic job (one with a lease) also ends its lease;
        ``leased`` True writes the lease as it is (its start). ``commit``: see
        ``JobQuerySet.record_successes()``.
        """
        if leased is None and self.lease_expires is not None:
            self.lease_expires, self.cancel_requested = None, False
            leased = True
        connection = connections[using]
        sql, fields = _record_update(connection.alias, bool(leased))
        values = [
            field.get_db_prep_save(getattr(self, field.attname), connection)
            for field in fields
        ]
        with connection.cursor() as cursor:
            if commit:
                sql = committing(connection, cursor, sql)
            cursor.execute(sql, [*values, self.pk])

    def log_attempt(self, worker: str, started: datetime) -> None:
        """Add an attempt to ``attempt_log``. A log that isn't a list (a row
        written by hand) is kept as the first entry of one: the attempt must
        be recorded, and nothing already in the row lost."""
        log = self.attempt_log
        if not isinstance(log, list):
            log = [log]
        self.attempt_log = [*log, {"worker": worker, "started": started.isoformat()}]

    def record_failure(
        self, using: str, exc: BaseException, *, permanent: bool = False
    ) -> None:
        """Record a failed attempt: an ``Error`` row, then a retry or ``failed``.

        Still under the row lock of the attempt's transaction, so no other
        worker can run the job between the failure and its record.
        ``permanent``: no retry could help; the job fails at once.
        """
        error = self._write_error(using, exc)
        self.result = None
        if self.attempts >= self.max_attempts or permanent:
            self.status = Job.Status.FAILED
            self.finished = error.occurred
            self.record(using)
        else:
            self._retry(using, error)

    def _retry(self, using: str, error: Error) -> None:
        """Set the job to run again after a pause, unless a unique twin was
        scheduled while it ran.

        A non-atomic job is ``running`` while it runs, so a unique
        ``schedule()`` meanwhile adds a pending twin; it can't be pending
        beside it. The twin runs in its place: it fails, its ``Error`` saying
        so. (Refusing the retry would fail every record of the attempt, and
        the worker with it.)
        """
        run_after, lease = self.run_after, self.lease_expires
        self.status = Job.Status.PENDING
        self.run_after = error.occurred + retry_delay(self.attempts, jobs_settings())
        if self.unique_key is None:
            self.record(using)
            return
        try:
            with transaction.atomic(using=using):
                self.record(using)
            return
        except IntegrityError:
            twin = self._pending_twin(using)
            if twin is None:
                raise
        self.status, self.run_after = Job.Status.FAILED, run_after
        self.finished = error.occurred
        self.lease_expires = lease  # the record ends it, as the first would have
        self.record(using)
        error.exception += (
            f" (not retried: job {twin}, its unique twin, was scheduled while "
            "it ran and is pending; it runs in its place)"
        )
        error.save(update_fields=["exception"])

    def _write_error(self, using: str, exc: BaseException) -> Error:
        """The attempt's ``Error`` row, naming ``exc``."""
        return Error.objects.using(using).create(
            job=self,
            attempt=self.attempts,
            exception=_storable(
                f"{type(exc).__module__}.{type(exc).__qualname__}: {message(exc)}"
            ),
            traceback=_storable(traceback_text(exc)),
            occurred=timezone.now(),
        )

    def record_cancelled(self, using: str, exc: BaseException) -> None:
        """Record a running non-atomic job that ``cancel()`` stopped: an
        ``Error`` row saying so (its history), then ``cancelled``."""
        self.finished = self._write_error(using, exc).occurred
        self.result = None
        self.status = Job.Status.CANCELLED
        self.record(using)


#: The statuses a job ends in.
FINISHED = (Job.Status.SUCCEEDED, Job.Status.FAILED, Job.Status.CANCELLED)

#: The statuses a job can be run again from.
REQUEUABLE = (Job.Status.FAILED, Job.Status.CANCELLED)

#: ``meta`` keys that continue a series; dropped from a failed occurrence.
SERIES_KEYS = ("repeat", "repeat_until")


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

    def progress(self, using: str | None = None) -> GroupProgress:
        """How many of the group's jobs are in each status (completion job aside).

        ``using``: the database to count on, as the routers would choose
        otherwise; the check that closes a group counts in its own transaction.
        """
        jobs = self.jobs.all() if using is None else self.jobs.using(using)
        counts = dict(jobs.order_by().values_list("status").annotate(count=Count("id")))
        return GroupProgress(
            total=sum(counts.values()),
            pending=counts.get(Job.Status.PENDING, 0),
            succeeded=counts.get(Job.Status.SUCCEEDED, 0),
            failed=counts.get(Job.Status.FAILED, 0),
            cancelled=counts.get(Job.Status.CANCELLED, 0),
            running=counts.get(Job.Status.RUNNING, 0),
        )


@dataclass(frozen=True)
class GroupProgress:
    """How far a group has come; its completion job is not counted."""

    total: int
    pending: int
    succeeded: int
    failed: int
    cancelled: int
    #: Non-atomic jobs a worker is running (last, so that older code that
    #: made one by position still can).
    running: int = 0

    @property
    def done(self) -> int:
        return self.total - self.pending - self.running

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.done == self.total


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
