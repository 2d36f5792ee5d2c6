"""The queue overview: per queue, what waits, what ran and what failed lately.

The admin's overview page and ``manage.py queue_status`` both read it, so a
person and a monitoring check see the same figures. Four grouped queries; the
ones about due jobs and recent failures are served by indexes (the claim
index, ``(status, finished)`` and ``Error.occurred``), the counts by status
read the whole table.

A job a worker is running is ``running``: a non-atomic one by its status, an
atomic one (``pending`` while a worker runs it inside the transaction that
locked its row) on PostgreSQL by that lock, read from the row's ``xmax`` and
``pg_locks`` (``held_by_a_worker()``). That takes no lock and writes nothing,
and it reads only due pending rows, the only ones a worker can have claimed:
the due query reads them anyway. SQLite has no row locks to ask about: there
an atomic job being run counts as pending and due.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.conf import settings
from django.db import connections
from django.db.models import BooleanField, Count, Min, Q
from django.db.models.expressions import RawSQL
from django.db.models.functions import Trunc
from django.utils import timezone

from async_jobs.conf import jobs_database, jobs_settings
from async_jobs.models import Error, Job

#: The window of "failed in the last hour" and "errors in the last hour".
RECENT = timedelta(hours=1)


def held_by_a_worker(using: str) -> Q | None:
    """Rows another open transaction holds, such as a worker running an atomic job.

    On PostgreSQL a row's ``xmax`` names the transaction that locked (or is
    changing) it, and ``pg_locks`` lists the transactions still open: a row
    whose ``xmax`` is among those of other sessions is held right now. Reading
    both takes no lock, so no worker is held up by someone asking. ``None``
    where the database can't tell (SQLite).
    """
    connection = connections[using]
    if connection.vendor != "postgresql":
        return None
    table = connection.ops.quote_name(Job._meta.db_table)
    return Q(
        RawSQL(
            f"{table}.xmax IN (SELECT transactionid FROM pg_locks WHERE locktype "
            "= 'transactionid' AND granted AND pid <> pg_backend_pid())",
            [],
            output_field=BooleanField(),
        )
    )


@dataclass(frozen=True)
class QueueStatus:
    """One queue's figures at one moment."""

    queue: str
    #: Jobs by status; every status is present, 0 when there are none. On
    #: PostgreSQL an atomic job a worker is running counts as ``running``.
    counts: dict[str, int]
    #: Pending jobs whose ``run_after`` has passed: they wait for a worker.
    due: int
    #: ``run_after`` of the longest-waiting due job.
    oldest_due: datetime | None
    #: Jobs that failed for good (``failed``) in the last hour.
    failed_recently: int
    #: Failed attempts in the last hour, including those that will be retried.
    errors_recently: int

    def oldest_due_age(self, now: datetime) -> timedelta | None:
        """How long the longest-waiting due job has waited since it was due."""
        if self.oldest_due is None:
            return None
        return max(timedelta(0), now - self.oldest_due)


@dataclass(frozen=True)
class Overview:
    now: datetime
    queues: list[QueueStatus]

    def longest_wait(self) -> tuple[str, timedelta] | tuple[None, None]:
        """The queue whose oldest due job has waited longest, and how long."""
        waiting = [
            (queue.queue, age)
            for queue in self.queues
            if (age := queue.oldest_due_age(self.now)) is not None
        ]
        if not waiting:
            return None, None
        return max(waiting, key=lambda item: item[1])

    def as_json(self) -> dict[str, Any]:
        """JSON-ready figures; ages in seconds."""

        def seconds(age: timedelta | None) -> float | None:
            return None if age is None else round(age.total_seconds(), 3)

        return {
            "now": self.now.isoformat(),
            "oldest_due_age": seconds(self.longest_wait()[1]),
            "queues": [
                {
                    "queue": queue.queue,
                    **queue.counts,
                    "due": queue.due,
                    "oldest_due": queue.oldest_due and queue.oldest_due.isoformat(),
                    "oldest_due_age": seconds(queue.oldest_due_age(self.now)),
                    "failed_last_hour": queue.failed_recently,
                    "errors_last_hour": queue.errors_recently,
                }
                for queue in self.queues
            ],
        }


def queue_overview(queues: Sequence[str] = (), using: str | None = None) -> Overview:
    """Read the overview of ``queues`` (default: configured and seen ones)."""
    using = using or jobs_database()
    now = timezone.now()
    since = now - RECENT
    jobs = Job.objects.using(using).order_by()
    errors = Error.objects.using(using).order_by()
    if queues:
        jobs = jobs.filter(queue__in=queues)
        errors = errors.filter(job__queue__in=queues)

    counts: dict[str, dict[str, int]] = {}
    for row in jobs.values("queue", "status").annotate(n=Count("pk")):
        counts.setdefault(row["queue"], {})[row["status"]] = row["n"]
    held = held_by_a_worker(using)
    figures: dict[str, Any] = {"n": Count("pk"), "oldest": Min("run_after")}
    if held is not None:
        # A job being run waits for no worker: due and oldest leave it out.
        figures = {
            "n": Count("pk", filter=~held),
            "oldest": Min("run_after", filter=~held),
            "held": Count("pk", filter=held),
        }
    due = {
        row["queue"]: row
        for row in jobs.filter(status=Job.Status.PENDING, run_after__lte=now)
        .values("queue")
        .annotate(**figures)
    }
    # An atomic job a worker is running is pending in its row: count it running.
    for name, row in due.items():
        if row.get("held"):
            by_status = counts.setdefault(name, {})
            pending = by_status.get(Job.Status.PENDING, 0)
            by_status[Job.Status.PENDING] = max(0, pending - row["held"])
            by_status[Job.Status.RUNNING] = (
                by_status.get(Job.Status.RUNNING, 0) + row["held"]
            )
    failed = dict(
        jobs.filter(status=Job.Status.FAILED, finished__gte=since)
        .values("queue")
        .annotate(n=Count("pk"))
        .values_list("queue", "n")
    )
    errored = dict(
        errors.filter(occurred__gte=since)
        .values("job__queue")
        .annotate(n=Count("pk"))
        .values_list("job__queue", "n")
    )

    names = set(queues) or set(counts) | set(jobs_settings().queues or ())
    return Overview(
        now=now,
        queues=[
            QueueStatus(
                queue=name,
                counts={
                    status: counts.get(name, {}).get(status, 0)
                    for status in Job.Status.values
                },
                due=due[name]["n"] if name in due else 0,
                oldest_due=due[name]["oldest"] if name in due else None,
                failed_recently=failed.get(name, 0),
                errors_recently=errored.get(name, 0),
            )
            for name in sorted(names)
        ],
    )


#: The admin's chart: jobs finished per hour over this many hours.
CHART_HOURS = 24


@dataclass(frozen=True)
class HourlyOutcomes:
    """Jobs that finished per hour, oldest hour first, the current one last."""

    #: The start of each hour, in the current time zone.
    hours: list[datetime]
    succeeded: list[int]
    failed: list[int]


def hourly_outcomes(
    hours: int = CHART_HOURS, using: str | None = None
) -> HourlyOutcomes:
    """Jobs that succeeded and failed for good in each of the last ``hours`` hours.

    One grouped query over a range of the ``(status, finished)`` index: it
    reads the last day's finished jobs only, however long the table.
    """
    using = using or jobs_database()
    zone = timezone.get_current_timezone() if settings.USE_TZ else None
    current = timezone.localtime() if zone else timezone.now()
    current = current.replace(minute=0, second=0, microsecond=0)
    if zone is not None:
        # Whole hours apart in real time (across a DST change too), shown in
        # the current time zone, where the database truncates ``finished``.
        current = current.astimezone(dt_timezone.utc)
    starts = [current - timedelta(hours=n) for n in range(hours - 1, -1, -1)]
    if zone is not None:
        starts = [start.astimezone(zone) for start in starts]
    counts: dict[tuple[str, datetime], int] = {}
    for row in (
        Job.objects.using(using)
        .order_by()
        .filter(
            status__in=[Job.Status.SUCCEEDED, Job.Status.FAILED],
            finished__gte=starts[0],
        )
        .annotate(hour=Trunc("finished", "hour", tzinfo=zone))
        .values("status", "hour")
        .annotate(n=Count("pk"))
    ):
        counts[row["status"], row["hour"]] = row["n"]
    return HourlyOutcomes(
        hours=starts,
        succeeded=[counts.get((Job.Status.SUCCEEDED, hour), 0) for hour in starts],
        failed=[counts.get((Job.Status.FAILED, hour), 0) for hour in starts],
    )
