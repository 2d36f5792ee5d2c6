"""``@job``: give a function a ``schedule()`` shortcut with its own defaults.

Sugar over :func:`async_jobs.schedule`, nothing more: the function is
returned unchanged (so calling it still runs it here and now, and a worker
resolves it by its dotted path as usual), with a ``schedule`` attribute added.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, cast, overload

from async_jobs.allowlist import function_path
from async_jobs.conf import jobs_settings
from async_jobs.scheduling import schedule
from async_jobs.validation import validate_meta

if TYPE_CHECKING:
    from async_jobs.models import Job

P = ParamSpec("P")
R = TypeVar("R", covariant=True)


class ScheduleCall(Protocol):
    """``function.schedule``: ``schedule()`` of the function, with its ``meta``."""

    meta: dict[str, Any]

    def __call__(
        self, *args: Any, run_after: datetime | timedelta | None = None, **kwargs: Any
    ) -> Job: ...


class JobFunction(Protocol[P, R]):
    """A function ``@job`` decorated: called as before, with ``schedule`` added."""

    schedule: ScheduleCall

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...


@overload
def job(function: Callable[P, R], /) -> JobFunction[P, R]: ...


@overload
def job(**meta: Any) -> Callable[[Callable[P, R]], JobFunction[P, R]]: ...


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

    def decorate(function: Callable[P, R]) -> JobFunction[P, R]:
        function_path(function)  # a nested function or lambda fails here, early

        def schedule_call(
            *args: Any, run_after: datetime | timedelta | None = None, **kwargs: Any
        ) -> Job:
            return schedule(
                function, args=args, kwargs=kwargs, run_after=run_after, meta=meta
            )

        schedule_call.__doc__ = f"Schedule {function.__qualname__}() in a worker."
        # Attributes on function objects: the casts give them their types.
        cast(ScheduleCall, schedule_call).meta = meta
        decorated = cast("JobFunction[P, R]", function)
        decorated.schedule = cast(ScheduleCall, schedule_call)
        return decorated

    return decorate if function is None else decorate(function)
