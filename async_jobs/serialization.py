"""The JSON round-trip rule for job arguments and results.

JSON silently changes some values (a tuple comes back a list, a dict's int
keys come back strings) and can't hold others (datetimes, sets, bytes, NaN).
PostgreSQL's ``jsonb`` adds its own: it refuses strings holding a NUL or a
lone surrogate, and turns a float written with an exponent (``1e+23``) into
an exact decimal that comes back as another number, an int. A job whose
arguments changed on the way would run with other data than its caller
passed, so such values are refused up front, naming where they sit, on every
database alike: a project may move from SQLite to PostgreSQL.

Nor may a value nest lists and dicts more than ``MAX_DEPTH`` deep. Python's
``json`` recurses once per level against the interpreter's recursion limit
(1,000 frames, counting those of the code that writes or reads it): about
950 to 980 levels deep, writing a row or reading it back raises
``RecursionError``, earlier in a deeper stack. SQLite's JSON functions stop
at 2,000 levels, PostgreSQL's ``jsonb`` at its stack limit (some 14,500 with
the default ``max_stack_depth``).
"""

from __future__ import annotations

import math
import sys
from typing import Any, TypeAlias

#: Floats from here up are written with an exponent, which ``jsonb`` turns
#: into an int: 1e23 comes back as 100000000000000000000000, not 1e23.
FLOAT_LIMIT = 1e16

#: The deepest nesting of lists and dicts allowed, the value itself counting
#: as one level: ``args`` is a list, so an argument may nest 99 more. Well
#: below the roughly 950 levels at which Python's ``json`` gives out.
MAX_DEPTH = 100


#: Ints of no more bits have fewer than 640 digits, the lowest limit
#: ``sys.set_int_max_str_digits()`` takes (4,300 by default): JSON can write
#: them. A bigger one is written to find out.
INT_BITS = 2_100

#: Where a value sits: a name (``"args"``), or its container's place and its
#: index or key, spelled out (``args[0]['when']``) only for an error: a
#: job's arguments are checked on every ``schedule()``.
Place: TypeAlias = str | tuple["Place", int | str]


def check_json(value: Any, where: str) -> None:
    """Raise ``TypeError`` unless ``value`` comes back equal from JSON."""
    if not value and (type(value) is list or type(value) is dict):
        return  # most kwargs, many args: nothing to walk
    _check(value, where, set())


def _check_int(value: int, where: Place) -> None:
    try:
        str(value)
    except ValueError:
        raise TypeError(
            f"{_spelled(where)}: an int of more than {sys.get_int_max_str_digits()} "
            "digits can't be written as JSON (sys.get_int_max_str_digits()); "
            "pass it as a str"
        ) from None


def _spelled(where: Place) -> str:
    if isinstance(where, str):
        return where
    container, key = where
    return f"{_spelled(container)}[{key!r}]"


def _check(value: Any, where: Place, enclosing: set[int]) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if value.bit_length() > INT_BITS:
            _check_int(value, where)
        return
    if isinstance(value, str):
        _check_str(value, where)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{_spelled(where)}: {value!r} is not allowed in JSON")
        if abs(value) >= FLOAT_LIMIT:
            raise TypeError(
                f"{_spelled(where)}: float {value!r} would not come back from JSON "
                "unchanged (PostgreSQL returns it as an int); pass an int, or a str"
            )
        return
    if isinstance(value, tuple):
        raise TypeError(
            f"{_spelled(where)}: tuple would come back from JSON as a list; pass a list"
        )
    if not isinstance(value, list | dict):
        raise TypeError(
            f"{_spelled(where)}: {type(value).__name__} is not JSON serializable"
        )
    if id(value) in enclosing:
        raise TypeError(f"{_spelled(where)}: contains itself; JSON can't hold a cycle")
    if len(enclosing) >= MAX_DEPTH:
        raise TypeError(
            f"{_spelled(where)}: lists and dicts nested more than {MAX_DEPTH} levels "
            "deep; JSON this deep can't be reliably written and read back"
        )
    enclosing.add(id(value))
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, (where, index), enclosing)
    else:
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{_spelled(where)}: key {key!r} is {type(key).__name__}; JSON "
                    "object keys must be str"
                )
            _check_str(key, where, key)
            _check(item, (where, key), enclosing)
    enclosing.discard(id(value))


def _check_str(text: str, where: Place, key: str | None = None) -> None:
    """Refuse what ``jsonb`` can't hold; ``key``: ``text`` is this key of a
    dict at ``where``."""
    if "\x00" in text:
        raise TypeError(
            f"{_located(where, key)}: str holds a NUL character (\\x00), which "
            "PostgreSQL's JSON can't store"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TypeError(
            f"{_located(where, key)}: str holds {text[exc.start]!r}, a lone "
            "surrogate, which is not valid Unicode text"
        ) from None


def _located(where: Place, key: str | None) -> str:
    spelled = _spelled(where)
    return spelled if key is None else f"{spelled}: key {key!r}"
