from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from async_jobs.execution import Outcome
from async_jobs.management.arguments import add_queue_option, positive_int
from async_jobs.management.preflight import ready_database
from async_jobs.worker import Worker, WorkerAborted, stop_on_signals


def what_failed(exc: BaseException) -> str:
    """What led to ``exc``, first cause first.

    A lost connection often raises twice: the job's query meets the server's
    "terminating connection", then Django's attempt to reconnect is refused.
    Both are worth a line in the operator's mail.
    """
    messages: list[str] = []
    link: BaseException | None = exc
    while link is not None and len(messages) < 5:
        message = " ".join(str(link).split()) or type(link).__name__
        if message not in messages:
            messages.insert(0, message)
        link = link.__cause__ or link.__context__
    return ", then: ".join(messages)


class Command(BaseCommand):
    help = (
        "Run the jobs that are due, each in its own transaction, then exit. "
        "Run it from cron, or as a worker."
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

    def handle(self, *, jobs: int | None, queues: list[str], **options) -> None:
        using = ready_database(self, queues)
        worker = Worker(
            using=using,
            queues=queues,
            max_jobs=jobs,
            on_outcome=self.report if options["verbosity"] >= 2 else None,
        )
        try:
            with stop_on_signals(worker):
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
        self.stdout.write(worker.summary())

    def report(self, outcome: Outcome) -> None:
        job = outcome.job
        line = (
            f"{job.pk} {job.name} {outcome.status} "
            f"(attempt {job.attempts}/{job.max_attempts}, {outcome.duration:.3f}s)"
        )
        if outcome.exception is not None:
            line += f": {type(outcome.exception).__name__}: {outcome.exception}"
        self.stdout.write(line)
