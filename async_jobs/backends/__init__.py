"""Django's tasks framework, with async_jobs doing the work.

    TASKS = {"default": {"BACKEND": "async_jobs.backends.JobsBackend"}}

``backend.py`` is the backend; ``framework.py`` imports the framework from
Django (6.0 and later) or from the django-tasks backport. Without either, this
package imports, and only asking for the backend says what is missing.
"""

from typing import Any

from django.core.exceptions import ImproperlyConfigured

from async_jobs.backends.framework import AVAILABLE, UNAVAILABLE

if AVAILABLE:
    from async_jobs.backends.backend import JobsBackend

    __all__ = ["JobsBackend"]
else:

    def __getattr__(name: str) -> Any:
        if name == "JobsBackend":
            raise ImproperlyConfigured(UNAVAILABLE)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
