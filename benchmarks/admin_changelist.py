#!/usr/bin/env python3
"""Time the Job and Error admins, the queue overview and pruning at a million jobs.

    .venv/bin/python benchmarks/admin_changelist.py [--rows N] [--repeat R]

Starts a throwaway PostgreSQL (test_projects/throwaway_postgres.py, durable:
fsync on), migrates, loads N jobs (default 1,000,000) with one INSERT … SELECT
generate_series, VACUUM ANALYZEs as autovacuum would, then times requests to
the admin with Django's test client (logged in as a superuser): the median of
R runs after one warm-up. For comparison it also times the ``COUNT(*)``s a
stock changelist would run. Prints a table; the figures go in
docs/operations.rst. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "test_projects"))

from throwaway_postgres import postgres_cluster  # noqa: E402

STATUSES = """
    CASE
        WHEN i > %(rows)s - 2000 AND i %% 100 < 10 THEN 'pending'
        WHEN i %% 100 < 2 THEN 'failed'
        WHEN i %% 100 < 3 THEN 'cancelled'
        ELSE 'succeeded'
    END
"""

# 30 days of jobs, the newest now; 2% failed (3 attempts each), 1% cancelled,
# a backlog of pending jobs among the newest 2,000; 8 functions in equal
# shares, and a ninth for 0.1% of the jobs.
LOAD_JOBS = f"""
INSERT INTO async_jobs_job (
    name, args, kwargs, meta, queue, priority, status, run_after, created,
    started, finished, attempts, max_attempts, result, attempt_log
)
SELECT
    CASE WHEN i %% 1000 = 7 THEN 'shop.tasks.rarely_used'
    ELSE 'shop.tasks.' || (ARRAY['send_receipt', 'add', 'noop', 'record', 'echo',
        'write_then_fail', 'write_then_sleep', 'sync_stock'])[1 + i %% 8] END,
    jsonb_build_array(i, 'order-' || i),
    '{{}}'::jsonb,
    '{{}}'::jsonb,
    (ARRAY['default', 'mail', 'reports', 'billing'])[1 + i %% 4],
    0,
    status,
    created,
    created,
    CASE WHEN status = 'pending' THEN NULL ELSE created END,
    CASE WHEN status = 'pending' THEN NULL ELSE created + interval '1 second' END,
    CASE WHEN status = 'failed' THEN 3 WHEN status = 'pending' THEN 0 ELSE 1 END,
    3,
    CASE WHEN status = 'succeeded' THEN to_jsonb(i) END,
    '[]'::jsonb
FROM (
    SELECT
        i,
        now() - (%(rows)s - i) * (interval '30 days' / %(rows)s) AS created,
        {STATUSES} AS status
    FROM generate_series(1, %(rows)s) AS i
) AS generated
"""

# Three errors per failed job and one per succeeded job (a retry that then
# succeeded): about a million at a million jobs. Five exception classes in
# equal shares, and a sixth for 0.1% of the jobs.
ERROR_PAGE = "admin:async_jobs_error_change"

LOAD_ERRORS = """
INSERT INTO async_jobs_error (job_id, attempt, exception, traceback, occurred)
SELECT job.id, attempt,
    CASE WHEN job.id % 1000 = 7 THEN 'shop.errors.RareError: rare'
    ELSE (ARRAY['builtins.RuntimeError: failed', 'builtins.ValueError: bad value',
        'builtins.ConnectionRefusedError: [Errno 111] Connection refused',
        'builtins.TimeoutError: timed out', 'shop.errors.StockError: out of stock'
    ])[1 + (job.id + attempt) % 5] END,
    'Traceback (most recent call last):' || repeat(E'\\n  File "x.py", line 1', 8),
    job.finished - (3 - attempt) * interval '10 seconds'
FROM async_jobs_job AS job,
    generate_series(1, CASE WHEN job.status = 'failed' THEN 3 ELSE 1 END) AS attempt
WHERE job.status IN ('failed', 'succeeded')
"""


def timed(run: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median seconds of ``repeat`` runs after a warm-up: in all, and in SQL."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    run()
    times, sql_times = [], []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as queries:
            began = time.perf_counter()
            run()
            times.append(time.perf_counter() - began)
        sql_times.append(sum(float(query["time"]) for query in queries))
    return statistics.median(times), statistics.median(sql_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()

    with postgres_cluster(durable=True) as url:
        os.environ["ASYNC_JOBS_DATABASE_URL"] = url
        os.environ["DJANGO_SETTINGS_MODULE"] = "testproject.settings"
        run(options.rows, options.repeat)


def run(rows: int, repeat: int) -> None:
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment
    from django.urls import reverse

    from async_jobs.metrics import read_queues
    from async_jobs.models import Error, Job
    from async_jobs.overview import hourly_outcomes, queue_overview
    from async_jobs.pruning import prunable, prune

    settings.DEBUG = False
    setup_test_environment()
    call_command("migrate", verbosity=0)
    began = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(LOAD_JOBS, {"rows": rows})
        cursor.execute(LOAD_ERRORS)
    load_time = time.perf_counter() - began
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE async_jobs_job")
        cursor.execute("VACUUM ANALYZE async_jobs_error")
        cursor.execute(
            "SELECT pg_size_pretty(pg_total_relation_size('async_jobs_job'))"
        )
        size = cursor.fetchone()[0]
    errors = Error.objects.count()
    print(
        f"Loaded {rows:,} jobs and {errors:,} errors in {load_time:.1f}s; "
        f"job table with indexes: {size}. Median of {repeat} runs after a warm-up."
    )
    print(
        f"PostgreSQL {connection.cursor().connection.info.server_version}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs."
    )

    user = User.objects.create_superuser("bench", password="bench")
    client = Client()
    client.force_login(user)
    changelist = reverse("admin:async_jobs_job_changelist")
    errors = reverse("admin:async_jobs_error_changelist")
    error_id = Error.objects.order_by("-pk").values_list("pk", flat=True)[500]
    some_id = Job.objects.order_by("-pk").values_list("pk", flat=True)[500]
    failed_id = Job.objects.filter(status="failed").order_by("-pk")[0].pk
    deep = rows // 200  # halfway through the table
    week_ago = Job.objects.order_by("-pk")[rows // 4].created.isoformat()

    def page(path: str, **params: str) -> Callable[[], object]:
        def get() -> None:
            response = client.get(path, params)
            if response.status_code != 200:
                raise RuntimeError(f"{path} {params}: {response.status_code}")

        return get

    cases = [
        ("changelist, first page", page(changelist)),
        ("changelist, page 2", page(changelist, p="2")),
        ("changelist, page 100", page(changelist, p="100")),
        (
            f"changelist, page {deep:,} (OFFSET {(deep - 1) * 100:,})",
            page(changelist, p=str(deep)),
        ),
        ("filter status=failed", page(changelist, status__exact="failed")),
        ("filter status=pending", page(changelist, status__exact="pending")),
        ("filter queue=mail", page(changelist, queue="mail")),
        ("filter status=cancelled (1%)", page(changelist, status__exact="cancelled")),
        ("filter name=shop.tasks.add (1/8)", page(changelist, name="shop.tasks.add")),
        (
            "filter name=shop.tasks.rarely_used (0.1%)",
            page(changelist, name="shop.tasks.rarely_used"),
        ),
        (
            "filter status=failed & created in the last week",
            page(changelist, status__exact="failed", created__gte=week_ago),
        ),
        ("search 'receipt' (name contains)", page(changelist, q="receipt")),
        (
            "search 'no_such_function' (no match)",
            page(changelist, q="no_such_function"),
        ),
        (f"search by id ({some_id})", page(changelist, q=str(some_id))),
        (
            "job page with 3 errors",
            page(reverse("admin:async_jobs_job_change", args=[failed_id])),
        ),
        ("queue overview page", page(reverse("admin:async_jobs_job_overview"))),
        ("queue_overview() (queue_status)", queue_overview),
        ("errors: first page", page(errors)),
        ("errors: page 100", page(errors, p="100")),
        (
            "errors: filter class RuntimeError (1/5)",
            page(errors, exception_class="builtins.RuntimeError"),
        ),
        (
            "errors: filter class RareError (0.1%)",
            page(errors, exception_class="shop.errors.RareError"),
        ),
        ("errors: filter function shop.tasks.add", page(errors, name="shop.tasks.add")),
        (
            "errors: filter occurred in the last week",
            page(errors, occurred__gte=week_ago),
        ),
        (f"errors: search by job id ({failed_id})", page(errors, q=str(failed_id))),
        ("errors: search 'stock' (exception contains)", page(errors, q="stock")),
        ("errors: one error's page", page(reverse(ERROR_PAGE, args=[error_id]))),
        ("hourly_outcomes() (the overview's chart)", hourly_outcomes),
        ("read_queues() (Prometheus queue gauges)", read_queues),
        ("for comparison: COUNT(*) of all jobs", Job.objects.count),
        ("for comparison: COUNT(*) of all errors", Error.objects.count),
        (
            "for comparison: COUNT(*) of succeeded jobs",
            Job.objects.filter(status="succeeded").count,
        ),
    ]
    width = max(len(label) for label, _ in cases)
    print(f"\n{'what':<{width}}  {'request':>9}  {'of it SQL':>9}")
    for label, case in cases:
        total, sql = timed(case, repeat)
        print(f"{label:<{width}}  {total * 1000:7.1f}ms  {sql * 1000:7.1f}ms")

    for path in (changelist, errors):
        with CaptureQueriesContext(connection) as queries:
            client.get(path)
        print(f"\nQueries of the first page of {path} ({len(queries)}):")
        for query in queries:
            print(f"  {query['time']:>6}s  {query['sql'][:150]}")

    for label, read in (("chart", hourly_outcomes), ("queue gauges", read_queues)):
        with CaptureQueriesContext(connection) as queries:
            read()
        [query] = queries
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + query["sql"])
            plan = "\n  ".join(row[0] for row in cursor.fetchall())
        print(f"\nPlan of the {label}'s query:\n  {plan}")

    # Pruning: count, then delete the succeeded jobs older than 7 days in
    # batches of 1,000, timing each batch (each is one transaction).
    ages = {"succeeded": timedelta(days=7)}
    began = time.perf_counter()
    would = prunable("succeeded", ages["succeeded"], "default").count()
    count_time = time.perf_counter() - began
    batch_times: list[float] = []
    last = [time.perf_counter()]

    def on_batch(status: str, n: int) -> None:
        now = time.perf_counter()
        batch_times.append(now - last[0])
        last[0] = now

    began = time.perf_counter()
    deleted = prune(ages, batch_size=1000, on_batch=on_batch)
    total = time.perf_counter() - began
    print(
        f"\nprune_jobs: --dry-run count of {would:,} succeeded jobs older than 7d: "
        f"{count_time * 1000:.0f}ms; deleting them took {total:.1f}s in "
        f"{len(batch_times)} batches of 1,000: median batch "
        f"{statistics.median(batch_times) * 1000:.1f}ms, slowest "
        f"{max(batch_times) * 1000:.1f}ms. Deleted: {deleted}."
    )


if __name__ == "__main__":
    main()
