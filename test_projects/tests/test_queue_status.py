"""queue_status: the overview as a table or JSON, and an exit status for cron."""

import json
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from freezegun import freeze_time

from async_jobs import Job, schedule
from async_jobs.management.commands.queue_status import COLUMNS
from async_jobs.overview import queue_overview

from .conftest import finish, wait_until

DOCS = Path(__file__).resolve().parents[2] / "docs"

pytestmark = pytest.mark.django_db(transaction=True)


def queue_status(*args: str) -> str:
    out = StringIO()
    call_command("queue_status", *args, stdout=out)
    return out.getvalue()


def fail_for_good(**meta) -> Job:
    job = schedule(
        "shop.tasks.write_then_fail", args=["x"], meta={"max_attempts": 1, **meta}
    )
    with pytest.raises(RuntimeError):
        job.execute()
    return job


def fail_once(**meta) -> Job:
    """A failed attempt that will be retried: an error, not a failed job."""
    job = schedule(
        "shop.tasks.write_then_fail", args=["x"], meta={"max_attempts": 3, **meta}
    )
    with pytest.raises(RuntimeError):
        job.execute()
    return job


@pytest.fixture
def jobs():
    """A little of everything, at 2030-01-01 12:00 UTC."""
    with freeze_time("2030-01-01 10:30:00") as clock:
        fail_for_good(queue="mail")  # an hour and a half before "now": not recent
        clock.move_to("2030-01-01 11:55:00")
        schedule("shop.tasks.noop")  # due since 11:55
        schedule("shop.tasks.noop", run_after=timedelta(minutes=1))  # due since 11:56
        schedule("shop.tasks.noop", run_after=timedelta(hours=1))  # not due yet
        schedule("shop.tasks.add", args=[1, 2]).execute()
        schedule("shop.tasks.noop").cancel()
        fail_for_good(queue="mail")
        retried = fail_once(queue="mail")  # pending again,
        Job.objects.filter(pk=retried.pk).update(  # its retry an hour away
            run_after=timezone.now() + timedelta(hours=1)
        )
        clock.move_to("2030-01-01 12:00:00")
        yield clock


def test_overview_counts_per_queue_and_status(jobs):
    overview = queue_overview()

    default, mail = overview.queues
    assert default.queue == "default"
    assert default.counts == {
        "pending": 3,
        "running": 0,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 1,
    }
    assert default.due == 2
    assert default.oldest_due_age(overview.now) == timedelta(minutes=5)
    assert (default.failed_recently, default.errors_recently) == (0, 0)
    assert mail.counts == {
        "pending": 1,
        "running": 0,
        "succeeded": 0,
        "failed": 2,
        "cancelled": 0,
    }
    assert mail.due == 0 and mail.oldest_due is None
    assert (mail.failed_recently, mail.errors_recently) == (1, 2)
    assert overview.longest_wait() == ("default", timedelta(minutes=5))


def test_table_output(jobs):
    output = queue_status()

    assert output.splitlines() == [
        "queue    pending  running  succeeded  failed  cancelled  due  oldest due  failed 1h  errors 1h",
        "default        3        0          1       0          1    2      5m 00s          0          0",
        "mail           1        0          0       2          0    0           -          1          2",
    ]


def test_json_output(jobs):
    figures = json.loads(queue_status("--json"))

    assert figures["now"] == "2030-01-01T12:00:00+00:00"
    assert figures["oldest_due_age"] == 300
    default, mail = figures["queues"]
    assert default == {
        "queue": "default",
        "pending": 3,
        "running": 0,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 1,
        "due": 2,
        "oldest_due": "2030-01-01T11:55:00+00:00",
        "oldest_due_age": 300,
        "failed_last_hour": 0,
        "errors_last_hour": 0,
    }
    assert (mail["queue"], mail["oldest_due"], mail["oldest_due_age"]) == (
        "mail",
        None,
        None,
    )


def test_queue_option_limits_the_overview(jobs):
    figures = json.loads(queue_status("--json", "--queue", "mail"))

    assert [queue["queue"] for queue in figures["queues"]] == ["mail"]
    assert figures["oldest_due_age"] is None


@override_settings(ASYNC_JOBS={"QUEUES": ["default", "mail", "reports"]})
def test_configured_queues_are_shown_even_when_empty(jobs):
    overview = queue_overview()

    assert [queue.queue for queue in overview.queues] == ["default", "mail", "reports"]
    assert overview.queues[2].counts == dict.fromkeys(Job.Status.values, 0)
    with pytest.raises(CommandError, match="Unknown queue.*'mial'"):
        queue_status("--queue", "mial")


def test_max_age_passes_when_the_backlog_is_young_enough(jobs):
    output = queue_status("--max-age", "300")

    assert output.startswith("queue ")


def test_max_age_exits_2_when_a_due_job_waited_longer(jobs):
    with pytest.raises(CommandError) as raised:
        queue_status("--max-age", "299")

    assert raised.value.returncode == 2
    assert str(raised.value) == (
        "Backlog: a due job in queue 'default' has waited 5m 00s (300s), "
        "longer than --max-age 299s."
    )


def test_max_age_takes_the_ages_prune_jobs_takes(jobs):
    assert queue_status("--max-age", "5m").startswith("queue ")
    with pytest.raises(CommandError, match="longer than --max-age 240s"):
        queue_status("--max-age", "4m")
    with pytest.raises(CommandError, match="'never' is no limit"):
        queue_status("--max-age", "never")


def test_a_job_not_yet_due_is_no_backlog():
    schedule("shop.tasks.noop", run_after=timedelta(seconds=30))

    assert "oldest due" in queue_status("--max-age", "0")


def test_no_jobs():
    assert queue_status() == "No jobs.\n"
    assert json.loads(queue_status("--json"))["queues"] == []
    assert queue_status("--max-age", "0") == "No jobs.\n"


def test_running_jobs_are_counted_per_queue():
    running = [schedule("shop.tasks.noop") for _ in range(2)]
    schedule("shop.tasks.noop")
    Job.objects.filter(pk__in=[job.pk for job in running]).update(
        status=Job.Status.RUNNING,
        worker="web1:4242",
        lease_expires=timezone.now() + timedelta(seconds=60),
        heartbeat=timezone.now(),
    )

    [default] = json.loads(queue_status("--json"))["queues"]
    assert (default["pending"], default["running"], default["due"]) == (1, 2, 1)
    header, row = queue_status().splitlines()
    assert header.split()[:3] == ["queue", "pending", "running"]
    assert row.split()[:3] == ["default", "1", "2"]


@pytest.mark.processes
def test_an_atomic_job_a_worker_runs_counts_as_running(
    on_postgres, start_manage, tmp_path
):
    """On PostgreSQL, by its row lock: not pending, not due, not waiting."""
    if not on_postgres:
        pytest.skip("SQLite has no row locks to tell a running atomic job by")
    flag = tmp_path / "hold"
    flag.touch()
    schedule(
        "shop.tasks.write_then_wait",
        args=["held", str(flag)],
        run_after=timezone.now() - timedelta(minutes=10),
    )
    schedule("shop.tasks.noop", run_after=timedelta(hours=1))
    worker = start_manage("flush_queue", "--jobs", "1")
    try:
        wait_until(Path(f"{flag}.started").exists, "the job to start", process=worker)
        with CaptureQueriesContext(connection) as queries:
            [default] = json.loads(queue_status("--json", "--max-age", "60"))["queues"]
    finally:
        flag.unlink()
    assert finish(worker)[0] == 0
    assert (default["pending"], default["running"]) == (1, 1)
    assert (default["due"], default["oldest_due"]) == (0, None)  # no backlog
    writes = [q["sql"] for q in queries if not q["sql"].lstrip().startswith("SELECT")]
    assert writes == []
    [default] = json.loads(queue_status("--json"))["queues"]
    assert (default["pending"], default["running"], default["succeeded"]) == (1, 0, 1)


def test_the_docs_show_the_columns_queue_status_prints():
    header = " ".join(COLUMNS)
    for page in ("commands.rst", "operations.rst"):
        text = (DOCS / page).read_text()
        assert header in " ".join(text.split()), page


def test_exit_status_and_messages_from_a_real_process(run_manage):
    schedule("shop.tasks.noop", run_after=timezone.now() - timedelta(minutes=10))

    code, out, err = run_manage("queue_status", "--max-age", "60", timeout=30)
    assert code == 2, err
    assert "default        1" in out
    assert "CommandError: Backlog: a due job in queue 'default' has waited 10m" in err

    code, out, err = run_manage(
        "queue_status", "--max-age", "3600", "--json", timeout=30
    )
    assert (code, err) == (0, "")
    assert json.loads(out)["queues"][0]["due"] == 1

    code, _out, err = run_manage("queue_status", "--max-age", "soon", timeout=30)
    assert code == 2
    assert "argument --max-age: 'soon' is not an age; write a number with a unit" in err
