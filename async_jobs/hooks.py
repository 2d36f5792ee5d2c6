"""Where the upper layers plug into the core, so that no module imports upward.

The models and the run path call the functions here; ``AsyncJobsConfig.ready()``
registers what answers them: the scheduling features (groups, series) when
jobs reach a final status, the run path for ``Job.execute()``, and the
django.tasks integration for a job that names a ``Task`` rather than a plain
function. A new feature plugs in the same way (docs/architecture.rst).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# Jobs are typed ``Any`` here: this module sits below the models.

#: Called, in order, in the transaction that gave jobs a final status.
_settled: list[Callable[[Sequence[Any], str], None]] = []
_executor: list[Callable[[Any], Any]] = []


@dataclass(frozen=True)
class Wrapper:
    """A kind of object a job's path may name besides a plain function.

    ``function(obj)`` is the plain function inside (what the allow-list and
    the signature check judge), ``runner(job, obj)`` the callable a worker
    calls with the job's arguments, ``leading_arguments(obj)`` how many
    arguments the runner passes the function before them (a context, say).
    """

    matches: Callable[[object], bool]
    function: Callable[[Any], Callable[..., Any]]
    runner: Callable[[Any, Any], Callable[..., Any]]
    leading_arguments: Callable[[Any], int] = lambda obj: 0


_wrappers: list[Wrapper] = []


def on_settled(hook: Callable[[Sequence[Any], str], None]) -> None:
    """Call ``hook(jobs, using)`` whenever jobs reach a final status."""
    if hook not in _settled:
        _settled.append(hook)


def settled(jobs: Sequence[Any], using: str) -> None:
    """Jobs reached a final status (succeeded, failed, cancelled): tell the features.

    Runs in the transaction that wrote those statuses, so what the features
    do commits with them or not at all.
    """
    if jobs:
        for hook in _settled:
            hook(jobs, using)


def set_executor(executor: Callable[[Any], Any]) -> None:
    """What ``Job.execute()`` calls: the run path, registered by the app."""
    _executor[:] = [executor]


def execute(job: Any) -> Any:
    return _executor[0](job)


def add_wrapper(wrapper: Wrapper) -> None:
    if wrapper not in _wrappers:
        _wrappers.append(wrapper)


def wrapper_of(value: object) -> Wrapper | None:
    """The registered kind ``value`` is, or None for anything else."""
    for wrapper in _wrappers:
        if wrapper.matches(value):
            return wrapper
    return None
