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

-- name: alter_system_reset
-- `retention`: back to the configuration files (balsam.conf) for every setting.
ALTER SYSTEM RESET ALL;

-- name: alter_system_set
-- `retention`: one setting over balsam.conf (composed: name an identifier, value a literal).
ALTER SYSTEM SET {name} = {value};

-- name: wal_settings
SELECT name, setting || coalesce(unit, '') FROM pg_settings
 WHERE name IN ('wal_level', 'max_wal_senders', 'wal_compression', 'max_wal_size',
                'min_wal_size', 'checkpoint_timeout', 'checkpoint_completion_target')
 ORDER BY name;

-- name: truncate_apps
TRUNCATE apps RESTART IDENTITY CASCADE;

-- name: checkpoint
CHECKPOINT;

-- name: wal_position
-- Where the WAL is now, and checkpoints so far (timed and requested).
SELECT pg_current_wal_lsn(), checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter;

-- name: wal_diff
SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)::bigint;

-- name: wal_dir_size
-- Bytes in pg_wal now (segments kept for recovery and recycled ones).
SELECT coalesce(sum(size), 0)::bigint FROM pg_ls_waldir();

-- name: table_sizes
SELECT relname::text, pg_total_relation_size(oid) FROM pg_class
 WHERE relname IN ('tasks', 'task_events', 'task_deps', 'batch_jobs') ORDER BY relname;

-- name: task_dirs
SELECT id, workflow, name FROM tasks ORDER BY id;

-- name: python_app
-- A Python app of the `python` scenario (scenarios_python.py); task_dirs false: its calls
-- run without directories of their own (0020).
INSERT INTO apps (name, python, task_dirs) VALUES (%(a)s, %(p)s, %(dirs)s)
ON CONFLICT (name) DO UPDATE SET python = EXCLUDED.python, task_dirs = EXCLUDED.task_dirs;

-- name: python_tasks
-- n READY tasks of a Python app; with indexed, params {"i": n} (else the given params).
INSERT INTO tasks (workflow, name, app_id, state, node_packing_count, params)
SELECT %(w)s, 't', (SELECT id FROM apps WHERE name = %(a)s), 'READY', %(pack)s,
       CASE WHEN %(indexed)s THEN jsonb_build_object('i', g) ELSE %(params)s::jsonb END
  FROM generate_series(1, %(n)s) AS g
RETURNING id;

-- name: task_ended_at
SELECT id, extract(epoch FROM ended_at)::float8 FROM tasks WHERE id = ANY (%(ids)s);

-- name: events_cost_setup
-- event_write_cost.py: an app and a running batch job.
INSERT INTO apps (name, command) VALUES ('cost', 'true');
INSERT INTO batch_jobs ("user", host, nodes, ranks, state, started_at, heartbeat_at)
VALUES ('alice', 'h', 64, 64, 'RUNNING', clock_timestamp(), clock_timestamp());

-- name: events_cost_tasks
-- ... and n READY tasks to move.
INSERT INTO tasks (workflow, name, app_id, state, owner)
SELECT 'wf' || (i %% 2), 't' || i, (SELECT min(id) FROM apps), 'READY', 'alice'
  FROM generate_series(1, %(n)s) AS i;

-- name: events_cost_without_run_steps
-- event_write_cost.py's baseline database: the event path as it was before migration
-- 0010 (0001's trigger function with 0002's and 0007's settings), no run_steps.
DROP TRIGGER tasks_run_steps_delete ON tasks;
DROP TRIGGER task_events_run_steps_delete ON task_events;
DROP TRIGGER batch_jobs_run_steps_delete ON batch_jobs;
DROP TABLE run_steps;
ALTER TABLE task_events DROP COLUMN rolled_up, DROP COLUMN weight;
CREATE OR REPLACE FUNCTION tasks_events_on_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_nestloop = off AS $$
BEGIN
    INSERT INTO task_events (task_id, from_state, to_state, at, batch_job_id, message)
    SELECT n.id, o.state, n.state,
           CASE
             WHEN n.state = 'RUNNING' AND n.started_at IS DISTINCT FROM o.started_at
                  AND n.started_at IS NOT NULL THEN n.started_at
             WHEN n.state IN ('RUN_DONE', 'RUN_ERROR', 'RUN_TIMEOUT')
                  AND n.ended_at IS DISTINCT FROM o.ended_at
                  AND n.ended_at IS NOT NULL THEN n.ended_at
             ELSE clock_timestamp()
           END,
           coalesce(n.batch_job_id, o.batch_job_id), n.state_message
      FROM new_rows n JOIN old_rows o ON o.id = n.id
     WHERE n.state IS DISTINCT FROM o.state;
    RETURN NULL;
END $$;

-- name: events_cost_start
-- A flush of starts: k READY tasks RUNNING, each at its own node time (the last second).
UPDATE tasks t SET state = 'RUNNING', batch_job_id = (SELECT max(id) FROM batch_jobs),
       started_at = clock_timestamp() - random() * interval '1 s', claimed_at = now()
 WHERE t.id = ANY (%(ids)s::bigint[]);

-- name: events_cost_end
-- A flush of ends: the same tasks RUN_DONE, 0.5 s after their start.
UPDATE tasks t SET state = 'RUN_DONE', ended_at = t.started_at + interval '0.5 s',
       exit_code = 0
 WHERE t.id = ANY (%(ids)s::bigint[]);

-- name: events_cost_finish
UPDATE tasks t SET state = 'JOB_FINISHED' WHERE t.id = ANY (%(ids)s::bigint[]);

-- name: events_cost_ids
SELECT id FROM tasks ORDER BY id;

-- name: lock_waits
-- One sample of the project's client backends: how many wait for a heavyweight lock
-- (and on what, the first of them), how many run a statement.
SELECT count(*) FILTER (WHERE a.wait_event_type = 'Lock')::int,
       count(*) FILTER (WHERE a.state = 'active')::int,
       min(left(a.query, 60)) FILTER (WHERE a.wait_event_type = 'Lock')
  FROM pg_stat_activity a
 WHERE a.datname = current_database() AND a.backend_type = 'client backend'
   AND a.pid <> pg_backend_pid();
