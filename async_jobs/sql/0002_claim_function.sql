-- The claim function of migration 0002 (its docstring says why it exists).
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
