"""Unique jobs and deschedule(): one pending job per identity, race-free."""

import json
import signal
import threading
import time
from pathlib import Path

import pytest
from django.db import connection, transaction
from shop import tasks

from async_jobs import Job, deschedule, schedule

from .conftest import finish, manage, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


class Boom(Exception):
    pass


def statuses() -> list[tuple[list, str]]:
    return list(Job.objects.order_by("pk").values_list("args", "status"))


def test_a_unique_job_is_scheduled_once_while_it_is_pending():
    first = schedule("shop.tasks.add", args=[1, 2], meta={"unique": True})
    again = schedule(tasks.add, args=(1, 2), meta={"unique": True, "priority": 9})
    other_args = schedule("shop.tasks.add", args=[2, 1], meta={"unique": True})
    not_unique = schedule("shop.tasks.add", args=[1, 2])

    assert again.pk == first.pk
    assert again.priority == 0  # the pending job is returned as it is
    assert len({first.pk, other_args.pk, not_unique.pk}) == 3
    assert Job.objects.count() == 3
    assert not_unique.unique_key is None


def test_the_order_of_keyword_arguments_does_not_matter():
    first = schedule(
        "shop.tasks.echo", kwargs={"a": 1, "b": {"c": 2, "d": 3}}, meta={"unique": True}
    )
    again = schedule(
        "shop.tasks.echo", kwargs={"b": {"d": 3, "c": 2}, "a": 1}, meta={"unique": True}
    )
    assert again.pk == first.pk


def test_a_key_stands_for_the_arguments_within_one_function():
    first = schedule("shop.tasks.add", args=[1, 2], meta={"unique": "totals"})
    same_key = schedule("shop.tasks.add", args=[3, 4], meta={"unique": "totals"})
    other_function = schedule("shop.tasks.echo", meta={"unique": "totals"})

    assert same_key.pk == first.pk
    assert other_function.pk != first.pk


def test_once_the_pending_job_has_finished_a_new_one_is_scheduled(flush_queue):
    first = schedule("shop.tasks.add", args=[1, 2], meta={"unique": True})
    flush_queue()
    second = schedule("shop.tasks.add", args=[1, 2], meta={"unique": True})
    second.cancel()
    third = schedule("shop.tasks.add", args=[1, 2], meta={"unique": True})

    assert len({first.pk, second.pk, third.pk}) == 3
    assert Job.objects.filter(status=Job.Status.PENDING).get() == third


def test_a_unique_job_in_a_rolled_back_transaction_leaves_nothing():
    with pytest.raises(Boom), transaction.atomic():
        schedule("shop.tasks.noop", meta={"unique": True})
        raise Boom

    assert not Job.objects.exists()
    schedule("shop.tasks.noop", meta={"unique": True})
    assert Job.objects.count() == 1


@pytest.mark.parametrize("unique", ["", 0, None, ["x"], "k" * 256])
def test_bad_unique_is_refused(unique):
    with pytest.raises(ValueError, match=r"meta\['unique'\] is .*; it must be True"):
        schedule("shop.tasks.noop", meta={"unique": unique})


def blocked_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
        return cursor.fetchone()[0] > 0


def in_thread(function) -> tuple[threading.Thread, list]:
    """Run ``function`` on its own connection; the list gets its result or error."""
    outcome = []

    def run():
        try:
            outcome.append(function())
        except BaseException as exc:  # reported by the test
            outcome.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_two_concurrent_transactions_schedule_one_unique_job(on_postgres):
    inserted, release = threading.Event(), threading.Event()

    def first():
        with transaction.atomic():
            job = schedule("shop.tasks.add", args=[1, 2], meta={"unique": True})
            inserted.set()
            assert release.wait(timeout=30)
        return job.pk

    def second():
        with transaction.atomic():
            return schedule("shop.tasks.add", args=[1, 2], meta={"unique": True}).pk

    first_thread, first_result = in_thread(first)
    assert inserted.wait(timeout=30)
    second_thread, second_result = in_thread(second)
    if on_postgres:
        wait_until(blocked_on_a_lock, timeout=30)  # its insert waits on the index
    else:
        time.sleep(0.3)  # its insert waits for SQLite's write lock
    assert second_result == []
    release.set()
    first_thread.join(timeout=30)
    second_thread.join(timeout=30)

    assert first_result == second_result
    assert isinstance(first_result[0], int)
    assert Job.objects.count() == 1


def test_deschedule_cancels_the_pending_jobs_with_that_identity():
    call = {"args": [1], "kwargs": {"x": {"p": 1, "q": 2}}}
    wanted = schedule("shop.tasks.echo", **call)
    reordered = schedule("shop.tasks.echo", args=[1], kwargs={"x": {"q": 2, "p": 1}})
    other = schedule("shop.tasks.echo", args=[2])
    ran = schedule("shop.tasks.echo", **call)
    ran.execute()

    assert deschedule(tasks.echo, args=(1,), kwargs={"x": {"p": 1, "q": 2}}) == 2

    status = dict(Job.objects.values_list("pk", "status"))
    assert status[wanted.pk] == status[reordered.pk] == Job.Status.CANCELLED
    assert status[other.pk] == Job.Status.PENDING
    assert status[ran.pk] == Job.Status.SUCCEEDED
    assert deschedule("shop.tasks.echo", **call) == 0


def test_deschedule_without_arguments_matches_calls_without_arguments():
    bare = schedule("shop.tasks.echo")
    schedule("shop.tasks.echo", args=[1])

    assert deschedule("shop.tasks.echo") == 1
    bare.refresh_from_db()
    assert bare.status == Job.Status.CANCELLED


def test_deschedule_by_key():
    keyed = schedule("shop.tasks.add", args=[1, 2], meta={"unique": "totals"})
    schedule("shop.tasks.add", args=[1, 2])

    assert deschedule("shop.tasks.add", key="totals") == 1
    assert statuses() == [([1, 2], Job.Status.CANCELLED), ([1, 2], Job.Status.PENDING)]
    assert keyed.pk == Job.objects.filter(status=Job.Status.CANCELLED).get().pk
    with pytest.raises(TypeError, match="either args/kwargs or key"):
        deschedule("shop.tasks.add", args=[1, 2], key="totals")
    with pytest.raises(ValueError, match="key is ''"):
        deschedule("shop.tasks.add", key="")


def test_deschedule_in_a_rolled_back_transaction_cancels_nothing():
    schedule("shop.tasks.noop")
    with pytest.raises(Boom), transaction.atomic():
        assert deschedule("shop.tasks.noop") == 1
        raise Boom
    assert Job.objects.get().status == Job.Status.PENDING


def test_deschedule_ends_a_series(flush_queue):
    schedule("shop.tasks.noop", meta={"repeat": 60})
    assert deschedule("shop.tasks.noop") == 1
    assert "Ran 0 jobs" in flush_queue()
    assert Job.objects.get().status == Job.Status.CANCELLED


@pytest.mark.processes
def test_deschedule_waits_for_a_running_occurrence_and_cancels_its_successor(
    tmp_path, on_postgres
):
    if not on_postgres:
        pytest.skip("SQLite runs no deschedule() beside a worker's write transaction")
    flag = tmp_path / "hold"
    flag.touch()
    args = ["series", str(flag)]
    running = schedule("shop.tasks.write_then_wait", args=args, meta={"repeat": 60})
    worker = manage("flush_queue")
    try:
        wait_until(Path(f"{flag}.started").exists, timeout=60)
        thread, cancelled = in_thread(
            lambda: deschedule("shop.tasks.write_then_wait", args=args)
        )
        wait_until(blocked_on_a_lock, timeout=30)  # waits for the running job
        flag.unlink()
        thread.join(timeout=30)
        _, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err
    finally:
        if worker.poll() is None:
            worker.kill()

    assert cancelled == [1]
    running.refresh_from_db()
    assert running.status == Job.Status.SUCCEEDED
    successor = Job.objects.exclude(pk=running.pk).get()
    assert successor.status == Job.Status.CANCELLED


#: A process's loop of unique schedule() calls; prints what it got, as JSON.
SCHEDULER = """
import collections, json
from async_jobs import schedule
errors, jobs = collections.Counter(), set()
for _ in range({calls}):
    try:
        jobs.add(schedule("shop.tasks.noop", meta={{"unique": True}}).pk)
    except Exception as exc:
        errors[f"{{type(exc).__module__}}.{{type(exc).__name__}}: {{exc}}"] += 1
print(json.dumps({{"errors": errors, "jobs": sorted(jobs)}}))
"""


@pytest.mark.processes
def test_concurrent_unique_schedules_beside_running_workers_always_get_a_job(
    on_postgres, start_manage
):
    """3 processes schedule the same unique call 300 times each while 2
    workers run it as fast as it comes: every call gets a job (its own or
    its pending twin), never an error. Before issue 14 one call in about
    2,000 raised ``IntegrityError: ... its pending twin kept changing``."""
    if not on_postgres:
        pytest.skip("SQLite lets one writer in at a time: no twin can change")
    workers = [start_manage("flush_queue", "--loop") for _ in range(2)]
    schedulers = [
        start_manage("shell", "-c", SCHEDULER.format(calls=300)) for _ in range(3)
    ]
    reports = []
    for scheduler in schedulers:
        code, out, err = finish(scheduler, timeout=180)
        assert code == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
        code, _, err = finish(worker, timeout=60)
        assert code == 0, err

    assert [report["errors"] for report in reports] == [{}, {}, {}]
    returned = {pk for report in reports for pk in report["jobs"]}
    jobs = Job.objects.filter(name="shop.tasks.noop")
    assert returned == set(jobs.values_list("pk", flat=True))
    assert jobs.filter(status=Job.Status.PENDING).count() <= 1
    assert not jobs.exclude(status__in=[Job.Status.PENDING, Job.Status.SUCCEEDED])
    # The race under test happened: the workers ran the job over and over
    # while the three processes were scheduling it.
    assert jobs.filter(status=Job.Status.SUCCEEDED).count() >= 10
