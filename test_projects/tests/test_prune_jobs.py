"""prune_jobs: finished jobs older than their status's age go, a batch at a time."""

import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from async_jobs import Error, Group, Job, schedule
from async_jobs.conf import problems
from async_jobs.pruning import prune

pytestmark = pytest.mark.django_db(transaction=True)


def prune_jobs(*args: str) -> str:
    out = StringIO()
    call_command("prune_jobs", *args, stdout=out)
    return out.getvalue()


def finished(status: str, days_ago: float, errors: int = 0) -> Job:
    """A job that finished ``days_ago`` days ago, with ``errors`` Error rows."""
    when = timezone.now() - timedelta(days=days_ago)
    job = Job.objects.create(
        name="shop.tasks.noop", status=status, created=when, finished=when
    )
    for attempt in range(1, errors + 1):
        Error.objects.create(
            job=job, attempt=attempt, exception="e", traceback="t", occurred=when
        )
    return job


def remaining() -> set[tuple[str, int]]:
    now = timezone.now()
    return {
        (job.status, round((now - (job.finished or job.created)).days))
        for job in Job.objects.all()
    }


@pytest.fixture
def history():
    """Jobs of every status, finished 2, 8 and 31 days ago."""
    for status in ("succeeded", "cancelled", "failed"):
        for days in (2, 8, 31):
            finished(status, days, errors=1 if status == "failed" else 0)
    old_pending = Job.objects.create(name="shop.tasks.noop")
    Job.objects.filter(pk=old_pending.pk).update(
        created=timezone.now() - timedelta(days=400)
    )


def test_default_ages_keep_failed_jobs_longest(history):
    output = prune_jobs()

    assert output == (
        "Deleted 2 succeeded (finished over 7d ago), 2 cancelled (finished over "
        "7d ago), 1 failed (finished over 30d ago).\n"
    )
    assert remaining() == {
        ("succeeded", 2),
        ("cancelled", 2),
        ("failed", 2),
        ("failed", 8),
        ("pending", 400),  # never pruned, however old
    }
    assert Error.objects.count() == 2  # the deleted job's error went with it


@override_settings(
    ASYNC_JOBS={"PRUNE_AFTER": {"succeeded": 3600, "failed": timedelta(days=10)}}
)
def test_settings_set_the_ages_and_the_rest_keep_their_default(history):
    output = prune_jobs()

    assert "3 succeeded (finished over 1h 00m ago)" in output
    assert "2 cancelled (finished over 7d ago)" in output
    assert "1 failed (finished over 10d ago)" in output
    assert remaining() == {
        ("cancelled", 2),
        ("failed", 2),
        ("failed", 8),
        ("pending", 400),
    }


@override_settings(ASYNC_JOBS={"PRUNE_AFTER": {"cancelled": None}})
def test_options_override_the_settings_and_never_keeps(history):
    output = prune_jobs("--succeeded", "30d", "--failed", "never")

    assert output == (
        "Deleted 1 succeeded (finished over 30d ago), 0 cancelled (kept: age "
        "'never'), 0 failed (kept: age 'never').\n"
    )
    assert len(remaining()) == 9


def test_dry_run_counts_and_deletes_nothing(history):
    output = prune_jobs("--dry-run", "--failed", "1d")

    assert output == (
        "Would delete 2 succeeded (finished over 7d ago), 2 cancelled (finished "
        "over 7d ago), 3 failed (finished over 1d ago).\n"
    )
    assert Job.objects.count() == 10
    assert Error.objects.count() == 3


def test_each_batch_commits_on_its_own():
    for _ in range(5):
        finished("succeeded", 8)
    seen_from_elsewhere = []

    def count_from_another_connection(status: str, deleted: int) -> None:
        def read():
            try:
                seen_from_elsewhere.append((deleted, Job.objects.count()))
            finally:
                connection.close()

        thread = threading.Thread(target=read)
        thread.start()
        thread.join(timeout=10)

    deleted = prune(
        {"succeeded": timedelta(days=7)},
        batch_size=2,
        on_batch=count_from_another_connection,
    )

    assert deleted == {"succeeded": 5}
    # After each batch, another connection already sees the rows gone.
    assert seen_from_elsewhere == [(2, 3), (2, 1), (1, 0)]


def test_verbosity_2_prints_each_batch(history):
    output = prune_jobs("--batch-size", "1", "-v", "2")

    assert output.splitlines()[:3] == [
        "Deleted a batch of 1 succeeded jobs.",
        "Deleted a batch of 1 succeeded jobs.",
        "Deleted a batch of 1 cancelled jobs.",
    ]
    assert len(output.splitlines()) == 2 + 2 + 1 + 1


def test_oldest_go_first():
    new, _old, _older = (finished("succeeded", days) for days in (8, 20, 40))
    left_after_each_batch = []

    prune(
        {"succeeded": timedelta(days=7)},
        batch_size=2,
        on_batch=lambda status, n: left_after_each_batch.append(
            list(Job.objects.values_list("pk", flat=True))
        ),
    )

    assert left_after_each_batch == [[new.pk], []]


def test_an_age_beyond_the_calendar_prunes_nothing(history):
    assert "0 succeeded (finished over 10000000d ago)" in prune_jobs(
        "--succeeded", "10000000d"
    )
    assert Job.objects.filter(status="succeeded").count() == 3


def test_pending_jobs_can_not_be_pruned():
    with pytest.raises(ValueError, match="Only finished jobs can be pruned"):
        prune({"pending": timedelta(0)})


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--succeeded", "5x"],
            "argument --succeeded: '5x' is not an age; write a number with a unit "
            "s, m, h, d or w",
        ),
        (["--batch-size", "0"], "invalid positive_int value: '0'"),
    ],
)
def test_bad_options_are_refused(args, message):
    with pytest.raises(CommandError, match=message):
        prune_jobs(*args)


@pytest.mark.parametrize(
    "value, message",
    [
        ([], "ASYNC_JOBS['PRUNE_AFTER'] must be a dict of ages by status, not []."),
        (
            {"pending": 5},
            "ASYNC_JOBS['PRUNE_AFTER'] has unknown status(es) 'pending'; allowed are "
            "'succeeded', 'cancelled', 'failed' (pending jobs are never pruned).",
        ),
        (
            {"failed": "30d"},
            "ASYNC_JOBS['PRUNE_AFTER']['failed'] must be a timedelta, a number of "
            "seconds >= 0, or None to keep them, not '30d'.",
        ),
        (
            {"succeeded": -timedelta(days=1)},
            "ASYNC_JOBS['PRUNE_AFTER']['succeeded'] must be a timedelta, a number of "
            "seconds >= 0, or None to keep them, not datetime.timedelta(days=-1).",
        ),
    ],
)
def test_bad_prune_settings_are_reported(value, message):
    assert problems({"PRUNE_AFTER": value}) == [message]


def test_groups_keep_their_jobs_while_open_and_go_once_empty(flush_queue):
    schedule("shop.tasks.noop", meta={"completes": "done"})
    schedule("shop.tasks.noop", meta={"group": "done"})
    schedule("shop.tasks.noop", meta={"group": "open"})
    schedule("shop.tasks.noop", meta={"group": "open"}, run_after=timedelta(days=30))
    flush_queue()  # "done" finishes and its completion runs; "open" waits
    Job.objects.exclude(status=Job.Status.PENDING).update(
        finished=timezone.now() - timedelta(days=8)
    )

    output = prune_jobs()

    assert output.splitlines() == [
        "Deleted 2 succeeded (finished over 7d ago), 0 cancelled (finished over 7d "
        "ago), 0 failed (finished over 30d ago).",
        "Deleted 1 finished group left with no jobs.",
    ]
    assert list(Group.objects.values_list("reference", flat=True)) == ["open"]
    assert Job.objects.filter(group__reference="open").count() == 2
