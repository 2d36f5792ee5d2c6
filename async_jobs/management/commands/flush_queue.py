from __future__ import annotations

import os
import time
from collections.abc import Callable

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections

from async_jobs.conf import jobs_settings
from async_jobs.execution import Outcome
from async_jobs.failures import described
from async_jobs.management.arguments import (
    add_queue_option,
    positive_int,
    positive_seconds,
)
from async_jobs.management.log_output import log_to_stderr
from async_jobs.management.metrics_server import (
    add_metrics_options,
    start_metrics_server,
)
from async_jobs.management.preflight import ready_database
from async_jobs.notifications import listens
from async_jobs.supervisor import ChildReport, Supervisor
from async_jobs.worker import (
    Worker,
    WorkerAborted,
    stop_on_signals,
    summary,
    what_failed,
)


class Command(BaseCommand):
    help = (
        "Run the jobs that are due, each in its own transaction, then exit "
        "(from cron); with --loop, keep running jobs as they fall due (a worker)."
    )
    # Run by ready_database() in handle(), after the database check.
    requires_system_checks = []
    #: Run the worker in a supervised child process (see supervisor.py): from
    #: the command line, where fork() exists; not in call_command()'s caller.
    supervise = False

    def run_from_argv(self, argv: list[str]) -> None:
        self.supervise = hasattr(os, "fork")
        super().run_from_argv(argv)

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
        parser.add_argument(
            "--processes",
            type=positive_int,
            default=1,
            metavar="N",
            help="With --loop, run N worker processes under this one, which "
            "replaces any that dies and passes stop signals on to all.",
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
        processes: int,
        **options,
    ) -> None:
        if sleep is not None and not loop:
            raise CommandError("--sleep only applies with --loop.")
        if processes > 1 and not loop:
            raise CommandError("--processes only applies with --loop.")
        if processes > 1 and not hasattr(os, "fork"):
            raise CommandError("--processes needs os.fork(), which this system lacks.")
        using = ready_database(self, queues)
        config = jobs_settings()
        sleep = sleep or config.poll_interval
        verbose = options["verbosity"] >= 2

        def make_worker(started: float) -> Worker:
            worker = Worker(
                using=using,
                queues=queues,
                max_jobs=jobs,
                batch_size=batch or config.batch_size,
                max_seconds=max_seconds,
                on_outcome=self.report if verbose else None,
                started=started,
            )
            return worker

        if loop and options["verbosity"] >= 1:
            self.announce(make_worker(time.monotonic()), sleep)
        if processes > 1 and options.get("metrics_port") is not None:
            raise CommandError(
                "--metrics-port serves one process's metrics: use it with "
                "--processes 1, or the metrics view (docs/observability.rst)."
            )
        with log_to_stderr(self.stderr, options["verbosity"]):
            if self.supervise or processes > 1:
                self.supervised(
                    make_worker, using, loop, sleep, processes, verbose, options
                )
            else:
                self.in_process(
                    make_worker(time.monotonic()), using, loop, sleep, options
                )

    def in_process(
        self, worker: Worker, using: str, loop: bool, sleep: float, options: dict
    ) -> None:
        """Run the worker in this process, as ``call_command()`` does."""
        metrics = start_metrics_server(self, using, loop=loop, options=options)
        try:
            with stop_on_signals(worker):
                if loop:
                    worker.loop(sleep)
                else:
                    worker.run()
        except (WorkerAborted, DatabaseError) as exc:
            raise CommandError(
                f"{self.failure(exc, using)} {worker.summary()}"
            ) from exc
        finally:
            if metrics is not None:
                metrics.close()
        self.stdout.write(worker.summary())

    def supervised(
        self,
        make_worker: Callable[[float], Worker],
        using: str,
        loop: bool,
        sleep: float,
        processes: int,
        verbose: bool,
        options: dict,
    ) -> None:
        """Run the worker(s) in child processes; charge a child's death.

        A child serves the metrics (``--metrics-port``): its counters are
        where its jobs run.
        """
        started = time.monotonic()

        def run_child(report: ChildReport) -> int:
            # The child's worker goes on where the children before it left off.
            worker = make_worker(started)
            worker.on_attempt = report.attempt

            def on_outcome(outcome: Outcome) -> None:
                report.outcome(outcome)
                if verbose:
                    self.report(outcome)

            worker.on_outcome = on_outcome
            worker.max_jobs = (
                None
                if worker.max_jobs is None
                else worker.max_jobs - supervisor.counts.total()
            )
            metrics = None
            try:
                metrics = start_metrics_server(self, using, loop=loop, options=options)
                with stop_on_signals(worker):
                    if loop:
                        worker.loop(sleep)
                    else:
                        worker.run()
            except CommandError as exc:
                report.send(fatal=str(exc))
                return 1
            except (WorkerAborted, DatabaseError) as exc:
                report.send(fatal=self.failure(exc, using))
                return 1
            finally:
                if metrics is not None:
                    metrics.close()
            report.send(done=True)
            return 0

        supervisor = Supervisor(
            run_child=run_child,
            using=using,
            processes=processes,
            loop=loop,
            on_outcome=self.report if verbose else None,
        )
        self.stdout.flush()
        counts = supervisor.run()
        line = summary(
            counts, time.monotonic() - started, stopped=bool(supervisor.stop_signals)
        )
        if supervisor.fatal is not None:
            raise CommandError(f"{supervisor.fatal} {line}")
        self.stdout.write(line)

    def failure(self, exc: BaseException, using: str) -> str:
        """The one line a worker that had to stop ends with (before its summary)."""
        if isinstance(exc, WorkerAborted):
            return f"{exc}: the running job was rolled back and stays pending."
        return (
            f"Database {using!r} failed during the run: {what_failed(exc)}; "
            "the running job was rolled back and stays pending."
        )

    def announce(self, worker: Worker, sleep: float) -> None:
        """Say that the worker is up, and how it learns of new jobs."""
        woken = "woken by NOTIFY, " if listens(worker.using) else ""
        self.stdout.write(
            f"Waiting for jobs in database {worker.using!r} "
            f"(queues: {', '.join(worker.queues) or 'all'}; batch "
            f"{worker.batch_size}; {woken}polling every {sleep:g}s)."
        )
        if connections[worker.using].settings_dict.get("CONN_MAX_AGE") == 0:
            self.stdout.write(
                "CONN_MAX_AGE is 0: a new database connection for every batch. "
                "Set it (None, or seconds) for workers; see the worker docs."
            )
        self.stdout.flush()

    def report(self, outcome: Outcome) -> None:
        job = outcome.job
        line = (
            f"{job.pk} {job.name} {outcome.status} "
            f"(attempt {job.attempts}/{job.max_attempts}, {outcome.duration:.3f}s)"
        )
        if outcome.exception is not None:
            line += f": {described(outcome.exception)}"
        self.stdout.write(line)
        self.stdout.flush()  # a --loop worker's log should not lag
