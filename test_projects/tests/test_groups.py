"""Groups: a completion job runs once, after every job of its group finished."""

import re
import threading
import time
from datetime import UTC, timedelta

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone
from shop.models import Mark

from async_jobs import Group, Job, deschedule, schedule
from async_jobs.models import HELD, GroupProgress

from .conftest import backend_gone, finish, jobs_run, manage, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


class Boom(Exception):
    pass


def marks() -> list[str]:
    return list(Mark.objects.order_by("pk").values_list("label", flat=True))


def test_a_completion_job_waits_for_every_job_of_its_group(flush_queue):
    with transaction.atomic():
        done = schedule(
            "shop.tasks.count_unfinished_members",
            args=["import"],
            meta={"completes": "import"},
        )
        ok = schedule("shop.tasks.record", args=["ok"], meta={"group": "import"})
        bad = schedule(
            "shop.tasks.write_then_fail",
            args=["bad"],
            meta={"group": "import", "max_attempts": 1},
        )
        later = schedule(
            "shop.tasks.record",
            args=["later"],
            run_after=timedelta(hours=1),
            meta={"group": "import"},
        )
    group = Group.objects.get()
    assert group.reference == "import"
    assert group.completion == done
    assert set(group.jobs.all()) == {ok, bad, later}
    assert done.group is None and done.run_after == HELD
    assert group.progress() == GroupProgress(
        total=3, pending=3, succeeded=0, failed=0, cancelled=0
    )

    assert "1 succeeded, 0 to retry, 1 failed." in flush_queue()

    progress = group.progress()
    assert progress == GroupProgress(
        total=3, pending=1, succeeded=1, failed=1, cancelled=0
    )
    assert (progress.done, progress.finished) == (2, False)
    done.refresh_from_db()
    assert (done.status, done.run_after) == (Job.Status.PENDING, HELD)

    later.cancel()

    group.refresh_from_db()
    done.refresh_from_db()
    assert group.finished is not None and group.progress().finished
    assert done.run_after == group.finished <= timezone.now()
    assert "1 succeeded" in flush_queue()
    done.refresh_from_db()
    assert (done.status, done.result) == (Job.Status.SUCCEEDED, 0)
    assert marks() == ["ok", "completed import"]


def test_a_completion_job_can_be_scheduled_after_its_group_in_the_same_transaction(
    flush_queue,
):
    with transaction.atomic():
        for label in ("a", "b"):
            schedule("shop.tasks.record", args=[label], meta={"group": "g"})
        schedule("shop.tasks.record", args=["done"], meta={"completes": "g"})

    flush_queue()

    assert marks() == ["a", "b", "done"]


def test_a_completion_job_can_itself_belong_to_a_group(flush_queue):
    schedule("shop.tasks.record", args=["parent done"], meta={"completes": "parent"})
    schedule(
        "shop.tasks.record",
        args=["child done"],
        meta={"completes": "child", "group": "parent"},
    )
    schedule("shop.tasks.record", args=["child job"], meta={"group": "child"})

    assert "Ran 3 jobs" in flush_queue()

    assert marks() == ["child job", "child done", "parent done"]


def test_descheduling_the_last_pending_job_releases_the_completion_job(flush_queue):
    schedule("shop.tasks.record", args=["done"], meta={"completes": "g"})
    schedule("shop.tasks.record", args=["kept"], meta={"group": "g"})
    schedule("shop.tasks.record", args=["dropped"], meta={"group": "g"})
    flush_queue("--jobs", "1")
    assert Group.objects.get().finished is None

    assert deschedule("shop.tasks.record", args=["dropped"]) == 1

    assert Group.objects.get().finished is not None
    flush_queue()
    assert marks() == ["kept", "done"]


def test_a_finished_group_passes_its_reference_on_to_a_new_group(flush_queue):
    schedule("shop.tasks.record", args=["monday"], meta={"group": "nightly"})
    flush_queue()
    schedule("shop.tasks.record", args=["tuesday"], meta={"group": "nightly"})

    monday, tuesday = Group.objects.order_by("pk")
    assert monday.reference == tuesday.reference == "nightly"
    assert monday.finished is not None and tuesday.finished is None
    assert [job.args for job in tuesday.jobs.all()] == [["tuesday"]]


def test_a_completion_job_without_jobs_waits_for_them(flush_queue):
    done = schedule("shop.tasks.record", args=["done"], meta={"completes": "empty"})

    assert "Ran 0 jobs" in flush_queue()
    done.refresh_from_db()
    assert done.run_after == HELD
    assert not Group.objects.get().progress().finished


def test_a_rolled_back_transaction_leaves_no_group_and_no_job():
    with pytest.raises(Boom), transaction.atomic():
        schedule("shop.tasks.noop", meta={"group": "g"})
        schedule("shop.tasks.noop", meta={"completes": "g"})
        raise Boom

    assert not Group.objects.exists()
    assert not Job.objects.exists()


def test_a_group_has_one_completion_job():
    first = schedule("shop.tasks.noop", meta={"completes": "g"})

    with pytest.raises(ValueError, match=f"already has a completion job, #{first.pk}"):
        schedule("shop.tasks.noop", meta={"completes": "g"})
    assert list(Job.objects.all()) == [first]


@pytest.mark.parametrize(
    ("meta", "run_after", "message"),
    [
        ({"group": ""}, None, r"meta\['group'\] is ''; it must be the reference"),
        ({"group": "x" * 256}, None, r"meta\['group'\] is 'xxx"),
        ({"group": 7}, None, r"meta\['group'\] is 7"),
        ({"completes": None}, None, r"meta\['completes'\] is None"),
        ({"group": "g", "completes": "g"}, None, "can't complete the group it belongs"),
        ({"completes": "g", "repeat": 60}, None, "can't be combined: a completion"),
        ({"group": "g", "unique": True}, None, "can't be combined: a unique job"),
        ({"completes": "g"}, timedelta(hours=1), "it can't take a run_after"),
    ],
)
def test_bad_group_meta_is_refused(meta, run_after, message):
    with pytest.raises(ValueError, match=message):
        schedule("shop.tasks.noop", run_after=run_after, meta=meta)
    assert not Job.objects.exists()
    assert not Group.objects.exists()


def ran(output: str) -> int:
    return int(re.search(r"Ran (\d+) jobs?", output).group(1))


def overlap(first: Job, second: Job) -> bool:
    return first.started < second.finished and second.started < first.finished


@pytest.mark.processes
def test_two_workers_run_each_completion_job_once_and_last(on_postgres, tmp_path):
    references = [f"batch-{n}" for n in range(4)]
    for reference in references:
        schedule(
            "shop.tasks.count_unfinished_members",
            args=[reference],
            meta={"completes": reference},
        )
        meeting = tmp_path / reference
        meeting.mkdir()
        for n in range(2):
            label = f"{reference}/{n}"
            if on_postgres:
                # Both jobs of the group end at the same moment, in two workers.
                call = ("shop.tasks.write_then_meet", [label, str(meeting), 2])
            else:
                call = ("shop.tasks.write_then_sleep", [label, 0.05])
            schedule(call[0], args=call[1], meta={"group": reference})

    workers = [manage("flush_queue") for _ in range(2)]
    try:
        results = [worker.communicate(timeout=90) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()

    assert [worker.returncode for worker in workers] == [0, 0], results
    assert sum(ran(out) for out, _err in results) == 12
    for group in Group.objects.all():
        done = group.completion
        members = list(group.jobs.all())
        assert (done.status, done.attempts) == (Job.Status.SUCCEEDED, 1)
        assert done.result == 0  # no job of its group was pending when it ran
        assert all(done.started >= member.finished for member in members)
        assert group.progress().succeeded == 2
    assert sorted(marks()) == sorted(
        [f"{ref}/{n}" for ref in references for n in range(2)]
        + [f"completed {ref}" for ref in references]
    )
    if on_postgres:
        # The race under test happened: a group's two jobs ran side by side.
        assert all(overlap(*group.jobs.all()) for group in Group.objects.all())


@override_settings(USE_TZ=False)
def test_groups_work_without_time_zone_support(flush_queue):
    with transaction.atomic():
        done = schedule("shop.tasks.report_receipts", meta={"completes": "naive"})
        job = schedule("shop.tasks.record", args=["ok"], meta={"group": "naive"})
    done.refresh_from_db()
    assert done.run_after == timezone.make_naive(HELD, UTC)

    assert "2 succeeded" in flush_queue()  # the job, then its completion job

    done.refresh_from_db()
    job.group.refresh_from_db()
    assert done.status == Job.Status.SUCCEEDED
    assert timezone.is_naive(job.group.finished)


def _wait_for_lock_wait(backend: int, timeout: float = 20) -> bool:
    """From a connection of its own: until backend ``backend`` waits for a lock."""
    from django.db import connections

    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with connections["default"].cursor() as cursor:
                cursor.execute(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                    [backend],
                )
                row = cursor.fetchone()
            if row and row[0] == "Lock":
                return True
            time.sleep(0.02)
        return False
    finally:
        connections.close_all()


@pytest.mark.processes
def test_cancel_after_scheduling_into_the_group_waits_for_a_running_member_without_deadlock(
    on_postgres, start_manage, tmp_path
):
    """The canceller holds the group's lock (its own schedule()); the worker
    finishing the member it waits for needs that group's verdict. Before
    issue 14 PostgreSQL found a deadlock and the worker was its victim: the
    member ended ``cancelled`` although its code ran to the end."""
    if not on_postgres:
        pytest.skip("SQLite lets one writer in at a time: the two can't overlap")
    started, release = tmp_path / "started", tmp_path / "release"
    done = schedule("shop.tasks.record", args=["done"], meta={"completes": "G"})
    running = schedule(
        "shop.tasks.write_then_hold",
        args=["running", str(started), str(release)],
        meta={"group": "G"},
    )
    worker = start_manage("flush_queue")
    wait_until(started.exists, "the member to run", process=worker)

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (me,) = cursor.fetchone()
    waiting = []
    releaser = threading.Thread(
        target=lambda: (waiting.append(_wait_for_lock_wait(me)), release.touch())
    )
    with transaction.atomic():
        added = schedule("shop.tasks.record", args=["added"], meta={"group": "G"})
        releaser.start()
        try:
            # Waits for the worker (its row lock), which finishes the member
            # while this transaction still holds the group's lock.
            with pytest.raises(ValueError, match="is succeeded; only a pending"):
                running.cancel()
        finally:
            releaser.join(timeout=30)
    assert waiting == [True]  # the cancel did wait for the running member

    code, out, err = finish(worker)
    assert code == 0, err
    assert "deadlock" not in err
    assert jobs_run(out) == 3  # the member, the job added, the completion job
    running.refresh_from_db()
    assert (running.status, running.attempts) == (Job.Status.SUCCEEDED, 1)
    assert not running.errors.exists()
    # The worker went on: the member added, then the completion job, last.
    done.refresh_from_db()
    added.refresh_from_db()
    group = Group.objects.get()
    assert added.status == Job.Status.SUCCEEDED
    assert done.status == Job.Status.SUCCEEDED and group.finished is not None
    assert done.started >= added.finished
    assert marks() == ["running", "added", "done"]


def _backend_waiting_for_me(timeout: float = 20) -> int | None:
    """The backend that waits for a lock this session holds, seen from here."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            # Inside a transaction the statistics are read once, then kept.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT pid FROM pg_stat_activity "
                "WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
            )
            row = cursor.fetchone()
        if row:
            return row[0]
        time.sleep(0.02)
    return None


def _strand(reference: str) -> tuple[Job, Job]:
    """A group left as a worker killed before its check leaves it: its one
    member succeeded, the group open, the completion job held."""
    member = schedule("shop.tasks.record", args=["member"], meta={"group": reference})
    completion = schedule(
        "shop.tasks.count_unfinished_members",
        args=[reference],
        meta={"completes": reference},
    )
    Job.objects.filter(pk=member.pk).update(
        status=Job.Status.SUCCEEDED, attempts=1, finished=timezone.now()
    )
    return member, completion


@pytest.mark.processes
def test_a_group_left_open_by_a_killed_worker_is_closed_by_the_next(
    on_postgres, start_manage, run_manage
):
    """The worker that finishes a group's last job while another transaction
    holds the group's lock checks the group once its own commit is done. Killed
    then, it left the group open for ever, its completion job held."""
    if not on_postgres:
        pytest.skip("SQLite gives the group's lock at once: no check waits")
    member = schedule("shop.tasks.record", args=["member"], meta={"group": "G"})
    completion = schedule(
        "shop.tasks.count_unfinished_members", args=["G"], meta={"completes": "G"}
    )
    with transaction.atomic():
        Group.objects.select_for_update().get(reference="G")
        worker = start_manage("flush_queue")
        backend = _backend_waiting_for_me()
        worker.kill()  # its child too (PR_SET_PDEATHSIG)
        code, out, err = finish(worker)
        assert backend is not None, (code, out, err)
    wait_until(lambda: backend_gone(backend), "the dead worker's backend to end")
    member.refresh_from_db()
    group = Group.objects.get()
    completion.refresh_from_db()
    assert member.status == Job.Status.SUCCEEDED
    assert group.finished is None and completion.run_after == HELD

    code, out, err = run_manage("flush_queue")

    assert code == 0, err
    assert jobs_run(out) == 1  # the completion job
    group.refresh_from_db()
    completion.refresh_from_db()
    assert group.finished is not None
    assert (completion.status, completion.result) == (Job.Status.SUCCEEDED, 0)
    assert marks() == ["member", "completed G"]


@pytest.mark.processes
def test_a_stranded_group_is_closed_without_holding_its_lock_while_jobs_run(
    on_postgres, start_manage, tmp_path
):
    """The worker closes a stranded group in a transaction of its own: a
    schedule() into the group doesn't wait for the batch the worker runs next."""
    if not on_postgres:
        pytest.skip("no group is left open on SQLite")
    _member, completion = _strand("G")
    started, release = tmp_path / "started", tmp_path / "release"
    schedule(
        "shop.tasks.write_then_hold",
        args=["held", str(started), str(release)],
        meta={"priority": 100},
    )
    worker = start_manage("flush_queue")
    wait_until(started.exists, "the job to run", process=worker)
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '2s'")
            added = schedule("shop.tasks.record", args=["added"], meta={"group": "G"})
    finally:
        release.touch()
    code, out, err = finish(worker)

    assert code == 0, err
    assert jobs_run(out) == 3  # the held job, the completion job, the job added
    closed, opened = Group.objects.order_by("pk")
    assert closed.finished is not None and added.group_id == opened.pk
    completion.refresh_from_db()
    assert completion.status == Job.Status.SUCCEEDED
