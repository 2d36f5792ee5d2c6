"""Recurring jobs: each occurrence's successor commits with its outcome."""

import logging
import re
import sys
from datetime import UTC, datetime, timedelta
from datetime import timezone as fixed_offset
from pathlib import Path

import pytest
from django.db import transaction
from django.test import override_settings
from freezegun import freeze_time
from shop.models import Mark

from async_jobs import Job, schedule
from async_jobs.cron import REPEAT_MAX, next_slot
from async_jobs.recurrence import schedule_next, schedule_next_occurrences

from .conftest import manage, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

NO_JITTER = {"BACKOFF_BASE": 10, "BACKOFF_JITTER": 0}


class Boom(Exception):
    pass


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def pending() -> list[Job]:
    return list(Job.objects.filter(status=Job.Status.PENDING).order_by("pk"))


def test_an_interval_series_schedules_its_next_occurrence(flush_queue):
    with freeze_time("2030-01-01 12:00:00") as clock:
        first = schedule(
            "shop.tasks.add",
            args=[1, 2],
            meta={"repeat": timedelta(hours=1), "priority": 3, "queue": "maths"},
        )
        assert first.meta == {"repeat": 3600, "priority": 3, "queue": "maths"}

        assert "1 succeeded" in flush_queue()

        first.refresh_from_db()
        assert (first.status, first.result) == (Job.Status.SUCCEEDED, 3)
        [second] = pending()
        assert second.run_after == at("2030-01-01 13:00:00")
        assert (second.name, second.args, second.kwargs, second.meta) == (
            first.name,
            first.args,
            first.kwargs,
            first.meta,
        )
        assert (second.priority, second.queue, second.max_attempts) == (3, "maths", 3)
        assert "Ran 0 jobs" in flush_queue()

        clock.tick(timedelta(hours=1))
        assert "1 succeeded" in flush_queue()
        assert [job.run_after for job in pending()] == [at("2030-01-01 14:00:00")]
        assert Job.objects.filter(status=Job.Status.SUCCEEDED).count() == 2


@override_settings(ASYNC_JOBS=NO_JITTER)
def test_a_final_failure_continues_the_series_a_retry_does_not(flush_queue):
    with freeze_time("2030-01-01 12:00:00") as clock:
        first = schedule(
            "shop.tasks.write_then_fail",
            args=["x"],
            meta={"repeat": 60, "max_attempts": 2},
        )
        assert "1 to retry" in flush_queue()
        assert pending() == [first]

        clock.tick(timedelta(seconds=10))
        assert "1 failed" in flush_queue()

        first.refresh_from_db()
        assert first.status == Job.Status.FAILED
        # The interval counts from the last attempt's run_after (the retry's).
        assert [job.run_after for job in pending()] == [at("2030-01-01 12:01:10")]


def test_the_next_occurrence_commits_only_with_the_outcome():
    first = schedule("shop.tasks.add", args=[1, 1], meta={"repeat": 60})

    with pytest.raises(Boom), transaction.atomic():
        first.execute()
        assert Job.objects.count() == 2
        raise Boom

    first.refresh_from_db()
    assert (first.status, first.attempts) == (Job.Status.PENDING, 0)
    assert Job.objects.count() == 1


@freeze_time("2030-01-01 12:07:00")
def test_a_cron_series_starts_at_its_next_slot_and_keeps_to_its_slots(flush_queue):
    first = schedule("shop.tasks.noop", meta={"repeat": "*/15 * * * *"})
    assert first.run_after == at("2030-01-01 12:15:00")
    assert "Ran 0 jobs" in flush_queue()

    with freeze_time("2030-01-01 12:15:02"):
        flush_queue()
    assert [job.run_after for job in pending()] == [at("2030-01-01 12:30:00")]


@override_settings(TIME_ZONE="Europe/Paris")
@freeze_time("2030-01-10 12:00:00")
def test_cron_expressions_are_read_in_the_projects_time_zone():
    job = schedule("shop.tasks.noop", meta={"repeat": "0 3 * * *"})
    assert job.run_after == at("2030-01-11 02:00:00")  # 03:00 in Paris (UTC+1)


def test_an_explicit_run_after_starts_a_cron_series_then_its_slots_follow(
    flush_queue,
):
    with freeze_time("2030-01-01 12:07:00"):
        first = schedule(
            "shop.tasks.noop", run_after=timedelta(0), meta={"repeat": "@hourly"}
        )
        assert first.run_after == at("2030-01-01 12:07:00")
        flush_queue()
    assert [job.run_after for job in pending()] == [at("2030-01-01 13:00:00")]


@pytest.mark.parametrize(
    ("repeat", "downtime", "next_run"),
    [
        (3600, timedelta(hours=3, minutes=30), "2030-01-01 16:00:00"),
        (3600, timedelta(hours=3), "2030-01-01 16:00:00"),  # exactly on a slot
        ("0 * * * *", timedelta(hours=3, minutes=30), "2030-01-01 16:00:00"),
        ("0 9 * * 1-5", timedelta(days=6), "2030-01-08 09:00:00"),
    ],
)
def test_missed_occurrences_run_once_then_the_series_resumes_after_now(
    flush_queue, repeat, downtime, next_run
):
    with freeze_time("2030-01-01 12:00:00") as clock:  # a Tuesday
        schedule("shop.tasks.noop", run_after=timedelta(0), meta={"repeat": repeat})
        clock.tick(downtime)  # no worker ran meanwhile

        assert "Ran 1 job in" in flush_queue()
        assert [job.run_after for job in pending()] == [at(next_run)]
        assert "Ran 0 jobs" in flush_queue()
    assert Job.objects.filter(status=Job.Status.SUCCEEDED).count() == 1


def test_repeat_until_ends_the_series(flush_queue):
    with freeze_time("2030-01-01 12:00:00") as clock:
        schedule(
            "shop.tasks.noop",
            meta={"repeat": 3600, "repeat_until": at("2030-01-01 14:30:00")},
        )
        for _ in range(4):
            flush_queue()
            clock.tick(timedelta(hours=1))
    runs = Job.objects.order_by("run_after").values_list("run_after", "status")
    assert list(runs) == [
        (at("2030-01-01 12:00:00"), Job.Status.SUCCEEDED),
        (at("2030-01-01 13:00:00"), Job.Status.SUCCEEDED),
        (at("2030-01-01 14:00:00"), Job.Status.SUCCEEDED),
    ]


@pytest.mark.parametrize(
    ("use_tz", "stored_until", "runs"),
    [
        # Read in settings.TIME_ZONE: 14:30 in Paris is 13:30 UTC.
        (True, "2030-01-01T14:30:00", 2),
        # 13:30 UTC is 14:30 in Paris, where the series runs on naive times.
        (False, "2030-01-01T13:30:00+00:00", 3),
    ],
)
def test_a_series_stored_under_the_other_use_tz_still_ends(
    flush_queue, use_tz, stored_until, runs
):
    with override_settings(USE_TZ=use_tz, TIME_ZONE="Europe/Paris"):
        with freeze_time("2030-01-01 12:00:00") as clock:
            job = schedule("shop.tasks.noop", meta={"repeat": 3600})
            # As saved before USE_TZ was switched.
            meta = {**job.meta, "repeat_until": stored_until}
            Job.objects.filter(pk=job.pk).update(meta=meta)
            for _ in range(4):
                assert "Ran" in flush_queue()
                clock.tick(timedelta(hours=1))
        finished = Job.objects.filter(status=Job.Status.SUCCEEDED).count()
    assert (finished, Job.objects.count()) == (runs, runs)


def test_cancelling_an_occurrence_ends_the_series(flush_queue):
    schedule("shop.tasks.noop", meta={"repeat": 60}).cancel()
    assert "Ran 0 jobs" in flush_queue()
    assert Job.objects.get().status == Job.Status.CANCELLED


def test_a_unique_series_is_created_once(flush_queue):
    meta = {"repeat": 3600, "unique": True}
    first = schedule("shop.tasks.noop", meta=meta)
    assert schedule("shop.tasks.noop", meta=meta).pk == first.pk

    flush_queue()

    [second] = pending()
    assert second.pk != first.pk
    assert second.unique_key == first.unique_key
    assert schedule("shop.tasks.noop", meta=meta).pk == second.pk


MINUS_5 = fixed_offset(timedelta(hours=-5))


@pytest.mark.parametrize(
    ("meta", "error", "message"),
    [
        ({"repeat": 0}, ValueError, r"meta\['repeat'\] is 0; it must be a number"),
        ({"repeat": -5}, ValueError, r"meta\['repeat'\] is -5"),
        ({"repeat": True}, ValueError, r"meta\['repeat'\] is True"),
        ({"repeat": float("nan")}, ValueError, r"meta\['repeat'\] is nan"),
        ({"repeat": timedelta(0)}, ValueError, r"meta\['repeat'\] is 0"),
        ({"repeat": "every hour"}, ValueError, "'every hour' is not a valid cron"),
        ({"repeat": "61 * * * *"}, ValueError, "'61 \\* \\* \\* \\*' is not a valid"),
        ({"repeat_until": "2030-01-01T00:00+00:00"}, ValueError, "needs meta.'repeat"),
        (
            {"repeat": 60, "repeat_until": datetime(2030, 1, 1)},
            ValueError,
            "naive datetime while USE_TZ",
        ),
        ({"repeat": 60, "repeat_until": "soon"}, ValueError, "must be a datetime"),
        # Accepted before, then the worker died scheduling the next occurrence.
        (
            {"repeat": 1e-9},
            ValueError,
            r"meta\['repeat'\] is 1e-09; it must be a number of seconds from 1 to "
            r"315360000 \(3650 days\)",
        ),
        ({"repeat": 0.5}, ValueError, r"meta\['repeat'\] is 0.5; it must be"),
        ({"repeat": 10**12}, ValueError, r"meta\['repeat'\] is 1000000000000; it"),
        ({"repeat": REPEAT_MAX + 1}, ValueError, r"meta\['repeat'\] is 315360001;"),
        (
            {"repeat": timedelta(days=3651)},
            ValueError,
            r"meta\['repeat'\] is 315446400; it must be",
        ),
        (
            {"repeat": "0 0 31 2 *"},
            ValueError,
            r"meta\['repeat'\] '0 0 31 2 \*' has no next date after ",
        ),
        (
            {
                "repeat": 60,
                "repeat_until": datetime(9999, 12, 31, 23, tzinfo=MINUS_5),
            },
            ValueError,
            r"meta\['repeat_until'\] 9999-12-31T23:00:00-05:00 is outside years 1 to "
            "9998 in UTC",
        ),
        (
            {"repeat": 60, "repeat_until": "9999-06-01T00:00:00+00:00"},
            ValueError,
            r"meta\['repeat_until'\] 9999-06-01T00:00:00\+00:00 is outside years",
        ),
        ({"repeat": 60, "group": "g"}, ValueError, "can't be combined: a repeating"),
    ],
)
def test_bad_repeat_is_refused(meta, error, message):
    with pytest.raises(error, match=message):
        schedule("shop.tasks.noop", meta=meta)
    assert not Job.objects.exists()


def test_a_cron_expression_without_croniter_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "croniter", None)  # as if not installed

    with pytest.raises(ImportError, match=r"needs croniter: pip install django-async"):
        schedule("shop.tasks.noop", meta={"repeat": "0 3 * * *"})
    schedule("shop.tasks.noop", meta={"repeat": 60})  # intervals don't need it
    assert Job.objects.count() == 1


def test_a_worker_without_croniter_fails_the_attempt_rather_than_end_the_series(
    flush_queue, monkeypatch
):
    # No job can stop the worker: the attempt fails, saying what is missing,
    # and is retried; the series is still there once croniter is installed.
    job = schedule("shop.tasks.record", args=["x"], meta={"repeat": "* * * * *"})
    Job.objects.filter(pk=job.pk).update(run_after=job.run_after - timedelta(hours=1))
    monkeypatch.setitem(sys.modules, "croniter", None)

    flush_queue()

    job.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.PENDING, 1)
    [error] = job.errors.all()
    assert "needs croniter" in error.exception
    assert not Mark.objects.exists()


@pytest.mark.processes
def test_a_worker_killed_mid_run_leaves_exactly_one_occurrence(tmp_path, run_manage):
    flag = tmp_path / "hold"
    started = Path(f"{flag}.started")
    flag.touch()
    first = schedule(
        "shop.tasks.write_then_wait", args=["crash", str(flag)], meta={"repeat": 3600}
    )
    worker = manage("flush_queue")
    try:
        wait_until(started.exists, timeout=60)  # it has written and is waiting
        worker.kill()
        worker.communicate(timeout=10)  # reaps it and closes its pipes
    finally:
        if worker.poll() is None:
            worker.kill()

    assert worker.returncode == -9
    assert list(Job.objects.values_list("pk", "status", "attempts")) == [
        (first.pk, Job.Status.PENDING, 0)
    ]
    assert not Mark.objects.exists()

    flag.unlink()
    code, out, err = run_manage("flush_queue")

    assert code == 0, err
    assert "1 succeeded" in out
    first.refresh_from_db()
    assert (first.status, first.attempts) == (Job.Status.SUCCEEDED, 1)
    assert Mark.objects.get().label == "crash"
    [second] = pending()
    assert second.run_after == first.run_after + timedelta(hours=1)


@pytest.mark.parametrize(
    "repeat", [1, REPEAT_MAX, timedelta(days=3650), "0 0 29 2 *", "@yearly"]
)
def test_repeats_at_the_ends_of_the_range_are_accepted(repeat):
    job = schedule("shop.tasks.noop", meta={"repeat": repeat})
    assert Job.objects.get(pk=job.pk).run_after == job.run_after


@pytest.mark.parametrize(
    ("repeat", "message"),
    [
        (0, r"meta\['repeat'\] is 0; the series' next slot after .* can't be "),
        (1e-9, r"meta\['repeat'\] is 1e-09; .*ZeroDivisionError"),
        (10**12, r"meta\['repeat'\] is 1000000000000; .*OverflowError"),
        (float("nan"), r"meta\['repeat'\] is nan;"),
        (None, r"meta\['repeat'\] is None; the series' next slot can't be computed"),
        ([60], r"meta\['repeat'\] is \[60\];"),
        ("garbage", r"meta\['repeat'\] 'garbage' has no next date after "),
        ("0 0 31 2 *", r"meta\['repeat'\] '0 0 31 2 \*' has no next date after "),
    ],
)
def test_a_next_slot_that_cant_be_computed_is_a_value_error(repeat, message):
    slot = at("2030-01-01 12:00:00")
    with pytest.raises(ValueError, match=message):
        next_slot(repeat, slot, slot + timedelta(seconds=1))


def stored(job: Job, meta) -> Job:
    """Write ``meta`` over the job's row, as SQL or an older version might."""
    Job.objects.filter(pk=job.pk).update(meta=meta)
    return Job.objects.get(pk=job.pk)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"repeat": "garbage"}, r"meta\['repeat'\] 'garbage' is not a valid cron"),
        ({"repeat": 1e-9}, r"meta\['repeat'\] is 1e-09; it must be a number"),
        ({"repeat": 10**12}, r"meta\['repeat'\] is 1000000000000; it must be"),
        ({"repeat": "0 0 31 2 *"}, r"'0 0 31 2 \*' has no next date after "),
        ({"repeat": 60, "repeat_until": 5}, r"meta\['repeat_until'\] is 5; it must"),
        ({"repeat": 60, "colour": "red"}, r"Unknown meta key\(s\) 'colour'"),
    ],
)
def test_a_finished_occurrence_whose_stored_meta_is_invalid_ends_its_series(
    meta, message, caplog
):
    job = stored(schedule("shop.tasks.noop", meta={"repeat": 60}), meta)
    job.status = Job.Status.SUCCEEDED

    with pytest.raises(ValueError, match=message):
        schedule_next(job, "default")
    # As the worker's hook: logged, and nothing else happens.
    with caplog.at_level(logging.ERROR, logger="async_jobs"):
        schedule_next_occurrences([job], "default")

    assert Job.objects.count() == 1
    [record] = caplog.records
    logged = record.getMessage()
    assert logged.startswith(f"Job {job.pk} shop.tasks.noop: its series ends: ")
    assert re.search(message, logged)


def test_a_series_whose_next_slot_falls_after_year_9998_ends(flush_queue):
    last = datetime(9998, 6, 1, tzinfo=UTC)
    job = schedule("shop.tasks.noop", run_after=last, meta={"repeat": "0 0 1 1 *"})

    job.execute()

    job.refresh_from_db()
    assert (job.status, job.run_after) == (Job.Status.SUCCEEDED, last)
    assert Job.objects.count() == 1
    # Short of the limit, the series goes on.
    schedule("shop.tasks.noop", run_after=last, meta={"repeat": 3600}).execute()
    assert [job.run_after for job in pending()] == [last + timedelta(hours=1)]
