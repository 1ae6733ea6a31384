-- 0016_finished_rows_leave_indexes: less database time per task (benchmarks/README.md,
-- "The database path per task … 0016"; docs/design-notes.md, 18):
--   * a task's last write (→ JOB_FINISHED, the end of every successful task) adds an
--     entry to two indexes fewer;
--   * one statement trigger after an UPDATE of tasks instead of four;
--   * the claim and the reports run one plan per session instead of one per call.
--
-- An UPDATE that changes an indexed column (the end changes `state`) writes a new entry
-- into every index of the table whose predicate the new row version meets; with the
-- claim, that was 4 + 4 index entries per task, each about 1–1.5 µs here. Two of them
-- served nobody once the task was over:
--
-- * tasks_batch_job (0001) held every task a batch job ever claimed, finished ones
--   included. Its readers look for what a job *holds*: the close and the lease expiry
--   (READY, RESTART_READY claims; RUNNING runs), `held_elsewhere` (READY … RUNNING, which
--   walked past every finished task of the job to find one), `jobs list` (PREPROCESSED,
--   RUNNING). They now read an index of the held rows only. What a job ran is history
--   (task_events.batch_job_id, run_steps); the few readers of a job's finished tasks
--   (`balsam-dbctl prune`, a deleted job's release below, the demo's and benchmarks'
--   run summary) scan, as they run once per prune or run.
-- * tasks_state_id (0003) held finished tasks, the bulk of a project's table, which
--   nobody asks for by state alone: lists by state go through tasks_workflow_state_id or
--   a scan of all rows, counts by state read every row. The index now leaves out
--   JOB_FINISHED, so it stays the size of the live work.
--
-- Each predicate is a list of states, so a reader's `state = 'RUNNING'` or
-- `state IN ('READY', 'RESTART_READY')` is implied by it and the planner keeps the index
-- (tests/db/test_index_writes.py reads the plans).

DROP INDEX tasks_batch_job;
CREATE INDEX tasks_batch_job ON tasks (batch_job_id)
    WHERE batch_job_id IS NOT NULL
      AND state IN ('READY', 'RESTART_READY', 'PREPROCESSED', 'RUNNING', 'RUN_DONE',
                    'RUN_ERROR', 'RUN_TIMEOUT', 'POSTPROCESSED');

DROP INDEX tasks_state_id;
CREATE INDEX tasks_state_id ON tasks (state, id) WHERE state <> 'JOB_FINISHED';

-- 0011's release of a deleted job's tasks, which now finds the finished ones by a scan:
-- one hash join over the table for the whole DELETE statement, never a scan per job.
CREATE OR REPLACE FUNCTION batch_jobs_release_tasks() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_nestloop = off AS $$
BEGIN
    UPDATE public.tasks t SET batch_job_id = NULL
      FROM old_rows o WHERE t.batch_job_id = o.id;
    RETURN NULL;
END $$;

-- ---- one statement trigger after an UPDATE of tasks -------------------------------------
-- Four statement triggers ran after every UPDATE of tasks (the transition check of 0007,
-- the events and run steps of 0010/0011, the waiters' notification of 0009, the DAG of
-- 0003/0011), and each joined the statement's old and new rows again: about 1.8 µs per
-- task of a flush, and four trigger calls per statement. One trigger now joins them once:
-- the statement that writes the events and run steps also returns what the other three
-- need (the first illegal move, the ids to notify, the parents that finished or stopped).
-- The order is kept: the check (a refused move undoes the whole statement, its events
-- with it), the history, the notification, then the DAG, whose own UPDATEs come back
-- through this trigger. What each part does is unchanged; docs/security.md's rule, a
-- state change only along task_transitions (or 0011's one combined write), holds for
-- every writer, the superuser included.
DROP TRIGGER tasks_events_update ON tasks;
DROP TRIGGER tasks_check_transitions ON tasks;
DROP TRIGGER tasks_notify_final ON tasks;
DROP TRIGGER tasks_propagate ON tasks;
DROP FUNCTION tasks_events_on_update();
DROP FUNCTION tasks_check_transitions();
DROP FUNCTION tasks_notify_final();

-- 0011's DAG step, from the ids the trigger found instead of its own join. Its walk
-- looks children up one parent at a time (index probes): it plans with nested loops
-- whatever its caller runs with.
CREATE OR REPLACE FUNCTION tasks_propagate_ids(done bigint[], stopped bigint[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_nestloop = on AS $$
BEGIN
    -- Parents that just finished: one decrement per (child, finished parents) pair; a
    -- child whose count reaches 0 while it waits becomes READY.
    IF done IS NOT NULL AND EXISTS (
        SELECT 1 FROM unnest(done) AS p (id) JOIN public.task_deps d ON d.parent_id = p.id
    ) THEN
        WITH counts AS (
            SELECT d.child_id, count(*)::integer AS k
              FROM unnest(done) AS p (id) JOIN public.task_deps d ON d.parent_id = p.id
             GROUP BY d.child_id
        )
        UPDATE public.tasks c
           SET pending_parents = greatest(c.pending_parents - counts.k, 0),
               state = CASE WHEN c.state = 'AWAITING_PARENTS' AND c.pending_parents <= counts.k
                            THEN 'READY'::task_state ELSE c.state END,
               state_message = CASE WHEN c.state = 'AWAITING_PARENTS'
                                     AND c.pending_parents <= counts.k
                                    THEN 'parents finished' ELSE c.state_message END
          FROM counts
         WHERE c.id = counts.child_id;
    END IF;
    IF stopped IS NULL THEN
        RETURN;
    END IF;

    -- Parents that just stopped (FAILED or USER_KILLED): every waiting descendant reached
    -- through children that fail with their parents is FAILED, naming the ancestor.
    -- Rows stopped by this same statement are already stopped here, so a bulk kill of a
    -- whole workflow does not walk its graph again.
    WITH RECURSIVE down (id, root) AS (
        SELECT d.child_id, s.id FROM unnest(stopped) AS s (id)
          JOIN public.task_deps d ON d.parent_id = s.id
          JOIN public.tasks c ON c.id = d.child_id
         WHERE c.fail_with_parents AND c.state IN ('CREATED', 'AWAITING_PARENTS')
        UNION
        SELECT x.child_id, down.root FROM down CROSS JOIN LATERAL (
            SELECT d.child_id FROM public.task_deps d
              JOIN public.tasks c ON c.id = d.child_id
             WHERE d.parent_id = down.id AND c.fail_with_parents
               AND c.state IN ('CREATED', 'AWAITING_PARENTS')
            OFFSET 0) x
    ), first_root AS (
        SELECT DISTINCT ON (down.id) down.id, down.root FROM down ORDER BY down.id, down.root
    )
    UPDATE public.tasks c
       SET state = 'FAILED',
           failed_by = f.root,
           state_message = format('upstream task %s is %s', f.root, r.state)
      FROM first_root f JOIN public.tasks r ON r.id = f.root
     WHERE c.id = f.id;

    -- Children that opt out (fail_with_parents = false) count a stopped parent as done.
    WITH counts AS (
        SELECT d.child_id, count(*)::integer AS k
          FROM unnest(stopped) AS s (id) JOIN public.task_deps d ON d.parent_id = s.id
          JOIN public.tasks c ON c.id = d.child_id
         WHERE NOT c.fail_with_parents AND c.state IN ('CREATED', 'AWAITING_PARENTS')
         GROUP BY d.child_id
    )
    UPDATE public.tasks c
       SET pending_parents = greatest(c.pending_parents - counts.k, 0),
           state = CASE WHEN c.state = 'AWAITING_PARENTS' AND c.pending_parents <= counts.k
                        THEN 'READY'::task_state ELSE c.state END,
           state_message = CASE WHEN c.state = 'AWAITING_PARENTS'
                                 AND c.pending_parents <= counts.k
                                THEN 'parents done (some did not finish)'
                                ELSE c.state_message END
      FROM counts
     WHERE c.id = counts.child_id;
END $$;
DROP FUNCTION tasks_propagate();

-- The one trigger. `changed` is 0011's step list (a combined write's row gives the three
-- events of its two-step path), with each row's old and new state and whether its move
-- is one task_transitions lists (or 0011's combined write, which may skip from a
-- startable state to JOB_FINISHED only when it records a new start and a new end).
-- Its join to (1), (2), (3) is a nested loop whatever the settings (jit = off: 0011).
CREATE FUNCTION tasks_on_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_nestloop = off SET enable_sort = off SET jit = off AS $$
DECLARE
    reshaped bigint[];
    done bigint[];
    stopped bigint[];
    ended bigint[];
    bad_id bigint;
    bad_from text;
    bad_to text;
    chunk text;
BEGIN
    WITH changed AS MATERIALIZED (
        SELECT x.id, x.from_state, x.to_state,
               CASE
                 WHEN x.to_state = 'RUNNING' AND x.started_at IS DISTINCT FROM x.old_started
                      AND x.started_at IS NOT NULL THEN x.started_at
                 WHEN x.to_state IN ('RUN_DONE', 'RUN_ERROR', 'RUN_TIMEOUT')
                      AND x.ended_at IS DISTINCT FROM x.old_ended
                      AND x.ended_at IS NOT NULL THEN x.ended_at
                 ELSE clock_timestamp()
               END AS at,
               x.job_id, x.state_message,
               CASE WHEN x.moved THEN nextval('task_events_id_seq'::regclass) END AS event_id,
               x.workflow, x.owner, x.w, x.moved, x.reshaped, x.step, x.old_state,
               x.new_state, x.illegal
          FROM (SELECT n.id, n.started_at, o.started_at AS old_started, n.ended_at,
                       o.ended_at AS old_ended,
                       coalesce(n.batch_job_id, o.batch_job_id) AS job_id, n.state_message,
                       n.workflow, n.owner, n.num_nodes::float8 / n.node_packing_count AS w,
                       n.state IS DISTINCT FROM o.state AS moved,
                       k.step = 1 AND (n.workflow, n.num_nodes, n.node_packing_count)
                         IS DISTINCT FROM (o.workflow, o.num_nodes, o.node_packing_count)
                         AS reshaped,
                       k.step, o.state AS old_state, n.state AS new_state,
                       k.step = 1 AND n.state <> o.state AND listed.from_state IS NULL
                         AND NOT (c.combined AND startable.from_state IS NOT NULL
                                  AND n.started_at IS NOT NULL
                                  AND n.started_at IS DISTINCT FROM o.started_at
                                  AND n.ended_at IS NOT NULL
                                  AND n.ended_at IS DISTINCT FROM o.ended_at) AS illegal,
                       CASE WHEN NOT c.combined OR k.step = 1 THEN o.state
                            WHEN k.step = 2 THEN 'RUNNING'::task_state
                            ELSE 'RUN_DONE'::task_state END AS from_state,
                       CASE WHEN NOT c.combined THEN n.state
                            WHEN k.step = 1 THEN 'RUNNING'::task_state
                            WHEN k.step = 2 THEN 'RUN_DONE'::task_state
                            ELSE n.state END AS to_state
                  FROM new_rows n JOIN old_rows o ON o.id = n.id
                  LEFT JOIN public.task_transitions listed
                         ON listed.from_state = o.state AND listed.to_state = n.state
                  LEFT JOIN public.task_transitions startable
                         ON startable.from_state = o.state AND startable.to_state = 'RUNNING'
                 CROSS JOIN LATERAL (
                       SELECT n.state = 'JOB_FINISHED'
                              AND o.state IN ('READY', 'RESTART_READY', 'PREPROCESSED')
                              AS combined) c
                 CROSS JOIN (VALUES (1), (2), (3)) AS k (step)
                 WHERE (n.state IS DISTINCT FROM o.state
                        OR (n.workflow, n.num_nodes, n.node_packing_count)
                             IS DISTINCT FROM (o.workflow, o.num_nodes, o.node_packing_count))
                   AND (k.step = 1 OR c.combined)) x
    ), events AS (
        INSERT INTO task_events (id, task_id, from_state, to_state, at, batch_job_id,
                                 message, rolled_up, weight)
        OVERRIDING SYSTEM VALUE
        SELECT c.event_id, c.id, c.from_state, c.to_state, c.at, c.job_id, c.state_message,
               c.run_step, CASE WHEN c.run_step THEN c.w END
          FROM (SELECT c.*, c.job_id IS NOT NULL
                            AND (c.to_state = 'RUNNING' OR c.from_state = 'RUNNING') AS run_step
                  FROM changed c) c
         WHERE c.moved
    ), steps AS (
        INSERT INTO run_steps AS r (batch_job_id, bucket, workflow, owner, writer,
                                    level_change, moment, starts, ends, done, failed,
                                    first_start, last_end, first_event, last_event)
        SELECT s.job_id, s.bucket, s.workflow, s.owner, pg_backend_pid(),
               sum(s.sw), sum(s.sw * s.dt),
               count(*) FILTER (WHERE s.sw > 0), count(*) FILTER (WHERE s.sw < 0),
               count(*) FILTER (WHERE s.sw < 0
                                  AND s.to_state IN ('RUN_DONE', 'POSTPROCESSED', 'JOB_FINISHED')),
               count(*) FILTER (WHERE s.sw < 0
                                  AND s.to_state IN ('RUN_ERROR', 'RUN_TIMEOUT', 'FAILED')),
               min(s.dt) FILTER (WHERE s.sw > 0), max(s.dt) FILTER (WHERE s.sw < 0),
               min(s.event_id), max(s.event_id)
          FROM (SELECT c.job_id, run_step_bucket(c.at) AS bucket, c.workflow, c.owner,
                       c.to_state, c.event_id,
                       CASE WHEN c.to_state = 'RUNNING' THEN c.w ELSE -c.w END AS sw,
                       date_part('epoch', c.at) - run_step_bucket(c.at) AS dt
                  FROM changed c
                 WHERE c.moved AND c.job_id IS NOT NULL
                   AND (c.to_state = 'RUNNING' OR c.from_state = 'RUNNING')) s
         GROUP BY s.job_id, s.bucket, s.workflow, s.owner
        ON CONFLICT (batch_job_id, bucket, workflow, owner, writer) DO UPDATE
           SET level_change = r.level_change + excluded.level_change,
               moment = r.moment + excluded.moment,
               starts = r.starts + excluded.starts,
               ends = r.ends + excluded.ends,
               done = r.done + excluded.done,
               failed = r.failed + excluded.failed,
               first_start = least(r.first_start, excluded.first_start),
               last_end = greatest(r.last_end, excluded.last_end),
               first_event = least(r.first_event, excluded.first_event),
               last_event = greatest(r.last_event, excluded.last_event)
    )
    SELECT array_agg(c.id) FILTER (WHERE c.reshaped),
           array_agg(c.id) FILTER (WHERE c.step = 1 AND c.new_state = 'JOB_FINISHED'
                                     AND c.old_state <> 'JOB_FINISHED'),
           array_agg(c.id) FILTER (WHERE c.step = 1
                                     AND c.new_state IN ('FAILED', 'USER_KILLED')
                                     AND c.old_state NOT IN ('FAILED', 'USER_KILLED')),
           array_agg(c.id) FILTER (WHERE c.step = 1 AND c.moved
                                     AND c.new_state IN ('JOB_FINISHED', 'FAILED',
                                                         'USER_KILLED')),
           (array_agg(c.id) FILTER (WHERE c.illegal))[1],
           (array_agg(c.old_state::text) FILTER (WHERE c.illegal))[1],
           (array_agg(c.new_state::text) FILTER (WHERE c.illegal))[1]
      INTO reshaped, done, stopped, ended, bad_id, bad_from, bad_to
      FROM changed c;
    IF bad_id IS NOT NULL THEN
        RAISE EXCEPTION 'task %: % -> % is not a state change balsam allows', bad_id,
            bad_from, bad_to USING ERRCODE = 'check_violation';
    END IF;
    IF reshaped IS NOT NULL THEN
        PERFORM run_steps_mark_dirty(reshaped);
    END IF;
    -- The waiters (0009): the ids that reached a final state, 350 to a notification.
    IF ended IS NOT NULL THEN
        FOR chunk IN
            SELECT string_agg(e.id::text, ',')
              FROM (SELECT e.id, (row_number() OVER ()) / 350 AS k
                      FROM unnest(ended) AS e (id)) e
             GROUP BY e.k
        LOOP
            PERFORM pg_notify('balsam_task_final', chunk);
        END LOOP;
    END IF;
    IF done IS NOT NULL OR stopped IS NOT NULL THEN
        PERFORM tasks_propagate_ids(done, stopped);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_on_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_on_update();

-- ---- plans made once per session ----------------------------------------------------------
-- PL/pgSQL plans a statement with parameters for each call's values (a custom plan) until
-- a generic plan looks no dearer; the claim's statement never qualified, so every claim
-- was planned again: about 0.3 ms of a 16-row claim's 1 ms here, and the reports'
-- statements over their arrays likewise (benchmarks/README.md). The claim's plan is
-- pinned by its settings (0008, 0011: the runnable index in (priority, id) order, no sort,
-- no bitmap, no sequential scan) and the reports' statements match rows by id (an index
-- probe per array element, whatever the array's length), so one plan per session serves
-- every call (tests/db/test_index_writes.py reads it).
ALTER FUNCTION launcher_claim(bigint, bigint, integer, double precision, double precision,
                              text[], jsonb, text[], double precision, integer)
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION launcher_apply_reports(bigint, bigint, bigint[], double precision[], bigint[],
                                      smallint[], integer[], double precision[],
                                      double precision[], text[], integer)
    SET plan_cache_mode = force_generic_plan;
