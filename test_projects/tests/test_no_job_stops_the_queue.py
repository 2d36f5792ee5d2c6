"""No job can stop the queue: whatever a job does, its attempt is recorded and
the jobs behind it run. Real ``flush_queue`` processes against the test database."""

import signal
import time
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from shop.models import Mark, Receipt

from async_jobs import Error, Job, schedule

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]


def five_good_jobs() -> list[Job]:
    return [schedule("shop.tasks.record", args=[f"good-{n}"]) for n in range(5)]


def first_in_line(function: str, args: list, max_attempts: int = 2) -> Job:
    return schedule(
        function, args=args, meta={"priority": 100, "max_attempts": max_attempts}
    )


def run_until_failed(run_manage, job: Job, *args: str) -> list[tuple[str, str]]:
    """Run ``flush_queue`` until ``job`` has failed (at most 4 runs), making its
    retry due at once; each run exits 0. Returns each run's (out, err)."""
    runs = []
    for _ in range(4):
        code, out, err = run_manage("flush_queue", *args)
        runs.append((out, err))
        assert code == 0, err
        job.refresh_from_db()
        if job.status == Job.Status.FAILED:
            break
        # The retry waits for its backoff: make it due for the next run.
        Job.objects.filter(pk=job.pk).update(run_after=job.created)
    return runs


@pytest.mark.parametrize(
    ("how", "death"),
    [
        ("sigkill", "killed by signal 9 (SIGKILL)"),
        ("exit", "exited with code 3"),
        ("segfault", "killed by signal 11 (SIGSEGV)"),
    ],
)
def test_a_job_that_kills_its_worker_is_charged_each_attempt(run_manage, how, death):
    killer = first_in_line("shop.tasks.end_own_process", [how])
    good = five_good_jobs()

    runs = run_until_failed(run_manage, killer)

    assert killer.status == Job.Status.FAILED
    assert killer.attempts == 2
    errors = list(killer.errors.values_list("attempt", "exception"))
    assert [attempt for attempt, _ in errors] == [1, 2]
    for attempt, exception in errors:
        assert exception.startswith("async_jobs.execution.WorkerDied: the worker ")
        assert f"{death} while running attempt {attempt} of 2" in exception
    assert len(killer.attempt_log) == 2
    for job in good:
        job.refresh_from_db()
        assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)
    # The first run went on after the death: it ran the five good jobs too.
    assert "Ran 6 jobs" in runs[0][0], runs[0]


@pytest.mark.parametrize(
    "kind", ["KeyboardInterrupt", "CancelledError", "GeneratorExit"]
)
def test_a_job_raising_a_base_exception_is_recorded(run_manage, kind):
    raiser = first_in_line("shop.tasks.raise_base_exception", [kind])
    good = five_good_jobs()

    code, out, err = run_manage("flush_queue")

    assert code == 0, err
    assert "Ran 6 jobs" in out
    raiser.refresh_from_db()
    assert (raiser.status, raiser.attempts) == (Job.Status.PENDING, 1)
    [error] = raiser.errors.all()
    assert kind in error.exception
    for job in good:
        job.refresh_from_db()
        assert job.status == Job.Status.SUCCEEDED


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("str", "<Unprintable.__str__() raised>"),
        ("exit", "<Unprintable.__str__() raised>"),  # a SystemExit
        ("notes", "u"),  # read by Python's tracebacks before 3.13
    ],
)
@pytest.mark.parametrize("run", ["flush_queue", "call_command"])
def test_a_job_raising_an_exception_that_cant_be_printed_is_recorded(
    run_manage, run, how, says
):
    # Putting the exception into words raises: the worker's own record of the
    # failure raised with it, the job stayed pending, and every run met it
    # again (flush_queue's child died, and was charged with exiting, not the error).
    unprintable = first_in_line(
        "shop.tasks.raise_unprintable", ["u", how], max_attempts=1
    )
    good = five_good_jobs()

    if run == "flush_queue":
        code, out, err = run_manage("flush_queue", "-v", "2")
        assert code == 0, err
    else:
        out, err = StringIO(), StringIO()
        call_command("flush_queue", verbosity=2, stdout=out, stderr=err)
        out, err = out.getvalue(), err.getvalue()

    assert "Ran 6 jobs" in out, (out, err)
    assert f"s): Unprintable: {says}" in out, out
    unprintable.refresh_from_db()
    assert (unprintable.status, unprintable.attempts) == (Job.Status.FAILED, 1)
    [error] = unprintable.errors.all()
    assert error.exception == f"shop.tasks.Unprintable: {says}"
    assert "raise Unprintable(label, how)" in error.traceback
    assert not Mark.objects.filter(label="u").exists()
    for job in good:
        job.refresh_from_db()
        assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)


@pytest.mark.parametrize(
    ("written", "status", "told"),
    [
        # attempt_log, the worker's own history of the row, not a list: the
        # worker raised before the attempt began, and every run stopped there.
        ("attempt_log = '5'", Job.Status.SUCCEEDED, None),
        # running with no lease: no worker holds it, and none rescued it.
        (
            "status = 'running', attempts = 1",
            Job.Status.FAILED,
            "async_jobs.execution.WorkerLost: worker lost: attempt 1 of 1 was "
            "running with no lease, so no worker held it",
        ),
    ],
)
def test_a_row_written_by_hand_cant_stop_the_queue(run_manage, written, status, told):
    hand = first_in_line("shop.tasks.record", ["hand"], max_attempts=1)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {Job._meta.db_table} SET {written} WHERE id = %s", [hand.pk]
        )
    good = five_good_jobs()

    code, out, err = run_manage("flush_queue")

    assert code == 0, err
    hand.refresh_from_db()
    assert hand.status == status, (out, err)
    assert list(hand.errors.values_list("exception", flat=True)) == (
        [told] if told else []
    )
    if status == Job.Status.SUCCEEDED:
        assert hand.attempt_log[0] == 5  # kept, the attempt after it
        assert hand.attempt_log[1]["worker"]
    for job in good:
        job.refresh_from_db()
        assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)


def test_an_async_job_cancelled_is_recorded(run_manage):
    cancelled = first_in_line("shop.tasks.async_cancelled", [], max_attempts=1)
    good = five_good_jobs()

    code, _out, err = run_manage("flush_queue")

    assert code == 0, err
    cancelled.refresh_from_db()
    assert cancelled.status == Job.Status.FAILED
    [error] = cancelled.errors.all()
    assert "CancelledError" in error.exception
    assert all(Job.objects.get(pk=job.pk).status == "succeeded" for job in good)


@pytest.mark.parametrize("how", ["close", "close_old_connections"])
def test_a_job_that_closes_the_connection_is_charged(run_manage, how):
    closer = first_in_line("shop.tasks.close_connection", [how])
    good = five_good_jobs()

    code, out, err = run_manage("flush_queue")

    assert code == 0, err
    assert "Ran 6 jobs" in out
    closer.refresh_from_db()
    assert (closer.status, closer.attempts) == (Job.Status.PENDING, 1)
    [error] = closer.errors.all()
    assert "WorkerDied: the job's transaction on database 'default' was lost" in (
        error.exception
    )
    for job in good:
        job.refresh_from_db()
        assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)


def test_a_job_that_closes_the_connection_ends_failed(run_manage):
    closer = first_in_line("shop.tasks.close_connection", ["close"], max_attempts=1)

    code, _out, err = run_manage("flush_queue")

    assert code == 0, err
    closer.refresh_from_db()
    assert (closer.status, closer.attempts) == (Job.Status.FAILED, 1)


@pytest.mark.parametrize("batch", ["1", "3"])
def test_a_job_whose_writes_fail_at_the_commit_is_charged(run_manage, batch):
    # Django's foreign keys are checked at the commit (DEFERRABLE INITIALLY
    # DEFERRED on PostgreSQL, deferred on SQLite): the job returns, then the
    # commit fails. It used to roll back uncounted and be claimed again for
    # ever, ahead of every other job.
    dangling = first_in_line("shop.tasks.write_dangling_receipt", [999_999])
    good = five_good_jobs()

    runs = run_until_failed(run_manage, dangling, "--batch", batch)

    assert (dangling.status, dangling.attempts) == (Job.Status.FAILED, 2), runs
    errors = list(dangling.errors.values_list("attempt", "exception"))
    assert [attempt for attempt, _ in errors] == [1, 2]
    for _attempt, exception in errors:
        assert exception.startswith("django.db.utils.IntegrityError: "), exception
        assert "foreign key" in exception.lower(), exception
    assert not Receipt.objects.exists()
    for job in good:
        job.refresh_from_db()
        assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)
    assert "Ran 6 jobs" in runs[0][0], runs[0]
    if batch != "1":
        assert "running them one at a time" in runs[0][1]


@pytest.fixture
def refused_at_commit(on_postgres):
    """A deferred constraint trigger that refuses, at the commit, a ``Mark``
    labelled "refused" with a PL/pgSQL exception (psycopg raises a
    ProgrammingError, not an IntegrityError), or "refused:SQLSTATE" with that
    SQLSTATE, as a project's own deferred checks may; "refused-once:SQLSTATE"
    only the first time (a sequence counts: a rollback doesn't undo it).
    "cut" terminates its own connection at the commit, as a server restart
    would; "cut-once" only the first time."""
    if not on_postgres:
        pytest.skip("deferred constraint triggers are PostgreSQL's")
    with connection.cursor() as cursor:
        cursor.execute(
            """
            CREATE SEQUENCE shop_refusals;
            CREATE FUNCTION shop_refuse_mark() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.label = 'cut'
                   OR (NEW.label = 'cut-once' AND nextval('shop_refusals') = 1) THEN
                    PERFORM pg_terminate_backend(pg_backend_pid());
                END IF;
                IF NEW.label LIKE 'refused:%' OR NEW.label = 'refused'
                   OR (NEW.label LIKE 'refused-once:%'
                       AND nextval('shop_refusals') = 1) THEN
                    RAISE EXCEPTION USING
                        MESSAGE = format('mark %s refused at the commit', NEW.label),
                        ERRCODE = coalesce(
                            nullif(split_part(NEW.label, ':', 2), ''), 'P0001'
                        );
                END IF;
                RETURN NULL;
            END $$;
            CREATE CONSTRAINT TRIGGER shop_refuse_mark AFTER INSERT ON shop_mark
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
                EXECUTE FUNCTION shop_refuse_mark();
            """
        )
    yield
    with connection.cursor() as cursor:
        cursor.execute(
            "DROP TRIGGER shop_refuse_mark ON shop_mark; "
            "DROP FUNCTION shop_refuse_mark(); DROP SEQUENCE shop_refusals;"
        )


@pytest.mark.parametrize("batch", ["1", "3"])
@pytest.mark.parametrize(
    ("label", "raised", "logged"),
    [
        # Not only a foreign key: whatever the database refuses at the commit,
        # short of an OperationalError, is charged to the job that wrote it.
        ("refused", "ProgrammingError", "refused its transaction: "),
        # A commit the database loses every time, for a reason that looks like
        # its own trouble, would hold the queue for ever: once it has lost the
        # job's transaction three times in a row, the attempt is charged.
        ("refused:40001", "OperationalError", "refused its transaction 3 times"),
        # The same for a connection cut at every commit.
        ("cut", "OperationalError", "refused its transaction 3 times"),
    ],
)
def test_any_refusal_at_the_commit_is_charged(
    run_manage, refused_at_commit, batch, label, raised, logged
):
    refused = first_in_line("shop.tasks.record", [label])
    good = five_good_jobs()

    runs = run_until_failed(run_manage, refused, "--batch", batch)

    assert (refused.status, refused.attempts) == (Job.Status.FAILED, 2), runs
    errors = list(refused.errors.values_list("exception", flat=True))
    assert len(errors) == 2
    for exception in errors:
        assert exception.startswith(f"django.db.utils.{raised}: "), exception
        assert (
            "terminating connection due to administrator command"
            if label == "cut"
            else f"mark {label} refused at the commit"
        ) in exception, exception
    for _out, err in runs:
        assert logged in err, err
    assert list(Mark.objects.order_by("label").values_list("label", flat=True)) == [
        f"good-{n}" for n in range(5)
    ]
    for job in good:
        job.refresh_from_db()
        assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)
    assert "Ran 6 jobs" in runs[0][0], runs[0]


def test_a_failure_whose_message_holds_a_nul_is_recorded(run_manage):
    # PostgreSQL's text columns refuse NUL: the Error row couldn't be written,
    # so the attempt was never recorded and the job stayed first in line.
    nul = first_in_line("shop.tasks.raise_with_nul", ["bad"], max_attempts=1)
    good = five_good_jobs()

    code, out, err = run_manage("flush_queue")

    assert code == 0, err
    nul.refresh_from_db()
    assert (nul.status, nul.attempts) == (Job.Status.FAILED, 1)
    [error] = nul.errors.all()
    assert error.exception == "builtins.RuntimeError: bad\\x00byte"
    assert "bad\\x00byte" in error.traceback
    for job in good:
        job.refresh_from_db()
        assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)
    assert "Ran 6 jobs" in out, out


def test_an_operational_error_of_the_jobs_doing_is_charged(
    run_manage, refused_at_commit
):
    # A statement timeout in the job's deferred check would come back every
    # time: an OperationalError, but the job's, not the database's trouble.
    refused = first_in_line("shop.tasks.record", ["refused:57014"])
    good = five_good_jobs()

    runs = run_until_failed(run_manage, refused)

    assert (refused.status, refused.attempts) == (Job.Status.FAILED, 2), runs
    for exception in refused.errors.values_list("exception", flat=True):
        assert exception.startswith("django.db.utils.OperationalError: "), exception
    for job in good:
        job.refresh_from_db()
        assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)


@pytest.mark.parametrize("batch", ["1", "3"])
@pytest.mark.parametrize("label", ["refused-once:40001", "cut-once"])
def test_the_databases_trouble_at_the_commit_is_not_charged(
    run_manage, refused_at_commit, batch, label
):
    # A serialization failure, or the connection cut at the commit, is the
    # database's trouble: the job runs again at once, its attempt uncounted,
    # and commits; in a batch, no job is charged for it (the last one was).
    once = first_in_line("shop.tasks.record", [label])
    good = five_good_jobs()

    code, out, err = run_manage("flush_queue", "--batch", batch)

    assert code == 0, err
    assert "the database lost the transaction" in err, err
    once.refresh_from_db()
    assert (once.status, once.attempts) == (Job.Status.SUCCEEDED, 1)
    assert not once.errors.exists()
    assert len(once.attempt_log) == 1
    for job in good:
        job.refresh_from_db()
        assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)
    assert Mark.objects.count() == 6
    assert "Ran 6 jobs" in out, out


def test_a_looping_worker_charges_the_databases_trouble_that_comes_back(
    start_manage, refused_at_commit
):
    # flush_queue --loop used to pause and claim the same job for ever.
    refused = first_in_line("shop.tasks.record", ["refused:40001"], max_attempts=1)
    good = five_good_jobs()
    worker = start_manage("flush_queue", "--loop", "--sleep", "0.1")

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not Job.objects.filter(status=Job.Status.PENDING).exists():
            break
        time.sleep(0.1)
    worker.send_signal(signal.SIGTERM)
    _out, err = worker.communicate(timeout=30)

    refused.refresh_from_db()
    assert (refused.status, refused.attempts) == (Job.Status.FAILED, 1), err
    for job in good:
        job.refresh_from_db()
        assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1), err


def test_attempts_written_by_hand_at_the_columns_limit_cant_stop_the_queue(
    run_manage,
):
    # Counting the next attempt overflowed the column: every run exited 1.
    hand = first_in_line("shop.tasks.record", ["hand"], max_attempts=1)
    Job.objects.filter(pk=hand.pk).update(attempts=2**31 - 1, max_attempts=1_000_000)
    good = five_good_jobs()

    code, out, err = run_manage("flush_queue")

    assert code == 0, err
    assert "Ran 6 jobs" in out, (out, err)
    for job in [hand, *good]:
        job.refresh_from_db()
        assert job.status == Job.Status.SUCCEEDED
    hand.refresh_from_db()
    assert hand.attempts == 2**31 - 1


#: Values Python can't read, written by hand: (SQL, what reading it raises).
UNREADABLE = {
    "args": (f"args = '[1{'0' * 5000}]'", "ValueError: Exceeds the limit"),
    "result": (f"result = '1{'0' * 5000}'", "ValueError: Exceeds the limit"),
    "postgresql attempt_log": (
        f"attempt_log = '{'[' * 3000}{']' * 3000}'",
        "RecursionError: ",
    ),
    "postgresql run_after": (
        "run_after = '-infinity'",
        "DataError: timestamp too small",
    ),
    "postgresql created": ("created = 'infinity'", "DataError: timestamp too large"),
    "postgresql lease": (
        "status = 'running', attempts = 1, lease_expires = '-infinity'",
        "DataError: timestamp too small",
    ),
    "sqlite run_after": ("run_after = '0000-00-00 00:00:00'", "ValueError: "),
    "sqlite created": ("created = '0000-00-00 00:00:00'", "ValueError: "),
    "sqlite lease": (
        "status = 'running', attempts = 1, lease_expires = '0000-00-00 00:00:00'",
        "ValueError: ",
    ),
}


@pytest.mark.parametrize("batch", ["1", "3"])
@pytest.mark.parametrize("value", sorted(UNREADABLE))
def test_a_row_that_cant_be_read_fails_unread(run_manage, on_postgres, value, batch):
    vendor, _, _column = value.rpartition(" ")
    if vendor and vendor != connection.vendor:
        pytest.skip(f"a value only {vendor} holds")
    written, raised = UNREADABLE[value]
    hand = first_in_line("shop.tasks.record", ["hand"], max_attempts=3)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {Job._meta.db_table} SET {written} WHERE id = %s", [hand.pk]
        )
    good = five_good_jobs()

    errs = []
    for _run in range(2):  # the second meets it failed, and passes it by
        code, _out, err = run_manage("flush_queue", "--batch", batch)
        assert code == 0, err
        errs.append(err)
    assert f"Job {hand.pk}'s row can't be read ({raised}" in errs[0]
    assert "can't be read" not in errs[1]

    assert Job.objects.filter(pk=hand.pk, status=Job.Status.FAILED).exists()
    [error] = Error.objects.filter(job_id=hand.pk).values_list("exception", flat=True)
    assert error.startswith(
        f"async_jobs.claiming.UnreadableRow: Job {hand.pk}'s row can't be read ({raised}"
    )
    assert not Mark.objects.filter(label="hand").exists()
    for job in good:
        job.refresh_from_db()
        assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "non-atomic"])
@pytest.mark.parametrize(
    ("vendor", "statement"),
    [
        ("postgresql", "SET default_transaction_read_only = on"),
        # psycopg reads timestamps in ISO only: the claim raised
        # NotImplementedError, and the worker's process died.
        ("postgresql", "SET DateStyle = 'SQL, DMY'"),
        ("sqlite", "PRAGMA query_only = ON"),
    ],
)
def test_a_job_that_changes_its_session_cant_stop_the_run(
    run_manage, vendor, statement, atomic
):
    # The claim after it failed on the session it left, and the run exited 1;
    # a non-atomic job's own record failed so, and it was left running. SQLite,
    # atomic: its own record failed, uncharged then charged; the charge failed
    # on the session it left.
    if vendor != connection.vendor:
        pytest.skip(f"a {vendor} setting")
    changer = schedule(
        "shop.tasks.change_session",
        args=["changer", statement],
        meta={"priority": 100, "atomic": atomic},
    )
    good = five_good_jobs()

    code, out, err = run_manage("flush_queue")

    assert code == 0, err
    changer.refresh_from_db()
    if vendor == "sqlite" and atomic:
        # Its writes take effect at once: its own transaction is refused.
        assert (changer.status, changer.attempts) == (Job.Status.PENDING, 1)
        [error] = changer.errors.values_list("exception", flat=True)
        assert error == (
            "django.db.utils.OperationalError: attempt to write a readonly database"
        )
    else:
        assert (changer.status, changer.attempts) == (Job.Status.SUCCEEDED, 1)
        if atomic:
            assert "Claiming again on a new connection." in err, (out, err)
        else:
            assert "Recording it on a new one." in err, (out, err)
    for job in good:
        job.refresh_from_db()
        assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)


@pytest.mark.parametrize("how", ["return", "exit"])
def test_a_child_the_job_forks_ends_with_the_jobs_function(run_manage, how):
    # It went on as a second worker, on its parent's connection: the run hung.
    forker = first_in_line("shop.tasks.fork_then", ["forker", how])
    good = five_good_jobs()

    code, out, err = run_manage("flush_queue", timeout=60)

    assert code == 0, err
    assert "Ran 6 jobs" in out, (out, err)
    for job in [forker, *good]:
        job.refresh_from_db()
        assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)
    labels = sorted(Mark.objects.values_list("label", flat=True))
    assert labels == sorted(["forker", *(job.args[0] for job in good)])


@pytest.mark.parametrize("batch", ["1", "2"])
def test_an_alarm_a_job_leaves_armed_cant_end_the_next_job(run_manage, batch):
    # The alarm went off during the next job and ended the worker's process:
    # that job, innocent, was charged.
    first_in_line("shop.tasks.leave_signals", ["alarm", "alarm"], max_attempts=1)
    sleeper = schedule(
        "shop.tasks.write_then_sleep", args=["sleeper", 1.5], meta={"priority": 50}
    )

    code, out, err = run_manage("flush_queue", "--batch", batch)

    assert code == 0, err
    assert out.strip().endswith("1 succeeded, 0 to retry, 1 failed."), (out, err)
    sleeper.refresh_from_db()
    assert (sleeper.status, sleeper.attempts) == (Job.Status.SUCCEEDED, 1)
    assert not sleeper.errors.exists()


def test_a_job_ignoring_sigterm_cant_keep_the_worker_from_stopping(start_manage):
    # The worker's process went on ignoring the SIGTERM its parent passed on.
    worker = start_manage("flush_queue", "--loop", "--sleep", "0.2")
    first_in_line("shop.tasks.leave_signals", ["ignore", "ignore"], max_attempts=1)
    # Once the job after it has run, the worker has had its turn between them.
    after = schedule("shop.tasks.record", args=["after"])
    deadline = time.monotonic() + 20
    while Job.objects.get(pk=after.pk).status != Job.Status.SUCCEEDED:
        assert time.monotonic() < deadline, "the jobs didn't run"
        time.sleep(0.05)

    worker.send_signal(signal.SIGTERM)
    _out, err = worker.communicate(timeout=20)
    code = worker.returncode

    assert code == 0, err
    assert "SIGTERM received: stopping" in err
