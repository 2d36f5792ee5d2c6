"""Real job functions the tests schedule; they write to the shop's tables."""

import time
from pathlib import Path

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


def record_then_sleep(label: str, started_file: str, seconds: float) -> str:
    """Write a Mark, then create ``started_file`` (so a test sees the job is
    running, which its uncommitted writes can't show) and sleep."""
    Mark.objects.create(label=label)
    Path(started_file).touch()
    time.sleep(seconds)
    return label


UNSTORABLE = {
    "nul": ["ok", {"k": "a\x00b"}],
    "surrogate": {"\ud800": 1},
}


def write_then_return_unstorable(label: str, kind: str):
    """Return JSON that PostgreSQL's jsonb refuses (so it can't be an argument)."""
    Mark.objects.create(label=label)
    return UNSTORABLE[kind]
