"""The claim, as a PL/pgSQL function on PostgreSQL (nothing on other databases).

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

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION async_jobs_claim(
    wanted_queues varchar[], due timestamptz, wanted integer
) RETURNS SETOF async_jobs_job
LANGUAGE plpgsql
SET enable_sort = off
SET jit = off
AS $body$
DECLARE
    queue_names varchar[] := wanted_queues;
    queue_name varchar;
    found_rows integer;
BEGIN
    -- The claim index leads with the queue, so one ordered scan of it serves
    -- one queue. The queues are those named, or (NULL) every queue that
    -- holds a pending job, read from the index one distinct name at a time.
    IF queue_names IS NULL THEN
        queue_names := ARRAY(
            WITH RECURSIVE queues(name) AS (
                (
                    SELECT queue FROM async_jobs_job WHERE status = 'pending'
                    ORDER BY queue LIMIT 1
                )
                UNION ALL
                SELECT (
                    SELECT queue FROM async_jobs_job
                    WHERE status = 'pending' AND queue > queues.name
                    ORDER BY queue LIMIT 1
                ) FROM queues WHERE queues.name IS NOT NULL
            )
            SELECT name FROM queues WHERE name IS NOT NULL
        );
    END IF;
    -- Of several, the queues with a due job, each once (SKIP LOCKED doesn't
    -- skip what this transaction locked), the one whose best due job is best
    -- first: claim from it, then, if that leaves the batch short, from the
    -- next.
    IF cardinality(queue_names) > 1 THEN
        queue_names := ARRAY(
            SELECT queues.name
            FROM (SELECT DISTINCT unnest(queue_names)) AS queues(name)
            CROSS JOIN LATERAL (
                SELECT priority, run_after, id FROM async_jobs_job
                WHERE status = 'pending' AND queue = queues.name
                    AND run_after <= due
                ORDER BY priority DESC, run_after, id
                LIMIT 1
            ) AS best
            ORDER BY best.priority DESC, best.run_after, best.id
        );
    END IF;
    FOREACH queue_name IN ARRAY queue_names LOOP
        RETURN QUERY
            SELECT * FROM async_jobs_job
            WHERE status = 'pending' AND queue = queue_name
                AND run_after <= due
            ORDER BY priority DESC, run_after, id
            LIMIT wanted
            FOR UPDATE SKIP LOCKED;
        GET DIAGNOSTICS found_rows = ROW_COUNT;
        wanted := wanted - found_rows;
        EXIT WHEN wanted <= 0;
    END LOOP;
END
$body$
"""

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
