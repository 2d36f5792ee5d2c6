from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from async_jobs.conf import jobs_settings
from async_jobs.execution import Outcome
from async_jobs.management.arguments import (
    add_queue_option,
    positive_int,
    positive_seconds,
)
from async_jobs.management.metrics_server import (
    add_metrics_options,
    start_metrics_server,
)
from async_jobs.management.preflight import ready_database
from async_jobs.notifications import listens
from async_jobs.worker import Worker, WorkerAborted, stop_on_signals, what_failed


class Command(BaseCommand):
    help = (
        "Run the jobs that are due, each in its own transaction, then exit "
        "(from cron); with --loop, keep running jobs as they fall due (a worker)."
    )
    # Run by ready_database() in handle(), after the database check.
    requires_system_checks = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--jobs",
            type=positive_int,
            metavar="N",
            help="Run at most N jobs, then exit.",
        )
        add_queue_option(
            parser, "Only run jobs of this queue (repeat for several). Default: all."
        )
        parser.add_argument(
            "--loop",
            action="store_true",
            help="Keep running: wait for new jobs instead of exiting when none is "
            "due. Reconnects when the database connection breaks.",
        )
        parser.add_argument(
            "--sleep",
            type=positive_seconds,
            metavar="SECONDS",
            help="With --loop, look for due jobs at least this often (default: "
            "ASYNC_JOBS['POLL_INTERVAL'], 1). On PostgreSQL a notification wakes "
            "the worker at once; on SQLite this is the only wake-up.",
        )
        parser.add_argument(
            "--max-seconds",
            type=positive_seconds,
            metavar="SECONDS",
            help="Start no job after this many seconds; finish the running one, "
            "then exit.",
        )
        parser.add_argument(
            "--batch",
            type=positive_int,
            metavar="K",
            help="Run up to K jobs per transaction, each in its own savepoint "
            "(default: ASYNC_JOBS['BATCH_SIZE'], 1). Faster commits, but a crash "
            "re-runs the whole batch; see the docs.",
        )
        add_metrics_options(parser)

    def handle(
        self,
        *,
        jobs: int | None,
        queues: list[str],
        loop: bool,
        sleep: float | None,
        max_seconds: float | None,
        batch: int | None,
        **options,
    ) -> None:
        if sleep is not None and not loop:
            raise CommandError("--sleep only applies with --loop.")
        using = ready_database(self, queues)
        config = jobs_settings()
        metrics = start_metrics_server(self, using, loop=loop, options=options)
        worker = Worker(
            using=using,
            queues=queues,
            max_jobs=jobs,
            batch_size=batch or config.batch_size,
            max_seconds=max_seconds,
            on_outcome=self.report if options["verbosity"] >= 2 else None,
        )
        try:
            with stop_on_signals(worker):
                if loop:
                    sleep = sleep or config.poll_interval
                    if options["verbosity"] >= 1:
                        self.announce(worker, sleep)
                    worker.loop(sleep)
                else:
                    worker.run()
        except WorkerAborted as exc:
            raise CommandError(
                f"{exc}: the running job was rolled back and stays pending. "
                f"{worker.summary()}"
            ) from exc
        except DatabaseError as exc:
            raise CommandError(
                f"Database {using!r} failed during the run: {what_failed(exc)}; "
                f"the running job was rolled back and stays pending. "
                f"{worker.summary()}"
            ) from exc
        finally:
            if metrics is not None:
                metrics.close()
        self.stdout.write(worker.summary())

    def announce(self, worker: Worker, sleep: float) -> None:
        """Say that the worker is up, and how it learns of new jobs."""
        woken = "woken by NOTIFY, " if listens(worker.using) else ""
        self.stdout.write(
            f"Waiting for jobs in database {worker.using!r} "
            f"(queues: {', '.join(worker.queues) or 'all'}; batch "
            f"{worker.batch_size}; {woken}polling every {sleep:g}s)."
        )
        self.stdout.flush()

    def report(self, outcome: Outcome) -> None:
        job = outcome.job
        line = (
            f"{job.pk} {job.name} {outcome.status} "
            f"(attempt {job.attempts}/{job.max_attempts}, {outcome.duration:.3f}s)"
        )
        if outcome.exception is not None:
            line += f": {type(outcome.exception).__name__}: {outcome.exception}"
        self.stdout.write(line)
        self.stdout.flush()  # a --loop worker's log should not lag
