"""A row that can't run fails alone (#14).

``schedule()`` refuses such values (test_scheduling.py, test_recurring.py);
a row can hold them anyway, written by hand in SQL or by an older version.
``validation.check_stored()`` re-checks a claimed job's row: a value that
doesn't validate is a ``ValueError`` naming it, so the job fails, not its
worker, and the jobs behind it run.
"""

import json
import re
import sys
from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test import override_settings
from shop.models import Mark

from async_jobs import Job, schedule
from async_jobs.models import Error
from async_jobs.validation import check_stored

from .conftest import jobs_run

pytestmark = pytest.mark.django_db(transaction=True)

REFUSED = re.escape("'s row holds a value schedule() refuses, so it can't run: ")


def write_raw(job: Job, column: str, value) -> Job:
    """Write ``value`` as JSON into the job's ``column`` with plain SQL."""
    quote = connection.ops.quote_name
    cast = "CAST(%s AS jsonb)" if connection.vendor == "postgresql" else "%s"
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {quote(Job._meta.db_table)} SET {quote(column)} = {cast} "
            f"WHERE {quote(Job._meta.pk.column)} = %s",
            [json.dumps(value), job.pk],
        )
    return Job.objects.get(pk=job.pk)


#: Values a row may hold that schedule() refuses, and what the error says.
BAD_ROWS = [
    ("meta", ["repeat", 60], r"meta is list \['repeat', 60\]; it must be a dict"),
    ("meta", "repeat", r"meta is str 'repeat'; it must be a dict"),
    ("meta", None, r"meta is NoneType None; it must be a dict"),
    ("meta", {"repeat": "garbage"}, r"meta\['repeat'\] 'garbage' is not a valid cron"),
    ("meta", {"repeat": 0}, r"meta\['repeat'\] is 0; it must be a number of seconds"),
    ("meta", {"repeat": 1e-9}, r"meta\['repeat'\] is 1e-09; it must be a number"),
    ("meta", {"repeat": 10**12}, r"meta\['repeat'\] is 1000000000000; it must be"),
    ("meta", {"repeat": "0 0 31 2 *"}, r"meta\['repeat'\] '0 0 31 2 \*' has no next"),
    (
        "meta",
        {"repeat": 60, "repeat_until": 5},
        r"meta\['repeat_until'\] is 5; it must be a datetime",
    ),
    (
        "meta",
        {"repeat": 60, "repeat_until": "9999-12-31T23:00:00-05:00"},
        r"meta\['repeat_until'\] 9999-12-31T23:00:00-05:00 is outside years 1 to 9998",
    ),
    ("meta", {"repeat_until": "2030-01-01"}, r"meta\['repeat_until'\] needs meta"),
    ("meta", {"timeout": 10**12}, r"meta\['timeout'\] is 1000000000000; it must be"),
    ("meta", {"timeout": "soon"}, r"meta\['timeout'\] is 'soon'; it must be seconds"),
    ("meta", {"priority": "high"}, r"meta\['priority'\] is 'high'; it must be an int"),
    ("meta", {"colour": "red"}, r"Unknown meta key\(s\) 'colour'\. Allowed: "),
    (
        "meta",
        {"repeat": 60, "group": "g"},
        r"meta\['group'\] and meta\['repeat'\] can't be combined",
    ),
    ("args", {"a": 1}, r"args is dict \{'a': 1\}; it must be a list"),
    ("args", None, r"args is NoneType None; it must be a list"),
    ("kwargs", [1, 2], r"kwargs is list \[1, 2\]; it must be a dict"),
    ("kwargs", "x", r"kwargs is str 'x'; it must be a dict"),
]


def ids(row) -> str:
    return f"{row[0]}={json.dumps(row[1])}"


def test_every_killer_is_a_bad_row():
    assert len(KILLERS) == 10


@pytest.mark.parametrize(
    ("column", "value", "message"), BAD_ROWS, ids=map(ids, BAD_ROWS)
)
def test_check_stored_names_a_value_the_row_should_not_hold(column, value, message):
    job = write_raw(schedule("shop.tasks.record", args=["x"]), column, value)

    with pytest.raises(ValueError, match=f"^Job {job.pk}{REFUSED}{message}"):
        check_stored(job)


def test_check_stored_passes_every_row_schedule_writes():
    until = datetime(2031, 1, 1, tzinfo=UTC)
    rows = [
        schedule("shop.tasks.noop"),
        schedule(
            "shop.tasks.echo",
            args=[1, [2, {"a": None}]],
            kwargs={"k": "v"},
            meta={
                "priority": 100,
                "queue": "mail",
                "max_attempts": 1,
                "timeout": 0.001,
                "repeat": "0 3 * * *",
                "repeat_until": until,
                "unique": "key",
            },
        ),
        schedule("shop.tasks.noop", meta={"repeat": 1, "timeout": 30 * 86400}),
        schedule("shop.tasks.noop", meta={"group": "g"}),
        schedule("shop.tasks.noop", meta={"completes": "g"}),
    ]
    for job in rows:
        check_stored(Job.objects.get(pk=job.pk))


@pytest.mark.parametrize(
    ("use_tz", "until"),
    [(True, "2031-01-01T00:00:00"), (False, "2031-01-01T00:00:00+00:00")],
)
def test_check_stored_reads_repeat_until_stored_under_the_other_use_tz(use_tz, until):
    # As a series scheduled before USE_TZ was switched holds it: it still runs.
    with override_settings(USE_TZ=use_tz):
        job = schedule("shop.tasks.noop", meta={"repeat": 60})
        check_stored(write_raw(job, "meta", {"repeat": 60, "repeat_until": until}))


def test_check_stored_says_a_cron_series_needs_croniter(monkeypatch):
    job = schedule("shop.tasks.noop", meta={"repeat": "0 3 * * *"})
    monkeypatch.setitem(sys.modules, "croniter", None)  # as if not installed

    # Not the row's fault: an ImportError, which the worker retries
    # (test_recurring.py::test_a_worker_without_croniter_fails_the_attempt_rather_than_end_the_series).
    with pytest.raises(ImportError, match="needs croniter"):
        check_stored(Job.objects.get(pk=job.pk))


#: Rows the worker died on (#14), leaving them first in line at every run,
#: and rows whose function can't be called as stored.
KILLERS = [
    row
    for row in BAD_ROWS
    if ids(row)
    in {
        'meta=["repeat", 60]',
        'meta={"repeat": "garbage"}',
        'meta={"repeat": 0}',
        'meta={"repeat": 1e-09}',
        'meta={"repeat": 1000000000000}',
        'meta={"repeat": "0 0 31 2 *"}',
        'meta={"repeat": 60, "repeat_until": 5}',
        'meta={"timeout": 1000000000000}',
        'args={"a": 1}',
        "kwargs=[1, 2]",
    }
]


def assert_it_failed_alone(bad: Job, good: list[Job], out: str) -> Error:
    """``bad`` failed at its first attempt; the 5 ``good`` jobs behind it ran."""
    assert jobs_run(out) == 6
    assert out.strip().endswith("5 succeeded, 0 to retry, 1 failed.")
    status, attempts = Job.objects.values_list("status", "attempts").get(pk=bad.pk)
    assert (status, attempts) == (Job.Status.FAILED, 1)
    assert set(Job.objects.exclude(pk=bad.pk).values_list("status", flat=True)) == {
        Job.Status.SUCCEEDED
    }
    assert Job.objects.count() == 6  # no next occurrence of a broken series
    labels = sorted(Mark.objects.values_list("label", flat=True))
    assert labels == sorted(job.args[0] for job in good)
    return Error.objects.get(job_id=bad.pk)


def bad_and_good_jobs(bad_function: str, bad_args: list) -> tuple[Job, list[Job]]:
    # priority 100: the bad job is first in line, as it was at every run.
    bad = schedule(bad_function, args=bad_args, meta={"priority": 100})
    good = [schedule("shop.tasks.record", args=[f"good {n}"]) for n in range(5)]
    return bad, good


@pytest.mark.processes
@pytest.mark.parametrize(("column", "value", "message"), KILLERS, ids=map(ids, KILLERS))
def test_a_row_that_cant_run_fails_alone_and_the_jobs_behind_it_run(
    column, value, message, run_manage
):
    bad, good = bad_and_good_jobs("shop.tasks.record", ["bad"])
    write_raw(bad, column, value)

    code, out, err = run_manage("flush_queue")

    assert code == 0, err
    error = assert_it_failed_alone(bad, good, out)
    # Failed for good at once, before its function was called: no retry can
    # mend its row.
    assert re.match(
        f"builtins.ValueError: Job {bad.pk}{REFUSED}{message}", error.exception
    )


@pytest.mark.processes
def test_a_result_nested_too_deep_to_write_fails_its_attempt_alone(run_manage):
    # 980 levels passed the JSON check, then writing the outcome raised
    # RecursionError and the worker died, leaving the job first in line.
    bad, good = bad_and_good_jobs("shop.tasks.nested_result", [980])
    Job.objects.filter(pk=bad.pk).update(max_attempts=1)

    code, out, err = run_manage("flush_queue")

    assert code == 0, err
    error = assert_it_failed_alone(bad, good, out)
    assert re.match(
        r"builtins.TypeError: result(\[0\]){100}: lists and dicts nested more than "
        "100 levels deep",
        error.exception,
    )


@pytest.mark.processes
def test_a_result_too_long_to_write_fails_its_attempt_alone_in_a_batch(run_manage):
    # Writing the batch's outcomes raised ValueError: the worker died, and the
    # jobs of its batch were charged with it.
    bad, good = bad_and_good_jobs("shop.tasks.power_of_ten", [5000])
    Job.objects.filter(pk=bad.pk).update(max_attempts=1)

    code, out, err = run_manage("flush_queue", "--batch", "3")

    assert code == 0, err
    error = assert_it_failed_alone(bad, good, out)
    assert error.exception == (
        "builtins.TypeError: result: an int of more than 4300 digits can't be "
        "written as JSON (sys.get_int_max_str_digits()); pass it as a str"
    )


@pytest.mark.parametrize(("exponent", "succeeds"), [(1000, True), (4300, False)])
def test_an_int_is_allowed_as_long_as_json_can_write_it(exponent, succeeds):
    args = [1, {"n": 10**exponent}]
    if succeeds:
        assert schedule("shop.tasks.echo", args=args).args == args
    else:
        with pytest.raises(TypeError, match=r"args\[1\]\['n'\]: an int of more"):
            schedule("shop.tasks.echo", args=args)


@pytest.mark.parametrize(("depth", "succeeds"), [(100, True), (101, False)])
def test_a_result_may_nest_100_levels_deep(depth, succeeds):
    job = schedule("shop.tasks.nested_result", args=[depth], meta={"max_attempts": 1})

    if succeeds:
        job.execute()
    else:
        with pytest.raises(TypeError, match="nested more than 100 levels deep"):
            job.execute()

    job.refresh_from_db()
    assert job.status == (Job.Status.SUCCEEDED if succeeds else Job.Status.FAILED)
    assert (job.result is not None) is succeeds
