"""Real job functions the tests schedule; they write to the shop's tables."""

import asyncio
import ctypes
import os
import signal
import sys
import time

# Imported, not defined, here: a job naming "shop.tasks.system" must be refused
# although the path lies inside an allowed module.
from os import system  # noqa: F401
from pathlib import Path

from asgiref.sync import sync_to_async
from django.core.cache import cache
from django.core.mail import send_mail
from django.db import connection
from django.db.models import Count, Sum
from django.db.models.functions import Coalesce

from async_jobs import Job, job
from async_jobs.execution import current_job
from async_jobs.models import FINISHED
from shop.models import Mark, Order, Receipt
from shop.waiting import await_file

#: Longest a job waits for a test to release it; a test that forgets fails.
RELEASE_WAIT = 60


def send_receipt(order_id: int) -> int:
    return Receipt.objects.create(order=Order.objects.get(pk=order_id)).pk


def noop() -> None:
    return None


def add(a: int, b: int) -> int:
    return a + b


def echo(*args, **kwargs) -> dict:
    return {"args": list(args), "kwargs": kwargs}


def record(label: str) -> str:
    Mark.objects.create(label=label)
    return label


def write_then_fail(label: str) -> None:
    Mark.objects.create(label=label)
    raise RuntimeError(f"failed after writing {label}")


def write_then_return_datetime(label: str):
    Mark.objects.create(label=label)
    return Order._meta.get_field("id")  # not JSON: the job must fail


def write_then_sleep(label: str, seconds: float) -> str:
    Mark.objects.create(label=label)
    time.sleep(seconds)
    return label


def backend_pid() -> int | None:
    """This process's PostgreSQL backend, so a test can terminate it."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def announce(started: str) -> None:
    """Tell the test this job is running: write its backend pid to a file.

    Written aside then renamed, so the file never exists half-written.
    """
    aside = Path(f"{started}.tmp")
    aside.write_text(str(backend_pid() or ""))
    aside.rename(started)


def write_then_hold(label: str, started: str, release: str) -> str:
    """Write a Mark, announce, then wait until the test creates ``release``."""
    Mark.objects.create(label=label)
    announce(started)
    await_file(release, RELEASE_WAIT)
    return label


def write_hold_then_fail(label: str, started: str, release: str) -> None:
    """``write_then_hold``, then raise without touching the database."""
    write_then_hold(label, started, release)
    raise RuntimeError(f"failed after holding {label}")


def write_then_query(label: str, started: str, seconds: float) -> str:
    """Write a Mark, announce, then spend ``seconds`` inside a PostgreSQL query."""
    Mark.objects.create(label=label)
    announce(started)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [seconds])
    return label


def connection_settings(client: list[str], server: list[str]) -> dict:
    """What this worker's connection runs with, as libpq and the server see it."""
    parameters = connection.connection.info.get_parameters()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT name, setting, unit, source FROM pg_settings WHERE name = ANY(%s)",
            [server],
        )
        shown = {
            name: f"{setting}{unit or ''} from {source}"
            for name, setting, unit, source in cursor
        }
    return {"client": {name: parameters.get(name) for name in client}, "server": shown}


class NotAFunction:
    pass


def record_then_sleep(label: str, started_file: str, seconds: float) -> str:
    """Write a Mark, then create ``started_file`` (so a test sees the job is
    running, which its uncommitted writes can't show) and sleep."""
    Mark.objects.create(label=label)
    Path(started_file).touch()
    time.sleep(seconds)
    return label


_CYCLE: list = ["ok"]
_CYCLE.append(_CYCLE)

UNSTORABLE = {
    "nul": ["ok", {"k": "a\x00b"}],
    "surrogate": {"\ud800": 1},
    "large float": {"total": 1e23},
    "cycle": _CYCLE,
}


def write_then_return_unstorable(label: str, kind: str):
    """Return what JSON (or PostgreSQL's jsonb) would not give back unchanged,
    and so can't be an argument either."""
    Mark.objects.create(label=label)
    return UNSTORABLE[kind]


def write_then_wait(label: str, flag: str, limit: float = 30) -> str:
    """Write, say so in ``flag + '.started'``, then wait while ``flag`` exists."""
    Mark.objects.create(label=label)
    Path(flag + ".started").touch()
    deadline = time.monotonic() + limit
    while Path(flag).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return label


def count_unfinished_members(reference: str) -> int:
    """A completion job: how many jobs of its group were unfinished when it ran."""
    Mark.objects.create(label=f"completed {reference}")
    return (
        Job.objects.filter(group__reference=reference)
        .exclude(status__in=FINISHED)
        .count()
    )


@job(queue="mail", priority=5, max_attempts=2)
def notify(label: str, suffix: str = "") -> str:
    Mark.objects.create(label=label + suffix)
    return label + suffix


@job
async def async_record(label: str) -> dict:
    await asyncio.sleep(0.01)
    await Mark.objects.acreate(label=label)
    running = current_job()
    in_transaction = await sync_to_async(lambda: connection.in_atomic_block)()
    return {"job": running.pk, "in_transaction": in_transaction}


async def async_write_then_fail(label: str) -> None:
    await sync_to_async(Mark.objects.create)(label=label)
    raise RuntimeError(f"async job failed after writing {label}")


def write_then_meet(label: str, directory: str, count: int, limit: float = 30) -> str:
    """Write, then wait until ``count`` jobs met in ``directory``: they end together."""
    Mark.objects.create(label=label)
    Path(directory, label.replace("/", "_")).touch()
    deadline = time.monotonic() + limit
    while len(list(Path(directory).iterdir())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{label}: only {count - 1} job(s) met")
        time.sleep(0.001)
    return label


# The docs' examples (docs/recurring.rst, groups.rst, unique.rst, decorator.rst)
# schedule and run these.


def delete_empty_orders() -> int:
    """Delete the orders left with a zero total; a recurring chore."""
    deleted, _ = Order.objects.filter(total=0).delete()
    return deleted


def sales_report() -> dict:
    """Count the orders and add up their totals."""
    return Order.objects.aggregate(orders=Count("id"), total=Coalesce(Sum("total"), 0))


def report_receipts() -> dict:
    """A completion job: how the receipts of the group it completes went."""
    progress = current_job().completed_group.progress()
    return {"sent": progress.succeeded, "failed": progress.failed}


def refresh_order_summary(order_id: int) -> dict:
    """Cache what an order's page shows; worth running once after many edits."""
    order = Order.objects.get(pk=order_id)
    summary = {"total": order.total, "receipt": hasattr(order, "receipt")}
    cache.set(f"order-summary-{order_id}", summary)
    return summary


def send_payment_reminder(order_id: int) -> int:
    """Remind the customer that an order is still unpaid."""
    return send_mail(
        subject=f"Order {order_id} is waiting for your payment",
        message="Please pay your order.",
        from_email=None,
        recipient_list=["customer@example.com"],
    )


@job(queue="mail", priority=5, max_attempts=3)
def email_receipt(order_id: int, copy_to: str | None = None) -> int:
    """Email an order's receipt (made once), with a copy to ``copy_to``."""
    receipt, _ = Receipt.objects.get_or_create(order_id=order_id)
    return send_mail(
        subject=f"Your receipt for order {order_id}",
        message=f"Total: {receipt.order.total}",
        from_email=None,
        recipient_list=["customer@example.com", *filter(None, [copy_to])],
    )


@job(queue="mail")
async def confirm_order(order_id: int) -> int:
    """Confirm an order by email and make its receipt, from async code."""
    order = await Order.objects.aget(pk=order_id)
    await sync_to_async(send_mail)(
        subject=f"Order {order.pk} confirmed",
        message=f"Total: {order.total}",
        from_email=None,
        recipient_list=["customer@example.com"],
    )
    receipt = await Receipt.objects.acreate(order=order)
    return receipt.pk


def hook_then(label: str, outcome: str) -> str:
    """Register an on_commit hook that records ``label``, then fail or not.

    ``outcome``: "fail" raises, "discard" returns but asks for its writes to
    be rolled back (``set_rollback``), anything else returns.
    """
    from django.db import transaction

    transaction.on_commit(lambda: Mark.objects.create(label=f"hook {label}"))
    Mark.objects.create(label=label)
    if outcome == "fail":
        raise RuntimeError(f"{label} failed")
    if outcome == "discard":
        transaction.set_rollback(True)
    return label


def swallow_database_error(label: str) -> str:
    """Write, then catch a database error outside any atomic() block, and return."""
    from django.db import DatabaseError

    Mark.objects.create(label=label)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1/0")
    except DatabaseError:
        pass
    return label


def end_own_process(how: str) -> None:
    """Die the way a job can take its worker down with it."""
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "exit":
        os._exit(3)
    elif how == "segfault":
        ctypes.string_at(0)


def raise_base_exception(kind: str) -> None:
    """Raise what ``except Exception`` doesn't catch."""
    raise {
        "KeyboardInterrupt": KeyboardInterrupt,
        "CancelledError": asyncio.CancelledError,
        "GeneratorExit": GeneratorExit,
    }[kind]("raised by the job")


async def async_cancelled() -> None:
    raise asyncio.CancelledError("cancelled inside the job")


def close_connection(how: str) -> None:
    """Lose the worker's transaction from inside the job."""
    from django.db import close_old_connections

    if how == "close":
        connection.close()
    else:
        close_old_connections()


def traced(label: str) -> str:
    """Open a span of its own, as an instrumented library called by a job would."""
    from opentelemetry import trace

    with trace.get_tracer("shop").start_as_current_span("inside") as span:
        span.set_attribute("label", label)
    return label


def nested_result(depth: int) -> list:
    """Return a list nested ``depth`` levels deep: ``[[[...]]]``."""
    result: list = []
    for _ in range(depth - 1):
        result = [result]
    return result


def change_session(label: str, statement: str) -> str:
    """Write a Mark, then run ``statement`` on the worker's connection: a
    ``SET`` or ``PRAGMA`` that outlasts the job's transaction."""
    Mark.objects.create(label=label)
    with connection.cursor() as cursor:
        cursor.execute(statement)
    return label


def fork_then(label: str, how: str) -> str:
    """Write a Mark, then fork a child that, a moment later, leaves the job's
    function as ``how`` says: "return", or "exit" (``sys.exit(0)``)."""
    Mark.objects.create(label=label)
    if os.fork() == 0:
        time.sleep(0.2)
        if how == "exit":
            sys.exit(0)
    return label


def leave_signals(label: str, how: str) -> None:
    """Write a Mark, then leave the process's signals changed and fail: "alarm"
    arms ``signal.alarm(1)`` (SIGALRM ends a process by default), "ignore"
    ignores SIGTERM and SIGINT."""
    Mark.objects.create(label=label)
    if how == "alarm":
        signal.alarm(1)
    else:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise RuntimeError(f"left the signals changed ({how})")


def power_of_ten(exponent: int) -> int:
    """Return 10 to the ``exponent``: more than 4,300 digits, and JSON can't
    write it (Python's limit on converting an int to a str)."""
    return 10**exponent


def depth_of(value) -> int:
    """How many lists and dicts deep ``value`` nests; a scalar is 0."""
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


def nesting(*args, **kwargs) -> dict:
    """The depth of the arguments as received, ``args`` and ``kwargs`` each."""
    return {"args": depth_of(list(args)), "kwargs": depth_of(kwargs)}


def take_sigalrm_then_sleep(label: str, seconds: float) -> str:
    """Write, take SIGALRM for itself (a handler that ignores it, the process's
    one interval timer cleared), then sleep: a job's own use of SIGALRM."""
    import signal

    Mark.objects.create(label=label)
    signal.signal(signal.SIGALRM, lambda signum, frame: None)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.alarm(0)
    signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)  # its own alarm, ignored
    try:
        time.sleep(seconds)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)  # its own, cleared however it ends
    return label


def long_job(label: str, started: str, seconds: float) -> str:
    """A long job for the non-atomic mode: write a Mark (it commits at once),
    say where it runs in ``started`` (the worker's pid, then its PostgreSQL
    backend's), then work for ``seconds``, in small sleeps. The Mark is
    labelled with the attempt: a non-atomic job may run more than once."""
    running = current_job()
    Mark.objects.create(label=f"{label}#{running.attempts if running else 0}")
    aside = Path(f"{started}.tmp")
    aside.write_text(f"{os.getpid()} {backend_pid() or ''}")
    aside.rename(started)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    return label


@job(atomic=False)
def long_by_default(label: str) -> str:
    Mark.objects.create(label=label)
    return label


def write_dangling_receipt(order_id: int) -> None:
    """A write whose foreign key is only checked at COMMIT (Django's foreign
    keys are DEFERRABLE INITIALLY DEFERRED on PostgreSQL)."""
    Receipt.objects.create(order_id=order_id)


def raise_with_nul(label: str) -> None:
    """A failure whose message holds a NUL character (PostgreSQL's text
    columns refuse it)."""
    raise RuntimeError(f"{label}\x00byte")


class Unprintable(Exception):
    """An exception that can't be put into words: ``str()`` of it raises
    (``how``: "str", or "exit" for a ``SystemExit``), or reading its
    ``__notes__`` does ("notes"), which tracebacks do before Python 3.13."""

    def __init__(self, label: str, how: str) -> None:
        super().__init__(label)
        self.how = how

    def __str__(self) -> str:
        if self.how == "str":
            raise RuntimeError("this exception can't be printed")
        if self.how == "exit":
            raise SystemExit(3)
        return super().__str__()

    @property
    def __notes__(self) -> list[str]:
        if self.how == "notes":
            raise RuntimeError("these notes can't be read")
        raise AttributeError("__notes__")


def raise_unprintable(label: str, how: str = "str") -> None:
    Mark.objects.create(label=label)
    raise Unprintable(label, how)
