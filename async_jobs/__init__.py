"""Transaction-safe background jobs stored in the project's own database."""

from typing import Any

from async_jobs.decorators import job
from async_jobs.scheduling import schedule, schedule_many

__all__ = ["Error", "Group", "Job", "deschedule", "job", "schedule", "schedule_many"]


def __getattr__(name: str) -> Any:
    # The models can only be imported once Django's apps are ready.
    if name in ("Job", "Error", "Group"):
        from async_jobs import models

        return getattr(models, name)
    if name == "deschedule":
        from async_jobs.uniqueness import deschedule

        return deschedule
    raise AttributeError(f"module 'async_jobs' has no attribute {name!r}")
