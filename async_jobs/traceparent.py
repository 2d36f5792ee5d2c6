"""``meta["traceparent"]``: the W3C trace context a job was scheduled in.

No OpenTelemetry here: ``scheduling`` checks and stamps the key through this
module, and ``async_jobs.tracing`` (loaded only when ``opentelemetry-api`` is
installed) plugs in the function that reads the current context.
"""

from __future__ import annotations

import re
from collections.abc import Callable

RULE = (
    "a W3C traceparent ('00-<32 hex trace id>-<16 hex span id>-<2 hex flags>'), "
    "set by schedule() from the current OpenTelemetry span"
)
_FORMAT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")

#: Returns the current context's traceparent, or None; set by async_jobs.tracing.
current: Callable[[], str | None] | None = None


def is_traceparent(value: object) -> bool:
    return isinstance(value, str) and _FORMAT.fullmatch(value) is not None


def stamp(meta: dict) -> dict:
    """Add the current trace context to ``meta``, unless it has one already."""
    if current is not None and "traceparent" not in meta:
        value = current()
        if value is not None:
            meta["traceparent"] = value
    return meta
