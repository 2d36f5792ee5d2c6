"""The JSON round-trip rule for job arguments and results.

JSON silently changes some values (a tuple comes back a list, a dict's int
keys come back strings) and can't hold others (datetimes, sets, bytes, NaN).
A job whose arguments changed on the way would run with other data than its
caller passed, so such values are refused up front, naming where they sit.
"""

from __future__ import annotations

import math
from typing import Any


def check_json(value: Any, where: str) -> None:
    """Raise ``TypeError`` unless ``value`` comes back equal from JSON."""
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where}: {value!r} is not allowed in JSON")
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            check_json(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where}: key {key!r} is {type(key).__name__}; JSON object "
                    "keys must be str"
                )
            check_json(item, f"{where}[{key!r}]")
        return
    if isinstance(value, tuple):
        raise TypeError(
            f"{where}: tuple would come back from JSON as a list; pass a list"
        )
    raise TypeError(f"{where}: {type(value).__name__} is not JSON serializable")


def check_storable(value: Any, where: str) -> None:
    """Raise ``TypeError`` for text PostgreSQL's ``jsonb`` can't store.

    A NUL character or a lone surrogate in a string (or a key) is valid JSON
    to Python but refused by PostgreSQL, so it is refused on every database.
    """
    if isinstance(value, str):
        if "\x00" in value:
            raise TypeError(f"{where}: a string with a NUL character can't be stored")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise TypeError(
                f"{where}: a string with a lone surrogate can't be stored"
            ) from None
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_storable(item, f"{where}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_storable(key, f"{where}: key {key!r}")
            check_storable(item, f"{where}[{key!r}]")
