"""The claim: best due job first, across queues, by ordered scans of the claim index."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from async_jobs import Job, schedule, schedule_many
from async_jobs.claiming import claim, claim_transaction

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def postgres_only(on_postgres):
    if not on_postgres:
        pytest.skip("SKIP LOCKED and the plan checked are PostgreSQL's")


def claimed(queues=(), limit=1) -> list[str]:
    with claim_transaction("default"):
        return [job.args[0] for job in claim("default", queues, limit)]


def test_the_best_due_job_of_any_queue_comes_first():
    schedule("shop.tasks.record", args=["a-low"], meta={"queue": "a", "priority": 1})
    schedule("shop.tasks.record", args=["b-high"], meta={"queue": "b", "priority": 5})
    schedule("shop.tasks.record", args=["c-mid"], meta={"queue": "c", "priority": 3})

    assert claimed() == ["b-high"]
    assert claimed(["a", "c"]) == ["c-mid"]
    assert claimed(["a"]) == ["a-low"]
    assert claimed(limit=3)[0] == "b-high"
    assert sorted(claimed(limit=5)) == ["a-low", "b-high", "c-mid"]


def test_a_queue_whose_due_jobs_are_all_locked_is_passed_over(postgres_only):
    import psycopg

    busy = schedule("shop.tasks.record", args=["busy"], meta={"queue": "a"})
    schedule("shop.tasks.record", args=["free"], meta={"queue": "b", "priority": -5})
    other_worker = psycopg.connect(**connection.get_connection_params())
    try:
        other_worker.execute(
            "SELECT id FROM async_jobs_job WHERE id = %s FOR UPDATE", [busy.pk]
        )
        assert claimed() == ["free"]
        assert claimed(["a", "b"]) == ["free"]
        assert claimed(["a"]) == []
    finally:
        other_worker.close()


def plan_nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


@pytest.mark.parametrize(
    "analyzed", ["after", "before"], ids=["busy table", "burst after a quiet spell"]
)
@pytest.mark.parametrize("queues", [(), ("a",), ("a", "b")])
def test_every_claim_query_uses_the_claim_index(postgres_only, queues, analyzed):
    # What a busy site's table holds: many finished jobs and a backlog. Or a
    # backlog newer than the statistics, which say that no job is pending: the
    # planner must still find no other index of pending jobs to prefer (as it
    # did the (status, finished) index when that held the pending jobs too).
    Job.objects.bulk_create(
        Job(name="shop.tasks.noop", queue="ab"[n % 2], status=Job.Status.SUCCEEDED)
        for n in range(5000)
    )
    if analyzed == "before":
        analyze()
    schedule_many(
        {"function": "shop.tasks.record", "args": [str(n)], "meta": {"queue": q}}
        for n, q in enumerate("ab" * 500)
    )
    if analyzed == "after":
        analyze()

    with CaptureQueriesContext(connection) as queries:
        assert len(claimed(queues)) == 1

    selects = [q["sql"] for q in queries if "async_jobs_job" in q["sql"]]
    assert selects
    for sql in selects:
        nodes = explain(sql)
        assert "async_jobs_job_claim_idx" in {n.get("Index Name") for n in nodes}, sql
        assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], sql
        if "FOR UPDATE" in sql:
            # The rows locked come straight from an ordered scan of the index,
            # not from a sort of every due job.
            [locking] = [n for n in nodes if n["Node Type"] == "LockRows"]
            [scan] = locking["Plans"]
            assert scan["Node Type"] == "Index Scan", sql
            assert scan["Index Name"] == "async_jobs_job_claim_idx", sql


def analyze() -> None:
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE async_jobs_job")


def explain(sql: str) -> list[dict]:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}")
        (plan,) = cursor.fetchone()
    if isinstance(plan, str):
        plan = json.loads(plan)
    return list(plan_nodes(plan[0]["Plan"]))
