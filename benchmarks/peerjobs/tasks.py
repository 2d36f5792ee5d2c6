"""procrastinate's tasks, found by its Django app's autodiscovery of ``tasks``."""

from procrastinate.contrib.django import app
from shop.models import Mark

from peerjobs import stamps


@app.task(name="noop")
def noop() -> None:
    return None


@app.task(name="record")
def record(label: str) -> str:
    Mark.objects.create(label=label)
    return label


@app.task(name="noop_stamped")
def noop_stamped(label: str) -> None:
    stamps.noop(label)


@app.task(name="record_stamped")
def record_stamped(label: str) -> str:
    return stamps.record(label)
