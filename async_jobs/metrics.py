"""Prometheus metrics: what this process's attempts did, and what the queues hold.

Needs the ``prometheus`` extra (``prometheus_client``); the app imports this
module only when that is installed. Counters and histograms live in
prometheus_client's default registry and count the attempts run by this
process, from the job signals. The queue gauges are read at scrape time by
``QueueCollector``: one grouped query, cached for a few seconds. ``registry()``
gathers both, for the view (``async_jobs.views``) and for ``flush_queue
--metrics-port`` (``serve()``).
"""

from __future__ import annotations

import http.server
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from django.db import DatabaseError, connections
from django.db.models import BooleanField, Count, Min, Q
from django.db.models.expressions import RawSQL
from django.dispatch import receiver
from django.utils import timezone
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from async_jobs.conf import jobs_database, jobs_settings
from async_jobs.execution import Outcome
from async_jobs.models import Job
from async_jobs.signals import job_finished, job_started

logger = logging.getLogger("async_jobs")

#: How long the queue gauges' query result is served again (seconds).
CACHE_SECONDS = 5.0

# Labels are bounded: queues and function paths, never a job's id or arguments.
ATTEMPTS = Counter(
    "async_jobs_attempts",
    "Attempts of jobs that this process ran, by outcome (succeeded, retry, failed).",
    ["queue", "function", "outcome"],
)
RUN_TIME = Histogram(
    "async_jobs_attempt_duration_seconds",
    "How long the job's function ran, per attempt.",
    ["queue", "function"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
WAIT_TIME = Histogram(
    "async_jobs_wait_seconds",
    "From when an attempt was due (run_after) to when it started.",
    ["queue"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
)


@receiver(job_started, dispatch_uid="async_jobs.metrics.started")
def _started(sender: type[Job], job: Job, **kwargs: object) -> None:
    # Inside the job's transaction, where a receiver that raises fails the
    # attempt: a metric must never do that.
    try:
        assert job.started is not None  # set before job_started is sent
        waited = (job.started - job.run_after).total_seconds()
        WAIT_TIME.labels(job.queue).observe(max(0.0, waited))
    except Exception:
        logger.exception("Could not record the wait of job %s", job.pk)


@receiver(job_finished, dispatch_uid="async_jobs.metrics.finished")
def _finished(sender: type[Job], job: Job, outcome: Outcome, **kwargs: object) -> None:
    # A receiver that raises would keep the ones after it from being called.
    try:
        ATTEMPTS.labels(job.queue, job.name, outcome.status).inc()
        RUN_TIME.labels(job.queue, job.name).observe(outcome.duration)
    except Exception:
        logger.exception("Could not count the attempt of job %s", job.pk)


@dataclass(frozen=True)
class QueueFigures:
    queue: str
    pending: int
    due: int
    running: int
    oldest_due: datetime | None


def read_queues(using: str | None = None) -> tuple[datetime, list[QueueFigures]]:
    """Per queue: pending, due and running jobs, and the oldest due job's run_after.

    One grouped query over the jobs not finished, which the claim index (and,
    for ``running``, the ``(status, finished)`` one) serves. An atomic job is
    ``pending`` while it runs, its row locked: on PostgreSQL the rows that
    another open transaction holds count as running (what ``xmax`` and
    ``pg_locks`` say, as ``backends.job_status()`` asks); SQLite can't tell.
    """
    using = using or jobs_database()
    now = timezone.now()
    due = Q(status=Job.Status.PENDING, run_after__lte=now)
    running = Q(status="running")  # the non-atomic mode's status, where it exists
    if connections[using].vendor == "postgresql":
        running |= Q(
            RawSQL(
                "xmax IN (SELECT transactionid FROM pg_locks WHERE locktype = "
                "'transactionid' AND granted AND pid <> pg_backend_pid())",
                [],
                output_field=BooleanField(),
            )
        )
    rows = (
        Job.objects.using(using)
        .order_by()
        # Not status__in: PostgreSQL would not see that each value has an
        # index of its own (a partial one), and would read the whole table.
        .filter(Q(status=Job.Status.PENDING) | Q(status="running"))
        .values("queue")
        .annotate(
            pending=Count("pk", filter=Q(status=Job.Status.PENDING)),
            due=Count("pk", filter=due),
            running=Count("pk", filter=running),
            oldest_due=Min("run_after", filter=due),
        )
    )
    figures = {row["queue"]: QueueFigures(**row) for row in rows}
    for queue in jobs_settings().queues or ():
        figures.setdefault(queue, QueueFigures(queue, 0, 0, 0, None))
    return now, [figures[queue] for queue in sorted(figures)]


class QueueCollector(Collector):
    """The queue gauges, read at scrape time, at most once per ``max_age`` seconds.

    A failed query is logged and reported as ``async_jobs_queue_query_ok 0``
    rather than failing the scrape: the process's counters still get through.
    """

    def __init__(self, using: str | None = None, max_age: float = CACHE_SECONDS):
        self.using = using
        self.max_age = max_age
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._figures: tuple[datetime, list[QueueFigures]] | None = None

    def _read(self) -> tuple[datetime, list[QueueFigures]] | None:
        with self._lock:
            if time.monotonic() - self._read_at >= self.max_age:
                try:
                    self._figures = read_queues(self.using)
                except DatabaseError:
                    logger.exception("Could not read the queues for Prometheus")
                    self._figures = None
                self._read_at = time.monotonic()
            return self._figures

    def collect(self) -> Iterator[GaugeMetricFamily]:
        read = self._read()
        yield GaugeMetricFamily(
            "async_jobs_queue_query_ok",
            "1 if the queue gauges could be read from the jobs' database, else 0.",
            value=int(read is not None),
        )
        if read is None:
            return
        now, queues = read
        families = {
            name: GaugeMetricFamily(
                f"async_jobs_queue_{name}", help, labels=["queue"], unit=unit
            )
            for name, help, unit in (
                ("pending_jobs", "Jobs waiting for their time or a worker.", ""),
                ("due_jobs", "Pending jobs whose run_after has passed.", ""),
                ("running_jobs", "Jobs a worker is running now.", ""),
                (
                    "oldest_due_age",
                    "How long the longest-waiting due job has waited (0: none due).",
                    "seconds",
                ),
            )
        }
        for queue in queues:
            families["pending_jobs"].add_metric([queue.queue], queue.pending)
            families["due_jobs"].add_metric([queue.queue], queue.due)
            families["running_jobs"].add_metric([queue.queue], queue.running)
            age = 0.0
            if queue.oldest_due is not None:
                age = max(0.0, (now - queue.oldest_due).total_seconds())
            families["oldest_due_age"].add_metric([queue.queue], age)
        yield from families.values()


def registry(collector: QueueCollector | None = None) -> CollectorRegistry:
    """This process's metrics and the queue gauges, as one registry to serve.

    With ``PROMETHEUS_MULTIPROC_DIR`` set (several web processes, see
    prometheus_client's docs) the counters are those of every process.
    """
    # No auto_describe: it would collect (query the database) on register.
    served = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(served)
    else:
        served.register(_Default())
    served.register(collector or QueueCollector())
    return served


class _Default(Collector):
    """The default registry's metrics, seen through another registry."""

    def collect(self) -> Iterator:
        yield from REGISTRY.collect()


class _Handler(http.server.BaseHTTPRequestHandler):
    registry: CollectorRegistry

    def do_GET(self) -> None:
        if self.path.split("?")[0] not in ("/", "/metrics"):
            self.send_error(404)
            return
        try:
            body = generate_latest(self.registry)
        finally:
            # Each request has a thread, and Django a connection per thread.
            connections.close_all()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape every 15 seconds is not news


class MetricsServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/metrics"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def serve(host: str, port: int, using: str | None = None) -> MetricsServer:
    """Serve ``registry()`` at ``http://host:port/metrics`` from a daemon thread.

    Port 0 takes a free port: ``server.url`` says which.
    """
    served = registry(QueueCollector(using))
    handler = type("Handler", (_Handler,), {"registry": served})
    if ":" in host:
        server_class = type(
            "MetricsServer6", (MetricsServer,), {"address_family": socket.AF_INET6}
        )
    else:
        server_class = MetricsServer
    server = server_class((host, port), handler)
    threading.Thread(
        target=server.serve_forever, name="async_jobs metrics", daemon=True
    ).start()
    return server
