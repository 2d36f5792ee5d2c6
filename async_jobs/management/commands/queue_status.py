from __future__ import annotations

import argparse
import json
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser

from async_jobs.durations import format_age, parse_age
from async_jobs.management.arguments import add_queue_option
from async_jobs.management.preflight import ready_database
from async_jobs.models import Job
from async_jobs.overview import Overview, queue_overview

#: Exit status when the oldest due job has waited longer than --max-age.
BACKLOG_EXIT_STATUS = 2

COLUMNS = (
    "queue",
    *Job.Status.values,
    "due",
    "oldest due",
    "failed 1h",
    "errors 1h",
)


def max_age_option(value: str) -> timedelta:
    """An age as prune_jobs takes it (``600``, ``10m``), but never ``never``."""
    try:
        age = parse_age(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if age is None:
        raise argparse.ArgumentTypeError("'never' is no limit; leave --max-age out.")
    return age


class Command(BaseCommand):
    help = (
        "Show, per queue, the jobs by status, the due backlog and its oldest "
        "job's wait, and the failures of the last hour. With --max-age, exit "
        f"with status {BACKLOG_EXIT_STATUS} when a due job has waited longer: "
        "a check for cron or monitoring."
    )
    requires_system_checks = []  # run by ready_database(), after the database

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--json",
            action="store_true",
            dest="as_json",
            help="Print the figures as JSON (ages in seconds).",
        )
        parser.add_argument(
            "--max-age",
            type=max_age_option,
            metavar="AGE",
            help=(
                f"Exit with status {BACKLOG_EXIT_STATUS} if the oldest due pending "
                "job has waited longer than AGE since it became due: seconds, or "
                "a number with a unit s, m, h, d or w (600, 10m)."
            ),
        )
        add_queue_option(parser, "Only this queue (repeat for several). Default: all.")

    def handle(
        self, *, as_json: bool, max_age: timedelta | None, queues: list[str], **options
    ) -> None:
        ready_database(self, queues)
        overview = queue_overview(queues)
        if as_json:
            self.stdout.write(dumps(overview))
        else:
            self.stdout.write(table(overview))
        if max_age is None:
            return
        queue, age = overview.longest_wait()
        if age is not None and age > max_age:
            raise CommandError(
                f"Backlog: a due job in queue {queue!r} has waited "
                f"{format_age(age)} ({age.total_seconds():.0f}s), longer than "
                f"--max-age {max_age.total_seconds():g}s.",
                returncode=BACKLOG_EXIT_STATUS,
            )


def dumps(overview: Overview) -> str:
    return json.dumps(overview.as_json(), indent=2)


def table(overview: Overview) -> str:
    """A plain-text table, one line per queue, numbers right-aligned."""
    rows = [
        [
            queue.queue,
            *(str(queue.counts[status]) for status in Job.Status.values),
            str(queue.due),
            "-"
            if queue.oldest_due is None
            else format_age(queue.oldest_due_age(overview.now)),
            str(queue.failed_recently),
            str(queue.errors_recently),
        ]
        for queue in overview.queues
    ]
    if not rows:
        return "No jobs."
    widths = [max(map(len, column)) for column in zip(COLUMNS, *rows, strict=True)]
    lines = []
    for row in [list(COLUMNS), *rows]:
        cells = [row[0].ljust(widths[0])]
        cells += [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
