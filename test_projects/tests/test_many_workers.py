"""Several flush_queue processes at once: every job runs exactly once.

Real processes against the real database. Each job inserts a ``Mark`` whose
label is unique, so a job run twice would fail loudly with an IntegrityError,
and one lost would leave a label missing.
"""

import time

import pytest
from django.db import transaction
from shop.models import Mark

from async_jobs import Error, Job, schedule

from .conftest import finish, jobs_run, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]


def schedule_records(count: int, first: int = 0) -> set[str]:
    labels = {str(n) for n in range(first, first + count)}
    with transaction.atomic():
        for label in sorted(labels):
            schedule("shop.tasks.record", args=[label])
    return labels


def assert_each_ran_once(labels: set[str], outputs: list[str]) -> None:
    assert sum(jobs_run(out) for out in outputs) == len(labels)
    for out in outputs:
        assert out.strip().endswith("0 to retry, 0 failed."), out
    assert set(Mark.objects.values_list("label", flat=True)) == labels
    assert Mark.objects.count() == len(labels)
    assert not Error.objects.exists()
    assert set(Job.objects.values_list("status", "attempts").distinct()) == {
        (Job.Status.SUCCEEDED, 1)
    }


def test_four_workers_run_2000_jobs_exactly_once(start_manage, on_postgres, tmp_path):
    if not on_postgres:
        pytest.skip("many workers at once is PostgreSQL's job; see the SQLite test")
    workers = 4
    release = tmp_path / "release"
    # One gate job per worker, first in line: each worker holds one, so all
    # four are proven to be inside a job at the same moment, none waiting
    # behind another's locked row, before the race over the rest begins.
    gates = {f"gate-{n}" for n in range(workers)}
    with transaction.atomic():
        for label in sorted(gates):
            schedule(
                "shop.tasks.write_then_hold",
                args=[label, str(tmp_path / label), str(release)],
                meta={"priority": 1},
            )
    labels = gates | schedule_records(2000 - workers)

    processes = [start_manage("flush_queue") for _ in range(workers)]
    for label in sorted(gates):
        wait_until((tmp_path / label).exists, f"a worker to hold {label}", timeout=60)
    release.touch()
    results = [finish(process, timeout=120) for process in processes]

    for code, _out, err in results:
        assert code == 0, err
    assert_each_ran_once(labels, [out for _code, out, _err in results])


def test_two_sqlite_workers_take_turns_and_run_each_job_once(
    start_manage, on_postgres, tmp_path
):
    if on_postgres:
        pytest.skip("SQLite's single writer; PostgreSQL runs the 4-worker test")
    release = tmp_path / "release"
    schedule(
        "shop.tasks.write_then_hold",
        args=["gate", str(tmp_path / "gate"), str(release)],
        meta={"priority": 1},
    )
    labels = {"gate"} | schedule_records(200)

    first = start_manage("flush_queue")
    wait_until((tmp_path / "gate").exists, "the first worker to hold the gate")
    # The first worker holds SQLite's write lock: the second one starts and
    # must wait for it, neither failing with "database is locked" nor giving up.
    second = start_manage("flush_queue")
    time.sleep(2)
    assert second.poll() is None, finish(second)
    release.touch()
    results = [finish(first), finish(second)]

    for code, _out, err in results:
        assert code == 0, err
        assert "locked" not in err
    assert_each_ran_once(labels, [out for _code, out, _err in results])
