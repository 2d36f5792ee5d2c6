"""schedule(): the job joins the caller's transaction; bad input is refused."""

import os
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from datetime import timezone as fixed_offset
from decimal import Decimal
from unittest import mock

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone
from shop import tasks
from shop.models import Order

from async_jobs import Job, schedule

pytestmark = pytest.mark.django_db(transaction=True)


class Boom(Exception):
    pass


def count_jobs_from_another_connection() -> int:
    """What a worker would see: a count read on a separate connection."""
    counted = []

    def read():
        try:
            counted.append(Job.objects.count())
        finally:
            connection.close()

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    return counted[0]


def test_rolled_back_transaction_leaves_no_job():
    with pytest.raises(Boom), transaction.atomic():
        order = Order.objects.create(total=10)
        schedule("shop.tasks.send_receipt", args=[order.pk])
        raise Boom

    assert Job.objects.count() == 0
    assert Order.objects.count() == 0


def test_committed_transaction_leaves_one_pending_job():
    before = timezone.now()
    with transaction.atomic():
        order = Order.objects.create(total=10)
        job = schedule(
            "shop.tasks.send_receipt",
            args=[order.pk],
            run_after=timedelta(minutes=1),
            meta={"priority": 5, "queue": "mail", "max_attempts": 3},
        )
        assert job.pk is not None
        assert count_jobs_from_another_connection() == 0

    assert count_jobs_from_another_connection() == 1
    job = Job.objects.get()
    assert job.name == "shop.tasks.send_receipt"
    assert job.args == [order.pk]
    assert job.kwargs == {}
    assert job.status == Job.Status.PENDING
    assert (job.priority, job.queue, job.max_attempts) == (5, "mail", 3)
    assert job.meta == {"priority": 5, "queue": "mail", "max_attempts": 3}
    assert job.attempts == 0
    assert before + timedelta(minutes=1) <= job.run_after
    assert job.run_after <= timezone.now() + timedelta(minutes=1)


def test_savepoint_rollback_inside_committed_transaction_removes_only_its_job():
    with transaction.atomic():
        kept = schedule("shop.tasks.noop")
        with pytest.raises(Boom), transaction.atomic():
            schedule("shop.tasks.noop")
            raise Boom
        also_kept = schedule("shop.tasks.noop")

    assert list(Job.objects.order_by("pk").values_list("pk", flat=True)) == [
        kept.pk,
        also_kept.pk,
    ]


def test_outside_a_transaction_the_job_commits_at_once():
    schedule("shop.tasks.noop")
    assert count_jobs_from_another_connection() == 1


def test_a_callable_is_stored_as_its_dotted_path_with_defaults():
    job = schedule(tasks.add, args=(1, 2))
    job.refresh_from_db()
    assert job.name == "shop.tasks.add"
    assert job.args == [1, 2]
    assert (job.priority, job.queue, job.max_attempts) == (0, "default", 3)
    assert job.meta == {}


def test_run_after_accepts_an_aware_datetime():
    when = datetime(2030, 1, 1, 12, tzinfo=UTC)
    assert schedule("shop.tasks.noop", run_after=when).run_after == when


def nested_function_holder():
    def nested():
        pass

    return nested


class Holder:
    def method(self):
        pass


@pytest.mark.parametrize(
    ("function", "error", "words"),
    [
        (lambda: None, ValueError, "lambda"),
        (nested_function_holder(), ValueError, "not a module-level function"),
        (Holder().method, ValueError, "bound method"),
        (Holder.method, ValueError, "not a module-level function"),
        ("shop.tasks.does_not_exist", ImportError, "'shop.tasks.does_not_exist'"),
        ("shop.missing_module.run", ImportError, "'shop.missing_module'"),
        ("shop.tasks.NotAFunction", ValueError, "'shop.tasks.NotAFunction'"),
        ("shop", ValueError, "not a dotted path"),
        ("os.system", ValueError, "'os.system' is not in a module jobs may run"),
        ("subprocess.run", ValueError, "'subprocess.run' is not in a module"),
        ("builtins.eval", ValueError, "'builtins.eval' is not in a module"),
        (
            "django.core.management.call_command",
            ValueError,
            "'django.core.management.call_command' is not in a module",
        ),
        (
            "shop.tasks.system",
            ValueError,
            "'shop.tasks.system' is <built-in function system>, defined in module "
            "'posix', not in a module jobs may run",
        ),
        (os.system, ValueError, "'posix.system' is not in a module jobs may run"),
        (subprocess.run, ValueError, "'subprocess.run' is not in a module"),
        (42, TypeError, "dotted path or a callable"),
    ],
)
def test_bad_function_is_refused_and_nothing_written(function, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(")):
        schedule(function)
    assert Job.objects.count() == 0


CYCLE = [[]]
CYCLE[0].append(CYCLE[0])


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ([], {"when": datetime(2030, 1, 1)}, r"kwargs\['when'\]: datetime is not JSON"),
        ([{1, 2}], None, r"args\[0\]: set is not JSON serializable"),
        ([b"x"], None, r"args\[0\]: bytes is not JSON serializable"),
        ([Decimal("1.5")], None, r"args\[0\]: Decimal is not JSON serializable"),
        ([float("nan")], None, r"args\[0\]: nan is not allowed in JSON"),
        ([float("inf")], None, r"args\[0\]: inf is not allowed in JSON"),
        ([[1, (2, 3)]], None, r"args\[0\]\[1\]: tuple would come back"),
        ([], {"d": {1: "a"}}, r"kwargs\['d'\]: key 1 is int"),
        ([], {"x": [{"y": object()}]}, r"kwargs\['x'\]\[0\]\['y'\]: object is not"),
        ({"a": 1}, None, "args must be a list or a tuple, not dict"),
        ([], [1], "kwargs must be a dict, not list"),
        ([], {1: "a"}, r"kwargs: key 1 is int"),
        ([], {"d": {(1, 2): "a"}}, r"kwargs\['d'\]: key \(1, 2\) is tuple"),
        ([(1, 2)], None, r"args\[0\]: tuple would come back from JSON as a list"),
        ([frozenset()], None, r"args\[0\]: frozenset is not JSON serializable"),
        ([1j], None, r"args\[0\]: complex is not JSON serializable"),
        ([float("-inf")], None, r"args\[0\]: -inf is not allowed in JSON"),
        ([1e23], None, r"args\[0\]: float 1e\+23 would not come back from JSON"),
        ([-1e16], None, r"args\[0\]: float -1e\+16 would not come back"),
        (["a\x00b"], None, r"args\[0\]: str holds a NUL character"),
        ([], {"k": {"a\x00": 1}}, r"kwargs\['k'\]: key 'a\\x00': str holds a NUL"),
        (["\ud800"], None, r"args\[0\]: str holds '\\ud800', a lone surrogate"),
        (CYCLE, None, r"args\[0\]\[0\]: contains itself; JSON can't hold a cycle"),
    ],
)
def test_arguments_that_do_not_survive_json_are_refused(args, kwargs, message):
    with pytest.raises(TypeError, match=message):
        schedule("shop.tasks.echo", args=args, kwargs=kwargs)
    assert Job.objects.count() == 0


@override_settings(USE_TZ=False)
def test_aware_datetime_is_refused_without_time_zone_support():
    aware = datetime(2030, 1, 1, tzinfo=UTC)
    with pytest.raises(
        ValueError,
        match=r"run_after 2030-01-01T00:00:00\+00:00 is an aware datetime while "
        r"USE_TZ is False; pass a naive datetime in settings.TIME_ZONE .* or a timedelta",
    ):
        schedule("shop.tasks.noop", run_after=aware)
    with pytest.raises(
        ValueError,
        match=r"meta\['repeat_until'\] 2030-01-01T00:00:00\+00:00 is an aware "
        "datetime while USE_TZ is False",
    ):
        schedule("shop.tasks.noop", meta={"repeat": 60, "repeat_until": aware})
    assert Job.objects.count() == 0

    job = schedule("shop.tasks.noop", run_after=datetime(2030, 1, 1))
    job.refresh_from_db()
    assert job.run_after == datetime(2030, 1, 1)


def test_naive_datetime_is_refused():
    with pytest.raises(ValueError, match="naive datetime while USE_TZ is True"):
        schedule("shop.tasks.noop", run_after=datetime(2030, 1, 1))
    with pytest.raises(TypeError, match="run_after must be a datetime, a timedelta"):
        schedule("shop.tasks.noop", run_after="tomorrow")
    assert Job.objects.count() == 0


@pytest.mark.parametrize(
    ("meta", "error", "message"),
    [
        ({"colour": "red"}, ValueError, "Unknown meta key.*'colour'.*Allowed: 'prio"),
        (
            {"priority": 101},
            ValueError,
            r"meta\['priority'\] is 101; it must be an int",
        ),
        ({"priority": "1"}, ValueError, r"meta\['priority'\] is '1'"),
        ({"priority": True}, ValueError, r"meta\['priority'\] is True"),
        ({"queue": ""}, ValueError, r"meta\['queue'\] is ''"),
        ({"max_attempts": 0}, ValueError, r"meta\['max_attempts'\] is 0"),
        # PostgreSQL's integer column refused it with "integer out of range".
        (
            {"max_attempts": 2**31},
            ValueError,
            r"meta\['max_attempts'\] is 2147483648; it must be an int from 1 to "
            "1,000,000",
        ),
        ({"max_attempts": 1_000_001}, ValueError, r"meta\['max_attempts'\] is 1000001"),
        ({"timeout": -1}, ValueError, r"meta\['timeout'\] is -1"),
        ({"timeout": float("inf")}, ValueError, r"meta\['timeout'\] is inf"),
        (
            {"timeout": 0.0001},
            ValueError,
            r"meta\['timeout'\] is 0.0001; it must be seconds, a number from "
            r"0.001 to 2592000 \(30 days\)",
        ),
        ({"timeout": 30 * 86400 + 1}, ValueError, r"meta\['timeout'\] is 2592001;"),
        ({"timeout": 10**12}, ValueError, r"meta\['timeout'\] is 1000000000000;"),
        (["priority"], TypeError, "meta must be a dict"),
        # Equal to {} without being a dict: still no dict.
        (mock.ANY, TypeError, "meta must be a dict, not _ANY"),
    ],
)
def test_bad_meta_is_refused(meta, error, message):
    with pytest.raises(error, match=message):
        schedule("shop.tasks.noop", meta=meta)
    assert Job.objects.count() == 0


@override_settings(ASYNC_JOBS={"QUEUES": ["default", "mail"]})
def test_queue_outside_the_configured_queues_is_refused():
    schedule("shop.tasks.noop", meta={"queue": "mail"})
    with pytest.raises(ValueError, match="Queue 'mial' is not in ASYNC_JOBS"):
        schedule("shop.tasks.noop", meta={"queue": "mial"})
    assert Job.objects.count() == 1


@override_settings(ASYNC_JOBS={"QUEUES": ["mail"]})
def test_default_queue_must_be_configured_too():
    with pytest.raises(ValueError, match="Queue 'default' is not in"):
        schedule("shop.tasks.noop")


@override_settings(ASYNC_JOBS={"MAX_ATTEMPTS": 0})
def test_bad_setting_is_refused_at_schedule():
    with pytest.raises(ImproperlyConfigured, match="MAX_ATTEMPTS'] must be an int"):
        schedule("shop.tasks.noop")
    assert Job.objects.count() == 0


@override_settings(ASYNC_JOBS={"ALLOWED_MODULES": ["shop.tasks"]})
def test_allowed_modules_narrow_the_allow_list():
    schedule("shop.tasks.noop")
    with pytest.raises(ValueError, match="Allowed modules: shop.tasks;"):
        schedule("testproject.settings.database_from_url")


def test_default_allow_list_is_the_project_not_django_or_stdlib():
    from async_jobs.allowlist import default_allowed_modules

    allowed = default_allowed_modules()
    assert "shop" in allowed
    assert "testproject" in allowed
    # Django itself, not installed third-party apps such as django_tasks.
    assert not any(name.partition(".")[0] == "django" for name in allowed)


@pytest.mark.parametrize("timeout", [0.001, 30 * 86400])
def test_timeouts_at_the_ends_of_the_range_are_accepted(timeout):
    job = schedule("shop.tasks.noop", meta={"timeout": timeout})
    job.refresh_from_db()
    assert job.meta == {"timeout": timeout}


MINUS_5 = fixed_offset(timedelta(hours=-5))


@pytest.mark.parametrize(
    ("run_after", "message"),
    [
        # Year 9999 locally, 10000 in UTC: stored, no query could read it.
        (
            datetime(9999, 12, 31, 23, 0, tzinfo=MINUS_5),
            r"run_after 9999-12-31T23:00:00-05:00 is outside years 1 to 9998 in UTC",
        ),
        (datetime(9999, 1, 1, tzinfo=UTC), r"run_after 9999-01-01T00:00:00\+00:00 is"),
        (
            datetime(9998, 12, 31, 23, 0, tzinfo=MINUS_5),
            r"run_after 9998-12-31T23:00:00-05:00 is outside years 1 to 9998",
        ),
        (
            datetime(1, 1, 1, tzinfo=fixed_offset(timedelta(hours=5))),
            r"run_after 0001-01-01T00:00:00\+05:00 is outside years 1 to 9998",
        ),
        # now + it overflows Python's datetime: a ValueError, not OverflowError.
        (
            timedelta(days=999_999_999),
            r"run_after \(now \+ datetime.timedelta\(days=999999999\)\) is outside "
            "years 1 to 9998",
        ),
        (timedelta(days=-999_999_999), r"run_after \(now \+ datetime.timedelta"),
        # now + it is a datetime, but in year 9999.
        (timedelta(days=365 * 7980), r"run_after \(now \+ datetime.timedelta\(days="),
    ],
)
def test_run_after_beyond_year_9998_in_utc_is_refused(run_after, message):
    with pytest.raises(ValueError, match=message):
        schedule("shop.tasks.noop", run_after=run_after)
    assert Job.objects.count() == 0


def test_run_after_up_to_the_end_of_year_9998_in_utc_is_stored_and_read_back():
    last = datetime(9998, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    job = schedule("shop.tasks.noop", run_after=last)

    assert Job.objects.get(pk=job.pk).run_after == last
    # Every query that reads the row still works: none is due.
    assert not Job.objects.due().exists()


def nested_list(depth: int, leaf=1):
    """``leaf`` inside ``depth`` lists: ``nested_list(2) == [[1]]``."""
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def nested_dict(depth: int, leaf=1):
    for _ in range(depth):
        leaf = {"k": leaf}
    return leaf


def test_arguments_nested_100_levels_deep_reach_the_function():
    # args is the first level, kwargs too: 99 more inside each.
    args = nested_list(100)
    kwargs = {"deep": nested_dict(99)}
    job = schedule("shop.tasks.nesting", args=args, kwargs=kwargs)

    assert job.execute() == {"args": 100, "kwargs": 100}
    job.refresh_from_db()
    assert (job.args, job.kwargs) == (args, kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "where"),
    [
        (nested_list(101), None, r"args(\[0\]){100}"),
        (None, {"deep": nested_dict(100)}, r"kwargs\['deep'\](\['k'\]){99}"),
        # Far deeper than Python's json can write (about 950 levels).
        (nested_list(5000), None, r"args(\[0\]){100}"),
    ],
)
def test_arguments_nested_deeper_than_100_levels_are_refused(args, kwargs, where):
    with pytest.raises(
        TypeError,
        match=f"^{where}: lists and dicts nested more than 100 levels deep; ",
    ):
        schedule("shop.tasks.echo", args=args, kwargs=kwargs)
    assert Job.objects.count() == 0


# How the row is written: a fixed INSERT on PostgreSQL, save() when the
# model's signals have receivers.


@pytest.mark.django_db(transaction=True)
def test_the_row_is_written_whole_and_read_back_equal():
    when = timezone.now() + timedelta(hours=1)
    job = schedule(
        "shop.tasks.echo",
        args=[1, "two", [3.5]],
        kwargs={"x": {"y": None}},
        run_after=when,
        meta={"priority": 7, "queue": "mail", "max_attempts": 4},
    )
    assert not job._state.adding and job._state.db == "default"
    stored = Job.objects.get(pk=job.pk)
    for field in Job._meta.concrete_fields:
        assert getattr(stored, field.attname) == getattr(job, field.attname), field
    assert stored.run_after == when and stored.result is None
    assert Job.objects.filter(result__isnull=True).count() == 1  # SQL NULL


@pytest.mark.django_db(transaction=True)
def test_json_values_are_stored_as_the_json_they_are_not_as_text(on_postgres):
    """The JSON columns travel as JSON text cast to jsonb: a string that looks
    like JSON stays a string, and nothing is encoded twice."""
    args = ["[1, 2]", "null", "", '{"a": 1}', "é€😀", 'it\'s \\ "quoted"', 2**53]
    kwargs = {"nested": {"list": [None, True, 1.5]}, "s": "[]"}
    seen = []

    def wrapper(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        job = schedule("shop.tasks.echo", args=args, kwargs=kwargs)
    stored = Job.objects.get(pk=job.pk)
    assert (stored.args, stored.kwargs, stored.meta) == (args, kwargs, {})
    if not on_postgres:
        return
    [insert] = [sql for sql in seen if sql.startswith("INSERT")]
    assert insert.count("::jsonb") == 4  # args, kwargs, meta, attempt_log
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT jsonb_typeof(args), jsonb_typeof(args->0), jsonb_typeof(args->1),"
            " jsonb_typeof(kwargs->'s'), result IS NULL FROM async_jobs_job"
        )
        assert cursor.fetchone() == ("array", "string", "string", "string", True)


@pytest.mark.django_db(transaction=True)
def test_the_insert_goes_through_djangos_cursor():
    seen = []

    def wrapper(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        schedule("shop.tasks.noop")
    assert [sql for sql in seen if sql.startswith("INSERT")]


@pytest.mark.django_db(transaction=True)
def test_the_models_save_signals_fire_when_they_have_receivers():
    from django.db.models.signals import post_save, pre_save

    sent = []

    def pre(sender, instance, **kwargs):
        sent.append(("pre_save", instance.pk))

    def post(sender, instance, created, **kwargs):
        sent.append(("post_save", instance.pk, created))

    pre_save.connect(pre, sender=Job)
    post_save.connect(post, sender=Job)
    try:
        with transaction.atomic():
            job = schedule("shop.tasks.noop")
    finally:
        pre_save.disconnect(pre, sender=Job)
        post_save.disconnect(post, sender=Job)
    assert sent == [("pre_save", None), ("post_save", job.pk, True)]


def test_a_built_job_is_the_one_job_init_makes():
    from django.db.models.signals import pre_init

    from async_jobs.scheduling import build_job

    def fields(job):
        return {
            field.attname: getattr(job, field.attname)
            for field in Job._meta.concrete_fields
            if field.attname not in ("created", "run_after")
        }

    fast = build_job("shop.tasks.echo", args=[1], meta={"queue": "q"})
    seen = []

    def receiver(sender, **kwargs):
        seen.append(sender)

    pre_init.connect(receiver, sender=Job)
    try:
        slow = build_job("shop.tasks.echo", args=[1], meta={"queue": "q"})
    finally:
        pre_init.disconnect(receiver, sender=Job)
    assert seen == [Job]  # Job.__init__() ran, and sent it
    assert fields(fast) == fields(slow)
    assert fast._state.adding and fast._state.db is None
    assert fast.args is not build_job("shop.tasks.noop").args  # not shared
    assert fast.attempt_log == [] and fast.attempt_log is not slow.attempt_log
