"""JobsBackend: Django's tasks framework, transaction-safe, run by flush_queue."""

import os
import signal
import socket
import time
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync
from django.db import transaction
from django.test import override_settings
from django.utils import timezone
from shop.models import Mark, Receipt

from async_jobs import Job, schedule
from async_jobs.backends import framework

from .conftest import env_with_settings, manage

tasks = pytest.importorskip(
    "shop.task_functions",
    reason="neither django.tasks (Django 6+) nor the django_tasks backport is "
    "installed",
)

pytestmark = pytest.mark.django_db(transaction=True)

Status = framework.TaskResultStatus
BACKEND = "async_jobs.backends.JobsBackend"
#: Failed attempts are due again at once, so one flush_queue retries them.
NO_BACKOFF = {"BACKOFF_BASE": 0, "BACKOFF_JITTER": 0}


class Boom(Exception):
    pass


@pytest.fixture
def backend():
    return framework.task_backends["default"]


@pytest.fixture
def task_signals():
    """Every task signal sent, as (signal, sender, id, status, attempts)."""
    seen = []
    receivers = {}
    for name in ("task_enqueued", "task_started", "task_finished"):

        def receiver(sender, task_result, name=name, **kwargs):
            seen.append(
                (name, sender, task_result.id, task_result.status, task_result.attempts)
            )

        receivers[name] = receiver
        getattr(framework, name).connect(receiver)
    yield seen
    for name, receiver in receivers.items():
        getattr(framework, name).disconnect(receiver)


def this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def test_enqueue_in_a_rolled_back_transaction_leaves_nothing(backend, task_signals):
    with pytest.raises(Boom), transaction.atomic():
        result = tasks.record.enqueue("lost")
        assert Job.objects.filter(pk=result.id).exists()
        raise Boom

    assert not Job.objects.exists()
    assert task_signals == []
    with pytest.raises(framework.TaskResultDoesNotExist):
        backend.get_result(result.id)


@override_settings(USE_TZ=False, TIME_ZONE="Europe/Paris")
def test_an_aware_run_after_is_stored_in_local_time_without_time_zone_support(
    backend,
):
    # Django's tasks accept it whatever USE_TZ says; schedule() alone wouldn't.
    later = datetime(2030, 1, 1, 12, tzinfo=UTC)
    result = tasks.send_mail.using(run_after=later).enqueue("ann@example.com")

    job = Job.objects.get()
    assert job.run_after == datetime(2030, 1, 1, 13)  # noon UTC, in Paris
    assert backend.get_result(result.id).task.run_after == datetime(2030, 1, 1, 13)


def test_enqueue_in_a_committed_transaction_writes_its_job(backend, task_signals):
    later = timezone.now() + timedelta(hours=1)
    with transaction.atomic():
        result = tasks.send_mail.using(run_after=later).enqueue("ann@example.com")
        assert task_signals == []  # task_enqueued waits for the commit

    job = Job.objects.get()
    assert result.id == str(job.pk)
    assert job.name == "shop.task_functions.send_mail"
    assert job.args == ["ann@example.com"]
    assert job.kwargs == {}
    assert job.meta == {"priority": 7, "queue": "mail", "task_backend": "default"}
    assert (job.queue, job.priority, job.run_after) == ("mail", 7, later)
    assert job.status == Job.Status.PENDING
    assert result.status == Status.READY
    assert result.enqueued_at == job.created
    assert result.backend == "default"
    assert result.task == tasks.send_mail.using(run_after=later)
    assert task_signals == [
        ("task_enqueued", type(backend), result.id, Status.READY, 0)
    ]
    assert backend.get_result(result.id) == result


def test_flush_queue_runs_it_and_get_result_reports_success(
    backend, flush_queue, task_signals
):
    result = tasks.record.enqueue("kept")

    output = flush_queue()

    assert "Ran 1 job" in output and "1 succeeded" in output
    assert list(Mark.objects.values_list("label", flat=True)) == ["kept"]
    fetched = backend.get_result(result.id)
    assert fetched.status == Status.SUCCESSFUL
    assert fetched.return_value == "kept"
    assert fetched.errors == []
    assert fetched.attempts == 1
    assert fetched.worker_ids == [this_worker()]
    assert fetched.enqueued_at <= fetched.started_at <= fetched.finished_at
    assert fetched.last_attempted_at == fetched.started_at
    result.refresh()
    assert result == fetched
    assert tasks.record.get_result(result.id) == fetched
    kind = type(backend)
    assert task_signals == [
        ("task_enqueued", kind, result.id, Status.READY, 0),
        ("task_started", kind, result.id, Status.RUNNING, 1),
        ("task_finished", kind, result.id, Status.SUCCESSFUL, 1),
    ]


@override_settings(ASYNC_JOBS={**NO_BACKOFF, "MAX_ATTEMPTS": 2})
def test_get_result_after_failures_has_one_error_per_attempt(flush_queue, task_signals):
    result = tasks.write_then_fail.enqueue("lost")

    flush_queue("--jobs", "1")
    result.refresh()

    assert result.status == Status.READY
    assert result.attempts == 1
    assert result.finished_at is None
    with pytest.raises(ValueError, match="Task has not finished yet"):
        result.return_value  # noqa: B018
    [error] = result.errors
    assert error.exception_class is ValueError
    assert "in write_then_fail" in error.traceback
    assert error.traceback.endswith("ValueError: failed after writing lost\n")

    flush_queue("--jobs", "1")
    result.refresh()

    assert result.status == Status.FAILED
    assert result.attempts == 2
    assert result.worker_ids == [this_worker(), this_worker()]
    assert [e.exception_class for e in result.errors] == [ValueError, ValueError]
    assert result.finished_at >= result.last_attempted_at >= result.started_at
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018
    assert not Mark.objects.exists()
    finished = [(s[3], s[4]) for s in task_signals if s[0] == "task_finished"]
    assert finished == [(Status.READY, 1), (Status.FAILED, 2)]


@override_settings(ASYNC_JOBS={**NO_BACKOFF, "MAX_ATTEMPTS": 2})
def test_errors_of_a_task_run_again_stay_in_the_order_they_happened(flush_queue):
    result = tasks.fail_before_attempt.enqueue(succeed_on=99)
    flush_queue()
    job = Job.objects.get(pk=result.id)
    assert job.status == Job.Status.FAILED

    job.requeue()  # its attempts count from 1 again; its history stays
    flush_queue("--jobs", "1")
    result.refresh()

    assert result.attempts == 3
    assert [error.traceback.splitlines()[-1] for error in result.errors] == [
        f"RuntimeError: attempt {attempt} fails" for attempt in (1, 2, 3)
    ]
    assert list(job.errors.values_list("attempt", flat=True)) == [1, 2, 1]


@pytest.mark.parametrize("result_id", ["123", "not-a-number", "0", "-1", str(2**70)])
def test_get_result_of_an_unknown_id_raises(backend, result_id):
    tasks.noop.enqueue()  # some other result exists

    with pytest.raises(framework.TaskResultDoesNotExist):
        backend.get_result(result_id)
    with pytest.raises(framework.TaskResultDoesNotExist):
        tasks.noop.get_result(result_id)


def test_get_result_does_not_return_a_plain_job_or_another_backends_task(backend):
    job = schedule("shop.tasks.noop")
    with override_settings(
        TASKS={"default": {"BACKEND": BACKEND}, "other": {"BACKEND": BACKEND}}
    ):
        other = tasks.noop.using(backend="other").enqueue()
        with pytest.raises(framework.TaskResultDoesNotExist):
            framework.task_backends["default"].get_result(str(job.pk))
        with pytest.raises(framework.TaskResultDoesNotExist):
            framework.task_backends["default"].get_result(other.id)
        assert framework.task_backends["other"].get_result(other.id) == other


@override_settings(ASYNC_JOBS={**NO_BACKOFF, "MAX_ATTEMPTS": 3})
def test_a_task_taking_context_sees_its_attempt_number(flush_queue):
    result = tasks.fail_before_attempt.enqueue(succeed_on=3)

    flush_queue()
    result.refresh()

    assert result.status == Status.SUCCESSFUL
    seen = result.return_value
    assert seen["attempt"] == 3
    assert seen["status"] == Status.RUNNING
    assert seen["errors"] == ["builtins.RuntimeError", "builtins.RuntimeError"]
    assert seen["worker_ids"] == [this_worker()] * 3
    assert seen["started_at"] == result.started_at.isoformat()
    assert seen["last_attempted_at"] == result.last_attempted_at.isoformat()
    assert result.started_at < result.last_attempted_at
    # The failed attempts' writes were rolled back.
    assert list(Mark.objects.values_list("label", flat=True)) == ["attempt 3"]


def test_an_async_task_runs_to_completion(backend, flush_queue):
    result = tasks.add_async.enqueue(2, 3)
    enqueued = async_to_sync(tasks.add_async.aenqueue)(4, b=5)

    flush_queue()

    assert backend.get_result(result.id).return_value == 5
    fetched = async_to_sync(tasks.add_async.aget_result)(enqueued.id)
    assert fetched.status == Status.SUCCESSFUL
    assert fetched.return_value == 9


def test_get_result_inside_the_running_task_says_running(flush_queue):
    result = tasks.status_seen_from_inside.enqueue()

    flush_queue()
    result.refresh()

    assert result.return_value == Status.RUNNING


def test_a_running_non_atomic_job_is_a_running_task(backend):
    result = tasks.record.enqueue("long")
    Job.objects.filter(pk=result.id).update(
        status=Job.Status.RUNNING,
        worker="web1:4242",
        started=timezone.now(),
        lease_expires=timezone.now() + timedelta(seconds=60),
        heartbeat=timezone.now(),
        attempts=1,
    )

    assert backend.get_result(result.id).status == Status.RUNNING
    result.refresh()
    assert result.status == Status.RUNNING


def test_priority_and_queue_map_to_the_job_and_order_the_run(flush_queue):
    tasks.record.using(priority=-5).enqueue("low")
    tasks.record.enqueue("middle")
    tasks.record.using(priority=9).enqueue("high")
    mail = tasks.send_mail.enqueue("ann@example.com")

    flush_queue("--queue", "default")

    labels = list(Mark.objects.order_by("pk").values_list("label", flat=True))
    assert labels == ["high", "middle", "low"]
    mail.refresh()
    assert mail.status == Status.READY


def test_run_after_defers_the_task(flush_queue):
    later = timezone.now() + timedelta(minutes=5)
    result = tasks.record.using(run_after=later).enqueue("later")

    assert "Ran 0 jobs" in flush_queue()

    result.refresh()
    assert result.status == Status.READY
    assert result.task.run_after == later
    assert Job.objects.get().run_after == later


def test_return_value_is_normalised_to_json_like_djangos_backends(flush_queue):
    result = tasks.returns_tuple.enqueue()

    flush_queue()
    result.refresh()

    assert result.return_value == [1, "two"]


def test_a_cancelled_task_is_failed_without_errors(backend):
    result = tasks.noop.enqueue()
    Job.objects.get().cancel()

    fetched = backend.get_result(result.id)

    assert fetched.status == Status.FAILED
    assert fetched.errors == []
    assert fetched.finished_at is not None


def test_a_scheduled_task_path_runs_with_its_context_but_is_no_task_result(
    backend, flush_queue, task_signals
):
    job = schedule("shop.task_functions.get_task_id")

    flush_queue()

    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.result == str(job.pk)
    assert task_signals == []
    with pytest.raises(framework.TaskResultDoesNotExist):
        backend.get_result(str(job.pk))


@override_settings(
    TASKS={"default": {"BACKEND": BACKEND, "OPTIONS": {"max_attempts": 1}}}
)
def test_options_set_the_meta_of_every_task(flush_queue):
    result = tasks.failing_value_error.enqueue()

    assert Job.objects.get().meta["max_attempts"] == 1
    flush_queue()
    result.refresh()
    assert result.status == Status.FAILED
    assert result.attempts == 1


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"retries": 2},
            "has unknown key(s) 'retries'; allowed: max_attempts, timeout",
        ),
        (
            {"max_attempts": 0},
            "meta['max_attempts'] is 0; it must be an int from 1 to 1,000,000",
        ),
        ({"timeout": -1}, "meta['timeout'] is -1"),
        ([], "must be a dict, not list"),
    ],
)
def test_bad_options_are_refused_naming_the_backend(options, message):
    with (
        override_settings(TASKS={"default": {"BACKEND": BACKEND, "OPTIONS": options}}),
        pytest.raises(framework.InvalidTaskBackend) as error,
    ):
        tasks.noop.enqueue()
    assert "TASKS['default']['OPTIONS']" in str(error.value)
    assert message in str(error.value)
    assert not Job.objects.exists()


def test_a_task_outside_the_allowed_modules_is_invalid():
    with (
        override_settings(ASYNC_JOBS={"ALLOWED_MODULES": ["shop.tasks"]}),
        pytest.raises(framework.InvalidTask, match="Allowed modules: shop.tasks"),
    ):
        tasks.noop.enqueue()
    assert not Job.objects.exists()


def test_check_reports_task_queues_that_async_jobs_refuses(backend):
    with override_settings(ASYNC_JOBS={"QUEUES": ["default"]}):
        [error] = list(framework.task_backends["default"].check())
        assert error.id == "async_jobs.E101"
        assert "TASKS['default']['QUEUES'] has 'mail'" in error.msg
        with pytest.raises(ValueError, match="Queue 'mail' is not in ASYNC_JOBS"):
            tasks.send_mail.enqueue("ann@example.com")
    assert list(backend.check()) == []


def test_a_raising_task_finished_receiver_does_not_stop_the_worker(flush_queue, caplog):
    def broken(**kwargs):
        raise RuntimeError("broken receiver")

    framework.task_finished.connect(broken)
    try:
        first = tasks.record.enqueue("first")
        second = tasks.record.enqueue("second")
        output = flush_queue()
    finally:
        framework.task_finished.disconnect(broken)

    assert "Ran 2 jobs" in output and "2 succeeded" in output
    first.refresh()
    second.refresh()
    assert (first.status, second.status) == (Status.SUCCESSFUL, Status.SUCCESSFUL)
    assert "task_finished receiver" in caplog.text
    assert "broken receiver" in caplog.text


@pytest.mark.processes
def test_running_is_reported_while_a_worker_holds_the_task(
    backend, on_postgres, tmp_path
):
    """A real worker process; killing it mid-task makes the task READY again."""
    if not on_postgres:
        pytest.skip("SQLite has no row locks to tell a running task by (documented)")
    go = tmp_path / "go"
    result = tasks.wait_for_file.enqueue(str(go), 30)

    def wait_for(status: Status, deadline: float = 20) -> None:
        end = timezone.now() + timedelta(seconds=deadline)
        while backend.get_result(result.id).status != status:
            assert timezone.now() < end, f"{result.id} never became {status}"
            time.sleep(0.05)

    killed = manage("flush_queue")
    try:
        wait_for(Status.RUNNING)
        os.kill(killed.pid, signal.SIGKILL)
    finally:
        killed.kill()
        killed.communicate(timeout=30)
    wait_for(Status.READY)
    assert backend.get_result(result.id).attempts == 0

    worker = manage("flush_queue")
    try:
        wait_for(Status.RUNNING)
        go.touch()
        _, err = worker.communicate(timeout=30)
    finally:
        worker.kill()
    assert worker.returncode == 0, err
    fetched = backend.get_result(result.id)
    assert fetched.status == Status.SUCCESSFUL
    # One attempt (the killed one left none), run by the worker's supervised
    # child process (see supervisor.py), not by the command's own process.
    [worker_id] = fetched.worker_ids
    host, _, pid = worker_id.rpartition(":")
    assert host == socket.gethostname()
    assert int(pid) != worker.pid


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
@override_settings(ASYNC_JOBS={"DATABASE": "other"})
def test_jobs_in_another_database_get_their_id_at_the_callers_commit(
    backend, flush_queue, task_signals
):
    with transaction.atomic():
        result = tasks.record.enqueue("kept")
        assert result.id is None
        assert not Job.objects.using("other").exists()

    job = Job.objects.using("other").get()
    assert result.id == str(job.pk)
    assert task_signals == [
        ("task_enqueued", type(backend), result.id, Status.READY, 0)
    ]
    assert backend.get_result(result.id) == result

    flush_queue()
    result.refresh()

    assert result.status == Status.SUCCESSFUL
    assert list(Mark.objects.values_list("label", flat=True)) == ["kept"]


def test_manage_check_reports_task_queues_that_async_jobs_refuses(run_manage, tmp_path):
    env = env_with_settings(tmp_path, "ASYNC_JOBS = {'QUEUES': ['default']}")

    code, _out, err = run_manage("check", "--settings=changed_settings", env=env)

    assert code != 0
    assert "async_jobs.E101" in err
    assert "TASKS['default']['QUEUES'] has 'mail'" in err


def test_the_docs_checkout_view_enqueues_with_its_order(client, backend, flush_queue):
    response = client.post("/shop/checkout/", {"total": "12"})

    assert response.status_code == 200
    order, task_id = response.json()["order"], response.json()["task"]
    job = Job.objects.get(pk=task_id)
    assert (job.name, job.args, job.queue) == (
        "shop.task_functions.email_receipt",
        [order],
        "mail",
    )

    flush_queue()

    result = backend.get_result(task_id)
    assert result.status == Status.SUCCESSFUL
    assert result.return_value == Receipt.objects.get(order_id=order).pk
