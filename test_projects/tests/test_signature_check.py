"""``schedule()`` refuses a call its function can't accept, before any row exists."""

import pytest

from async_jobs import Job, schedule, schedule_many
from async_jobs.backends import framework as tasks_framework
from async_jobs.signatures import _check_shape, call_signature

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("function", "args", "kwargs", "mismatch"),
    [
        ("shop.tasks.record", [], {}, "missing a required argument: 'label'"),
        ("shop.tasks.record", ["a", "b"], {}, "too many positional arguments"),
        (
            "shop.tasks.record",
            [],
            {"lable": "a"},
            "missing a required argument: 'label'",
        ),
        ("shop.tasks.add", [1], {"a": 2}, "multiple values for argument 'a'"),
        (
            "shop.tasks.notify",  # @job keeps the function's own signature
            ["a"],
            {"suffx": "!"},
            "got an unexpected keyword argument 'suffx'",
        ),
        ("shop.tasks.async_record", [], {}, "missing a required argument: 'label'"),
    ],
)
def test_a_call_that_cannot_bind_is_refused(function, args, kwargs, mismatch):
    with pytest.raises(TypeError) as raised:
        schedule(function, args=args, kwargs=kwargs)

    assert str(raised.value).startswith(function + "(")
    assert mismatch in str(raised.value)
    assert not Job.objects.exists()


def test_the_message_shows_the_signature():
    from shop import tasks

    with pytest.raises(TypeError) as raised:
        schedule(tasks.record, args=[1, 2])

    assert str(raised.value) == (
        "shop.tasks.record(label: str) -> str can't be called so: too many "
        "positional arguments."
    )


@pytest.mark.parametrize(
    ("function", "args", "kwargs"),
    [
        ("shop.tasks.record", ["a"], {}),
        ("shop.tasks.record", [], {"label": "a"}),
        ("shop.tasks.notify", ["a"], {"suffix": "!"}),
        ("shop.tasks.echo", [1, 2, 3], {"any": "thing"}),
        ("shop.tasks.async_record", ["a"], {}),
    ],
)
def test_a_call_that_binds_is_scheduled(function, args, kwargs):
    job = schedule(function, args=args, kwargs=kwargs)

    assert job.pk is not None


def test_schedule_many_names_the_call_that_cannot_bind():
    with pytest.raises(TypeError, match=r"^calls\[1\]: shop\.tasks\.record\(") as e:
        schedule_many(
            [
                {"function": "shop.tasks.record", "args": ["a"]},
                {"function": "shop.tasks.record", "args": []},
            ]
        )

    assert "missing a required argument: 'label'" in str(e.value)
    assert not Job.objects.exists()


def test_an_unreadable_signature_is_not_checked(flush_queue):
    assert call_signature("shop.signature_cases.unreadable") is None

    job = schedule("shop.signature_cases.unreadable", args=[1], kwargs={"a": 2})

    flush_queue()
    job.refresh_from_db()
    assert (job.status, job.result) == (Job.Status.SUCCEEDED, [[1], {"a": 2}])


def test_the_signature_is_read_once_per_function_and_bound_once_per_shape():
    call_signature.cache_clear()
    _check_shape.cache_clear()
    schedule("shop.tasks.record", args=["a"])
    schedule("shop.tasks.record", args=["b"])
    schedule("shop.tasks.record", kwargs={"label": "c"})
    schedule("shop.tasks.add", args=[1, 2])

    assert call_signature.cache_info().misses == 2
    shapes = _check_shape.cache_info()
    assert (shapes.misses, shapes.hits) == (3, 1)


def test_a_call_of_a_shape_that_bound_before_is_still_checked():
    schedule("shop.tasks.record", args=["a"])
    with pytest.raises(TypeError, match="missing a required argument: 'label'"):
        schedule("shop.tasks.record", kwargs={"lable": "a"})
    with pytest.raises(TypeError, match="too many positional arguments"):
        schedule("shop.tasks.record", args=["a", "b"])
    with pytest.raises(TypeError, match="too many positional arguments"):
        schedule("shop.tasks.record", args=["a", "b"])  # a failure isn't cached
    assert Job.objects.count() == 1


needs_tasks = pytest.mark.skipif(
    not tasks_framework.AVAILABLE, reason=tasks_framework.UNAVAILABLE
)


@needs_tasks
def test_a_task_binds_against_its_function():
    with pytest.raises(TypeError, match="missing a required argument: 'order_id'"):
        schedule("shop.task_functions.email_receipt")
    with pytest.raises(TypeError, match="too many positional arguments"):
        schedule("shop.task_functions.add_async", args=[1, 2, 3])
    assert schedule("shop.task_functions.email_receipt", args=[1]).pk


@needs_tasks
def test_a_task_that_takes_context_gets_it_at_run_time(flush_queue):
    with pytest.raises(TypeError, match="too many positional arguments"):
        schedule("shop.task_functions.get_task_id", args=["a context"])

    job = schedule("shop.task_functions.get_task_id")

    flush_queue()
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, list(job.errors.all())
