"""The allow-list: which functions a job may name, and how a name becomes one.

A job row holds a dotted path, never code. The path is checked against the
allow-list *before* anything is imported, at ``schedule()`` and again when the
job runs, so a row written by hand can't make a worker call ``os.system``.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from functools import cache
from importlib import import_module
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from async_jobs import hooks
from async_jobs.conf import jobs_settings

#: What ``__module__`` says of a function typed at a prompt or run as a script:
#: ``python -i`` and IPython give ``__main__``; ``manage.py shell`` gives None
#: at its prompt (no ``__name__`` in its namespace) and, with ``-c`` or piped
#: input, the module of the shell command itself, whose namespace it borrows.
MAIN_MODULES = frozenset(
    {None, "__main__", "__console__", "django.core.management.commands.shell"}
)


class FunctionNotAllowed(ValueError):
    """The dotted path is outside the modules jobs may run."""


def function_path(function: str | Callable[..., Any]) -> str:
    """The dotted path that names ``function``, refusing what can't be named."""
    if isinstance(function, str):
        return function
    if not callable(function):
        raise TypeError(
            f"function must be a dotted path or a callable, not "
            f"{type(function).__name__}."
        )
    if inspect.ismethod(function):
        raise ValueError(
            f"{function!r} is a bound method; schedule a module-level function instead."
        )
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not qualname:
        raise ValueError(f"{function!r} has no importable dotted path.")
    if "<lambda>" in qualname:
        raise ValueError("A lambda can't be scheduled: it has no dotted path.")
    if module in MAIN_MODULES:
        raise ValueError(
            f"{qualname} is defined in __main__ (a script or the manage.py shell "
            "prompt), which a worker can't import; define it in a module of your "
            "project, such as app/tasks.py, and import it from there."
        )
    if not module:
        raise ValueError(f"{function!r} has no importable dotted path.")
    if "<locals>" in qualname or "." in qualname:
        raise ValueError(
            f"{module}.{qualname} is not a module-level function; jobs can only "
            "name functions defined at the top level of a module."
        )
    return f"{module}.{qualname}"


def default_allowed_modules() -> tuple[str, ...]:
    """The project's own code: installed apps and the settings' package.

    Django itself and the standard library are never in it, even when listed
    among ``INSTALLED_APPS`` (``django.contrib.*``).
    """
    names = [config.name for config in apps.get_app_configs()]
    settings_module = getattr(settings, "SETTINGS_MODULE", None)
    if settings_module and "." in settings_module:
        names.append(settings_module.rpartition(".")[0])
    return tuple(
        name
        for name in dict.fromkeys(names)
        if name.partition(".")[0] not in sys.stdlib_module_names
        and name.partition(".")[0] != "django"
    )


@cache
def allowed_modules() -> tuple[str, ...]:
    configured = jobs_settings().allowed_modules
    return default_allowed_modules() if configured is None else configured


@receiver(setting_changed)
def _forget_allowed_modules(*, setting: str, **kwargs: object) -> None:
    if setting in ("ASYNC_JOBS", "INSTALLED_APPS"):
        allowed_modules.cache_clear()


def _inside(module: str, allowed: tuple[str, ...]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in allowed)


def _allowed_list(allowed: tuple[str, ...]) -> str:
    return (
        f"Allowed modules: {', '.join(allowed) or '(none)'}; widen them with "
        "ASYNC_JOBS['ALLOWED_MODULES']."
    )


def check_allowed(path: str) -> None:
    """Refuse ``path`` unless it lies inside an allowed module."""
    allowed = allowed_modules()
    if not _inside(path.rpartition(".")[0], allowed):
        raise FunctionNotAllowed(
            f"{path!r} is not in a module jobs may run. {_allowed_list(allowed)}"
        )


def check_defined_in_allowed_module(path: str, function: Callable[..., Any]) -> None:
    """Refuse a callable that an allowed module merely imported.

    ``from os import system`` in ``app/tasks.py`` makes ``app.tasks.system``
    a path inside an allowed module; what it names is still ``os.system``.
    """
    allowed = allowed_modules()
    module = getattr(function, "__module__", None)
    if not isinstance(module, str) or not _inside(module, allowed):
        raise FunctionNotAllowed(
            f"{path!r} is {function!r}, defined in module {module!r}, not in a "
            f"module jobs may run; importing it elsewhere doesn't change that. "
            f"{_allowed_list(allowed)}"
        )


def resolve(path: str) -> Callable[..., Any]:
    """Import the function a job names, after checking it is allowed.

    What a registered wrapper matches (a ``Task`` of Django's tasks framework,
    what ``@task`` leaves at the path) is returned as it is, the function it
    wraps checked in its place; the wrapper says how a worker calls it.
    """
    if not isinstance(path, str) or "." not in path:
        raise ValueError(
            f"{path!r} is not a dotted path like 'app.tasks.send_receipt'."
        )
    check_allowed(path)
    module_path, _, attribute = path.rpartition(".")
    try:
        module = import_module(module_path)
    except ImportError as exc:
        raise ImportError(f"Can't import {module_path!r} for {path!r}: {exc}") from exc
    try:
        function = getattr(module, attribute)
    except AttributeError:
        raise ImportError(
            f"Module {module_path!r} has no attribute {attribute!r} ({path!r})."
        ) from None
    wrapper = hooks.wrapper_of(function)
    if wrapper is not None:
        check_defined_in_allowed_module(path, wrapper.function(function))
        return function
    if not callable(function) or inspect.isclass(function):
        raise ValueError(f"{path!r} is not a function.")
    check_defined_in_allowed_module(path, function)
    return function
