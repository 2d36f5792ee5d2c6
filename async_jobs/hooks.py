"""Where the upper layers plug into the core, so that no module imports upward.

The models and the run path call the functions here; ``AsyncJobsConfig.ready()``
registers what answers them: the scheduling features (groups, series) when
jobs reach a final status and when a worker sweeps, the run path for
``Job.execute()``, and the django.tasks integration for a job that names a
``Task`` rather than a plain function. A new feature plugs in the same way
(docs/architecture.rst).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# Jobs are typed ``Any`` here: this module sits below the models.

#: Called, in order, in the transaction that gave jobs a final status, each
#: with the jobs it concerns.
_settled: list[tuple[Callable[[Sequence[Any], str], None], Callable[[Any], bool]]] = []
_executor: list[Callable[[Any], Any]] = []
#: Called now and then by every worker, in a short transaction of its own
#: with no job locked, each with the jobs' database.
_sweeps: list[Callable[[str], None]] = []


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


def on_settled(
    hook: Callable[[Sequence[Any], str], None], concerns: Callable[[Any], bool]
) -> None:
    """Call ``hook(jobs, using)`` whenever jobs it ``concerns`` reach a final status.

    ``concerns(job)`` reads only the job in memory: most jobs concern no
    feature, and the run path then does nothing more for them.
    """
    if all(registered != hook for registered, _ in _settled):
        _settled.append((hook, concerns))


def concerned(jobs: Sequence[Any]) -> list[Any]:
    """The jobs among these that some feature must be told of."""
    return [job for job in jobs if any(wants(job) for _, wants in _settled)]


def settled(jobs: Sequence[Any], using: str) -> None:
    """Jobs reached a final status (succeeded, failed, cancelled): tell the features.

    Runs in the transaction that wrote those statuses, so what the features
    do commits with them or not at all.
    """
    for hook, concerns in _settled:
        mine = [job for job in jobs if concerns(job)]
        if mine:
            hook(mine, using)


def on_sweep(hook: Callable[[str], None]) -> None:
    """Call ``hook(using)`` now and then from every worker: a feature mends
    there what a process that died half-way left behind."""
    if hook not in _sweeps:
        _sweeps.append(hook)


def sweep(using: str) -> None:
    for hook in _sweeps:
        hook(using)


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
