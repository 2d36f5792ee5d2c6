"""The NOTIFY that wakes workers: one per committed transaction that made jobs due."""

import json
from datetime import timedelta

import pytest
from django.db import connection, transaction

from async_jobs import Job, schedule, schedule_many
from async_jobs.notifications import Wakeup

from .test_scheduling import Boom

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def received(on_postgres):
    """Read, on a connection of the test's own, what the jobs channel got."""
    if not on_postgres:
        pytest.skip("NOTIFY is PostgreSQL's")
    import psycopg

    listener = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    listener.execute('LISTEN "async_jobs_job"')

    def read(wait: float = 0.5) -> list[dict]:
        return [
            json.loads(notify.payload)
            for notify in listener.notifies(timeout=wait, stop_after=100)
        ]

    yield read
    listener.close()


def test_one_notification_per_transaction_however_many_jobs(received):
    with transaction.atomic():
        first = schedule("shop.tasks.noop", meta={"queue": "mail"})
        schedule("shop.tasks.noop", run_after=timedelta(hours=1))
        schedule_many([{"function": "shop.tasks.noop", "meta": {"queue": "b"}}] * 50)
        assert received(wait=0.2) == []  # nothing before the commit

    [payload] = received()
    assert payload == {
        "queues": ["b", "default", "mail"],
        "at": first.run_after.timestamp(),
    }


def test_a_rolled_back_transaction_notifies_nobody(received):
    with pytest.raises(Boom), transaction.atomic():
        schedule("shop.tasks.noop", meta={"queue": "lost"})
        raise Boom
    assert received() == []

    with transaction.atomic():
        schedule("shop.tasks.noop")
    assert [payload["queues"] for payload in received()] == [["default"]]


def test_a_rolled_back_savepoint_does_not_silence_the_transaction(received):
    with transaction.atomic():
        with pytest.raises(Boom), transaction.atomic():
            schedule("shop.tasks.noop", meta={"queue": "lost"})
            raise Boom
        schedule("shop.tasks.noop", meta={"queue": "kept"})

    assert [payload["queues"] for payload in received()] == [["kept"]]


def test_jobs_on_both_sides_of_a_savepoint_rollback_share_one_notification(received):
    with transaction.atomic():
        schedule("shop.tasks.noop", meta={"queue": "before"})
        with pytest.raises(Boom), transaction.atomic():
            schedule("shop.tasks.noop", meta={"queue": "inside"})
            raise Boom
        schedule("shop.tasks.noop", meta={"queue": "after"})

    # The rolled-back job's queue may be named: that costs a look, not a job.
    [payload] = received()
    assert {"before", "after"} <= set(payload["queues"])


def test_each_job_scheduled_outside_a_transaction_notifies(received):
    schedule("shop.tasks.noop")
    schedule("shop.tasks.noop", run_after=timedelta(minutes=1))
    assert len(received()) == 2


def test_a_payload_names_the_queues_and_when_jobs_are_due():
    payload = json.dumps({"queues": ["mail"], "at": 100.0})
    wakeup = Wakeup.from_payload(payload)

    assert wakeup.concerns([])  # a worker of every queue
    assert wakeup.concerns(["mail", "default"])
    assert not wakeup.concerns(["default"])
    assert wakeup.delay() < 0  # due long ago
    assert Wakeup.from_payload(json.dumps({"at": 1e12})).concerns(["any"])
    assert Wakeup.from_payload("not json").delay() < 0  # unknown: look now


def test_a_series_next_occurrence_is_announced(received, flush_queue):
    schedule("shop.tasks.noop", meta={"repeat": 60, "queue": "cron"})
    received()

    flush_queue()

    [following] = Job.objects.filter(status=Job.Status.PENDING)
    assert received() == [{"queues": ["cron"], "at": following.run_after.timestamp()}]


def test_a_released_completion_job_is_announced(received, flush_queue):
    schedule("shop.tasks.noop", meta={"group": "g"})
    completion = schedule(
        "shop.tasks.noop", meta={"completes": "g", "queue": "reports"}
    )
    received()

    flush_queue("--jobs", "1")

    completion.refresh_from_db()
    assert received() == [
        {"queues": ["reports"], "at": completion.run_after.timestamp()}
    ]


def test_a_job_run_again_is_announced(received, flush_queue):
    job = schedule("shop.tasks.write_then_fail", args=["x"], meta={"max_attempts": 1})
    flush_queue()
    received()

    Job.objects.get(pk=job.pk).requeue()

    job.refresh_from_db()
    assert received() == [{"queues": ["default"], "at": job.run_after.timestamp()}]
