-- 0011_one_write_per_short_task: a task whose start and plain success arrive in the same
-- flush is written once, READY → JOB_FINISHED, instead of three times (→ RUNNING,
-- → RUN_DONE, → JOB_FINISHED); its history is the same as when they come apart
-- (docs/launcher.md, "Reports").
--
-- Each write of a task row is a new row version with an entry in each of its indexes,
-- and it passes through every statement trigger; three writes per short task were most
-- of the launcher's database time. The history is kept by the event trigger, which
-- writes the three events the two-step path would have (the run's start at the node's
-- start time, its end at the node's end time, then the finish), and the transition
-- check, which lets a row skip from a startable state to JOB_FINISHED only when the
-- same write records a new run (a new start and a new end time) through steps that are
-- each allowed. Nothing but the report function writes such a row: members do not
-- write states (0007), and no other definer function moves a row from a startable
-- state to JOB_FINISHED.
--
-- The leader puts the pairs first (launcher/store.py): a start and a plain success of the same
-- task at the same index of the start and end arrays, ``p_paired`` of them. The server
-- checks them: if any pair is not one (ids that differ, an end that is not a plain
-- success) the batch is applied the usual way; a pair whose row is not this claim's in
-- a startable state is left to the usual statements, as if it had not been paired.
--
-- Also cheaper per claimed row (benchmarks/README.md, "The database path per task"): the
-- runnable indexes leave out claimed rows, and the foreign key tasks.batch_job_id →
-- batch_jobs, checked by a query per claimed row, gives way to one lock per claim and a
-- trigger that releases a deleted job's tasks. The DAG trigger skips its children's
-- UPDATE when the finished tasks have none.

-- ---- the history ---------------------------------------------------------------------
-- 0010's trigger (events in bulk, their run steps summed into run_steps, reshaped tasks'
-- buckets marked dirty), where a combined write's row gives the three events (and run
-- steps) of its two-step path: its start at started_at, its end at ended_at, its finish
-- at the statement's clock, with ids in that order. The step list joins each row of
-- the transition tables to (1), (2), (3): only a nested loop can, which keeps each
-- task's steps in order whichever side is outer; its penalty cost under
-- enable_nestloop = off would have the server compile the statement (jit: ≈ 0.2 s per
-- flush, more than the whole flush), hence jit = off.
CREATE OR REPLACE FUNCTION tasks_events_on_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_nestloop = off SET enable_sort = off SET jit = off AS $$
DECLARE
    reshaped bigint[];
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
               x.workflow, x.owner, x.w, x.moved, x.reshaped
          FROM (SELECT n.id, n.started_at, o.started_at AS old_started, n.ended_at,
                       o.ended_at AS old_ended,
                       coalesce(n.batch_job_id, o.batch_job_id) AS job_id, n.state_message,
                       n.workflow, n.owner, n.num_nodes::float8 / n.node_packing_count AS w,
                       n.state IS DISTINCT FROM o.state AS moved,
                       k.step = 1 AND (n.workflow, n.num_nodes, n.node_packing_count)
                         IS DISTINCT FROM (o.workflow, o.num_nodes, o.node_packing_count)
                         AS reshaped,
                       CASE WHEN NOT c.combined OR k.step = 1 THEN o.state
                            WHEN k.step = 2 THEN 'RUNNING'::task_state
                            ELSE 'RUN_DONE'::task_state END AS from_state,
                       CASE WHEN NOT c.combined THEN n.state
                            WHEN k.step = 1 THEN 'RUNNING'::task_state
                            WHEN k.step = 2 THEN 'RUN_DONE'::task_state
                            ELSE n.state END AS to_state
                  FROM new_rows n JOIN old_rows o ON o.id = n.id
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
    SELECT array_agg(c.id) FILTER (WHERE c.reshaped) INTO reshaped FROM changed c;
    IF reshaped IS NOT NULL THEN
        PERFORM run_steps_mark_dirty(reshaped);
    END IF;
    RETURN NULL;
END $$;

-- 0007's check, and the one skip a combined write makes.
CREATE OR REPLACE FUNCTION tasks_check_transitions() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_nestloop = off AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.id, o.state AS from_state, n.state AS to_state INTO bad
      FROM new_rows n JOIN old_rows o ON o.id = n.id
     WHERE n.state <> o.state
       AND NOT EXISTS (SELECT 1 FROM public.task_transitions x
                        WHERE x.from_state = o.state AND x.to_state = n.state)
       AND NOT (n.state = 'JOB_FINISHED'
                AND o.state IN ('READY', 'RESTART_READY', 'PREPROCESSED')
                AND n.started_at IS NOT NULL AND n.started_at IS DISTINCT FROM o.started_at
                AND n.ended_at IS NOT NULL AND n.ended_at IS DISTINCT FROM o.ended_at
                AND EXISTS (SELECT 1 FROM public.task_transitions x
                             WHERE x.from_state = o.state AND x.to_state = 'RUNNING'))
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'task %: % -> % is not a state change balsam allows', bad.id,
            bad.from_state, bad.to_state USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

-- ---- the reports -----------------------------------------------------------------------
-- 0008's launcher_apply_reports with the combined write first; the counts are those the
-- two-step path returns (a combined task counts as started, ended and finished).
CREATE FUNCTION launcher_apply_reports(
    p_job bigint, p_epoch bigint,
    s_ids bigint[], s_at double precision[],
    f_ids bigint[], f_kind smallint[], f_rc integer[], f_started double precision[],
    f_ended double precision[], f_tail text[], p_paired integer)
RETURNS TABLE (step text, changed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    had_starts boolean := cardinality(s_ids) > 0;
    had_ends boolean := cardinality(f_ids) > 0;
    paired integer := least(greatest(coalesce(p_paired, 0), 0), cardinality(s_ids),
                            cardinality(f_ids));
    c bigint := 0;
    n bigint;
    n_started bigint := 0;
    m bigint := 0;
    lost bigint := 0;
    n_ends bigint;
    ok_ids bigint[];
    post_ids bigint[];
    bad_ids bigint[];
    failed_ids bigint[];
BEGIN
    IF had_starts AND EXISTS (SELECT 1 FROM public.apps a WHERE a.preprocess <> '') THEN
        UPDATE public.tasks t SET state = 'PREPROCESSED'
          FROM unnest(s_ids) AS s(id), public.apps a
         WHERE t.id = s.id AND a.id = t.app_id AND a.preprocess <> ''
           AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch AND t.state = 'READY';
    END IF;

    -- The pairs: one write each, READY (or RESTART_READY, PREPROCESSED) → JOB_FINISHED,
    -- fenced like every other write. The arrays are zipped, not joined: no plan to go
    -- wrong whatever the batch's size. A batch whose pairs are not pairs (a start and
    -- an end of different tasks, an end that is not a plain success) has none.
    IF paired > 0 AND EXISTS (
        SELECT 1 FROM unnest(s_ids[1:paired], f_ids[1:paired], f_kind[1:paired])
                      AS p(id, f_id, kind)
         WHERE p.f_id IS DISTINCT FROM p.id OR p.kind IS DISTINCT FROM 0) THEN
        paired := 0;
    END IF;
    IF paired > 0 THEN
        UPDATE public.tasks t
           SET state = 'JOB_FINISHED', started_at = to_timestamp(p.at),
               ended_at = to_timestamp(p.ended), exit_code = p.rc, output_tail = '',
               state_message = ''
          FROM unnest(s_ids[1:paired], s_at[1:paired], f_rc[1:paired], f_ended[1:paired])
               AS p(id, at, rc, ended)
         WHERE t.id = p.id AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('READY', 'RESTART_READY', 'PREPROCESSED')
           AND t.started_at IS DISTINCT FROM to_timestamp(p.at)
           AND t.ended_at IS DISTINCT FROM to_timestamp(p.ended);
        GET DIAGNOSTICS c = ROW_COUNT;
        IF c = paired THEN
            -- All written: the rest of the batch is what follows the pairs. (Otherwise
            -- every report goes on as usual; the rows written here no longer match.)
            s_ids := s_ids[paired + 1:]; s_at := s_at[paired + 1:];
            f_ids := f_ids[paired + 1:]; f_kind := f_kind[paired + 1:];
            f_rc := f_rc[paired + 1:]; f_started := f_started[paired + 1:];
            f_ended := f_ended[paired + 1:]; f_tail := f_tail[paired + 1:];
        END IF;
    END IF;

    IF cardinality(s_ids) > 0 THEN
        UPDATE public.tasks t SET state = 'RUNNING', started_at = to_timestamp(s.at),
                                  state_message = ''
          FROM unnest(s_ids, s_at) AS s(id, at)
         WHERE t.id = s.id AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('READY', 'RESTART_READY', 'PREPROCESSED');
        GET DIAGNOSTICS n_started = ROW_COUNT;
        -- Some starts matched nothing: a task killed before its start was written keeps
        -- the run it had (its RUNNING event at the node's time; the state stays killed).
        IF n_started + (CASE WHEN c = paired THEN 0 ELSE c END) < cardinality(s_ids) THEN
            WITH hit AS (
                UPDATE public.tasks t SET started_at = to_timestamp(s.at)
                  FROM unnest(s_ids, s_at) AS s(id, at),
                       LATERAL (SELECT e.from_state, e.to_state, e.batch_job_id
                                  FROM public.task_events e WHERE e.task_id = s.id
                                 ORDER BY e.id DESC LIMIT 1) last
                 WHERE t.id = s.id AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
                   AND t.state = 'USER_KILLED' AND last.to_state = 'USER_KILLED'
                   AND last.from_state IS DISTINCT FROM 'RUNNING'
                   AND last.batch_job_id = p_job
                RETURNING t.id, t.started_at, last.from_state
            )
            INSERT INTO public.task_events (task_id, from_state, to_state, at, batch_job_id,
                                            message)
            SELECT h.id, h.from_state, 'RUNNING', h.started_at, p_job,
                   'started on its node before the kill reached it'
              FROM hit h;
        END IF;
    END IF;
    IF had_starts THEN
        step := 'started'; changed := n_started + c; RETURN NEXT;
    END IF;
    IF NOT had_ends THEN
        RETURN;
    END IF;
    IF cardinality(f_ids) = 0 THEN
        step := 'ended'; changed := c; RETURN NEXT;
        step := 'finished'; changed := c; RETURN NEXT;
        RETURN;
    END IF;

    IF 13 = ANY (f_kind) THEN  -- the preprocess failed: the task never ran
        UPDATE public.tasks t
           SET state = 'FAILED', ended_at = to_timestamp(f.ended), exit_code = f.rc,
               output_tail = f.tail, state_message = format('preprocess exit code %s', f.rc),
               batch_job_id = NULL
          FROM unnest(f_ids, f_kind, f_rc, f_ended, f_tail) AS f(id, kind, rc, ended, tail)
         WHERE f.kind = 13 AND t.id = f.id AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state = 'READY';
        GET DIAGNOSTICS m = ROW_COUNT;
    END IF;

    IF 14 = ANY (f_kind) THEN  -- its worker rank stopped answering: lost, as with a lease
        UPDATE public.tasks t
           SET state = CASE WHEN t.lost_retries >= t.lost_retry_limit
                            THEN 'FAILED'::public.task_state
                            ELSE 'RESTART_READY'::public.task_state END,
               lost_retries = t.lost_retries + (t.lost_retries < t.lost_retry_limit)::integer,
               batch_job_id = NULL, claimed_at = NULL, state_message = 'lost: ' || f.tail
          FROM unnest(f_ids, f_kind, f_tail) AS f(id, kind, tail)
         WHERE f.kind = 14 AND t.id = f.id AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state = 'RUNNING';
        GET DIAGNOSTICS lost = ROW_COUNT;
    END IF;

    UPDATE public.tasks t
       SET state = CASE WHEN f.kind IN (0, 5, 6) THEN 'RUN_DONE'::public.task_state
                        WHEN f.kind IN (2, 10, 11, 12) THEN 'RUN_TIMEOUT'::public.task_state
                        WHEN f.kind = 3 THEN 'RESTART_READY'::public.task_state
                        ELSE 'RUN_ERROR'::public.task_state END,
           started_at = coalesce(t.started_at, to_timestamp(f.started)),
           ended_at = to_timestamp(f.ended),
           exit_code = f.rc,
           output_tail = CASE WHEN f.kind IN (0, 5, 15) THEN '' ELSE f.tail END,
           state_message = CASE
               WHEN f.kind IN (0, 5) THEN ''
               WHEN f.kind = 6 THEN 'the postprocess failed'
               WHEN f.kind IN (2, 11) THEN 'ran over its wall_time_min'
               WHEN f.kind = 10 THEN 'ran over its wall_time_min; the timeout handler dealt with it'
               WHEN f.kind = 12 THEN 'ran over its wall_time_min; the timeout handler failed'
               WHEN f.kind = 3 THEN 'requeued: the batch job stopped it'
               WHEN f.kind = 7 THEN format('exit code %s; the error handler dealt with it', f.rc)
               WHEN f.kind = 9 THEN format('exit code %s; the error handler failed', f.rc)
               WHEN f.kind = 15 THEN f.tail
               ELSE format('exit code %s', f.rc) END,
           batch_job_id = CASE WHEN f.kind = 3 THEN NULL ELSE t.batch_job_id END
      FROM unnest(f_ids, f_kind, f_rc, f_started, f_ended, f_tail)
           AS f(id, kind, rc, started, ended, tail)
     WHERE f.kind NOT IN (4, 13, 14) AND t.id = f.id AND t.batch_job_id = p_job
       AND t.lease_epoch = p_epoch AND t.state = 'RUNNING';
    GET DIAGNOSTICS n = ROW_COUNT;
    step := 'ended'; changed := n + m + lost + c; RETURN NEXT;

    -- Ends that matched nothing, of tasks killed under this claim: the run is kept (0008).
    SELECT count(*) INTO n_ends FROM unnest(f_kind) AS k(kind) WHERE k.kind NOT IN (13, 14);
    IF n + (CASE WHEN c = paired THEN 0 ELSE c END) < n_ends THEN
        WITH hit AS (
            UPDATE public.tasks t
               SET started_at = coalesce(t.started_at, to_timestamp(f.started)),
                   ended_at = to_timestamp(f.ended), exit_code = f.rc,
                   output_tail = CASE WHEN f.kind IN (0, 5) THEN '' ELSE f.tail END
              FROM unnest(f_ids, f_kind, f_rc, f_started, f_ended, f_tail)
                   AS f(id, kind, rc, started, ended, tail),
                   LATERAL (SELECT e.from_state, e.to_state, e.batch_job_id
                              FROM public.task_events e WHERE e.task_id = f.id
                             ORDER BY e.id DESC LIMIT 1) last
             WHERE f.kind NOT IN (13, 14) AND t.id = f.id AND t.batch_job_id = p_job
               AND t.lease_epoch = p_epoch AND t.state = 'USER_KILLED'
               AND last.batch_job_id = p_job
               AND (last.to_state = 'RUNNING'
                    OR last.to_state = 'USER_KILLED' AND last.from_state = 'RUNNING')
            RETURNING t.id, t.ended_at, f.kind, f.rc, last.to_state AS last_state
        )
        INSERT INTO public.task_events (task_id, from_state, to_state, at, batch_job_id,
                                        message)
        SELECT h.id, 'RUNNING',
               CASE WHEN h.kind IN (0, 5, 6) THEN 'RUN_DONE'::public.task_state
                    WHEN h.kind IN (2, 10, 11, 12) THEN 'RUN_TIMEOUT'::public.task_state
                    WHEN h.kind IN (3, 4) THEN 'USER_KILLED'::public.task_state
                    ELSE 'RUN_ERROR'::public.task_state END,
               h.ended_at, p_job,
               format('exit code %s; the task stays killed', h.rc)
          FROM hit h WHERE h.last_state = 'RUNNING';
    END IF;

    SELECT array_agg(x.id) FILTER (WHERE x.kind = 0),
           array_agg(x.id) FILTER (WHERE x.kind IN (5, 7, 10)),
           array_agg(x.id) FILTER (WHERE x.kind IN (1, 2, 8, 11)),
           array_agg(x.id) FILTER (WHERE x.kind IN (6, 9, 12, 15))
      INTO ok_ids, post_ids, bad_ids, failed_ids
      FROM unnest(f_ids, f_kind) AS x(id, kind);

    IF ok_ids IS NOT NULL OR c > 0 THEN
        n := 0;
        IF ok_ids IS NOT NULL THEN
            UPDATE public.tasks t SET state = 'JOB_FINISHED'
             WHERE t.id = ANY (ok_ids) AND t.batch_job_id = p_job
               AND t.lease_epoch = p_epoch AND t.state = 'RUN_DONE';
            GET DIAGNOSTICS n = ROW_COUNT;
        END IF;
        step := 'finished'; changed := n + c; RETURN NEXT;
    END IF;

    IF post_ids IS NOT NULL THEN
        UPDATE public.tasks t SET state = 'POSTPROCESSED'
         WHERE t.id = ANY (post_ids) AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('RUN_DONE', 'RUN_ERROR', 'RUN_TIMEOUT');
        UPDATE public.tasks t SET state = 'JOB_FINISHED'
         WHERE t.id = ANY (post_ids) AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state = 'POSTPROCESSED';
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'postprocessed'; changed := n; RETURN NEXT;
    END IF;

    IF failed_ids IS NOT NULL THEN
        UPDATE public.tasks t SET state = 'FAILED', batch_job_id = NULL
         WHERE t.id = ANY (failed_ids) AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('RUN_DONE', 'RUN_ERROR', 'RUN_TIMEOUT');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'failed'; changed := n; RETURN NEXT;
    END IF;

    IF bad_ids IS NOT NULL THEN
        UPDATE public.tasks t
           SET state = CASE WHEN r.retry THEN 'RESTART_READY'::public.task_state
                            ELSE 'FAILED'::public.task_state END,
               error_retries = t.error_retries
                               + (r.retry AND t.state = 'RUN_ERROR')::integer,
               timeout_retries = t.timeout_retries
                                 + (r.retry AND t.state = 'RUN_TIMEOUT')::integer,
               batch_job_id = NULL
          FROM (SELECT x.id,
                       x.state = 'RUN_ERROR' AND x.error_retries < x.error_retry_limit
                       OR x.state = 'RUN_TIMEOUT'
                          AND x.timeout_retries < x.timeout_retry_limit AS retry
                  FROM public.tasks x WHERE x.id = ANY (bad_ids)) r
         WHERE t.id = r.id AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state IN ('RUN_ERROR', 'RUN_TIMEOUT');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'retried_or_failed'; changed := n; RETURN NEXT;
    END IF;
END $$;

-- 0008's entry points keep their meaning: no pairs (a replay's lines come in groups).
CREATE OR REPLACE FUNCTION launcher_apply_reports(
    p_job bigint, p_epoch bigint,
    s_ids bigint[], s_at double precision[],
    f_ids bigint[], f_kind smallint[], f_rc integer[], f_started double precision[],
    f_ended double precision[], f_tail text[])
RETURNS TABLE (step text, changed bigint)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT * FROM public.launcher_apply_reports(p_job, p_epoch, s_ids, s_at, f_ids, f_kind,
                                                f_rc, f_started, f_ended, f_tail, 0);
$$;

-- The leader's reports with their pairs: as 0008's journaled launcher_report.
CREATE FUNCTION launcher_report(
    p_job bigint, p_epoch bigint,
    s_ids bigint[], s_at double precision[],
    f_ids bigint[], f_kind smallint[], f_rc integer[], f_started double precision[],
    f_ended double precision[], f_tail text[], p_through bigint, p_paired integer)
RETURNS TABLE (step text, changed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    IF p_through > 0 THEN
        UPDATE public.launcher_journals j
           SET applied_through = greatest(j.applied_through, p_through)
         WHERE j.job_id = p_job AND j.lease_epoch = p_epoch;
    END IF;
    RETURN QUERY SELECT * FROM launcher_apply_reports(p_job, p_epoch, s_ids, s_at, f_ids,
                                                      f_kind, f_rc, f_started, f_ended,
                                                      f_tail, p_paired);
END $$;

GRANT EXECUTE ON FUNCTION
    launcher_report(bigint, bigint, bigint[], double precision[], bigint[], smallint[],
                    integer[], double precision[], double precision[], text[], bigint,
                    integer)
TO balsam_member;

-- ---- the claim's indexes ---------------------------------------------------------------
-- The runnable indexes (0001) leave out claimed rows: a claim's write (batch_job_id set)
-- is then no entry in them, two index writes fewer per claimed task, and the next claim
-- does not step over the rows claimed before it that have not started yet (it filtered
-- them out one by one). The claim already asks for batch_job_id IS NULL, so its plan
-- stays on these indexes (tests/db/test_claim.py, test_claim_index.py).
DROP INDEX tasks_runnable;
DROP INDEX tasks_runnable_workflow;
CREATE INDEX tasks_runnable ON tasks (priority DESC, id)
    WHERE state IN ('READY', 'RESTART_READY') AND batch_job_id IS NULL;
CREATE INDEX tasks_runnable_workflow ON tasks (workflow, priority DESC, id)
    WHERE state IN ('READY', 'RESTART_READY') AND batch_job_id IS NULL;

-- ---- the claim's foreign key ------------------------------------------------------------
-- tasks.batch_job_id referenced batch_jobs (0001): Postgres checked it with a query per
-- claimed row (a key-share lock on the job's row, for each of up to 4,096 rows). Only
-- launcher_claim sets it, to the caller's own running job, which it now locks once per
-- claim the same way; and what ON DELETE SET NULL did is done by a trigger on
-- batch_jobs (`balsam-dbctl prune` deletes jobs whose tasks may be kept).
ALTER TABLE tasks DROP CONSTRAINT tasks_batch_job_id_fkey;

CREATE FUNCTION batch_jobs_release_tasks() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    UPDATE public.tasks t SET batch_job_id = NULL
      FROM old_rows o WHERE t.batch_job_id = o.id;
    RETURN NULL;
END $$;
CREATE TRIGGER batch_jobs_release_tasks AFTER DELETE ON batch_jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION batch_jobs_release_tasks();

-- 0008's claim, with the job's row locked once (above).
CREATE OR REPLACE FUNCTION launcher_claim(
    p_job bigint, p_epoch bigint, p_limit integer, p_capacity double precision,
    p_max_need double precision, p_workflows text[], p_tags jsonb, p_owners text[],
    p_remaining_min double precision, p_max_nodes integer)
RETURNS TABLE (id bigint, workflow text, name text, state task_state, app text,
               command text, shell boolean, env_script text, params jsonb, args text[],
               env jsonb, num_nodes integer, ranks_per_node integer,
               threads_per_rank integer, gpus_per_rank integer,
               node_packing_count integer, wall_time_min double precision,
               priority integer, input_files text[], parents jsonb)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off SET jit = off
AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    -- FOR KEY SHARE: the job cannot be deleted before this claim commits (what the
    -- foreign key's check did for every row).
    PERFORM 1 FROM public.batch_jobs b
      WHERE b.id = p_job AND b.lease_epoch = p_epoch AND b.state = 'RUNNING'
        FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch job % (epoch %) no longer holds its lease', p_job, p_epoch
            USING ERRCODE = 'lock_not_available';
    END IF;
    IF p_workflows IS NULL THEN
        RETURN QUERY
        WITH locked AS (
            SELECT t.id, t.priority, 1.0::float8 / t.node_packing_count AS need
              FROM public.tasks t
             WHERE t.state IN ('READY', 'RESTART_READY') AND t.batch_job_id IS NULL
               AND t.num_nodes <= p_max_nodes
               AND 1.0::float8 / t.node_packing_count <= p_max_need + 1e-9
               AND (p_remaining_min IS NULL OR t.wall_time_min <= p_remaining_min)
               AND (p_tags IS NULL OR t.tags @> p_tags)
               AND (p_owners IS NULL OR t.owner = ANY (p_owners))
             ORDER BY t.priority DESC, t.id
             LIMIT p_limit
               FOR UPDATE OF t SKIP LOCKED
        ), fitting AS (
            SELECT s.id FROM (
                SELECT l.id, sum(l.need) OVER (ORDER BY l.priority DESC, l.id) AS used
                  FROM locked l) s
             WHERE s.used <= p_capacity + 1e-9
        )
        UPDATE public.tasks t
           SET batch_job_id = p_job, lease_epoch = p_epoch, claimed_at = now()
          FROM fitting f, public.apps a
         WHERE t.id = f.id AND a.id = t.app_id
        RETURNING t.id, t.workflow, t.name, t.state, a.name, a.command, a.shell,
                  a.env_script, t.params, t.args, t.env, t.num_nodes, t.ranks_per_node,
                  t.threads_per_rank, t.gpus_per_rank, t.node_packing_count,
                  t.wall_time_min, t.priority, t.input_files,
                  CASE WHEN cardinality(t.input_files) > 0 THEN
                      (SELECT jsonb_agg(jsonb_build_array(p.workflow, p.id, p.name)
                                        ORDER BY p.id)
                         FROM public.task_deps d JOIN public.tasks p ON p.id = d.parent_id
                        WHERE d.child_id = t.id) END;
    ELSE
        RETURN QUERY
        WITH locked AS (
            SELECT c.id, c.priority, c.need
              FROM unnest(p_workflows) AS w(name)
             CROSS JOIN LATERAL (
                SELECT t.id, t.priority, 1.0::float8 / t.node_packing_count AS need
                  FROM public.tasks t
                 -- A range, not `=` (0004 says why: it keeps tasks_runnable_workflow).
                 WHERE t.workflow >= w.name AND t.workflow <= w.name
                   AND t.state IN ('READY', 'RESTART_READY') AND t.batch_job_id IS NULL
                   AND t.num_nodes <= p_max_nodes
                   AND 1.0::float8 / t.node_packing_count <= p_max_need + 1e-9
                   AND (p_remaining_min IS NULL OR t.wall_time_min <= p_remaining_min)
                   AND (p_tags IS NULL OR t.tags @> p_tags)
                   AND (p_owners IS NULL OR t.owner = ANY (p_owners))
                 ORDER BY t.workflow, t.priority DESC, t.id
                 LIMIT p_limit
                   FOR UPDATE OF t SKIP LOCKED) c
        ), fitting AS (
            SELECT s.id FROM (
                SELECT l.id, sum(l.need) OVER (ORDER BY l.priority DESC, l.id) AS used,
                       row_number() OVER (ORDER BY l.priority DESC, l.id) AS n
                  FROM locked l) s
             WHERE s.used <= p_capacity + 1e-9 AND s.n <= p_limit
        )
        UPDATE public.tasks t
           SET batch_job_id = p_job, lease_epoch = p_epoch, claimed_at = now()
          FROM fitting f, public.apps a
         WHERE t.id = f.id AND a.id = t.app_id
        RETURNING t.id, t.workflow, t.name, t.state, a.name, a.command, a.shell,
                  a.env_script, t.params, t.args, t.env, t.num_nodes, t.ranks_per_node,
                  t.threads_per_rank, t.gpus_per_rank, t.node_packing_count,
                  t.wall_time_min, t.priority, t.input_files,
                  CASE WHEN cardinality(t.input_files) > 0 THEN
                      (SELECT jsonb_agg(jsonb_build_array(p.workflow, p.id, p.name)
                                        ORDER BY p.id)
                         FROM public.task_deps d JOIN public.tasks p ON p.id = d.parent_id
                        WHERE d.child_id = t.id) END;
    END IF;
END $$;


-- ---- the DAG trigger -------------------------------------------------------------------
-- As 0007's, but a statement that finished tasks with no children (most of a launcher's
-- flushes) no longer runs the children's UPDATE for nothing: that empty statement still
-- went through every statement trigger on tasks.
CREATE OR REPLACE FUNCTION tasks_propagate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    done bigint[];
    stopped bigint[];
BEGIN
    -- Cheap exit for the launcher's common case (RUNNING, RUN_DONE, …): nothing to do.
    IF NOT EXISTS (
        SELECT 1 FROM new_rows n WHERE n.state IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED')
    ) THEN
        RETURN NULL;
    END IF;
    EXECUTE $q$
        SELECT array_agg(n.id) FILTER (WHERE n.state = 'JOB_FINISHED'),
               array_agg(n.id) FILTER (WHERE n.state <> 'JOB_FINISHED')
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.state = 'JOB_FINISHED' AND o.state <> 'JOB_FINISHED'
            OR n.state IN ('FAILED', 'USER_KILLED')
               AND o.state NOT IN ('FAILED', 'USER_KILLED')$q$
      INTO done, stopped;

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
        RETURN NULL;
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
    RETURN NULL;
END $$;

