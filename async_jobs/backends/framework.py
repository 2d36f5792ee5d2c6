"""Django's tasks framework, wherever it comes from.

Django 6.0 and later ship it as ``django.tasks``. On Django 5.2 the
``django-tasks`` backport (import name ``django_tasks``) has the same API with
other exception names. This module imports whichever is there, so the rest of
``async_jobs`` uses one set of names; with neither, ``AVAILABLE`` is false,
``UNAVAILABLE`` says why, and only ``async_jobs.backends`` refuses to load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeGuard

AVAILABLE = True
UNAVAILABLE = ""

if TYPE_CHECKING:
    # mypy checks against django.tasks, which django-stubs types on every
    # Django version; the backport below has the same API under these names.
    from django.tasks import (
        Task,
        TaskContext,
        TaskResult,
        TaskResultStatus,
        task_backends,
    )
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskError
    from django.tasks.exceptions import (
        InvalidTask,
        InvalidTaskBackend,
        TaskResultDoesNotExist,
        TaskResultMismatch,
    )
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json

    SOURCE = "django.tasks"
else:
    try:
        from django.tasks import (
            Task,
            TaskContext,
            TaskResult,
            TaskResultStatus,
            task_backends,
        )
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import TaskError
        from django.tasks.exceptions import (
            InvalidTask,
            InvalidTaskBackend,
            TaskResultDoesNotExist,
            TaskResultMismatch,
        )
        from django.tasks.signals import task_enqueued, task_finished, task_started
        from django.utils.json import normalize_json

        SOURCE = "django.tasks"
    except ImportError as core_error:
        try:
            from django_tasks import (
                TaskContext,
                TaskResult,
                TaskResultStatus,
                task_backends,
            )
            from django_tasks.backends.base import BaseTaskBackend
            from django_tasks.base import Task, TaskError
            from django_tasks.exceptions import (
                InvalidTaskBackendError as InvalidTaskBackend,
            )
            from django_tasks.exceptions import InvalidTaskError as InvalidTask
            from django_tasks.exceptions import (
                TaskResultDoesNotExist,
                TaskResultMismatch,
            )
            from django_tasks.signals import task_enqueued, task_finished, task_started
            from django_tasks.utils import normalize_json

            SOURCE = "django_tasks"
        except ImportError as backport_error:
            AVAILABLE = False
            SOURCE = ""
            UNAVAILABLE = (
                "async_jobs.backends.JobsBackend needs Django's tasks framework: "
                "django.tasks (Django 6.0 or later) or, on Django 5.2, the "
                "django-tasks backport (pip install 'django-async-jobs[tasks]' and "
                "add 'django_tasks' to INSTALLED_APPS). Neither imports here "
                f"({core_error}; {backport_error})."
            )

#: The logger the framework's own signal receivers write to.
LOGGER_NAME = "django_tasks" if SOURCE == "django_tasks" else "django.tasks"

__all__ = [
    "AVAILABLE",
    "LOGGER_NAME",
    "SOURCE",
    "UNAVAILABLE",
    "BaseTaskBackend",
    "InvalidTask",
    "InvalidTaskBackend",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultMismatch",
    "TaskResultStatus",
    "is_task",
    "normalize_json",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]


def is_task(value: Any) -> TypeGuard[Task]:
    """Whether ``value`` is a ``Task`` (what the ``@task`` decorator returns)."""
    return AVAILABLE and isinstance(value, Task)
