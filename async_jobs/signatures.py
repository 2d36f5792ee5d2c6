"""Refuse at ``schedule()`` a call its function could never accept.

Without this, ``schedule(send_receipt, args=[1, 2])`` commits a job that
fails on every attempt with the ``TypeError`` the caller could have had now.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from async_jobs import hooks
from async_jobs.allowlist import resolve


@lru_cache(maxsize=4096)
def call_signature(path: str) -> inspect.Signature | None:
    """The parameters the worker will pass a job's arguments to, or None.

    Keyed by path, as the worker finds the function by its path. A ``Task``
    that ``takes_context`` gets its context first at run time: the caller
    doesn't pass it. None when the signature can't be read (some builtins):
    such calls are not checked.
    """
    function = resolve(path)
    leading = 0
    wrapper = hooks.wrapper_of(function)
    if wrapper is not None:
        leading = wrapper.leading_arguments(function)
        function = wrapper.function(function)
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    if leading:
        signature = signature.replace(
            parameters=list(signature.parameters.values())[leading:]
        )
    return signature


def check_call(path: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` unless the function at ``path`` accepts the call."""
    if type(args) in (list, tuple) and type(kwargs) is dict:
        _check_shape(path, len(args), tuple(kwargs))
    else:  # arguments as a row holds them, which may be anything
        _bind(path, args, kwargs)


@lru_cache(maxsize=4096)
def _check_shape(path: str, count: int, keywords: tuple[str, ...]) -> None:
    """Whether a call binds depends on how many positional arguments it has
    and which keywords, never on their values: placeholders are bound once
    per shape of call (a failure, raised, is not cached)."""
    _bind(path, [None] * count, dict.fromkeys(keywords))


def _bind(path: str, args: Any, kwargs: Any) -> None:
    signature = call_signature(path)
    if signature is None:
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{path}{signature} can't be called so: {exc}.") from None
