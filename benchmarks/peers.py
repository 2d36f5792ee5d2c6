"""Measure async_jobs beside its peers on one database; print JSON.

``run.py`` runs this in a process of its own, with
``DJANGO_SETTINGS_MODULE=peer_settings`` and the database chosen as for
``measure.py``. The peers are those of ``settings.PEERS`` (the ones installed):
procrastinate through its Django app, and django-tasks-db, the database backend
of Django's tasks. Each figure runs async_jobs and every peer in turns, so that
whatever else runs on the machine weighs on all of them alike. Workers are real
processes: ``flush_queue --loop``, ``procrastinate worker``, ``db_worker``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import django

BENCHMARKS = Path(__file__).resolve().parent
MANAGE = BENCHMARKS.parent / "test_projects" / "manage.py"
KINDS = ("no-op", "insert")
#: The latency runs' job of each kind, in peerjobs/stamps.py and as a task of
#: each peer.
STAMPED = {"no-op": "noop", "insert": "record"}


def calls(kind: str, count: int, tag: str) -> list[list]:
    """The arguments of ``count`` jobs of a kind; labels unique per run."""
    if kind == "no-op":
        return [[] for _ in range(count)]
    return [[f"{tag}-{n}"] for n in range(count)]


def cursor_query(sql: str, params=()) -> list[tuple]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


class Worker:
    """A worker process, its output in a log file."""

    def __init__(self, command: list[str], log: Path, *, ours: bool = False) -> None:
        self.log = log
        self.ours = ours
        self.process = subprocess.Popen(
            [sys.executable, str(MANAGE), *command],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env=os.environ,
        )

    def wait_until(self, ready) -> None:
        deadline = time.monotonic() + 120
        while not ready(self.log.read_text()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"a worker did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.returncode in (0, -signal.SIGTERM):
            return
        if self.ours:
            raise RuntimeError(f"a worker failed:\n{self.log.read_text()}")
        # A peer's failure to stop cleanly, once its jobs are done and
        # measured, is the peer's to fix: django-tasks-db's db_worker exits
        # from its signal handler, and a SIGTERM that lands in the commit of
        # one of its polls ends it with a traceback.
        last = self.log.read_text().strip().splitlines()[-1:]
        print(
            f"warning: a peer's worker exited {self.process.returncode} when "
            f"stopped: {' '.join(last)}",
            file=sys.stderr,
        )


def wait_for(condition, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


class AsyncJobs:
    """Ours: schedule(), schedule_many(), one ``flush_queue --loop`` worker."""

    name = "async_jobs"
    enqueue_call = "schedule()"
    bulk_call = "schedule_many()"

    def __init__(self, options: argparse.Namespace) -> None:
        from measure import FUNCTIONS

        self.functions = FUNCTIONS
        self.sleep = options.sleep

    def enqueue(self, kind: str, args: list):
        from async_jobs import schedule

        return schedule(self.functions[kind], args=args).pk

    def bulk(self, kind: str, work: list[list]) -> None:
        from async_jobs import schedule_many

        name = self.functions[kind]
        schedule_many({"function": name, "args": args} for args in work)

    def start_worker(self, log: Path) -> Worker:
        worker = Worker(
            ["flush_queue", "--loop", "--sleep", self.sleep], log, ours=True
        )
        worker.wait_until(lambda text: "Waiting for jobs" in text)
        return worker

    def done(self) -> bool:
        from async_jobs import Job

        return not Job.objects.filter(status=Job.Status.PENDING).exists()

    def window(self) -> float:
        """Seconds from the first job's start to the last one's end."""
        from django.db.models import Max, Min

        from async_jobs import Job

        if Job.objects.exclude(status=Job.Status.SUCCEEDED).exists():
            raise RuntimeError("some async_jobs jobs did not succeed")
        times = Job.objects.aggregate(start=Min("started"), end=Max("finished"))
        return (times["end"] - times["start"]).total_seconds()

    def enqueue_stamped(self, kind: str, label: str):
        from async_jobs import schedule

        schedule(f"peerjobs.stamps.{STAMPED[kind]}", args=[label])


class Procrastinate:
    """defer(), batch_defer(), one ``procrastinate worker`` (concurrency 1)."""

    name = "procrastinate"
    enqueue_call = "defer()"
    bulk_call = "batch_defer()"

    def __init__(self, options: argparse.Namespace) -> None:
        from peerjobs import tasks

        self.tasks = {"no-op": tasks.noop, "insert": tasks.record}

    @staticmethod
    def kwargs(args: list) -> dict:
        return {"label": args[0]} if args else {}

    def enqueue(self, kind: str, args: list):
        return self.tasks[kind].defer(**self.kwargs(args))

    def bulk(self, kind: str, work: list[list]) -> None:
        self.tasks[kind].batch_defer(*(self.kwargs(args) for args in work))

    def start_worker(self, log: Path) -> Worker:
        # Its defaults: all queues, concurrency 1, LISTEN/NOTIFY on, jobs kept.
        worker = Worker(["procrastinate", "worker"], log)
        # Ready when its listener's connection has sent LISTEN.
        worker.wait_until(
            lambda _text: cursor_query(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%%procrastinate%%'"
            )[0][0]
        )
        return worker

    def done(self) -> bool:
        return not cursor_query(
            "SELECT 1 FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
        )

    def window(self) -> float:
        if cursor_query(
            "SELECT 1 FROM procrastinate_jobs WHERE status <> 'succeeded' LIMIT 1"
        ):
            raise RuntimeError("some procrastinate jobs did not succeed")
        # Its events are stamped by triggers, with the time of the worker's
        # claim (``started``) and of its final update (``succeeded``).
        ((seconds,),) = cursor_query(
            "SELECT EXTRACT(EPOCH FROM max(at) FILTER (WHERE type = 'succeeded') "
            "- min(at) FILTER (WHERE type = 'started')) FROM procrastinate_events"
        )
        return float(seconds)

    def enqueue_stamped(self, kind: str, label: str):
        from peerjobs import tasks

        getattr(tasks, f"{STAMPED[kind]}_stamped").defer(label=label)


class TasksDB:
    """Django's ``Task.enqueue()`` on django-tasks-db, one ``db_worker``."""

    name = "django-tasks-db"
    enqueue_call = "enqueue()"
    bulk_call = None  # Django's tasks have no bulk enqueue

    def __init__(self, options: argparse.Namespace) -> None:
        from peerjobs import db_tasks

        self.tasks = {"no-op": db_tasks.noop, "insert": db_tasks.record}
        self.poll = options.poll

    def enqueue(self, kind: str, args: list):
        return str(self.tasks[kind].enqueue(*args).id)

    def start_worker(self, log: Path) -> Worker:
        # It polls, every --interval seconds (default 1) while idle.
        command = ["db_worker", "--backend", "db", "--interval", self.poll]
        worker = Worker([*command, "--no-startup-delay", "--no-reload"], log)
        worker.wait_until(lambda text: "Starting worker" in text)
        return worker

    @staticmethod
    def model():
        from django_tasks_db.models import DBTaskResult

        return DBTaskResult

    def done(self) -> bool:
        return not self.model().objects.filter(status__in=["READY", "RUNNING"]).exists()

    def window(self) -> float:
        from django.db.models import Max, Min

        results = self.model().objects
        if results.exclude(status="SUCCESSFUL").exists():
            raise RuntimeError("some django-tasks-db tasks did not succeed")
        times = results.aggregate(start=Min("started_at"), end=Max("finished_at"))
        return (times["end"] - times["start"]).total_seconds()

    def enqueue_stamped(self, kind: str, label: str):
        from peerjobs import db_tasks

        getattr(db_tasks, f"{STAMPED[kind]}_stamped").enqueue(label)


SYSTEMS = {"procrastinate": Procrastinate, "django-tasks-db": TasksDB}


def clear() -> None:
    """Empty every system's tables and the jobs' own (``shop_mark``)."""
    from django.apps import apps
    from django.db import connection

    tables = ["async_jobs_error", "async_jobs_group", "async_jobs_job", "shop_mark"]
    if apps.is_installed("procrastinate.contrib.django"):
        tables += ["procrastinate_events", "procrastinate_periodic_defers"]
        tables.append("procrastinate_jobs")
    if apps.is_installed("django_tasks_db"):
        tables.append(TasksDB.model()._meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {', '.join(tables)}")
        else:
            for table in tables:
                cursor.execute(f"DELETE FROM {table}")


def best(rounds: int, runs: dict, better=min) -> dict:
    """The best result of each run over ``rounds`` rounds, taken in turns."""
    results: dict = {}
    for _ in range(rounds):
        for name, run in runs.items():
            clear()
            value = run()
            results[name] = better(results.get(name, value), value)
    clear()
    return results


def timed(function, *args):
    def run() -> float:
        start = time.perf_counter()
        function(*args)
        return time.perf_counter() - start

    return run


def enqueue_times(systems, kind, jobs, commits, rounds) -> dict:
    """Seconds per system for: 1 per transaction, N in one, bulk."""
    from django.db import transaction

    def one_per_transaction(system, work):
        for args in work:
            with transaction.atomic():
                system.enqueue(kind, args)

    def all_in_one(system, work):
        with transaction.atomic():
            for args in work:
                system.enqueue(kind, args)

    def bulk(system, work):
        with transaction.atomic():
            system.bulk(kind, work)

    few, many = calls(kind, commits, "e1"), calls(kind, jobs, "en")
    each = best(rounds, {s.name: timed(one_per_transaction, s, few) for s in systems})
    # The shorter runs get more rounds: a hiccup weighs more on them.
    one = best(rounds * 2, {s.name: timed(all_in_one, s, many) for s in systems})
    bulky = [s for s in systems if s.bulk_call]
    many_at_once = best(rounds * 5, {s.name: timed(bulk, s, many) for s in bulky})
    return {"each": each, "one": one, "bulk": many_at_once}


def drain_rate(system, kind: str, jobs: int, tmp: Path) -> float:
    """Jobs/s of one worker draining a backlog committed at once."""
    from django.db import transaction

    worker = system.start_worker(tmp / f"{system.name}-{time.monotonic_ns()}.log")
    try:
        work = calls(kind, jobs, "w")
        with transaction.atomic():
            if system.bulk_call:
                system.bulk(kind, work)
            else:
                for args in work:
                    system.enqueue(kind, args)
        wait_for(system.done, f"{system.name}'s worker")
    finally:
        worker.stop()
    return jobs / system.window()


def latencies(system, kind: str, samples: int, tmp: Path) -> list[float]:
    """Commit-to-start with an idle worker, in ms, one job per transaction.

    To the moment the job's function starts, as the job itself writes it
    (``peerjobs/stamps.py``): the same point for every system.
    """
    from django.db import transaction
    from peerjobs.stamps import STAMPS

    clear()
    committed = {}
    stamps = tmp / f"{system.name}-{time.monotonic_ns()}.stamps"
    stamps.touch()
    os.environ[STAMPS] = str(stamps)
    worker = system.start_worker(tmp / f"{system.name}-{time.monotonic_ns()}.log")
    try:
        for n in range(samples):
            time.sleep(random.uniform(0.02, 0.04))
            moment = []
            label = f"l-{n}"
            with transaction.atomic():
                # Registered first, so it runs first after the commit.
                transaction.on_commit(lambda moment=moment: moment.append(time.time()))
                system.enqueue_stamped(kind, label)
            committed[label] = moment[0]
        wait_for(system.done, f"{system.name}'s worker")
    finally:
        worker.stop()
    started = dict(line.split() for line in stamps.read_text().splitlines())
    clear()
    return sorted((float(started[key]) - at) * 1000 for key, at in committed.items())


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def figures_for(ours, peer, kind, enq, drains, lat, options) -> list:
    """async_jobs against one peer, ratios reading "async_jobs is N times"."""
    from measure import Figure

    procrastinate = peer.name == "procrastinate"

    def rate(measure, ours_rate, theirs_rate, minimum):
        ratio = ours_rate / theirs_rate
        target = f">= {minimum}x" if procrastinate and minimum else ""
        met = ratio >= minimum if target else None
        return Figure(
            measure, kind, ours_rate, theirs_rate, "jobs/s", ratio, target, met
        )

    def seconds_rate(measure, key, count, minimum):
        return rate(
            measure, count / enq[key][ours.name], count / enq[key][peer.name], minimum
        )

    jobs, commits = options.jobs, options.commits
    call = f"{ours.enqueue_call} vs {peer.enqueue_call}"
    bulk_call = f"{ours.bulk_call} vs {peer.bulk_call}"
    figures = [
        seconds_rate(f"enqueue, 1 job per transaction: {call}", "each", commits, 1.2),
        seconds_rate(f"enqueue, {jobs} in 1 transaction: {call}", "one", jobs, 1.2),
    ]
    if peer.bulk_call:
        figures.append(seconds_rate(f"enqueue, bulk: {bulk_call}", "bulk", jobs, 1.5))
    drain = f"drain, 1 worker: flush_queue vs {peer.name}'s worker"
    figures.append(rate(drain, drains[ours.name], drains[peer.name], 2))
    for name, pick in (("median", statistics.median), ("p95", p95)):
        ours_ms, theirs_ms = pick(lat[ours.name]), pick(lat[peer.name])
        target = "<= theirs" if procrastinate and name == "median" else ""
        met = ours_ms <= theirs_ms if target else None
        # Times: theirs / ours, so that above 1 is faster here too.
        ratio = theirs_ms / ours_ms
        figures.append(
            Figure(
                f"commit-to-start latency, idle worker, {name}",
                kind, ours_ms, theirs_ms, "ms", ratio, target, met,
            )
        )  # fmt: skip
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--commits", type=int, required=True)
    parser.add_argument("--samples", type=int, required=True)
    parser.add_argument("--sleep", required=True, help="flush_queue's --sleep")
    parser.add_argument("--poll", required=True, help="db_worker's --interval")
    parser.add_argument("--rounds", type=int, required=True)
    options = parser.parse_args()

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    ours = AsyncJobs(options)
    peers = [SYSTEMS[name](options) for name in settings.PEERS]
    systems = [ours, *peers]
    result: dict[str, list] = {peer.name: [] for peer in peers}
    with tempfile.TemporaryDirectory(prefix="ajbench-") as tmp:
        for kind in KINDS:
            enq = enqueue_times(
                systems, kind, options.jobs, options.commits, options.rounds
            )
            runs = {
                s.name: partial(drain_rate, s, kind, options.jobs, Path(tmp))
                for s in systems
            }
            drains = best(options.rounds, runs, better=max)
            lat = {
                s.name: latencies(s, kind, options.samples, Path(tmp)) for s in systems
            }
            for peer in peers:
                result[peer.name] += figures_for(
                    ours, peer, kind, enq, drains, lat, options
                )
    clear()
    print(json.dumps({name: [asdict(f) for f in fs] for name, fs in result.items()}))


if __name__ == "__main__":
    main()
