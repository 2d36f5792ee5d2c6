"""The claim: best due job first, across queues, by ordered scans of the claim index."""

import json
import time

import pytest
from django.db import connection
from libpq_trace import frontend_messages
from shop.models import Mark

from async_jobs import Job, schedule, schedule_many
from async_jobs.claiming import claim, claim_transaction
from async_jobs.models import HELD

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


@pytest.mark.parametrize(
    "statistics",
    ["busy table", "burst after a quiet spell", "burst into an empty table"],
)
@pytest.mark.parametrize("queues", [(), ("a",), ("a", "b")])
def test_a_claim_reads_a_few_pages_whatever_the_backlog(
    postgres_only, queues, statistics
):
    # What a busy site's table holds: many finished jobs and a backlog. Or a
    # backlog newer than the statistics, which say that no job is pending, or
    # that the table is empty: the planner must still claim by an ordered
    # scan of the claim index, not read and sort every due job for each claim
    # (as it did, with the statistics of an empty table).
    if statistics != "burst into an empty table":
        Job.objects.bulk_create(
            Job(name="shop.tasks.noop", queue="ab"[n % 2], status=Job.Status.SUCCEEDED)
            for n in range(5000)
        )
    if statistics != "busy table":
        analyze()
    schedule_many(
        {"function": "shop.tasks.record", "args": [str(n)], "meta": {"queue": q}}
        for n, q in enumerate("ab" * 2000)
    )
    if statistics == "busy table":
        analyze()

    with claim_transaction("default"), connection.cursor() as cursor:
        # Once first, for the catalog reads of a session's first call.
        cursor.execute(
            "SELECT count(*) FROM async_jobs_claim(%s::varchar[], now(), 0)",
            [list(queues) or None],
        )
        cursor.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "
            "SELECT id FROM async_jobs_claim(%s::varchar[], now(), 1)",
            [list(queues) or None],
        )
        (plan,) = cursor.fetchone()
    if isinstance(plan, str):
        plan = json.loads(plan)
    [scan] = plan[0]["Plan"].get("Plans", [plan[0]["Plan"]])
    assert scan["Actual Rows"] == 1
    # The backlog fills about 100 pages; a sort of it would read them all.
    pages = scan["Shared Hit Blocks"] + scan["Shared Read Blocks"]
    # 30 at most here; a sort or a scan of the backlog reads hundreds.
    assert pages < 40, plan


def analyze() -> None:
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE async_jobs_job")


def test_a_queue_named_twice_yields_each_job_once():
    schedule("shop.tasks.record", args=["a"], meta={"queue": "q"})
    schedule("shop.tasks.record", args=["b"], meta={"queue": "q"})
    schedule("shop.tasks.record", args=["c"], meta={"queue": "r"})

    assert sorted(claimed(["q", "q"], limit=5)) == ["a", "b"]
    assert sorted(claimed(["q", "r", "q"], limit=5)) == ["a", "b", "c"]


def test_a_database_made_without_migrations_gets_the_claim_function(postgres_only):
    # What "MIGRATE": False or --nomigrations leave: the table, no function.
    # migrate's post_migrate (sent then too) creates it.
    from django.core.management import call_command

    from async_jobs.claiming import CLAIM_FUNCTION_SQL

    with connection.cursor() as cursor:
        cursor.execute(
            "DROP FUNCTION async_jobs_claim(varchar[], timestamptz, integer)"
        )
    try:
        call_command("migrate", verbosity=0)
        schedule("shop.tasks.record", args=["a"])

        assert claimed() == ["a"]
    finally:
        # For the tests after this one, should it fail.
        with connection.cursor() as cursor:
            cursor.execute(CLAIM_FUNCTION_SQL.read_text())


def _frontend_queries(work) -> list[str]:
    """The queries libpq sends on Django's connection while ``work()`` runs,
    one round trip each (none sent with the extended protocol)."""
    messages = frontend_messages(work)
    assert not [text for kind, text in messages if kind == "Parse"], messages
    # Traced "quoted".
    return [text[1:-1] for kind, text in messages if kind == "Query"]


def test_a_job_costs_the_worker_three_round_trips(postgres_only):
    # BEGIN; the claim with the job's savepoint (psycopg 3's client-side
    # cursor, Django's default); the job's own statement; the UPDATE recording
    # it with the COMMIT. No
    # savepoint released, nothing for features the job doesn't concern.
    # (transaction_internals.py)
    from async_jobs.worker import Worker

    job = schedule("shop.tasks.record", args=["traced"])
    worker = Worker("default", max_jobs=1)
    worker.last_rescue = time.monotonic()  # no look for expired leases now

    begin, claim_sql, job_sql, record_sql, *more = _frontend_queries(worker.run)

    assert more == []
    assert begin == "BEGIN"
    assert job_sql.startswith('INSERT INTO "shop_mark"')  # the job's own
    assert "async_jobs_claim(" in claim_sql
    assert claim_sql.endswith('; SAVEPOINT "async_jobs_job"')
    assert record_sql.startswith('UPDATE "async_jobs_job"')
    assert record_sql.endswith("; COMMIT")
    # Committed, with the job's own write, and Django's block closed cleanly.
    assert connection.connection.info.transaction_status == 0  # idle
    assert not connection.in_atomic_block
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert Mark.objects.filter(label="traced").exists()


def test_a_job_a_feature_is_told_of_is_committed_by_django(postgres_only):
    # The feature writes after the UPDATE, so the UPDATE can't commit.
    from async_jobs.worker import Worker

    done = schedule("shop.tasks.noop", meta={"completes": "g"})
    member = schedule("shop.tasks.noop", meta={"group": "g"})
    worker = Worker("default", max_jobs=1)
    worker.last_rescue = time.monotonic()

    queries = _frontend_queries(worker.run)

    assert not any(query.endswith("; COMMIT") for query in queries), queries
    assert "COMMIT" in queries
    member.refresh_from_db()
    done.refresh_from_db()
    assert member.status == Job.Status.SUCCEEDED
    assert done.run_after != HELD  # released by the group's bookkeeping


def test_a_claimed_job_is_the_one_from_db_makes():
    from django.db.models.signals import post_init

    def fields(job):
        return {f.attname: getattr(job, f.attname) for f in Job._meta.concrete_fields}

    schedule("shop.tasks.echo", args=[1], kwargs={"a": [2]}, meta={"queue": "q"})
    with claim_transaction("default"):
        [fast] = claim("default")
    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance.pk)

    post_init.connect(receiver, sender=Job)
    try:
        with claim_transaction("default"):
            [slow] = claim("default")
    finally:
        post_init.disconnect(receiver, sender=Job)
    assert seen == [slow.pk]  # from_db() ran Job.__init__(), which sent it
    assert fields(fast) == fields(slow) == fields(Job.objects.get())
    assert (fast._state.adding, fast._state.db) == (False, "default")
    assert (slow._state.adding, slow._state.db) == (False, "default")
