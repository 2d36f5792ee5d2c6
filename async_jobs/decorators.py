"""``@job``: give a function a ``schedule()`` shortcut with its own defaults.

Sugar over :func:`async_jobs.schedule`, nothing more: the function is
returned unchanged (so calling it still runs it here and now, and a worker
resolves it by its dotted path as usual), with a ``schedule`` attribute added.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

from async_jobs.allowlist import function_path
from async_jobs.conf import jobs_settings
from async_jobs.scheduling import schedule
from async_jobs.validation import validate_meta

if TYPE_CHECKING:
    from async_jobs.models import Job

F = TypeVar("F", bound=Callable[..., Any])


@overload
def job(function: F, /) -> F: ...


@overload
def job(**meta: Any) -> Callable[[F], F]: ...


def job(function: Callable[..., Any] | None = None, /, **meta: Any) -> Any:
    """Add ``function.schedule(*args, run_after=None, **kwargs) -> Job``.

    ``meta`` (``queue``, ``priority``, ``max_attempts``, ...) is checked now and
    used by every ``function.schedule()`` call; ``schedule(function)`` called
    directly does not use it. Works bare (``@job``) or with options.
    """
    if function is not None and not callable(function):
        raise TypeError(
            f"@job got {function!r}; pass options by name: @job(queue='mail')."
        )
    validate_meta(meta, jobs_settings())

    def decorate(function: F) -> F:
        function_path(function)  # a nested function or lambda fails here, early

        def schedule_call(
            *args: Any, run_after: datetime | timedelta | None = None, **kwargs: Any
        ) -> Job:
            return schedule(
                function, args=args, kwargs=kwargs, run_after=run_after, meta=meta
            )

        schedule_call.__doc__ = f"Schedule {function.__qualname__}() in a worker."
        schedule_call.meta = meta
        function.schedule = schedule_call
        return function

    return decorate if function is None else decorate(function)
