"""schedule_many(): many jobs, one INSERT, schedule()'s checks and transaction."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from async_jobs import Group, Job, schedule, schedule_many
from async_jobs.signals import job_scheduled

from .test_scheduling import Boom, count_jobs_from_another_connection

pytestmark = pytest.mark.django_db(transaction=True)


def test_many_jobs_are_inserted_by_one_statement():
    before = timezone.now()
    calls = [
        {"function": "shop.tasks.add", "args": [1, 2]},
        {
            "function": "shop.tasks.echo",
            "kwargs": {"x": [1, {"y": None}]},
            "run_after": timedelta(minutes=5),
            "meta": {"queue": "mail", "priority": 7, "max_attempts": 1},
        },
        {"function": "shop.tasks.noop"},
    ]
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        jobs = schedule_many(calls)
        assert count_jobs_from_another_connection() == 0

    assert [q["sql"].split()[0] for q in queries] == ["INSERT"]
    assert count_jobs_from_another_connection() == 3
    stored = list(Job.objects.order_by("pk"))
    assert [job.pk for job in jobs] == [job.pk for job in stored]
    add, echo, noop = stored
    assert (add.name, add.args, add.kwargs, add.queue, add.max_attempts) == (
        "shop.tasks.add",
        [1, 2],
        {},
        "default",
        3,
    )
    assert echo.kwargs == {"x": [1, {"y": None}]}
    assert (echo.queue, echo.priority, echo.max_attempts) == ("mail", 7, 1)
    assert echo.meta == {"queue": "mail", "priority": 7, "max_attempts": 1}
    assert echo.run_after >= before + timedelta(minutes=5)
    assert before <= noop.run_after <= timezone.now()
    assert all(job.status == Job.Status.PENDING for job in stored)
    # Every column as the returned jobs hold it: datetimes to the microsecond,
    # no result (NULL, not JSON null), no group, no unique key.
    for returned, row in zip(jobs, stored, strict=True):
        for field in Job._meta.concrete_fields:
            assert getattr(returned, field.attname) == getattr(row, field.attname)
    assert Job.objects.filter(result__isnull=True).count() == 3


def test_a_rolled_back_transaction_leaves_none_of_them():
    with pytest.raises(Boom), transaction.atomic():
        schedule_many([{"function": "shop.tasks.noop"}] * 3)
        raise Boom

    assert Job.objects.count() == 0


def test_a_savepoint_rollback_removes_only_its_jobs():
    with transaction.atomic():
        kept = schedule_many([{"function": "shop.tasks.noop"}] * 2)
        with pytest.raises(Boom), transaction.atomic():
            schedule_many([{"function": "shop.tasks.add", "args": [1, 1]}] * 2)
            raise Boom

    assert sorted(Job.objects.values_list("pk", flat=True)) == [j.pk for j in kept]


def test_job_scheduled_is_sent_for_each_job_after_commit():
    sent = []

    def receiver(job, **kwargs):
        sent.append(job.pk)

    job_scheduled.connect(receiver)
    try:
        with pytest.raises(Boom), transaction.atomic():
            schedule_many([{"function": "shop.tasks.noop"}] * 2)
            raise Boom
        assert sent == []
        with transaction.atomic():
            jobs = schedule_many([{"function": "shop.tasks.noop"}] * 2)
            assert sent == []
    finally:
        job_scheduled.disconnect(receiver)
    assert sent == [job.pk for job in jobs]


def test_any_iterable_of_calls_is_accepted():
    jobs = schedule_many({"function": "shop.tasks.add", "args": [n, n]} for n in "ab")
    assert [job.args for job in jobs] == [["a", "a"], ["b", "b"]]


def test_no_calls_schedule_nothing():
    with CaptureQueriesContext(connection) as queries:
        assert schedule_many([]) == []
    assert len(queries) == 0


GOOD = {"function": "shop.tasks.noop"}


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ("shop.tasks.noop", TypeError, r"calls\[1\] must be a dict of schedule\(\)"),
        ({"args": [1]}, TypeError, r"calls\[1\] has no 'function'"),
        (
            {"function": "shop.tasks.noop", "when": 1},
            TypeError,
            r"calls\[1\] has unknown key\(s\) 'when'; allowed: function, args",
        ),
        (
            {"function": "os.system", "args": ["true"]},
            ValueError,
            r"calls\[1\]: 'os.system' is not in a module jobs may run",
        ),
        (
            {"function": "shop.tasks.missing"},
            ImportError,
            r"calls\[1\]: Module 'shop.tasks' has no attribute 'missing'",
        ),
        (
            {"function": "shop.tasks.echo", "kwargs": {"when": timezone.now()}},
            TypeError,
            r"calls\[1\]: kwargs\['when'\]: datetime is not JSON serializable",
        ),
        (
            {"function": "shop.tasks.noop", "meta": {"priority": 1000}},
            ValueError,
            r"calls\[1\]: meta\['priority'\] is 1000",
        ),
        (
            {"function": "shop.tasks.noop", "run_after": "tomorrow"},
            TypeError,
            r"calls\[1\]: run_after must be a datetime, a timedelta",
        ),
    ],
)
def test_one_bad_call_schedules_nothing_and_is_named(bad, error, message):
    with pytest.raises(error, match=message):
        schedule_many([GOOD, bad, GOOD])
    assert Job.objects.count() == 0


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        (
            {"unique": True},
            r"calls\[1\]: meta\['unique'\] needs schedule\(\), not schedule_many\(\): "
            "a unique job may turn out to be its pending twin",
        ),
        (
            {"completes": "import-1"},
            r"calls\[1\]: meta\['completes'\] needs schedule\(\), not "
            r"schedule_many\(\): a group's completion job is tied to its group",
        ),
    ],
)
def test_what_one_insert_cannot_honour_is_refused(meta, message):
    with pytest.raises(ValueError, match=message):
        schedule_many([GOOD, {"function": "shop.tasks.noop", "meta": meta}])
    assert Job.objects.count() == 0


def test_the_json_rule_of_schedule_applies_to_each_call():
    with pytest.raises(TypeError, match=r"calls\[0\]: args\[0\]: str holds a NUL"):
        schedule_many([{"function": "shop.tasks.echo", "args": ["a\x00"]}])
    assert Job.objects.count() == 0


def test_jobs_join_their_open_groups_which_close_after_them(flush_queue):
    with transaction.atomic():
        members = schedule_many(
            {"function": "shop.tasks.record", "args": [label], "meta": {"group": group}}
            for label, group in [("a1", "a"), ("b1", "b"), ("a2", "a")]
        )
        completion = schedule(
            "shop.tasks.count_unfinished_members", args=["a"], meta={"completes": "a"}
        )

    a1, b1, a2 = (Job.objects.get(pk=job.pk) for job in members)
    assert completion.group_id is None  # it completes the group, isn't in it
    group_a = Group.objects.get(reference="a")
    assert {a1.group_id, a2.group_id} == {group_a.pk}
    assert b1.group.reference == "b"
    assert group_a.completion_id == completion.pk

    assert "Ran 4 jobs" in flush_queue("--batch", "10")

    completion.refresh_from_db()
    assert (completion.status, completion.result) == (Job.Status.SUCCEEDED, 0)
    assert Group.objects.filter(finished=None).count() == 0


def test_a_job_scheduled_into_a_finished_group_starts_a_new_one(flush_queue):
    [first] = schedule_many([{"function": "shop.tasks.noop", "meta": {"group": "g"}}])
    flush_queue()
    [second] = schedule_many([{"function": "shop.tasks.noop", "meta": {"group": "g"}}])

    first.refresh_from_db()
    second.refresh_from_db()
    assert first.group.finished is not None
    assert second.group_id != first.group_id
    assert second.group.finished is None


def test_a_column_set_in_some_rows_only_is_written_for_each():
    # Columns NULL in every row are left out of the INSERT; one set in some
    # rows is written for all of them, NULL where it isn't set.
    with transaction.atomic():
        grouped, alone = schedule_many(
            [
                {"function": "shop.tasks.noop", "meta": {"group": "g"}},
                {"function": "shop.tasks.noop"},
            ]
        )
    stored = {job.pk: job for job in Job.objects.all()}
    assert stored[grouped.pk].group_id == grouped.group_id is not None
    assert stored[alone.pk].group_id is None
    for returned in (grouped, alone):
        for field in Job._meta.concrete_fields:
            assert getattr(stored[returned.pk], field.attname) == getattr(
                returned, field.attname
            ), field


def assert_stored_as_returned(jobs):
    stored = {job.pk: job for job in Job.objects.all()}
    assert sorted(stored) == sorted(job.pk for job in jobs)
    for returned in jobs:
        for field in Job._meta.concrete_fields:
            assert getattr(stored[returned.pk], field.attname) == getattr(
                returned, field.attname
            ), field


def test_calls_alike_in_every_column_are_each_written(on_postgres):
    # Columns alike in every row travel once; when every column is alike the
    # INSERT has no document at all, only the number of rows.
    call = {"function": "shop.tasks.noop"}
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        jobs = schedule_many([call, call, call])

    [insert] = [q["sql"] for q in queries]
    assert insert.startswith("INSERT")
    if on_postgres:
        assert "generate_series(" in insert
        assert "jsonb_to_recordset" not in insert
    assert len({job.pk for job in jobs}) == 3
    assert_stored_as_returned(jobs)
    assert list(Job.objects.values_list("args", "status").distinct()) == [
        ([], "pending")
    ]


def test_the_same_wall_time_twice_where_the_clock_goes_back_is_two_instants():
    # 01:30 in New York happens twice on 3 November 2030 (fold 0 and 1): equal
    # to Python, an hour apart to the database.
    new_york = ZoneInfo("America/New_York")
    first = datetime(2030, 11, 3, 5, 30, tzinfo=UTC).astimezone(new_york)
    second = datetime(2030, 11, 3, 6, 30, tzinfo=UTC).astimezone(new_york)
    assert first == second and first.utcoffset() != second.utcoffset()

    jobs = schedule_many(
        [
            {"function": "shop.tasks.noop", "run_after": first},
            {"function": "shop.tasks.noop", "run_after": second},
        ]
    )

    stored = [Job.objects.get(pk=job.pk).run_after for job in jobs]
    assert [moment.astimezone(UTC).hour for moment in stored] == [5, 6]


def test_values_python_finds_equal_keep_their_own_json():
    # 1 == True == 1.0 in Python, not in JSON: none may stand for the others.
    calls = [
        {"function": "shop.tasks.echo", "args": [value], "kwargs": {"k": value}}
        for value in (1, True, 1.0)
    ]
    jobs = schedule_many(calls)

    assert_stored_as_returned(jobs)
    stored = [Job.objects.get(pk=job.pk) for job in jobs]
    assert [(type(j.args[0]), type(j.kwargs["k"])) for j in stored] == [
        (int, int),
        (bool, bool),
        (float, float),
    ]


def test_the_jobs_of_one_call_are_created_at_one_instant():
    before = timezone.now()
    now, later = schedule_many(
        [
            {"function": "shop.tasks.noop"},
            {"function": "shop.tasks.noop", "run_after": timedelta(minutes=5)},
        ]
    )

    assert before <= now.created == now.run_after == later.created <= timezone.now()
    assert later.run_after == later.created + timedelta(minutes=5)
    assert_stored_as_returned([now, later])


@pytest.mark.parametrize("alike", [True, False], ids=["alike", "varying"])
def test_a_value_too_long_for_its_column_is_refused_not_cut(on_postgres, alike):
    from django.db import DataError

    from async_jobs.inserting import insert_jobs
    from async_jobs.scheduling import build_job

    if not on_postgres:
        pytest.skip("SQLite doesn't hold a varchar to its length")
    jobs = [build_job("shop.tasks.noop") for _ in range(2)]
    for n, job in enumerate(jobs):
        job.queue = "q" * 101 if alike else "q" * (100 + n)  # the column holds 100
    with pytest.raises(DataError, match="too long"), transaction.atomic():
        insert_jobs(jobs, "default")
    assert not Job.objects.exists()
