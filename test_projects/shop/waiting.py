"""Jobs' side of the tests' files: a job waits for the go-ahead file a test creates.

A module of its own, importable by the tasks framework's tasks without
importing ``shop.tasks``, whose ``@job`` options are checked against the
settings at import.
"""

import time
from pathlib import Path


def await_file(path: str, timeout: float) -> None:
    """Return once the test has created ``path``; give up after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not created within {timeout}s")
        time.sleep(0.01)
