"""The claim, as a PL/pgSQL function on PostgreSQL (nothing on other databases).

Its SQL is ``async_jobs/sql/0002_claim_function.sql``.

Two reasons to keep the claim in the database rather than send its SQL:

* PL/pgSQL caches the plans of its statements for the session, so a worker
  doesn't pay for planning the claim (the most of its cost) on every claim,
  without the prepared statements that Django leaves off by default (they
  break behind PgBouncer's transaction pooling; a function's plans don't).
* ``SET enable_sort = off`` holds the planner to ordered scans of the claim
  index however stale the statistics are. A backlog that arrived after the
  table was last analyzed empty made it choose a bitmap scan and a sort of
  the whole backlog for every claim. (A sort still serves where nothing else
  can, ordering the queues; ``jit = off``, since the cost that discourages
  sorts would otherwise make every claim worth compiling.)
"""

from pathlib import Path

from django.db import migrations

CREATE = (Path(__file__).parents[1] / "sql" / "0002_claim_function.sql").read_text()

DROP = "DROP FUNCTION IF EXISTS async_jobs_claim(varchar[], timestamptz, integer)"


class RunSQLOnPostgreSQL(migrations.RunSQL):
    """``RunSQL`` on PostgreSQL, nothing elsewhere (``sqlmigrate`` shows it)."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)


class Migration(migrations.Migration):
    dependencies = [("async_jobs", "0001_initial")]

    operations = [RunSQLOnPostgreSQL(CREATE, DROP)]
