"""The admin: audit jobs and their errors; cancel, run again or delete them.

Jobs are read-only here: ``name``, ``args`` and ``kwargs`` are never editable,
and no form ever saves a job row (a save would write back every field, racing
the worker that records the job's outcome). State changes go through the
actions, which use the model's own ``cancel()`` and ``requeue()``.

The changelist is built for a table of millions of rows: ordered by the
primary key, counted by ``EstimatedCountPaginator``, with filters whose
choices come from settings or from the newest rows, never a scan.

A job a worker is running shows as ``running``, with its worker and lease: a
non-atomic job by its status, an atomic one (``pending`` in its row while a
worker runs it) on PostgreSQL by its row lock (``overview.held_by_a_worker()``:
no lock taken, nothing written), asked for the rows on the page only, or, in
the status filter, of the due pending rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connections, transaction
from django.db.models import (
    BooleanField,
    Case,
    ExpressionWrapper,
    F,
    Q,
    QuerySet,
    TextField,
    Value,
    When,
)
from django.db.models.functions import StrIndex, Substr
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.http import urlencode

from async_jobs.charts import hourly_chart
from async_jobs.conf import jobs_database, jobs_settings
from async_jobs.durations import format_age
from async_jobs.groups import delete_jobs
from async_jobs.models import REQUEUABLE, Error, Job
from async_jobs.overview import held_by_a_worker, hourly_outcomes, queue_overview


def planner_estimate(queryset) -> int | None:
    """PostgreSQL's estimate of the rows ``queryset`` returns, or None."""
    if connections[queryset.db].vendor != "postgresql":
        return None
    plan = json.loads(queryset.order_by().explain(format="json"))
    return int(plan[0]["Plan"]["Plan Rows"])


class EstimatedCountPaginator(Paginator):
    """A paginator for tables of millions of rows: no ``COUNT(*)`` over all of them.

    Django's paginator counts every matching row to number the pages, on every
    page view of the changelist; with a million jobs that is the slowest part
    of the page. This one counts exactly only up to ``exact_limit`` rows
    (``SELECT COUNT(*) FROM (SELECT … LIMIT n)``, which stops early). Past
    that, on PostgreSQL, it takes the planner's estimate of the row count,
    which costs an ``EXPLAIN`` and no scan; the page then says "about".
    """

    #: Up to this many rows the count is exact.
    exact_limit = 10_000

    #: True once ``count`` is an estimate rather than a count.
    estimated = False

    @cached_property
    def count(self) -> int:
        # Paginator types object_list as any sliceable; this one pages querysets.
        rows = cast(QuerySet[Any], self.object_list).order_by()
        bounded = rows[: self.exact_limit + 1].count()
        if bounded <= self.exact_limit:
            return bounded
        estimate = planner_estimate(rows)
        if estimate is None:
            return rows.count()
        self.estimated = True
        return max(estimate, bounded)


#: At most this many refused job ids are named in an action's message.
NAMED_IDS = 10


def recent_values(queryset: QuerySet, field: str, rows: int) -> list:
    """The distinct values of ``field`` among the newest ``rows`` rows.

    A range of the primary key index instead of a DISTINCT over the table.
    """
    nth_newest = list(
        queryset.order_by("-pk").values_list("pk", flat=True)[rows - 1 : rows]
    )
    if nth_newest:
        queryset = queryset.filter(pk__gte=nth_newest[0])
    return list(queryset.order_by(field).values_list(field, flat=True).distinct())


class RecentValuesFilter(admin.SimpleListFilter):
    """Choices from settings, else from the newest jobs; exact match."""

    field: str
    #: Choices come from this many of the newest jobs.
    rows = 10_000

    def configured(self) -> tuple[str, ...] | None:
        return None

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        values = list(self.configured() or ())
        if not values:
            values = recent_values(
                model_admin.get_queryset(request), self.field, self.rows
            )
        chosen = self.value()
        if chosen is not None and chosen not in values:
            values.append(chosen)  # chosen from a link or an older row
        return [(value, value) for value in sorted(values)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() is None:
            return queryset
        return queryset.filter(**{self.field: self.value()})


def held(queryset: QuerySet) -> QuerySet:
    """``queryset`` with ``held``: whether an open transaction, a worker's
    running an atomic job, holds the row (on PostgreSQL; else never)."""
    locked = held_by_a_worker(queryset.db)
    if locked is None:
        return queryset.annotate(held=Value(False))
    return queryset.annotate(held=ExpressionWrapper(locked, BooleanField()))


class StatusFilter(admin.SimpleListFilter):
    """By status, where ``running`` includes, on PostgreSQL, the atomic jobs a
    worker is running (``pending`` in their row, held by its transaction)."""

    title = "status"
    # The parameter Django's own filter of the field used: links keep working.
    parameter_name = "status__exact"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return list(Job.Status.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        status = self.value()
        if status is None:
            return queryset
        locked = held_by_a_worker(queryset.db)
        if locked is None or status not in (Job.Status.PENDING, Job.Status.RUNNING):
            return queryset.filter(status=status)
        # A worker can only have claimed a job that was due.
        being_run = Q(status=Job.Status.PENDING, run_after__lte=timezone.now()) & locked
        if status == Job.Status.RUNNING:
            return queryset.filter(Q(status=Job.Status.RUNNING) | being_run)
        return queryset.filter(Q(status=Job.Status.PENDING) & ~being_run)


class QueueFilter(RecentValuesFilter):
    title = "queue"
    parameter_name = field = "queue"

    def configured(self) -> tuple[str, ...] | None:
        return jobs_settings().queues


class NameFilter(RecentValuesFilter):
    title = "function"
    parameter_name = field = "name"


def pretty_json(value: object) -> str:
    return format_html(
        '<pre class="async-jobs-json">{}</pre>',
        json.dumps(value, indent=2, ensure_ascii=False),
    )


class ErrorInline(admin.StackedInline):
    model = Error
    extra = 0
    can_delete = False
    fields = ["attempt", "occurred", "exception", "traceback_display"]
    readonly_fields = cast(list[str], fields)  # fields' type allows field groups

    @admin.display(description="traceback")
    def traceback_display(self, error: Error) -> str:
        return format_html(
            '<pre class="async-jobs-traceback">{}</pre>', error.traceback
        )

    def has_view_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        # The errors are part of the job: who may see the job sees them.
        return any(
            request.user.has_perm(
                f"async_jobs.{get_permission_codename(action, Job._meta)}"
            )
            for action in ("view", "change")
        )

    def has_add_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: Job | None = None
    ) -> bool:
        return False


class JobChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters=None) -> QuerySet:
        # The list shows none of these, and they can be large.
        return held(
            super()
            .get_queryset(request, exclude_parameters)
            .defer("args", "kwargs", "meta", "result")
        )


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "name",
        "queue",
        "status_display",
        "priority",
        "attempts",
        "run_after",
        "started",
        "worker_display",
        "finished",
    ]
    list_display_links = ["id", "name"]
    list_filter = [
        StatusFilter,
        QueueFilter,
        NameFilter,
        ("created", admin.DateFieldListFilter),
        ("finished", admin.DateFieldListFilter),
    ]
    search_fields = ["name"]
    search_help_text = "A job id, or part of the function's dotted path."
    ordering = ["-pk"]
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # a count per filter choice: a scan each
    actions = ["cancel_jobs", "requeue_jobs"]
    inlines = [ErrorInline]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "name",
                    "status_display",
                    "queue",
                    "priority",
                    "group",
                    "unique_key",
                ]
            },
        ),
        ("Call", {"fields": ["args_display", "kwargs_display", "meta_display"]}),
        (
            "Runs",
            {
                "fields": [
                    ("attempts", "max_attempts"),
                    "created",
                    "run_after",
                    "started",
                    "finished",
                    "result_display",
                ]
            },
        ),
        (
            "Lease (a running non-atomic job)",
            {"fields": ["worker", "heartbeat", "lease_expires", "cancel_requested"]},
        ),
    ]
    readonly_fields = [
        "name",
        "status_display",
        "queue",
        "priority",
        "group",
        "unique_key",
        "args_display",
        "kwargs_display",
        "meta_display",
        "attempts",
        "max_attempts",
        "created",
        "run_after",
        "started",
        "finished",
        "result_display",
        "worker",
        "heartbeat",
        "lease_expires",
        "cancel_requested",
    ]

    class Media:
        css = {"all": ["async_jobs/admin.css"]}

    @admin.display(description="args")
    def args_display(self, job: Job) -> str:
        return pretty_json(job.args)

    @admin.display(description="kwargs")
    def kwargs_display(self, job: Job) -> str:
        return pretty_json(job.kwargs)

    @admin.display(description="meta")
    def meta_display(self, job: Job) -> str:
        return pretty_json(job.meta)

    @admin.display(description="result")
    def result_display(self, job: Job) -> str:
        return pretty_json(job.result)

    @admin.display(description="status", ordering="status")
    def status_display(self, job: Job) -> str:
        """``running`` for an atomic job a worker runs now (PostgreSQL)."""
        if job.status == Job.Status.PENDING and getattr(job, "held", False):
            return format_html(
                '{} <span class="async-jobs-note">(atomic, in a worker\'s '
                "open transaction)</span>",
                Job.Status(Job.Status.RUNNING).label,
            )
        return job.get_status_display()

    @admin.display(description="worker")
    def worker_display(self, job: Job) -> str:
        """A running job's worker, its last heartbeat and its lease."""
        if job.status == Job.Status.PENDING and getattr(job, "held", False):
            return "a worker's transaction"
        if job.status != Job.Status.RUNNING:
            return ""
        now = timezone.now()
        parts = [job.worker or "?"]
        if job.heartbeat is not None:
            parts.append(f"heartbeat {format_age(now - job.heartbeat)} ago")
        if job.lease_expires is not None:
            if job.lease_expires > now:
                parts.append(f"lease {format_age(job.lease_expires - now)} left")
            else:
                parts.append(f"lease expired {format_age(now - job.lease_expires)} ago")
        return ", ".join(parts)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        return super().get_queryset(request).using(jobs_database())

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> Job | None:
        job = super().get_object(request, object_id, from_field)
        if job is not None and job.status == Job.Status.PENDING:
            job.held = (  # shown by status_display
                held(Job.objects.using(job._state.db).filter(pk=job.pk))
                .values_list("held", flat=True)
                .first()
            )
        return job

    def get_changelist(self, request: HttpRequest, **kwargs) -> type[ChangeList]:
        return JobChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        """A number is a job id (one index lookup); other text, part of a name."""
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.isdigit():
            return queryset.filter(pk=int(term)), False
        return queryset.filter(name__icontains=term), False

    # Jobs are made by schedule() and changed only through the actions.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: Job | None = None
    ) -> bool:
        # Without an object this decides the cancel and requeue actions.
        return obj is None and super().has_change_permission(request)

    # A deleted job may have been the last pending one of its group.
    def delete_model(self, request: HttpRequest, obj: Job) -> None:
        delete_jobs(Job.objects.using(obj._state.db).filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        delete_jobs(queryset)

    @admin.action(description="Cancel selected pending jobs", permissions=["change"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        self._change_each(
            request,
            queryset,
            Job.cancel,
            done="Cancelled",
            allowed=[Job.Status.PENDING],
            rule="only a pending job can be cancelled",
        )

    @admin.action(
        description="Run selected failed or cancelled jobs again now",
        permissions=["change"],
    )
    def requeue_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        self._change_each(
            request,
            queryset,
            Job.requeue,
            done="Queued again",
            allowed=REQUEUABLE,
            rule="only a failed or cancelled job can be run again",
        )

    def _change_each(
        self,
        request: HttpRequest,
        queryset: QuerySet[Job],
        change: Callable[[Job], None],
        done: str,
        allowed: Sequence[str],
        rule: str,
    ) -> None:
        """Apply ``change`` to each selected job, all in one transaction.

        Jobs a worker is running right now are skipped rather than waited for
        (on PostgreSQL). Jobs ``change`` refuses are listed: those whose status
        isn't ``allowed`` under ``rule``, any other with its own reason.
        """
        using = queryset.db
        changed = 0
        refused: list[Job] = []
        reasons: list[str] = []
        with transaction.atomic(using=using):
            selected = set(queryset.values_list("pk", flat=True))
            jobs = queryset.order_by("pk").only("pk", "status", "group")
            if connections[using].features.has_select_for_update_skip_locked:
                jobs = jobs.select_for_update(skip_locked=True)
            jobs = list(jobs)
            running = sorted(selected - {job.pk for job in jobs})
            for job in jobs:
                try:
                    change(job)
                except ValueError as exc:
                    if job.status in allowed:
                        reasons.append(str(exc))
                    else:
                        refused.append(job)
                else:
                    changed += 1
        plural = "job" if changed == 1 else "jobs"
        self.message_user(request, f"{done} {changed} {plural}.", messages.SUCCESS)
        if refused:
            self.message_user(
                request,
                f"{len(refused)} left as they were ({rule}): "
                + _some(f"#{job.pk} ({job.status})" for job in refused),
                messages.WARNING,
            )
        for reason in reasons:
            self.message_user(request, reason, messages.WARNING)
        if running:
            self.message_user(
                request,
                f"{len(running)} left alone because a worker is running them "
                "right now: " + _some(f"#{pk}" for pk in running),
                messages.WARNING,
            )

    def get_urls(self) -> list:
        overview = path(
            "overview/",
            self.admin_site.admin_view(self.overview_view),
            name="async_jobs_job_overview",
        )
        return [overview, *super().get_urls()]

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        """Per queue: jobs by status, the due backlog, recent failures."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        overview = queue_overview()
        changelist = reverse("admin:async_jobs_job_changelist")

        def link(count: int, **filters: str) -> str:
            return format_html(
                '<a href="{}?{}">{}</a>', changelist, urlencode(filters), count
            )

        rows = [
            {
                "queue": queue.queue,
                "counts": [
                    link(queue.counts[status], queue=queue.queue, status__exact=status)
                    for status in Job.Status.values
                ],
                "due": queue.due,
                "oldest_due": "—"
                if queue.oldest_due is None
                else format_age(queue.oldest_due_age(overview.now)),
                "failed_recently": queue.failed_recently,
                "errors_recently": queue.errors_recently,
            }
            for queue in overview.queues
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Queue overview",
            "opts": self.opts,
            "statuses": Job.Status.labels,
            "rows": rows,
            "overview": overview,
            "chart": hourly_chart(hourly_outcomes()),
        }
        return TemplateResponse(request, "admin/async_jobs/job/overview.html", context)


def _some(items) -> str:
    """The first ``NAMED_IDS`` items, and how many more."""
    items = list(items)
    shown = ", ".join(items[:NAMED_IDS])
    if len(items) > NAMED_IDS:
        shown += f" and {len(items) - NAMED_IDS} more"
    return shown + "."


class ExceptionClassFilter(admin.SimpleListFilter):
    """The exception's class path, taken from the newest errors; a prefix match.

    ``Error.exception`` is "class path: message": the choices are the distinct
    class paths of the newest ``rows`` errors (a range of the primary key, as
    in ``recent_values()``), computed by the database.
    """

    title = "exception class"
    parameter_name = "exception_class"
    rows = 10_000

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        queryset = model_admin.get_queryset(request)
        nth_newest = list(
            queryset.order_by("-pk").values_list("pk", flat=True)[
                self.rows - 1 : self.rows
            ]
        )
        if nth_newest:
            queryset = queryset.filter(pk__gte=nth_newest[0])
        colon = StrIndex("exception", Value(": "))
        classes = set(
            queryset.annotate(
                exception_class=Case(
                    When(
                        Q(exception__contains=": "),
                        then=Substr("exception", 1, colon - 1),
                    ),
                    default=F("exception"),
                    output_field=TextField(),
                )
            )
            .order_by()
            .values_list("exception_class", flat=True)
            .distinct()
        )
        if self.value() is not None:
            classes.add(self.value())  # chosen from a link or an older row
        return [(name, name) for name in sorted(classes)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() is None:
            return queryset
        return queryset.filter(
            Q(exception__startswith=f"{self.value()}: ") | Q(exception=self.value())
        )


class ErrorNameFilter(RecentValuesFilter):
    title = "function"
    parameter_name = "name"
    field = "job__name"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        # The jobs of the newest errors first, then their names: a DISTINCT
        # over a join would let the planner hash the whole job table.
        errors = model_admin.get_queryset(request)
        job_ids = set(recent_values(errors, "job_id", self.rows))
        names = set(
            Job.objects.using(errors.db)
            .filter(pk__in=job_ids)
            .values_list("name", flat=True)
            .distinct()
        )
        if self.value() is not None:
            names.add(self.value())
        return [(name, name) for name in sorted(names)]


class ErrorChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters=None) -> QuerySet:
        # The list shows the job's name, not its call, nor the traceback.
        return (
            super()
            .get_queryset(request, exclude_parameters)
            .select_related("job")
            .only("id", "job__id", "job__name", "attempt", "exception", "occurred")
        )


@admin.register(Error)
class ErrorAdmin(admin.ModelAdmin):
    """Every failed attempt, newest first: read-only, for a table of millions."""

    list_display = ["id", "job_link", "function", "attempt", "summary", "occurred"]
    list_display_links = ["id", "summary"]
    list_filter = [
        ExceptionClassFilter,
        ("occurred", admin.DateFieldListFilter),
        ErrorNameFilter,
    ]
    search_fields = ["exception"]
    search_help_text = "A job id, or part of the exception's class or message."
    ordering = ["-pk"]
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    actions = None
    fields = ("job_link", "function", "attempt", "occurred", "exception", "trace")
    readonly_fields = fields

    class Media:
        css = {"all": ["async_jobs/admin.css"]}

    #: An exception message is cut to this many characters in the list.
    summary_length = 200

    @admin.display(description="job")
    def job_link(self, error: Error) -> str:
        url = reverse("admin:async_jobs_job_change", args=[error.job_id])
        return format_html('<a href="{}">#{}</a>', url, error.job_id)

    @admin.display(description="function")
    def function(self, error: Error) -> str:
        return error.job.name

    @admin.display(description="exception")
    def summary(self, error: Error) -> str:
        text = error.exception
        if len(text) > self.summary_length:
            text = text[: self.summary_length - 1] + "…"
        return text

    @admin.display(description="traceback")
    def trace(self, error: Error) -> str:
        return format_html(
            '<pre class="async-jobs-traceback">{}</pre>', error.traceback
        )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Error]:
        return super().get_queryset(request).using(jobs_database())

    def get_changelist(self, request: HttpRequest, **kwargs) -> type[ChangeList]:
        return ErrorChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        """A number is a job id (the foreign key's index); other text, part of
        the exception."""
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.isdigit():
            return queryset.filter(job_id=int(term)), False
        return queryset.filter(exception__icontains=term), False

    def has_view_permission(self, request: HttpRequest, obj: Error | None = None):
        # The errors are part of the jobs: who may see the jobs sees them.
        return super().has_view_permission(request, obj) or ErrorInline(
            Job, self.admin_site
        ).has_view_permission(request)

    # Errors are written by the worker only, and go with their job.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: Error | None = None
    ) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: Error | None = None
    ) -> bool:
        # Asked when a job is deleted with its errors: who may delete the job
        # may delete them. Errors alone are never deleted here (no action, no
        # delete page).
        return request.user.has_perm(
            f"async_jobs.{get_permission_codename('delete', Job._meta)}"
        )

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        extra_context = {**(extra_context or {}), "show_delete": False}
        return super().change_view(request, object_id, form_url, extra_context)

    def delete_view(
        self,
        request: HttpRequest,
        object_id: str,
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        raise PermissionDenied("An error is deleted with its job, not alone.")
