"""Optional integrations, plugged in at start-up when their extra is installed.

Each one connects itself to the job signals when imported; without its extra,
nothing of it is imported.
"""

from importlib.util import find_spec


def plug_in() -> None:
    if find_spec("prometheus_client") is not None:
        from async_jobs import metrics  # noqa: F401
    # opentelemetry is a namespace package: ask for the API's own module.
    if find_spec("opentelemetry") is not None and find_spec("opentelemetry.trace"):
        from async_jobs import tracing  # noqa: F401
