"""What libpq sends on a Django connection: for the tests that pin the
worker's round trips, and for benchmarks/profile_enqueue.py."""

from __future__ import annotations

import tempfile
from collections.abc import Callable

from django.db import connection


def frontend_messages(work: Callable[[], object]) -> list[tuple[str, str]]:
    """The protocol messages libpq sends on Django's default connection while
    ``work()`` runs, as (type, text): every ``Query`` or ``Sync`` is a round
    trip."""
    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    with tempfile.TemporaryFile("w+") as out:
        pgconn.trace(out.fileno())
        try:
            work()
        finally:
            pgconn.untrace()
        out.seek(0)
        lines = out.read().splitlines()
    messages = []
    for line in lines:
        fields = line.split("\t")
        # "F <length> <type> <content...>" (with a timestamp first, or not).
        if "F" in fields[:2]:
            at = fields.index("F")
            kind, _, text = " ".join(fields[at + 2 :]).partition(" ")
            messages.append((kind, text.strip()))
    return messages
