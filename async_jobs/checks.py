"""System checks: a bad ``ASYNC_JOBS`` setting stops ``manage.py`` at start-up.

Besides each key's own rule (``conf.py``), the entries of
``ALLOWED_MODULES`` must import and hold some of the project's code: a typo
(``["shopp"]``) is a valid list of names, and every due job would fail at the
next run.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from async_jobs.allowlist import default_allowed_modules
from async_jobs.conf import check, problems


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    return [
        Error(problem.message, hint=problem.hint or None, id=problem.id)
        for problem in check(getattr(settings, "ASYNC_JOBS", {}))
    ]


#: An entry that can't be imported: no job it allows could ever run.
NOT_IMPORTABLE = "async_jobs.E020"
#: An entry outside the project's own code: allowed, but rarely meant.
NOT_PROJECT_CODE = "async_jobs.W001"


def _importable(name: str) -> bool:
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):  # a parent that is missing, or no package
        return False


def _overlaps(name: str, package: str) -> bool:
    """Whether module ``name`` is inside ``package``, or contains it."""
    return (
        name == package
        or name.startswith(package + ".")
        or package.startswith(name + ".")
    )


@register(Tags.compatibility)
def check_allowed_modules(app_configs: Any = None, **kwargs: Any) -> list:
    raw = getattr(settings, "ASYNC_JOBS", {})
    if problems(raw) or raw.get("ALLOWED_MODULES") is None:
        return []  # check_settings reports a bad value; None is the default
    project = default_allowed_modules()
    found: list[CheckMessage] = []
    for name in raw["ALLOWED_MODULES"]:
        if not _importable(name):
            found.append(
                Error(
                    f"ASYNC_JOBS['ALLOWED_MODULES'] lists {name!r}, which can't "
                    "be imported: every job it was meant to allow would fail.",
                    hint=f"Check the spelling; the project's packages are "
                    f"{', '.join(project) or '(none)'}.",
                    id=NOT_IMPORTABLE,
                )
            )
        elif not any(_overlaps(name, package) for package in project):
            found.append(
                Warning(
                    f"ASYNC_JOBS['ALLOWED_MODULES'] lists {name!r}, which holds "
                    "none of the project's code (no installed app's package, nor "
                    "the settings' package): jobs may run any function in it.",
                    hint=f"The project's packages are {', '.join(project)}. If "
                    f"you mean to allow {name!r}, silence this with "
                    f"SILENCED_SYSTEM_CHECKS = [{NOT_PROJECT_CODE!r}].",
                    id=NOT_PROJECT_CODE,
                )
            )
    return found
