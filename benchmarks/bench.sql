-- Statements the benchmarks run directly (not the package's; those live in balsam_mpi/sql).

-- name: ceiling_reset
DROP TABLE IF EXISTS ceiling_rows;
CREATE TABLE ceiling_rows (id bigint PRIMARY KEY, claimed_by integer);
CREATE INDEX ceiling_unclaimed ON ceiling_rows (id) WHERE claimed_by IS NULL;

-- name: ceiling_fill
INSERT INTO ceiling_rows (id) SELECT generate_series(1, %(n)s);

-- name: ceiling_claim
-- The bare shape of a batch claim: lock up to k free rows, skip rows others hold.
WITH picked AS (
    SELECT id FROM ceiling_rows WHERE claimed_by IS NULL
     ORDER BY id LIMIT %(k)s FOR UPDATE SKIP LOCKED
)
UPDATE ceiling_rows c SET claimed_by = %(who)s FROM picked WHERE c.id = picked.id
RETURNING c.id;

-- name: task_times
-- Start and end of every finished task (epoch seconds), for the raw per-task record.
SELECT extract(epoch FROM started_at)::float8, extract(epoch FROM ended_at)::float8
  FROM tasks
 WHERE state = 'JOB_FINISHED' AND started_at IS NOT NULL AND ended_at IS NOT NULL
 ORDER BY started_at LIMIT %(limit)s;

-- name: exactly_once
-- The exactly-once check: tasks, finished ones, RUNNING events, and tasks that entered
-- RUNNING other than once (0 is the pass).
SELECT (SELECT count(*) FROM tasks) AS tasks,
       (SELECT count(*) FROM tasks WHERE state = 'JOB_FINISHED') AS finished,
       (SELECT count(*) FROM task_events WHERE to_state = 'RUNNING') AS running_events,
       (SELECT count(*) FROM (
            SELECT t.id FROM tasks t
              LEFT JOIN task_events e ON e.task_id = t.id AND e.to_state = 'RUNNING'
             GROUP BY t.id HAVING count(e.id) <> 1) AS odd) AS not_once;

-- name: per_launcher_tasks
-- Tasks each batch job ran, by workflow (who consumed what under the mixed filters).
SELECT batch_job_id, workflow, count(*) FROM tasks
 WHERE state = 'JOB_FINISHED' GROUP BY batch_job_id, workflow ORDER BY 1, 2;

-- name: state_counts
SELECT state::text, count(*) FROM tasks GROUP BY state ORDER BY state;

-- name: python_app
-- A Python app of the `python` scenario (scenarios_python.py).
INSERT INTO apps (name, python) VALUES (%(a)s, %(p)s)
ON CONFLICT (name) DO UPDATE SET python = EXCLUDED.python;

-- name: python_tasks
-- n READY tasks of a Python app; with indexed, params {"i": n} (else the given params).
INSERT INTO tasks (workflow, name, app_id, state, node_packing_count, params)
SELECT %(w)s, 't', (SELECT id FROM apps WHERE name = %(a)s), 'READY', %(pack)s,
       CASE WHEN %(indexed)s THEN jsonb_build_object('i', g) ELSE %(params)s::jsonb END
  FROM generate_series(1, %(n)s) AS g
RETURNING id;

-- name: task_ended_at
SELECT id, extract(epoch FROM ended_at)::float8 FROM tasks WHERE id = ANY (%(ids)s);
