from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from async_jobs.management.preflight import ready_database
from async_jobs.renaming import rename_pending, unresolvable_functions


class Command(BaseCommand):
    help = (
        "After a deploy that renamed or removed job functions: with no "
        "arguments, list the functions of pending jobs that no longer resolve "
        "(exit status 1 if any); with OLD NEW, point the pending jobs of OLD "
        "at NEW."
    )
    requires_system_checks = []  # run by ready_database(), after the database

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("old", nargs="?", help="The dotted path jobs name now.")
        parser.add_argument("new", nargs="?", help="The dotted path to run instead.")

    def handle(self, *, old: str | None, new: str | None, **options) -> None:
        using = ready_database(self)
        if old is None:
            self.check_pending(using)
            return
        if new is None:
            raise CommandError("Give both OLD and NEW, or neither.")
        try:
            renamed = rename_pending(old, new, using)
        except (ImportError, TypeError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Renamed {renamed} pending job{'' if renamed == 1 else 's'}: "
            f"{old} -> {new}."
        )

    def check_pending(self, using: str) -> None:
        broken = unresolvable_functions(using)
        for name, (count, why) in broken.items():
            self.stdout.write(f"{name}: {count} pending job(s); {why}")
        if broken:
            raise CommandError(
                f"{len(broken)} function(s) of pending jobs don't resolve; those "
                "jobs would fail. Rename them (rename_jobs OLD NEW), restore the "
                "function, or cancel them.",
                returncode=1,
            )
        self.stdout.write("Every pending job's function resolves.")
