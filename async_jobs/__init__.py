"""Transaction-safe background jobs stored in the project's own database."""

from typing import Any

from async_jobs.scheduling import schedule, schedule_many

__all__ = ["Error", "Job", "schedule", "schedule_many"]


def __getattr__(name: str) -> Any:
    # The models can only be imported once Django's apps are ready.
    if name in ("Job", "Error"):
        from async_jobs import models

        return getattr(models, name)
    raise AttributeError(f"module 'async_jobs' has no attribute {name!r}")
