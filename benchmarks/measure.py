"""Measure async_jobs on one database beside its bare baselines; print JSON.

``run.py`` runs this in a process of its own for each database, with
``DJANGO_SETTINGS_MODULE=benchmark_settings`` and the database chosen by the
environment (``ASYNC_JOBS_DATABASE_URL`` for PostgreSQL, ``ASYNC_JOBS_DB_NAME``
for the SQLite file). Workers are real ``flush_queue`` processes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import django

BENCHMARKS = Path(__file__).resolve().parent
MANAGE = BENCHMARKS.parent / "test_projects" / "manage.py"
FUNCTIONS = {"no-op": "shop.tasks.noop", "insert": "shop.tasks.record"}
# Below PostgreSQL's 64 cached subtransaction ids: each job's savepoint that
# writes takes one (see docs/worker.rst).
BATCH = "50"


@dataclass
class Figure:
    """One measured figure beside its baseline from the same run."""

    measure: str
    kind: str
    ours: float
    baseline: float | None
    unit: str
    # How the ratio reads: ours / baseline, or baseline / ours for times.
    ratio: float | None = None
    target: str = ""
    met: bool | None = None


def calls(kind: str, count: int, tag: str) -> list[tuple[str, list]]:
    """``count`` calls of the kind's function; labels unique per run."""
    if kind == "no-op":
        return [(FUNCTIONS[kind], []) for _ in range(count)]
    return [(FUNCTIONS[kind], [f"{tag}-{n}"]) for n in range(count)]


#: Emptied between runs; in this order, so that SQLite's foreign keys allow it.
TABLES = ("async_jobs_error", "async_jobs_group", "async_jobs_job", "shop_mark")


def clear() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {', '.join(TABLES)}")
        else:
            for table in TABLES:
                cursor.execute(f"DELETE FROM {table}")


def best_seconds(rounds: int, *runs) -> list[float]:
    """The shortest time of each run over ``rounds`` rounds, taken in turns.

    The machine is shared: taking turns exposes both sides to the same
    disturbances, and the best of a few runs is the least disturbed one.
    """
    best = [math.inf] * len(runs)
    for _ in range(rounds):
        for index, run in enumerate(runs):
            clear()
            best[index] = min(best[index], run())
    clear()
    return best


def timed(function, *args):
    """A run: ``function(*args)``, returning the seconds it took."""

    def run() -> float:
        start = time.perf_counter()
        function(*args)
        return time.perf_counter() - start

    return run


def compare(measure, kind, ours, baseline, unit, minimum=None):
    """A figure whose ratio is ours / baseline (rates), with its target."""
    ratio = ours / baseline
    if minimum is None:
        return Figure(measure, kind, ours, baseline, unit, ratio)
    return Figure(
        measure, kind, ours, baseline, unit, ratio, f">= {minimum}x", ratio >= minimum
    )


def enqueue(kind: str, jobs: int, commits: int, rounds: int, bare) -> list[Figure]:
    from bare import JOB_INSERT
    from django.db import connection, transaction
    from django.utils import timezone

    from async_jobs import Job, schedule, schedule_many

    def one_per_transaction(work):
        for name, args in work:
            with transaction.atomic():
                schedule(name, args=args)

    def all_in_one(work):
        with transaction.atomic():
            for name, args in work:
                schedule(name, args=args)

    def create(name, args):
        now = timezone.now()
        Job.objects.create(
            name=name, args=args, kwargs={}, meta={}, queue="default",
            priority=0, run_after=now, created=now, max_attempts=3,
        )  # fmt: skip

    def create_in_one(work):
        with transaction.atomic():
            for name, args in work:
                create(name, args)

    def create_each(work):
        for name, args in work:
            with transaction.atomic():
                create(name, args)

    def raw_each(work):
        for name, args in work:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(JOB_INSERT, bare.row(name, args))

    def bulk(work):
        schedule_many({"function": name, "args": args} for name, args in work)

    few, many = calls(kind, commits, "e1"), calls(kind, jobs, "en")
    ours_each, bare_each, create_each_time, raw_each_time = best_seconds(
        rounds,
        timed(one_per_transaction, few),
        lambda: bare.insert_each_committed(few),
        timed(create_each, few),
        timed(raw_each, few),
    )
    # The shorter runs get more rounds: a hiccup weighs more on them.
    ours_all, create_all = best_seconds(
        rounds * 2, timed(all_in_one, many), timed(create_in_one, many)
    )
    ours_bulk, bare_bulk = best_seconds(
        rounds * 5, timed(bulk, many), lambda: bare.executemany(many)
    )
    time_ratio = ours_all / create_all
    return [
        compare(
            "enqueue, 1 job per transaction: schedule() vs INSERT + COMMIT",
            kind, commits / ours_each, commits / bare_each, "jobs/s", minimum=0.8,
        ),
        # What Django itself does in the same transactions, for reference: the
        # ORM's insert and atomic(), without schedule()'s checks and NOTIFY.
        compare(
            "  reference: Job.objects.create() vs INSERT + COMMIT",
            kind, commits / create_each_time, commits / bare_each, "jobs/s",
        ),
        # The ceiling for any code that schedules through Django's transactions:
        # the baseline's own INSERT, sent through Django's cursor in atomic().
        compare(
            "  reference: the same INSERT through Django's cursor in atomic()",
            kind, commits / raw_each_time, commits / bare_each, "jobs/s",
        ),
        Figure(
            f"enqueue, {jobs} in 1 transaction: schedule() vs Job.objects.create()",
            kind, jobs / ours_all, jobs / create_all, "jobs/s",
            ratio=time_ratio, target="time <= 1.5x", met=time_ratio <= 1.5,
        ),
        compare(
            "enqueue, bulk: schedule_many() vs executemany()",
            kind, jobs / ours_bulk, jobs / bare_bulk, "jobs/s", minimum=0.3,
        ),
    ]  # fmt: skip


def start_workers(count: int, *options: str, log_dir: Path) -> list:
    """Start ``flush_queue --loop`` processes; return once each says it waits."""
    workers = []
    for n in range(count):
        log = log_dir / f"worker-{n}-{time.monotonic_ns()}.log"
        process = subprocess.Popen(
            [sys.executable, str(MANAGE), "flush_queue", "--loop", *options],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env=os.environ,
        )
        workers.append((process, log))
    deadline = time.monotonic() + 120
    for process, log in workers:
        while "Waiting for jobs" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"a worker did not start:\n{log.read_text()}")
            time.sleep(0.05)
    return workers


def stop_workers(workers: list) -> None:
    for process, _log in workers:
        process.send_signal(signal.SIGTERM)
    for process, log in workers:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.returncode != 0:
            raise RuntimeError(f"a worker failed:\n{log.read_text()}")


def wait_until_done(timeout: float = 600) -> None:
    from async_jobs import Job

    deadline = time.monotonic() + timeout
    while Job.objects.filter(
        status__in=[Job.Status.PENDING, Job.Status.RUNNING]
    ).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the workers did not finish in time")
        time.sleep(0.05)


def worker_rate(
    kind: str,
    jobs: int,
    workers: int,
    options: list[str],
    tmp: Path,
    meta: dict | None = None,
) -> float:
    """Jobs/s of real workers draining a backlog committed at once
    (``meta={"atomic": False}``: of non-atomic jobs)."""
    from django.db.models import Max, Min

    from async_jobs import Job, schedule_many

    clear()
    running = start_workers(workers, *options, log_dir=tmp)
    try:
        schedule_many(
            {"function": name, "args": args, "meta": meta or {}}
            for name, args in calls(kind, jobs, "w")
        )
        wait_until_done()
    finally:
        stop_workers(running)
    if Job.objects.exclude(status=Job.Status.SUCCEEDED).exists():
        raise RuntimeError("some jobs did not succeed")
    window = Job.objects.aggregate(start=Min("started"), end=Max("finished"))
    clear()
    return jobs / (window["end"] - window["start"]).total_seconds()


def bare_rate(kind: str, jobs: int, bare, per_transaction: int) -> float:
    from async_jobs import schedule_many

    clear()
    schedule_many(
        {"function": name, "args": args} for name, args in calls(kind, jobs, "b")
    )
    done, seconds = bare.drain(per_transaction, insert=kind == "insert")
    clear()
    if done != jobs:
        raise RuntimeError(f"the bare loop ran {done} of {jobs} jobs")
    return jobs / seconds


def drain(kind: str, jobs: int, rounds: int, bare, sleep: str, tmp) -> list[Figure]:
    """Best drain rates, the runs of each round taken in turns."""
    loop = ["--sleep", sleep]
    runs = {
        "one": lambda: worker_rate(kind, jobs, 1, loop, tmp),
        "two": lambda: worker_rate(kind, jobs, 2, loop, tmp),
        "batched": lambda: worker_rate(kind, jobs, 1, [*loop, "--batch", BATCH], tmp),
        "non-atomic": lambda: worker_rate(
            kind, jobs, 1, loop, tmp, meta={"atomic": False}
        ),
        "bare one": lambda: bare_rate(kind, jobs, bare, 1),
        "bare hundred": lambda: bare_rate(kind, jobs, bare, 100),
    }
    best = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, run in runs.items():
            best[name] = max(best[name], run())
    return [
        compare(
            "drain, 1 worker, 1 job per transaction vs bare loop",
            kind, best["one"], best["bare one"], "jobs/s", minimum=0.5,
        ),
        compare(
            "drain, 2 workers vs 1 worker",
            kind, best["two"], best["one"], "jobs/s", minimum=1.5,
        ),
        compare(
            f"drain, 1 worker, --batch {BATCH} vs bare loop, 100 per transaction",
            kind, best["batched"], best["bare hundred"], "jobs/s",
            minimum=0.4 if kind == "insert" else None,
        ),
        compare(
            "drain, 1 worker, non-atomic (long-job mode) vs atomic",
            kind, best["non-atomic"], best["one"], "jobs/s",
        ),
    ]  # fmt: skip


def latency(kind: str, samples: int, bare, sleep: str, tmp) -> list[Figure]:
    """Commit-to-start with an idle --loop worker: median and p95, in ms."""
    from django.db import transaction

    from async_jobs import Job, schedule

    clear()
    committed: dict[int, float] = {}
    workers = start_workers(1, "--sleep", sleep, log_dir=tmp)
    try:
        for name, args in calls(kind, samples, "l"):
            time.sleep(random.uniform(0.02, 0.04))
            moment = []
            with transaction.atomic():
                # Registered first, so it runs first after the commit.
                transaction.on_commit(lambda moment=moment: moment.append(time.time()))
                job = schedule(name, args=args)
            committed[job.pk] = moment[0]
        wait_until_done()
    finally:
        stop_workers(workers)
    ours = sorted(
        (job.started.timestamp() - committed[job.pk]) * 1000
        for job in Job.objects.all()
    )
    theirs = sorted(s * 1000 for s in bare.notify_latencies(samples, 0.02))
    figures = []
    for name, pick, limit in (("median", statistics.median, 5), ("p95", p95, 15)):
        baseline = pick(theirs) if theirs else None
        ours_ms = pick(ours)
        figures.append(
            Figure(
                f"commit-to-start latency, idle --loop worker, {name}",
                kind,
                ours_ms,
                baseline,
                "ms",
                target=f"<= {limit} ms" if theirs else "",
                met=ours_ms <= limit if theirs else None,
            )
        )
    return figures


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--commits", type=int, required=True)
    parser.add_argument("--samples", type=int, required=True)
    parser.add_argument("--sleep", required=True, help="the workers' --sleep")
    parser.add_argument("--rounds", type=int, required=True)
    options = parser.parse_args()

    django.setup()
    from bare import BarePostgres, BareSQLite
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    if connection.vendor == "postgresql":
        bare = BarePostgres(os.environ["ASYNC_JOBS_DATABASE_URL"])
    else:
        bare = BareSQLite(connection.settings_dict["NAME"])
    figures = []
    with tempfile.TemporaryDirectory(prefix="ajbench-") as tmp:
        for kind in FUNCTIONS:
            figures += enqueue(
                kind, options.jobs, options.commits, options.rounds, bare
            )
            figures += drain(
                kind, options.jobs, options.rounds, bare, options.sleep, Path(tmp)
            )
            figures += latency(kind, options.samples, bare, options.sleep, Path(tmp))
    clear()
    if connection.vendor != "postgresql":
        # The targets are PostgreSQL's: SQLite's baselines run in-process,
        # with no round trips to compare, and it runs one writer at a time.
        for figure in figures:
            figure.target, figure.met = "", None
    print(json.dumps([asdict(figure) for figure in figures]))


if __name__ == "__main__":
    main()
