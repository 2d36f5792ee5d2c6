"""System checks: a bad ``ASYNC_JOBS`` setting stops ``manage.py`` at start-up."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register

from async_jobs.conf import problems


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    return [
        Error(message, id="async_jobs.E001")
        for message in problems(getattr(settings, "ASYNC_JOBS", {}))
    ]
