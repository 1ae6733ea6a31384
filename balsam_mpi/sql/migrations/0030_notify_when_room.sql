-- 0030_notify_when_room: ending a task no longer fails when the server's notification
-- queue is full; the waiters' notification is skipped instead, and waiters read their
-- tasks again every REREAD_S (tasks/waiting.py) whatever they hear.
--
-- LISTEN and NOTIFY carry no privilege in Postgres (0007 revoked only pg_notify), and the
-- queue (8 GB here) is cleared only up to its slowest listener. A viewer's session that
-- LISTENs and stays in a transaction (its idle timeout is its own to set to 0) holds the
-- queue; a second session of the viewer's filled it with 8 kB notifications in 114 s. From
-- then on, every transaction that notifies failed at commit, "too many notifications in
-- the NOTIFY queue": the waiters' notification is sent by the statement that ends a task,
-- so every launcher's flush of ended tasks and every `task kill` failed, and no task of
-- the project could end. (tests/db/test_waiting.py::
-- test_a_crowded_notification_queue_neither_stops_task_ends_nor_waits)
--
-- A notification is only a hint (waiters read the tasks it names), so it can be dropped:
-- while the queue is more than half full (pg_notification_queue_usage; the server log warns
-- from there on, naming the pid that holds it), the ids are not sent, the statement
-- commits, and the waiters find the ends at their next periodic read. What fills the
-- queue can still be ended only by the owner (docs/security.md, "The notification
-- queue"). The half leaves room for the transactions in flight: at the rate above the
-- other half lasts about a minute, and a check-to-commit takes milliseconds.

CREATE FUNCTION notify_queue_crowded() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT pg_notification_queue_usage() > 0.5
$$;

-- The ids that reached a final state, 350 to a notification (each stays under the
-- 8,000-byte limit: ids are at most 19 digits); nothing while the queue is crowded. Runs
-- as its caller: the definer triggers below, as balsam_objects, which may pg_notify.
CREATE FUNCTION notify_task_final(ids bigint[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
    chunk text;
BEGIN
    IF ids IS NULL OR cardinality(ids) = 0 OR notify_queue_crowded() THEN
        RETURN;
    END IF;
    FOR chunk IN
        SELECT string_agg(e.id::text, ',')
          FROM (SELECT e.id, (row_number() OVER ()) / 350 AS k
                  FROM unnest(ids) AS e (id)) e
         GROUP BY e.k
    LOOP
        PERFORM pg_notify('balsam_task_final', chunk);
    END LOOP;
END $$;
REVOKE EXECUTE ON FUNCTION notify_task_final(bigint[]) FROM PUBLIC;

-- 0016's trigger function, its notification loop now notify_task_final's (and its SET
-- clauses repeated: a replaced function keeps only those given).
CREATE OR REPLACE FUNCTION tasks_on_update() RETURNS trigger
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
    -- The waiters (0009), unless the server's queue is crowded (above).
    IF ended IS NOT NULL THEN
        PERFORM notify_task_final(ended);
    END IF;
    IF done IS NOT NULL OR stopped IS NOT NULL THEN
        PERFORM tasks_propagate_ids(done, stopped);
    END IF;
    RETURN NULL;
END $$;

-- 0009's: a task deleted while someone waits for it will never end.
CREATE OR REPLACE FUNCTION tasks_notify_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM notify_task_final(ARRAY(
        SELECT o.id FROM old_rows o
         WHERE o.state NOT IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED')));
    RETURN NULL;
END $$;
