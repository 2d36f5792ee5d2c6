"""Django's own behaviour tests for task backends, run against JobsBackend.

Each test names the Django test it follows (``tests/tasks/`` in Django's
repository: ``test_immediate_backend.py``, ``test_dummy_backend.py`` and
``test_tasks.py``). Django's backends run a task inside ``enqueue()``
(immediate) or never (dummy); here a worker runs it, so "after enqueue" becomes
"after ``flush_queue``". The settings mirror Django's: no queue validation
(``QUEUES: []``) and one attempt per task, so a task that raises is FAILED as
it is in Django. The tests that do not apply are listed, with the reason, in
docs/django-tasks.rst.
"""

import dataclasses
import logging
import pickle
from datetime import datetime

import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings

from async_jobs import Job
from async_jobs.backends import framework

tasks = pytest.importorskip(
    "shop.task_functions",
    reason="neither django.tasks (Django 6+) nor the django_tasks backport is "
    "installed",
)

pytestmark = pytest.mark.django_db(transaction=True)

BACKEND = "async_jobs.backends.JobsBackend"
Status = framework.TaskResultStatus


@pytest.fixture(autouse=True)
def django_like_settings():
    with override_settings(
        TASKS={
            "default": {
                "BACKEND": BACKEND,
                "QUEUES": [],
                "OPTIONS": {"max_attempts": 1},
            }
        }
    ):
        yield


@pytest.fixture
def backend():
    return framework.task_backends["default"]


@pytest.fixture
def task_logs(caplog):
    caplog.set_level(logging.DEBUG, logger=framework.LOGGER_NAME)
    return lambda: [
        record
        for record in caplog.records
        if record.name == framework.LOGGER_NAME
        and record.getMessage().startswith("Task id=")
    ]


def assert_ran(result, args, kwargs):
    assert result.is_finished is True
    assert result.started_at is not None
    assert result.last_attempted_at is not None
    assert result.finished_at is not None
    assert result.started_at >= result.enqueued_at
    assert result.finished_at >= result.started_at
    assert result.args == args
    assert result.kwargs == kwargs
    assert result.attempts == 1


def test_using_correct_backend(backend):
    """test_immediate_backend / test_dummy_backend: test_using_correct_backend."""
    from async_jobs.backends import JobsBackend

    assert framework.task_backends["default"] is backend
    assert isinstance(backend, JobsBackend)
    assert backend.alias == "default"
    assert backend.options == {"max_attempts": 1}


@pytest.mark.parametrize("task_name", ["noop", "noop_async"])
def test_enqueue_task(task_name, flush_queue):
    """test_dummy_backend then test_immediate_backend: test_enqueue_task."""
    task = getattr(tasks, task_name)
    result = task.enqueue(1, two=3)

    assert result.status == Status.READY
    assert result.is_finished is False
    assert result.started_at is None
    assert result.last_attempted_at is None
    assert result.finished_at is None
    with pytest.raises(ValueError, match="Task has not finished yet"):
        result.return_value  # noqa: B018
    assert result.task == task
    assert result.args == [1]
    assert result.kwargs == {"two": 3}
    assert result.attempts == 0

    flush_queue()
    result.refresh()

    assert result.status == Status.SUCCESSFUL
    assert_ran(result, [1], {"two": 3})
    assert result.return_value is None


@pytest.mark.parametrize("task_name", ["noop", "noop_async"])
def test_enqueue_task_async(task_name, flush_queue):
    """test_dummy_backend / test_immediate_backend: test_enqueue_task_async."""
    task = getattr(tasks, task_name)
    result = async_to_sync(task.aenqueue)()

    assert result.status == Status.READY
    assert result.task == task
    assert result.args == []
    assert result.kwargs == {}
    assert Job.objects.filter(pk=result.id).exists()

    flush_queue()
    async_to_sync(result.arefresh)()

    assert result.status == Status.SUCCESSFUL
    assert_ran(result, [], {})


@pytest.mark.parametrize(
    "task_name, exception, message",
    [
        ("failing_value_error", ValueError, "This task failed due to ValueError"),
        ("failing_system_exit", SystemExit, "This task failed due to SystemExit"),
    ],
)
def test_catches_exception(task_name, exception, message, flush_queue, task_logs):
    """test_immediate_backend: test_catches_exception."""
    task = getattr(tasks, task_name)
    result = task.enqueue()

    output = flush_queue()
    result.refresh()

    assert "0 succeeded, 0 to retry, 1 failed." in output
    failures = [r for r in task_logs() if r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert result.id in failures[0].getMessage()
    assert "state=FAILED" in failures[0].getMessage()
    assert result.status == Status.FAILED
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018
    assert_ran(result, [], {})
    assert result.errors[0].exception_class is exception
    assert result.errors[0].traceback.endswith(f"{exception.__name__}: {message}\n")
    assert result.task == task


def test_throws_keyboard_interrupt(flush_queue):
    """test_immediate_backend: test_throws_keyboard_interrupt.

    Here no job can stop the worker: the task's KeyboardInterrupt is recorded
    as a failed attempt, like any exception (the suite's tasks get one).
    """
    result = tasks.failing_keyboard_interrupt.enqueue()

    flush_queue()
    result.refresh()

    assert result.status == Status.FAILED
    assert result.attempts == 1
    assert [error.exception_class_path for error in result.errors] == [
        "builtins.KeyboardInterrupt"
    ]


def test_complex_exception(flush_queue):
    """test_immediate_backend: test_complex_exception."""
    result = tasks.complex_exception.enqueue()

    flush_queue()
    result.refresh()

    assert result.status == Status.FAILED
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018
    assert_ran(result, [], {})
    assert result._return_value is None
    assert result.errors[0].exception_class is ValueError
    assert 'ValueError(ValueError("This task failed"))' in result.errors[0].traceback
    assert result.task == tasks.complex_exception


def test_complex_return_value(flush_queue):
    """test_immediate_backend: test_complex_return_value."""
    result = tasks.complex_return_value.enqueue()

    flush_queue()
    result.refresh()

    assert result.status == Status.FAILED
    assert_ran(result, [], {})
    assert result._return_value is None
    assert result.errors[0].exception_class is TypeError
    assert "Unsupported type" in result.errors[0].traceback


def test_result(backend, flush_queue):
    """test_immediate_backend: test_result."""
    result = backend.enqueue(tasks.calculate_meaning_of_life, [], {})

    flush_queue()
    result.refresh()

    assert result.status == Status.SUCCESSFUL
    assert result.return_value == 42


def test_result_async(backend, flush_queue):
    """test_immediate_backend: test_result_async."""
    result = async_to_sync(backend.aenqueue)(tasks.calculate_meaning_of_life, [], {})

    flush_queue()
    result = async_to_sync(backend.aget_result)(result.id)

    assert result.status == Status.SUCCESSFUL
    assert result.return_value == 42


def test_enqueue_logs(flush_queue, task_logs):
    """test_immediate_backend / test_dummy_backend: test_enqueue_logs."""
    result = tasks.noop.enqueue()

    assert len(task_logs()) == 1
    assert "enqueued" in task_logs()[0].getMessage()
    assert result.id in task_logs()[0].getMessage()

    flush_queue()

    logs = [record.getMessage() for record in task_logs()]
    assert len(logs) == 3
    assert "state=RUNNING" in logs[1] and result.id in logs[1]
    assert "state=SUCCESSFUL" in logs[2] and result.id in logs[2]


def test_failed_logs(flush_queue, task_logs):
    """test_immediate_backend: test_failed_logs."""
    result = tasks.failing_value_error.enqueue()

    flush_queue()

    logs = [record.getMessage() for record in task_logs()]
    assert len(logs) == 3
    assert "state=RUNNING" in logs[1] and result.id in logs[1]
    assert "state=FAILED" in logs[2] and result.id in logs[2]


def test_successful_task_no_none_type_in_logs(flush_queue, caplog, task_logs):
    """test_immediate_backend: test_successful_task_no_none_type_in_logs."""
    result = tasks.noop.enqueue()

    flush_queue()
    result.refresh()

    assert result.status == Status.SUCCESSFUL
    assert task_logs()
    assert "NoneType" not in caplog.text


def test_takes_context(flush_queue):
    """test_dummy_backend then test_immediate_backend: test_takes_context."""
    result = tasks.get_task_id.enqueue()
    assert result.status == Status.READY

    flush_queue()
    result.refresh()

    assert result.return_value == result.id


def test_context(flush_queue):
    """test_immediate_backend: test_context."""
    result = tasks.check_context.enqueue(1)

    flush_queue()
    result.refresh()

    assert result.status == Status.SUCCESSFUL


@pytest.mark.parametrize("asynchronous", [False, True])
def test_validate_on_enqueue(asynchronous):
    """test_immediate_backend / test_dummy_backend: test_validate_on_(a)enqueue."""
    task = tasks.noop.using(queue_name="unknown_queue")
    enqueue = async_to_sync(task.aenqueue) if asynchronous else task.enqueue

    with (
        override_settings(TASKS={"default": {"BACKEND": BACKEND, "QUEUES": ["q-1"]}}),
        pytest.raises(
            framework.InvalidTask,
            match="Queue 'unknown_queue' is not valid for backend",
        ),
    ):
        enqueue()
    assert not Job.objects.exists()


def test_get_result(backend):
    """test_dummy_backend / test_tasks: test_get_result."""
    result = backend.enqueue(tasks.noop, (), {})

    assert backend.get_result(result.id) == result
    assert tasks.noop.get_result(result.id) == result


def test_get_result_async(backend):
    """test_dummy_backend / test_tasks: test_get_result_async."""
    result = async_to_sync(backend.aenqueue)(tasks.noop, (), {})

    assert async_to_sync(backend.aget_result)(result.id) == result
    assert async_to_sync(tasks.noop.aget_result)(result.id) == result


def test_refresh_result(backend, flush_queue):
    """test_dummy_backend: test_refresh_result (a worker changes the status)."""
    result = backend.enqueue(tasks.calculate_meaning_of_life, (), {})
    unchanged = dataclasses.asdict(result)
    result.refresh()
    assert dataclasses.asdict(result) == unchanged  # test_tasks: test_refresh_result

    flush_queue()

    assert result.status == Status.READY
    result.refresh()
    assert result.status == Status.SUCCESSFUL


def test_refresh_result_async(backend, flush_queue):
    """test_dummy_backend: test_refresh_result_async."""
    result = async_to_sync(backend.aenqueue)(tasks.calculate_meaning_of_life, (), {})

    flush_queue()

    assert result.status == Status.READY
    async_to_sync(result.arefresh)()
    assert result.status == Status.SUCCESSFUL


def test_get_missing_result(backend):
    """test_dummy_backend / test_tasks: test_get_missing_result."""
    with pytest.raises(framework.TaskResultDoesNotExist):
        backend.get_result("123")
    with pytest.raises(framework.TaskResultDoesNotExist):
        async_to_sync(backend.aget_result)("123")
    with pytest.raises(framework.TaskResultDoesNotExist):
        tasks.noop.get_result("123")


def test_errors():
    """test_dummy_backend: test_errors."""
    assert tasks.noop.enqueue().errors == []


def test_check(backend):
    """test_dummy_backend: test_check."""
    assert list(backend.check()) == []


def test_get_incorrect_result(backend):
    """test_tasks: test_get_incorrect_result."""
    result = backend.enqueue(tasks.noop_async, (), {})
    with pytest.raises(framework.TaskResultMismatch, match="Task does not match"):
        tasks.noop.get_result(result.id)


def test_enqueue_with_invalid_argument():
    """test_tasks: test_enqueue_with_invalid_argument (and the async one)."""
    with pytest.raises(TypeError, match="Unsupported type"):
        tasks.noop.enqueue(datetime.now())
    with pytest.raises(TypeError, match="Unsupported type"):
        async_to_sync(tasks.noop.aenqueue)(datetime.now())
    assert not Job.objects.exists()


def test_naive_datetime():
    """test_tasks: test_naive_datetime."""
    with pytest.raises(framework.InvalidTask, match="run_after must be an aware"):
        tasks.noop.using(run_after=datetime.now())


def test_invalid_priority():
    """test_tasks: test_invalid_priority (the backend supports priorities)."""
    for priority in (-101, 101, 3.1):
        with pytest.raises(framework.InvalidTask, match="priority must be a whole"):
            tasks.noop.using(priority=priority)
    for priority in (100, -100, 0):
        assert tasks.noop.using(priority=priority).priority == priority


def test_unknown_queue_name():
    """test_tasks: test_unknown_queue_name."""
    with override_settings(
        TASKS={"default": {"BACKEND": BACKEND, "QUEUES": ["default", "queue_1"]}}
    ):
        with pytest.raises(framework.InvalidTask, match="Queue 'queue-2' is not valid"):
            tasks.noop.using(queue_name="queue-2")
        assert tasks.noop.using(queue_name="queue_1").queue_name == "queue_1"
    assert tasks.noop.using(queue_name="queue-2").queue_name == "queue-2"


def test_invalid_function():
    """test_tasks: test_invalid_function."""

    def local_function():
        pass

    for function in (any, local_function):
        with pytest.raises(
            framework.InvalidTask, match="Task function must be defined at a module"
        ):
            framework.Task(func=function)


def test_takes_context_without_taking_context():
    """test_tasks: test_takes_context_without_taking_context."""
    with pytest.raises(
        framework.InvalidTask, match="Task takes context but does not have a first"
    ):
        framework.Task(func=tasks.calculate_meaning_of_life.func, takes_context=True)


@pytest.mark.skipif(
    framework.SOURCE == "django_tasks",
    reason="the django_tasks backport's Task can't be pickled (Django 6 added "
    "Task.__reduce__)",
)
def test_pickle_task_result(flush_queue):
    """test_tasks: test_pickle_task_result (also once it has run)."""
    result = tasks.calculate_meaning_of_life.enqueue()
    assert pickle.loads(pickle.dumps(result)) == result

    flush_queue()
    result.refresh()

    assert pickle.loads(pickle.dumps(result)) == result


def test_task_error_invalid_exception(flush_queue):
    """test_tasks: test_task_error_invalid_exception / _unknown_module."""
    result = tasks.failing_value_error.enqueue()
    flush_queue()
    result.refresh()
    assert len(result.errors) == 1

    object.__setattr__(result.errors[0], "exception_class_path", "subprocess.run")
    with pytest.raises(ValueError, match="'subprocess.run' does not reference"):
        result.errors[0].exception_class  # noqa: B018

    object.__setattr__(result.errors[0], "exception_class_path", "does.not.exist")
    with pytest.raises(ImportError):
        result.errors[0].exception_class  # noqa: B018
