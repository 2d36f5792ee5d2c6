"""What a command run from cron prints of the ``async_jobs`` log: one line per
problem on stderr, the traceback only at ``-v 2``.

With no handler configured, Python's last-resort handler would print each
failed attempt's whole traceback, and cron mails all of it. The handler set
up here stands in for it during the run; the project's own handlers, if any,
still receive every record, traceback included.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.management.base import OutputWrapper

from async_jobs import failures

LOGGER_NAME = "async_jobs"


class StderrLines(logging.Handler):
    """Each record as one line, with its exception's type and message; at
    ``verbosity`` 2 or more, its traceback after it; at 0, nothing."""

    def __init__(self, stderr: OutputWrapper, verbosity: int) -> None:
        super().__init__(logging.WARNING)
        self.stderr = stderr
        self.verbosity = verbosity

    def emit(self, record: logging.LogRecord) -> None:
        if self.verbosity < 1:
            return
        try:
            line = record.getMessage()
            exception = record.exc_info[1] if record.exc_info else None
            if exception is not None:
                message = " ".join(failures.message(exception).split())
                line += f": {type(exception).__name__}" + (
                    f": {message}" if message else ""
                )
            line = " ".join(line.splitlines())
            if exception is not None and self.verbosity >= 2:
                line += "\n" + failures.traceback_text(exception).rstrip("\n")
            self.stderr.write(line)
            self.stderr.flush()
        except Exception:  # a handler must never raise into the worker
            self.handleError(record)


@contextmanager
def log_to_stderr(stderr: OutputWrapper, verbosity: int) -> Iterator[None]:
    """Print the ``async_jobs`` log's warnings and errors while the block runs."""
    logger = logging.getLogger(LOGGER_NAME)
    handler = StderrLines(stderr, verbosity)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
