"""The baselines: the same rows and claims with no library in the way.

Each works on a connection of its own (psycopg 3, or Python's sqlite3) against
the tables async_jobs and the test project created, with the claim order and
the row shape async_jobs uses, so that a ratio compares code, not schema.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import UTC, datetime

JOB_INSERT = (
    "INSERT INTO async_jobs_job (name, args, kwargs, meta, queue, priority, "
    "status, run_after, created, attempts, attempt_log, max_attempts, worker, "
    "cancel_requested) "
    "VALUES (%s, %s, %s, %s, 'default', 0, 'pending', %s, %s, 0, '[]', 3, '', "
    "false)"
)
CLAIM = (
    "SELECT id, args FROM async_jobs_job WHERE status = 'pending' "
    "AND queue = 'default' AND run_after <= %s "
    "ORDER BY priority DESC, run_after, id LIMIT %s"
)
MARK_INSERT = "INSERT INTO shop_mark (label) VALUES (%s)"
MARK_DONE = (
    "UPDATE async_jobs_job SET status = 'succeeded', attempts = attempts + 1, "
    "started = %s, finished = %s WHERE id = %s"
)


def elapsed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


class BarePostgres:
    """psycopg 3, one connection, transactions as psycopg begins them."""

    def __init__(self, url: str) -> None:
        self.url = url

    def connect(self, autocommit: bool = False):
        import psycopg

        return psycopg.connect(self.url, autocommit=autocommit)

    @staticmethod
    def row(name: str, args: list):
        from psycopg.types.json import Jsonb

        now = datetime.now(UTC)
        return (name, Jsonb(args), Jsonb({}), Jsonb({}), now, now)

    def insert_each_committed(self, calls: list[tuple[str, list]]) -> float:
        """Seconds for INSERT + COMMIT of each row in turn."""
        with self.connect() as conn:

            def run():
                for name, args in calls:
                    conn.execute(JOB_INSERT, self.row(name, args))
                    conn.commit()

            return elapsed(run)

    def executemany(self, calls: list[tuple[str, list]]) -> float:
        """Seconds for one executemany() of all rows, and its commit."""
        with self.connect() as conn:

            def run():
                rows = [self.row(name, args) for name, args in calls]
                with conn.cursor() as cursor:
                    cursor.executemany(JOB_INSERT, rows)
                conn.commit()

            return elapsed(run)

    def drain(self, per_transaction: int, insert: bool) -> tuple[int, float]:
        """Claim (SKIP LOCKED), [insert a row,] mark done; commit every N jobs."""
        claim = CLAIM + " FOR UPDATE SKIP LOCKED"
        done = 0
        with self.connect() as conn:
            start = time.perf_counter()
            while rows := conn.execute(
                claim, [datetime.now(UTC), per_transaction]
            ).fetchall():
                for job_id, args in rows:
                    if insert:
                        conn.execute(MARK_INSERT, [args[0]])
                    now = datetime.now(UTC)
                    conn.execute(MARK_DONE, [now, now, job_id])
                conn.commit()
                done += len(rows)
            conn.rollback()
            return done, time.perf_counter() - start

    def notify_latencies(self, samples: int, pause: float) -> list[float]:
        """Commit a job with NOTIFY; seconds until a listener has claimed it."""
        listener = self.connect(autocommit=True)
        listener.execute("LISTEN bare_bench")
        claimer = self.connect()
        claimed_at: list[float] = []

        def listen():
            claim = CLAIM + " FOR UPDATE SKIP LOCKED"
            for _ in listener.notifies(stop_after=samples, timeout=samples * 5):
                claimer.execute(claim, [datetime.now(UTC), 1]).fetchall()
                claimed_at.append(time.perf_counter())
                claimer.rollback()

        thread = threading.Thread(target=listen)
        thread.start()
        committed_at = []
        with self.connect() as sender:
            for _ in range(samples):
                time.sleep(pause)
                sender.execute(JOB_INSERT, self.row("shop.tasks.noop", []))
                sender.execute("NOTIFY bare_bench")
                sender.commit()
                committed_at.append(time.perf_counter())
        thread.join(timeout=samples * 5)
        listener.close()
        claimer.close()
        pairs = zip(committed_at, claimed_at, strict=False)  # a lost one: fewer
        return [end - begin for begin, end in pairs]


class BareSQLite:
    """Python's sqlite3, explicit BEGIN/COMMIT, SQLite's default durability."""

    def __init__(self, path: str) -> None:
        self.path = path

    def connect(self):
        return sqlite3.connect(self.path, isolation_level=None, timeout=60)

    @staticmethod
    def row(name: str, args: list):
        now = datetime.now(UTC).replace(tzinfo=None).isoformat(" ")
        return (name, json.dumps(args), "{}", "{}", now, now)

    @staticmethod
    def sql(query: str) -> str:
        return query.replace("%s", "?")

    def insert_each_committed(self, calls: list[tuple[str, list]]) -> float:
        conn = self.connect()

        def run():
            for name, args in calls:
                conn.execute("BEGIN")
                conn.execute(self.sql(JOB_INSERT), self.row(name, args))
                conn.execute("COMMIT")

        try:
            return elapsed(run)
        finally:
            conn.close()

    def executemany(self, calls: list[tuple[str, list]]) -> float:
        conn = self.connect()

        def run():
            rows = [self.row(name, args) for name, args in calls]
            conn.execute("BEGIN")
            conn.executemany(self.sql(JOB_INSERT), rows)
            conn.execute("COMMIT")

        try:
            return elapsed(run)
        finally:
            conn.close()

    def drain(self, per_transaction: int, insert: bool) -> tuple[int, float]:
        """BEGIN IMMEDIATE, claim, [insert a row,] mark done, COMMIT."""
        conn = self.connect()
        done = 0
        start = time.perf_counter()
        try:
            while True:
                conn.execute("BEGIN IMMEDIATE")
                now = datetime.now(UTC).replace(tzinfo=None).isoformat(" ")
                rows = conn.execute(self.sql(CLAIM), [now, per_transaction]).fetchall()
                if not rows:
                    conn.execute("ROLLBACK")
                    return done, time.perf_counter() - start
                for job_id, args in rows:
                    if insert:
                        conn.execute(self.sql(MARK_INSERT), [json.loads(args)[0]])
                    now = datetime.now(UTC).replace(tzinfo=None).isoformat(" ")
                    conn.execute(self.sql(MARK_DONE), [now, now, job_id])
                conn.execute("COMMIT")
                done += len(rows)
        finally:
            conn.close()

    def notify_latencies(self, samples: int, pause: float) -> list[float]:
        return []  # SQLite has no notifications: workers poll
