"""How a job's failure reads: its exception's message, whatever it does.

A job's exception is the job's own code, and its ``__str__`` runs in the
worker: one that raises would take down the code recording the failure, the
job would stay pending, and the next run would meet it again. Every place
that puts a job's exception into words goes through ``message()``.
"""

from __future__ import annotations


def message(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder when that raises."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__}.__str__() raised>"


def described(exc: BaseException) -> str:
    """``Type: message``, as the worker's lines name a failure."""
    return f"{type(exc).__name__}: {message(exc)}"
