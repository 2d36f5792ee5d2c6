"""Pending jobs whose function a deploy renamed or removed: what happens, and
``rename_jobs``, the supported way to move them to the new name."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from shop.models import Mark

from async_jobs import Job, schedule

pytestmark = pytest.mark.django_db(transaction=True)


def left_behind(name: str = "shop.tasks.old_record", **fields) -> Job:
    """A job scheduled before the deploy that renamed its function."""
    return Job.objects.create(name=name, args=["kept"], max_attempts=1, **fields)


def rename_jobs(*args: str) -> str:
    out = StringIO()
    call_command("rename_jobs", *args, stdout=out)
    return out.getvalue()


def test_today_such_a_job_fails_when_it_runs(flush_queue):
    job = left_behind()

    flush_queue()

    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "Module 'shop.tasks' has no attribute 'old_record'" in (
        job.errors.get().exception
    )


def test_check_lists_what_would_fail_and_exits_1(run_manage):
    left_behind()
    left_behind()
    left_behind("gone.module.task")
    schedule("shop.tasks.record", args=["fine"])

    code, out, err = run_manage("rename_jobs")

    assert code == 1, err
    assert "shop.tasks.old_record: 2 pending job(s); Module 'shop.tasks' has no" in out
    assert "gone.module.task: 1 pending job(s); 'gone.module.task' is not in" in out
    assert "shop.tasks.record" not in out
    assert "2 function(s) of pending jobs don't resolve" in err
    assert "Traceback" not in err


def test_check_passes_when_everything_resolves():
    schedule("shop.tasks.record", args=["fine"])

    assert rename_jobs() == "Every pending job's function resolves.\n"


def test_rename_moves_pending_jobs_only_and_they_run(flush_queue):
    pending = left_behind()
    finished = left_behind(status=Job.Status.FAILED)

    assert rename_jobs("shop.tasks.old_record", "shop.tasks.record") == (
        "Renamed 1 pending job: shop.tasks.old_record -> shop.tasks.record.\n"
    )
    flush_queue()

    pending.refresh_from_db()
    finished.refresh_from_db()
    assert (pending.name, pending.status) == ("shop.tasks.record", "succeeded")
    assert finished.name == "shop.tasks.old_record"
    assert list(Mark.objects.values_list("label", flat=True)) == ["kept"]


def test_rename_refuses_a_new_name_that_does_not_resolve():
    job = left_behind()

    with pytest.raises(CommandError, match="has no attribute 'recrod'"):
        rename_jobs("shop.tasks.old_record", "shop.tasks.recrod")
    with pytest.raises(CommandError, match="not in a module jobs may run"):
        rename_jobs("shop.tasks.old_record", "os.system")

    job.refresh_from_db()
    assert job.name == "shop.tasks.old_record"


def test_rename_refuses_when_a_jobs_arguments_do_not_fit():
    left_behind()
    misfit = left_behind()
    Job.objects.filter(pk=misfit.pk).update(args=["a", "b"])

    with pytest.raises(CommandError) as raised:
        rename_jobs("shop.tasks.old_record", "shop.tasks.record")

    assert f"job {misfit.pk}: shop.tasks.record(" in str(raised.value)
    assert "too many positional arguments" in str(raised.value)
    assert set(Job.objects.values_list("name", flat=True)) == {"shop.tasks.old_record"}


@pytest.mark.parametrize(
    ("args", "kwargs", "problem"),
    [
        (["kept"], ["label"], "must be a mapping"),
        (["kept"], 5, "must be a mapping"),
        (5, {}, "must be an iterable"),
    ],
)
def test_rename_refuses_a_row_whose_arguments_no_call_could_be(args, kwargs, problem):
    # A row written by hand, not by schedule(): its arguments are checked as
    # they are, not as the shape of a call.
    misfit = left_behind()
    Job.objects.filter(pk=misfit.pk).update(args=args, kwargs=kwargs)

    with pytest.raises(CommandError) as raised:
        rename_jobs("shop.tasks.old_record", "shop.tasks.record")

    assert f"job {misfit.pk}: shop.tasks.record(" in str(raised.value)
    assert problem in str(raised.value)
    assert Job.objects.get().name == "shop.tasks.old_record"
