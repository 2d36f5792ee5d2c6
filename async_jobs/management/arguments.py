"""Command-line options the management commands share."""

from __future__ import annotations

from django.core.management.base import CommandParser


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


def add_queue_option(parser: CommandParser, help: str) -> None:
    """``--queue NAME``, repeatable, into ``options["queues"]`` (default: all)."""
    parser.add_argument(
        "--queue",
        action="append",
        dest="queues",
        default=[],
        metavar="NAME",
        help=help,
    )


def positive_seconds(value: str) -> float:
    number = float(value)
    if not 0 < number < float("inf"):
        raise ValueError(value)
    return number
