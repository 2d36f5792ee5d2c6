"""How a job's failure reads: its exception's message and traceback, whatever
the exception does.

A job's exception is the job's own code, and its ``__str__`` (or its
``__notes__``, which Python's tracebacks read) runs in the worker: one that
raises would take down the code recording the failure, the job would stay
pending, and the next run would meet it again. Every place that puts a job's
exception into words goes through this module.
"""

from __future__ import annotations

import traceback


def message(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder when that raises."""
    try:
        return str(exc)
    except KeyboardInterrupt:
        raise  # Ctrl-C, or the worker's second stop signal, mid-way
    except BaseException:
        return f"<{type(exc).__name__}.__str__() raised>"


def described(exc: BaseException) -> str:
    """``Type: message``, as the worker's lines name a failure."""
    return f"{type(exc).__name__}: {message(exc)}"


def traceback_text(exc: BaseException) -> str:
    """The traceback Python prints for ``exc``; if printing it raises (before
    Python 3.13, an exception's ``__notes__`` are read unguarded), its
    frames and ``described(exc)``."""
    try:
        return "".join(traceback.format_exception(exc))
    except KeyboardInterrupt:
        raise
    except BaseException:
        frames = "".join(traceback.format_tb(exc.__traceback__))
        return f"Traceback (most recent call last):\n{frames}{described(exc)}\n"
