"""Real job functions the tests schedule; they write to the shop's tables."""

import time

# Imported, not defined, here: a job naming "shop.tasks.system" must be refused
# although the path lies inside an allowed module.
from os import system  # noqa: F401
from pathlib import Path

from django.db import connection

from shop.models import Mark, Order, Receipt

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


def write_then_wait(label: str, started: str, release: str) -> str:
    """Write a Mark, announce, then wait until the test creates ``release``."""
    Mark.objects.create(label=label)
    announce(started)
    deadline = time.monotonic() + RELEASE_WAIT
    while not Path(release).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} was not created in {RELEASE_WAIT}s")
        time.sleep(0.01)
    return label


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
