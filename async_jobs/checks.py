"""System checks: a bad ``ASYNC_JOBS`` setting stops ``manage.py`` at start-up."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register

from async_jobs.conf import check


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    return [
        Error(problem.message, hint=problem.hint or None, id=problem.id)
        for problem in check(getattr(settings, "ASYNC_JOBS", {}))
    ]
