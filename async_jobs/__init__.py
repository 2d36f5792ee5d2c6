"""Transaction-safe background jobs stored in the project's own database."""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from async_jobs.decorators import job
    from async_jobs.models import Error, Group, Job
    from async_jobs.scheduling import schedule, schedule_many
    from async_jobs.uniqueness import deschedule

__all__ = ["Error", "Group", "Job", "deschedule", "job", "schedule", "schedule_many"]

#: Where each public name lives. Imported on first use: Django imports this
#: package to find the app before any model can be imported.
_EXPORTS = {
    "Error": "async_jobs.models",
    "Group": "async_jobs.models",
    "Job": "async_jobs.models",
    "deschedule": "async_jobs.uniqueness",
    "job": "async_jobs.decorators",
    "schedule": "async_jobs.scheduling",
    "schedule_many": "async_jobs.scheduling",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'async_jobs' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
