"""procrastinate's tasks, found by its Django app's autodiscovery of ``tasks``."""

from procrastinate.contrib.django import app
from shop.models import Mark


@app.task(name="noop")
def noop() -> None:
    return None


@app.task(name="record")
def record(label: str) -> str:
    Mark.objects.create(label=label)
    return label
