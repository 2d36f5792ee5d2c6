"""When a failed job is tried again: exponential backoff with jitter.

Jitter spreads the retries of jobs that failed together (a flaky API, a
deploy) so they don't all come back at the same second.
"""

from __future__ import annotations

import random
from datetime import timedelta

from async_jobs.conf import JobsSettings


def retry_delay(attempt: int, config: JobsSettings) -> timedelta:
    """The wait before the attempt after ``attempt`` (1 for the first)."""
    try:
        delay = min(config.backoff_max, config.backoff_base * 2 ** (attempt - 1))
    except OverflowError:  # a float base after some 1,000 attempts
        delay = config.backoff_max
    delay *= 1 + random.uniform(-config.backoff_jitter, config.backoff_jitter)
    return timedelta(seconds=delay)
