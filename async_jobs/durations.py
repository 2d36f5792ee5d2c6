"""Ages as operators type and read them: ``90s``, ``15m``, ``12h``, ``30d``, ``2w``."""

from __future__ import annotations

import re
from datetime import timedelta

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


def parse_age(text: str) -> timedelta | None:
    """``"30d"`` -> 30 days; a bare number is seconds; ``"never"`` -> None."""
    cleaned = text.strip().lower()
    if cleaned == "never":
        return None
    match = _AGE.fullmatch(cleaned)
    if match is None:
        raise ValueError(
            f"{text!r} is not an age; write a number with a unit s, m, h, d or w "
            "(such as 90m or 30d), a number of seconds, or 'never'."
        )
    number, unit = match.groups()
    return timedelta(seconds=float(number) * UNITS[unit or "s"])


def format_age(age: timedelta | None) -> str:
    """A short, rounded age: ``42s``, ``5m 03s``, ``2h 10m``, ``3d 4h``."""
    if age is None:
        return "never"
    seconds = max(0, round(age.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"
