from __future__ import annotations

import argparse
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandParser

from async_jobs.conf import jobs_settings
from async_jobs.durations import format_age, parse_age
from async_jobs.management.arguments import positive_int
from async_jobs.management.preflight import ready_database
from async_jobs.pruning import DEFAULT_BATCH_SIZE, PRUNABLE, prune, prune_groups


def age_option(value: str) -> timedelta | None:
    try:
        return parse_age(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Command(BaseCommand):
    help = (
        "Delete finished jobs (and their errors) older than an age per status, "
        "set by ASYNC_JOBS['PRUNE_AFTER'] or the options below, in small "
        "batches so no lock is held for long. Pending jobs are never deleted."
    )
    requires_system_checks = []  # run by ready_database(), after the database

    def add_arguments(self, parser: CommandParser) -> None:
        for status in PRUNABLE:
            parser.add_argument(
                f"--{status}",
                type=age_option,
                default=argparse.SUPPRESS,  # absent unless given: None is 'never'
                metavar="AGE",
                help=(
                    f"Delete {status} jobs that finished more than AGE ago "
                    "(90m, 12h, 30d, 2w, seconds, or 'never'). Default: "
                    f"ASYNC_JOBS['PRUNE_AFTER']['{status}']."
                ),
            )
        parser.add_argument(
            "--batch-size",
            type=positive_int,
            default=DEFAULT_BATCH_SIZE,
            metavar="N",
            help=(
                f"Delete at most N jobs per transaction (default {DEFAULT_BATCH_SIZE})."
            ),
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Only count the jobs that would be deleted.",
        )

    def handle(self, *, batch_size: int, dry_run: bool, **options) -> None:
        using = ready_database(self)
        ages = jobs_settings().prune_after.copy()
        for status in PRUNABLE:
            if status in options:
                ages[status] = options[status]
        counts = prune(
            ages,
            using=using,
            batch_size=batch_size,
            dry_run=dry_run,
            on_batch=self.report_batch if options["verbosity"] >= 2 else None,
        )
        groups = 0 if dry_run else prune_groups(using=using, batch_size=batch_size)
        verb = "Would delete" if dry_run else "Deleted"
        parts = [
            f"{counts[status]} {status} (finished over {format_age(age)} ago)"
            if age is not None
            else f"0 {status} (kept: age 'never')"
            for status, age in ages.items()
        ]
        self.stdout.write(f"{verb} {', '.join(parts)}.")
        if groups:
            noun = "group" if groups == 1 else "groups"
            self.stdout.write(f"Deleted {groups} finished {noun} left with no jobs.")

    def report_batch(self, status: str, count: int) -> None:
        self.stdout.write(f"Deleted a batch of {count} {status} jobs.")
