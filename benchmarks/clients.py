"""Many clients at once on PostgreSQL: jobs/s with 8 processes scheduling.

``run.py`` runs this in a process of its own (``peer_settings``, the PostgreSQL
server in ``ASYNC_JOBS_DATABASE_URL``). It starts the client processes (this
script with ``--client``), each a Django process with its own connection, and
then, for each way of scheduling in turns, tells all of them at once to run
their share of transactions, one job each:

* ``schedule()``: async_jobs, whose ``NOTIFY`` is sent after the commit;
* ``defer()``: procrastinate (if installed), whose trigger notifies inside the
  transaction, so its commit takes PostgreSQL's notification queue lock;
* ``Job.objects.create()``: the same row as ``schedule()``, with no ``NOTIFY``.

The rate is all the jobs over the time from the first client's start to the
last one's end. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import django

WAYS = {
    "schedule": "async_jobs schedule() (NOTIFY after the commit)",
    "defer": "procrastinate defer() (NOTIFY in the transaction)",
    "create": "Job.objects.create(), the same row, no NOTIFY",
}


def client() -> None:
    """Run the transactions the coordinator asks for; report start and end."""
    django.setup()
    from django.conf import settings
    from django.db import connection, transaction
    from django.utils import timezone

    from async_jobs import Job, schedule

    def create() -> None:
        now = timezone.now()
        Job.objects.create(
            name="shop.tasks.noop", args=[], kwargs={}, meta={}, queue="default",
            priority=0, run_after=now, created=now, max_attempts=3,
        )  # fmt: skip

    ways = {"schedule": lambda: schedule("shop.tasks.noop"), "create": create}
    if "procrastinate" in settings.PEERS:
        from peerjobs.tasks import noop

        ways["defer"] = noop.defer
    connection.ensure_connection()
    print("ready", flush=True)
    for line in sys.stdin:
        way, count = line.split()
        work = ways[way]
        start = time.time()
        for _ in range(int(count)):
            with transaction.atomic():
                work()
        print(json.dumps([start, time.time()]), flush=True)


def clear() -> None:
    from django.apps import apps
    from django.db import connection

    tables = ["async_jobs_error", "async_jobs_group", "async_jobs_job"]
    if apps.is_installed("procrastinate.contrib.django"):
        tables += ["procrastinate_events", "procrastinate_periodic_defers"]
        tables.append("procrastinate_jobs")
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)}")


def coordinate(clients: int, commits: int, rounds: int) -> dict:
    """Best jobs/s of each way over ``rounds`` rounds, taken in turns."""
    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    ways = [way for way in WAYS if way != "defer" or "procrastinate" in settings.PEERS]
    processes = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ,
        )
        for _ in range(clients)
    ]
    best = dict.fromkeys(ways, 0.0)
    try:
        for process in processes:
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("a client did not start")
        for _ in range(rounds):
            for way in ways:
                clear()
                for process in processes:
                    process.stdin.write(f"{way} {commits}\n")
                    process.stdin.flush()
                spans = [json.loads(p.stdout.readline()) for p in processes]
                seconds = max(end for _, end in spans) - min(s for s, _ in spans)
                best[way] = max(best[way], clients * commits / seconds)
    finally:
        for process in processes:
            process.stdin.close()
        for process in processes:
            process.wait(timeout=60)
    clear()
    if any(process.returncode for process in processes):
        raise RuntimeError("a client failed")
    return {"clients": clients, "commits": commits, "rates": best}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", action="store_true", help="(internal)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--commits", type=int, help="transactions per client")
    parser.add_argument("--rounds", type=int)
    options = parser.parse_args()
    if options.client:
        client()
    else:
        figures = coordinate(options.clients, options.commits, options.rounds)
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
