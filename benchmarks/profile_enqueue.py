#!/usr/bin/env python3
"""Where enqueueing one job goes: round trips, statements, and CPU per call.

    .venv-bench/bin/python benchmarks/profile_enqueue.py [--calls N] [--profile]

On a throwaway PostgreSQL server (fsync on, as run.py uses), for async_jobs'
``schedule()``, procrastinate's ``defer()`` (through its Django app) and, for
reference, ``Job.objects.create()`` of the same row, it prints:

* the protocol messages each sends for one job in a transaction of its own
  (libpq's trace of Django's connection: every ``Query`` or ``Sync`` is a round
  trip), and the statements;
* per call, with N calls one per transaction and N in one transaction: the
  wall time, and the CPU time of this process (Python, Django, psycopg: all
  but the waits on the server);
* with ``--profile``, cProfile's top functions of ``schedule()``, in one
  transaction and one per transaction.

A peer that is not installed is left out. ``run.py --peers`` makes
``.venv-bench``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent


def enqueuers() -> dict:
    """The ways to enqueue one no-op job, by name."""
    from django.conf import settings
    from django.utils import timezone

    from async_jobs import Job, schedule

    def create() -> None:
        now = timezone.now()
        Job.objects.create(
            name="shop.tasks.noop", args=[], kwargs={}, meta={}, queue="default",
            priority=0, run_after=now, created=now, max_attempts=3,
        )  # fmt: skip

    ways = {
        "async_jobs schedule()": lambda: schedule("shop.tasks.noop"),
        "Job.objects.create() (same row, no NOTIFY)": create,
    }
    if "procrastinate" in settings.PEERS:
        from peerjobs.tasks import noop

        ways["procrastinate defer()"] = noop.defer
    return ways


def trace(work) -> list[str]:
    """The frontend messages libpq sends while ``work()`` runs: type and text."""
    from libpq_trace import frontend_messages

    return [
        f"{kind} {text[:100]}".rstrip()
        for kind, text in frontend_messages(work)
        if kind in ("Query", "Parse", "Sync")
    ]


def per_call(work, calls: int, one_transaction: bool) -> tuple[float, float]:
    """Wall and CPU milliseconds per call."""
    from django.db import transaction

    wall, cpu = time.perf_counter(), time.process_time()
    if one_transaction:
        with transaction.atomic():
            for _ in range(calls):
                work()
    else:
        for _ in range(calls):
            with transaction.atomic():
                work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall * 1000 / calls, cpu * 1000 / calls


def clear() -> None:
    from peers import clear as clear_all

    clear_all()


def measure(calls: int, profile: bool) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import transaction

    call_command("migrate", verbosity=0)
    ways = enqueuers()
    for name, work in ways.items():
        work()  # warm: imports, the first query's set-up
        clear()

        def one_transaction(work=work) -> None:
            with transaction.atomic():
                work()

        messages = trace(one_transaction)
        trips = sum(1 for m in messages if not m.startswith("Parse"))
        print(f"\n{name}: {trips} round trips for 1 job in its own transaction")
        for message in messages:
            print(f"    {message}")
    print(f"\nper call, best of 3 runs of {calls} calls (ms):")
    print(f"{'':45}  {'1 per transaction':>24}  {'all in 1 transaction':>24}")
    print(f"{'':45}  {'wall':>11}  {'CPU':>11}  {'wall':>11}  {'CPU':>11}")
    for name, work in ways.items():
        results = []
        for one in (False, True):
            runs = []
            for _ in range(3):
                clear()
                runs.append(per_call(work, calls, one))
            results += list(min(runs))
        cells = "  ".join(f"{value:11.3f}" for value in results)
        print(f"{name:45}  {cells}")
    clear()
    if profile:
        schedule = ways["async_jobs schedule()"]
        for one in (True, False):
            profiler = cProfile.Profile()
            if one:
                with transaction.atomic():
                    profiler.enable()
                    for _ in range(calls):
                        schedule()
                    profiler.disable()
            else:
                profiler.enable()
                for _ in range(calls):
                    with transaction.atomic():
                        schedule()
                profiler.disable()
            clear()
            where = "in one transaction" if one else "one per transaction"
            print(f"\ncProfile of {calls} schedule() {where}:")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.inside:
        measure(options.calls, options.profile)
        return 0
    sys.path.insert(0, str(BENCHMARKS))
    from run import database

    with database("postgres") as env:
        env = {**env, "DJANGO_SETTINGS_MODULE": "peer_settings"}
        args = [f"--calls={options.calls}", "--inside"]
        if options.profile:
            args.append("--profile")
        command = [sys.executable, str(Path(__file__).resolve()), *args]
        return subprocess.run(command, env=env).returncode


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
