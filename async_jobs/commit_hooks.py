"""The one Django internal async_jobs relies on: which on_commit list is live.

Django keeps the ``on_commit`` hooks of a connection's transaction in
``connection.run_on_commit`` and puts a new list in its place when the
transaction commits or rolls back, and when a savepoint rolls back (dropping
the hooks registered inside it). ``notifications.py`` compares these lists to
gather every job a transaction makes due into one ``NOTIFY`` sent after its
commit, and none for jobs rolled back: no public API tells one transaction
from the next, and a ``NOTIFY`` per ``schedule()`` would cost a round trip per
job. ``test_notifications.py`` fails if Django changes this (CI runs both
Django lines).
"""

from __future__ import annotations

from django.db.backends.base.base import BaseDatabaseWrapper


def live_hooks(connection: BaseDatabaseWrapper) -> object:
    """A token that stays the same until the connection's hooks are replaced."""
    return getattr(connection, "run_on_commit", None)
