"""``JobsBackend``: Django's tasks framework, with async_jobs doing the work.

    TASKS = {"default": {"BACKEND": "async_jobs.backends.JobsBackend"}}

``Task.enqueue()`` is ``schedule()``: the job row is written in the caller's
transaction, so a rollback takes the task with it and a commit makes it
durable before the response is sent. No ``transaction.on_commit`` is needed,
and a process that dies between its commit and anything else loses nothing.
``flush_queue`` runs the task like any job (retries, timeout, audit);
``get_result()`` reads its ``Job`` row back as a ``TaskResult``.

A task's job names the task's own dotted path (``Task.module_path``), so the
allow-list and the admin see the real function; ``meta["task_backend"]``
holds the alias that enqueued it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any, cast

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.db import connections
from django.dispatch import receiver
from django.utils import timezone

from async_jobs import hooks
from async_jobs.allowlist import FunctionNotAllowed, check_allowed, resolve
from async_jobs.backends import framework
from async_jobs.conf import jobs_database, jobs_settings
from async_jobs.execution import Outcome, current_job
from async_jobs.models import Error, Job
from async_jobs.scheduling import schedule
from async_jobs.signals import job_finished, job_scheduled
from async_jobs.validation import validate_meta

logger = logging.getLogger("async_jobs")

# django-stubs declares TaskResultStatus's members as ``READY = ...``, so mypy
# types Status.READY and the rest as EllipsisType: the ``type: ignore`` comments
# on them below say so.
Status = framework.TaskResultStatus

#: The task status each outcome of an attempt leaves behind.
STATUS_AFTER = {
    Outcome.SUCCEEDED: Status.SUCCESSFUL,
    Outcome.RETRY: Status.READY,
    Outcome.FAILED: Status.FAILED,
}

#: ``OPTIONS`` a backend may set: job meta every task it enqueues gets.
OPTION_KEYS = ("max_attempts", "timeout")

#: The attribute of a job that ``enqueue()`` wrote: the backend class and the
#: task result that ``task_enqueued`` is sent with once the job commits.
_ENQUEUED = "_async_jobs_enqueued"

# The largest id a Job can have (a signed 64-bit integer).
_MAX_ID = 2**63 - 1


class JobsBackend(framework.BaseTaskBackend):
    """Tasks become jobs in the caller's transaction; ``flush_queue`` runs them."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict) -> None:
        super().__init__(alias, params)
        self.job_meta = self._job_meta(self.options)

    def _job_meta(self, options: object) -> dict:
        where = f"TASKS[{self.alias!r}]['OPTIONS']"
        if not isinstance(options, dict):
            raise framework.InvalidTaskBackend(
                f"{where} must be a dict, not {type(options).__name__}."
            )
        unknown = sorted(set(options) - set(OPTION_KEYS), key=str)
        if unknown:
            raise framework.InvalidTaskBackend(
                f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(OPTION_KEYS)}."
            )
        try:
            # Queues are checked per task, against its own queue_name.
            return validate_meta(options, replace(jobs_settings(), queues=None))
        except (TypeError, ValueError) as exc:
            raise framework.InvalidTaskBackend(f"{where}: {exc}") from exc

    def validate_task(self, task: framework.Task) -> None:
        super().validate_task(task)
        # While apps load, the allow-list isn't known yet; enqueue checks again.
        if apps.ready:
            try:
                check_allowed(task.module_path)
            except FunctionNotAllowed as exc:
                raise framework.InvalidTask(str(exc)) from exc

    def enqueue(
        self, task: framework.Task, args: Iterable[Any], kwargs: dict[str, Any]
    ) -> framework.TaskResult:
        """Write the task's job in the current transaction; return its result."""
        self.validate_task(task)
        run_after = task.run_after
        if (
            run_after is not None
            and not settings.USE_TZ
            and timezone.is_aware(run_after)
        ):
            # Django's tasks take aware datetimes whatever USE_TZ says;
            # schedule() takes them as the project stores them.
            run_after = timezone.make_naive(run_after)
        job = schedule(
            task.module_path,
            # normalize_json turns a sequence into a list and a dict into a dict.
            args=cast(list[Any], framework.normalize_json(args)),
            kwargs=cast(dict[str, Any], framework.normalize_json(kwargs)),
            run_after=run_after,
            meta={
                **self.job_meta,
                "priority": int(task.priority),
                "queue": task.queue_name,
                "task_backend": self.alias,
            },
        )
        result = task_result(job, self.alias, task=task, status=Status.READY, errors=[])  # type: ignore[arg-type]
        # Unless the job committed already (autocommit), task_enqueued is sent
        # with this very result once it does.
        setattr(job, _ENQUEUED, (type(self), result))
        return result

    def get_result(self, result_id: str) -> framework.TaskResult:
        """The task's result as its ``Job`` row says now."""
        try:
            pk = int(result_id)
        except (TypeError, ValueError):
            raise framework.TaskResultDoesNotExist(result_id) from None
        job = None
        if 0 < pk <= _MAX_ID:
            job = Job.objects.using(jobs_database()).filter(pk=pk).first()
        if job is None or job.meta.get("task_backend") != self.alias:
            raise framework.TaskResultDoesNotExist(result_id)
        return task_result(job, self.alias)

    # django-stubs says check() returns a list; Django's system check only
    # iterates it (the django-tasks backport types it as an Iterable).
    def check(self, **kwargs: Any) -> Iterable[checks.CheckMessage]:  # type: ignore[override]
        yield from super().check(**kwargs)
        configured = jobs_settings().queues
        missing = sorted(self.queues - set(configured or self.queues))
        if missing:
            yield checks.Error(
                f"TASKS[{self.alias!r}]['QUEUES'] has {', '.join(map(repr, missing))}, "
                "which ASYNC_JOBS['QUEUES'] lacks: enqueueing a task there would "
                "fail.",
                hint="Add the queue(s) to ASYNC_JOBS['QUEUES'].",
                id="async_jobs.E101",
            )


def job_task(job: Job, alias: str) -> framework.Task:
    """The ``Task`` a job runs, with the priority, queue and backend it has."""
    task = resolve(job.name)
    if not framework.is_task(task):
        raise framework.InvalidTask(
            f"Job {job.pk} names {job.name!r}, which is not a Task of Django's "
            "tasks framework."
        )
    # A job that was due when enqueued has run_after just before created.
    deferred = job.run_after is not None and job.run_after > job.created
    return task.using(
        priority=job.priority,
        queue_name=job.queue,
        run_after=job.run_after if deferred else None,
        backend=alias,
    )


def job_errors(job: Job) -> list[framework.TaskError]:
    """One ``TaskError`` per failed attempt, oldest first (``Error``'s ordering)."""
    return [
        framework.TaskError(
            exception_class_path=error.exception.partition(": ")[0],
            traceback=error.traceback,
        )
        for error in Error.objects.using(job._state.db or jobs_database()).filter(
            job=job
        )
    ]


def job_status(job: Job) -> Status:
    """The task status of a job's row as it is now."""
    if job.status == Job.Status.SUCCEEDED:
        return Status.SUCCESSFUL  # type: ignore[return-value]  # see Status
    if job.status in (Job.Status.FAILED, Job.Status.CANCELLED):
        return Status.FAILED  # type: ignore[return-value]  # see Status
    if job.status == Job.Status.RUNNING:  # a non-atomic job, its lease held
        return Status.RUNNING  # type: ignore[return-value]  # see Status
    running = current_job()
    if (running is not None and running.pk == job.pk) or _locked_by_a_worker(job):
        return Status.RUNNING  # type: ignore[return-value]  # see Status
    return Status.READY  # type: ignore[return-value]  # see Status


def _locked_by_a_worker(job: Job) -> bool:
    """Whether another, still open, transaction holds the job's row.

    A worker runs a job inside the transaction that locked its row, and its
    status only changes when that commits. On PostgreSQL the locker's
    transaction id is in the row's ``xmax``, and ``pg_locks`` lists every
    transaction still running: reading both takes no lock, so a worker is
    never held up by someone asking. SQLite has no row locks to ask about.
    """
    connection = connections[job._state.db or jobs_database()]
    if connection.vendor != "postgresql":
        return False
    table = connection.ops.quote_name(Job._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {table} AS job JOIN pg_locks AS lock "
            "ON lock.locktype = 'transactionid' AND lock.transactionid = job.xmax "
            "AND lock.granted AND lock.pid <> pg_backend_pid() "
            "WHERE job.id = %s",
            [job.pk],
        )
        return cursor.fetchone() is not None


def task_result(
    job: Job,
    alias: str,
    *,
    task: framework.Task | None = None,
    status: Status | None = None,
    errors: list[framework.TaskError] | None = None,
) -> framework.TaskResult:
    """A ``TaskResult`` built from a job; what isn't given is read for it."""
    log = job.attempt_log
    result: framework.TaskResult = framework.TaskResult(
        task=task if task is not None else job_task(job, alias),
        id=None if job.pk is None else str(job.pk),
        status=status if status is not None else job_status(job),
        enqueued_at=job.created,
        started_at=datetime.fromisoformat(log[0]["started"]) if log else job.started,
        last_attempted_at=job.started,
        finished_at=job.finished,
        args=job.args,
        kwargs=job.kwargs,
        backend=alias,
        errors=errors if errors is not None else job_errors(job),
        worker_ids=[entry["worker"] for entry in log],
    )
    if result.status == Status.SUCCESSFUL:
        object.__setattr__(result, "_return_value", job.result)
    return result


def task_runner(job: Job, task: framework.Task) -> Callable[..., Any]:
    """How a worker calls a job that names a ``Task``.

    Through ``Task.call`` (which runs a coroutine function to completion),
    with a ``TaskContext`` first when the task takes one, and the return value
    normalised to JSON as Django's own backends do.
    """
    alias = job.meta.get("task_backend") or task.backend

    def run(*args: Any, **kwargs: Any) -> Any:
        running = task_result(job, alias, status=Status.RUNNING)  # type: ignore[arg-type]
        if "task_backend" in job.meta:
            framework.task_started.send(
                sender=type(framework.task_backends[alias]), task_result=running
            )
        if task.takes_context:
            value = task.call(
                framework.TaskContext(task_result=running), *args, **kwargs
            )
        else:
            value = task.call(*args, **kwargs)
        return framework.normalize_json(value)

    return run


@receiver(job_scheduled, dispatch_uid="async_jobs.backends.task_enqueued")
def _send_task_enqueued(sender: type[Job], job: Job, **kwargs: Any) -> None:
    """``task_enqueued``, once the job is committed (never after a rollback)."""
    enqueued = getattr(job, _ENQUEUED, None)
    if enqueued is not None:
        backend_class, result = enqueued
        if result.id is None:
            # The jobs live in another database: the row was written at commit.
            object.__setattr__(result, "id", str(job.pk))
    elif "task_backend" in job.meta:
        # Committed at once, before enqueue() had its result to hand.
        alias = job.meta["task_backend"]
        backend_class = type(framework.task_backends[alias])
        result = task_result(job, alias, status=Status.READY, errors=[])  # type: ignore[arg-type]
    else:
        return
    framework.task_enqueued.send(sender=backend_class, task_result=result)


@receiver(job_finished, dispatch_uid="async_jobs.backends.task_finished")
def _send_task_finished(
    sender: type[Job], job: Job, outcome: Outcome, **kwargs: Any
) -> None:
    """``task_finished`` after each attempt's outcome commits.

    It runs in the worker loop: nothing here may stop the worker, so a
    receiver's error is logged, not raised.
    """
    alias = job.meta.get("task_backend")
    if alias is None:
        return
    try:
        backend_class = type(framework.task_backends[alias])
        result = task_result(job, alias, status=STATUS_AFTER[outcome.status])  # type: ignore[arg-type]
    except Exception:
        logger.exception("Job %s: could not build its task result", job.pk)
        return
    responses = framework.task_finished.send_robust(
        sender=backend_class, task_result=result
    )
    for handler, response in responses:
        if isinstance(response, Exception):
            logger.error(
                "task_finished receiver %r raised for job %s",
                handler,
                job.pk,
                exc_info=response,
            )


# Jobs may name a Task: the allow-list judges the function inside it, and a
# worker calls it through task_runner().
hooks.add_wrapper(
    hooks.Wrapper(
        matches=framework.is_task,
        function=lambda task: task.func,
        runner=task_runner,
        leading_arguments=lambda task: 1 if task.takes_context else 0,
    )
)
