"""What a NOTIFY inside the transaction costs many clients at once: commits/s.

``run.py`` runs this in a process of its own (``benchmark_settings``, the
PostgreSQL server in ``ASYNC_JOBS_DATABASE_URL``). Python clients can't show
it on a machine with fewer cores than clients: their own CPU sets the pace
long before the commits do (``clients.py``). So the clients here are
``pgbench``'s, written in C, each with its own connection, sending one job per
transaction: the very ``INSERT`` that ``schedule()`` sends (captured from it,
its values inlined), three ways:

* no ``NOTIFY``: ``BEGIN``, the ``INSERT``, ``COMMIT``;
* ``NOTIFY`` inside the transaction, in the ``INSERT``'s statement, as
  procrastinate's trigger does: three round trips, but the commit takes
  PostgreSQL's notification queue lock and holds it until the commit is on
  disk, so the commits of every notifying transaction wait for each other;
* ``NOTIFY`` after the commit, as ``schedule()`` sends it: a fourth round
  trip, in a transaction of its own that holds that lock only for a moment
  (it writes nothing, so its commit waits for no disk).

No worker listens: the lock is taken either way. For each number of clients,
the best commits/s of the rounds, the three ways taken in turns. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import django

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent / "test_projects"))

from throwaway_postgres import find_bindir  # noqa: E402

#: The NOTIFY of one new job on the default queue, as ``schedule()`` sends it.
NOTIFY = """SELECT pg_notify('async_jobs_job', '{"queues": ["default"], "at": 0}')"""
WAYS = {
    "none": "no NOTIFY",
    "after": "NOTIFY after the commit (async_jobs)",
    "inside": "NOTIFY inside the transaction (procrastinate)",
}


def job_insert() -> str:
    """The ``INSERT`` of ``schedule("shop.tasks.noop")``, values inlined and
    its timestamps made ``now()`` (pgbench would read ``:49`` as a variable)."""
    from django.db import connection, transaction
    from psycopg import ClientCursor

    from async_jobs import schedule

    sent = []

    def capture(execute, sql, params, many, context):
        if sql.lstrip().upper().startswith("INSERT"):
            sent.append((sql, params))
        return execute(sql, params, many, context)

    with transaction.atomic(), connection.execute_wrapper(capture):
        schedule("shop.tasks.noop")
        transaction.set_rollback(True)
    [(sql, params)] = sent
    inlined = ClientCursor(connection.connection).mogrify(sql, params)
    inlined = re.sub(r"'\d{4}-\d\d-\d\d[^']*'::timestamptz", "now()", inlined)
    if re.search(r"(?<!:):[A-Za-z0-9_]", inlined):
        raise RuntimeError(f"pgbench would read a variable in: {inlined}")
    return " ".join(inlined.split())


def scripts(insert: str) -> dict[str, str]:
    return {
        "none": f"BEGIN;\n{insert};\nCOMMIT;\n",
        "after": f"BEGIN;\n{insert};\nCOMMIT;\n{NOTIFY};\n",
        "inside": f"BEGIN;\nWITH job AS ({insert}) {NOTIFY} FROM job;\nCOMMIT;\n",
    }


def commits_per_second(script: Path, clients: int, seconds: int) -> float:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE async_jobs_job CASCADE")
    command = [
        str(find_bindir() / "pgbench"), "--no-vacuum", "--protocol=extended",
        f"--client={clients}", f"--jobs={min(clients, os.cpu_count() or 1)}",
        f"--time={seconds}", f"--file={script}", os.environ["ASYNC_JOBS_DATABASE_URL"],
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    found = re.search(r"tps = ([\d.]+)", result.stdout)
    failed = re.search(r"number of failed transactions: ([1-9]\d*)", result.stdout)
    if result.returncode or not found or failed:
        raise RuntimeError(f"pgbench failed:\n{result.stdout}\n{result.stderr}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", default="1,8,32", help="comma-separated counts")
    parser.add_argument("--seconds", type=int, default=5, help="per pgbench run")
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    counts = [int(count) for count in options.clients.split(",")]
    best: dict[str, dict[int, float]] = {way: {} for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="ajbench-") as tmp:
        files = {}
        for way, text in scripts(job_insert()).items():
            files[way] = Path(tmp) / f"{way}.sql"
            files[way].write_text(text)
        for _ in range(options.rounds):
            for clients in counts:
                for way in WAYS:
                    rate = commits_per_second(files[way], clients, options.seconds)
                    best[way][clients] = max(best[way].get(clients, 0.0), rate)
    print(
        json.dumps(
            {"seconds": options.seconds, "rounds": options.rounds, "rates": best}
        )
    )


if __name__ == "__main__":
    main()
