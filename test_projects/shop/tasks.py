"""Real job functions the tests schedule; they write to the shop's tables."""

import asyncio
import time
from pathlib import Path

from asgiref.sync import sync_to_async
from django.db import connection

from async_jobs import Job, job
from async_jobs.execution import current_job
from shop.models import Mark, Order, Receipt


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


class NotAFunction:
    pass


def write_then_wait(label: str, flag: str, limit: float = 30) -> str:
    """Write, say so in ``flag + '.started'``, then wait while ``flag`` exists."""
    Mark.objects.create(label=label)
    Path(flag + ".started").touch()
    deadline = time.monotonic() + limit
    while Path(flag).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return label


def count_unfinished_members(reference: str) -> int:
    """A completion job: how many jobs of its group were still pending when it ran."""
    Mark.objects.create(label=f"completed {reference}")
    return Job.objects.filter(
        group__reference=reference, status=Job.Status.PENDING
    ).count()


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
