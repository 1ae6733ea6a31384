-- 0004_launcher: the launcher's work as SECURITY DEFINER functions (docs/architecture.md §5, §6).
--
-- A leader (whoever runs it: the owner or a member) changes tasks only through these
-- functions, which run as balsam_objects with a fixed search_path. Each one is a single
-- call from the leader, so a claim or a whole batch of reports costs one round trip.
--
-- A claimed task keeps its runnable state (READY or RESTART_READY) and is marked taken by
-- batch_job_id / lease_epoch / claimed_at; it moves to RUNNING only when its node reports
-- the real start time, in the same UPDATE that sets started_at, so the RUNNING event
-- carries the node's clock. The claim skips rows with a batch_job_id; releasing a claim is
-- setting it back to NULL.

-- Every launcher function runs as balsam_objects, so it checks by itself who calls:
-- only a batch job's own user (session_user, the login role) may work under it, as for
-- 0002's batch_job_heartbeat. Not granted to anyone: called from the functions below.
CREATE FUNCTION launcher_check_user(p_job bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    owner_name text;
BEGIN
    SELECT b."user" INTO owner_name FROM public.batch_jobs b WHERE b.id = p_job;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch job % does not exist', p_job USING ERRCODE = 'no_data_found';
    END IF;
    IF owner_name <> session_user THEN
        RAISE EXCEPTION 'batch job % belongs to %: only its own launcher can use it',
            p_job, owner_name USING ERRCODE = 'insufficient_privilege';
    END IF;
END $$;

-- The batch job a leader runs under: adopt the row `balsam-mpi submit` made (by id, or by
-- scheduler + scheduler job id), else open a new one. Each adoption bumps lease_epoch, so
-- reports of an earlier leader of the same row are refused (fencing).
CREATE FUNCTION launcher_open_job(
    p_job_id bigint, p_scheduler text, p_scheduler_job_id text, p_host text,
    p_nodes integer, p_ranks integer, p_filters jsonb, p_wall_time_min double precision,
    p_lease_sec double precision)
RETURNS TABLE (job_id bigint, lease_epoch bigint, adopted boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    found_id bigint;
BEGIN
    IF p_job_id IS NOT NULL THEN
        SELECT b.id INTO found_id FROM public.batch_jobs b WHERE b.id = p_job_id FOR UPDATE;
        IF found_id IS NULL THEN
            RAISE EXCEPTION 'batch job % does not exist', p_job_id
                USING ERRCODE = 'no_data_found';
        END IF;
    ELSIF p_scheduler_job_id IS NOT NULL THEN
        SELECT b.id INTO found_id FROM public.batch_jobs b
         WHERE b.scheduler = p_scheduler AND b.scheduler_job_id = p_scheduler_job_id
           FOR UPDATE;
    END IF;
    IF found_id IS NOT NULL THEN
        PERFORM launcher_check_user(found_id);
        RETURN QUERY
        UPDATE public.batch_jobs b
           SET state = 'RUNNING', host = p_host, nodes = p_nodes, ranks = p_ranks,
               filters = p_filters,
               wall_time_min = coalesce(p_wall_time_min, b.wall_time_min),
               lease_sec = p_lease_sec, lease_epoch = b.lease_epoch + 1,
               started_at = coalesce(b.started_at, now()), heartbeat_at = now(),
               ended_at = NULL, end_reason = NULL
         WHERE b.id = found_id
        RETURNING b.id, b.lease_epoch, true;
    ELSE
        RETURN QUERY
        INSERT INTO public.batch_jobs (scheduler, scheduler_job_id, host, nodes, ranks, filters,
                                wall_time_min, state, lease_epoch, lease_sec, started_at,
                                heartbeat_at)
        VALUES (p_scheduler, p_scheduler_job_id, p_host, p_nodes, p_ranks, p_filters,
                p_wall_time_min, 'RUNNING', 1, p_lease_sec, now(), now())
        RETURNING batch_jobs.id, batch_jobs.lease_epoch, false;
    END IF;
END $$;

-- The claim: ONE statement. The inner CTE locks up to p_limit runnable, unclaimed rows in
-- (priority DESC, id) order with SKIP LOCKED, so concurrent leaders never wait on each
-- other nor take the same row; the outer running sum keeps the prefix whose node shares
-- fit p_capacity (Postgres refuses window functions beside FOR UPDATE, hence two levels);
-- the UPDATE marks the kept rows claimed and returns what a node needs to run them.
-- Locked rows outside the prefix are free again at commit.
-- Two shapes, so each stays on its partial index (tasks_runnable, and
-- tasks_runnable_workflow through one index probe per workflow): a filter on workflow
-- with the plain index made the planner discard up to 60k rows per claim. An EXPLAIN
-- test (tests/db/test_claim.py) keeps it so.
CREATE FUNCTION launcher_claim(
    p_job bigint, p_epoch bigint, p_limit integer, p_capacity double precision,
    p_max_need double precision, p_workflows text[], p_tags jsonb, p_owners text[],
    p_remaining_min double precision, p_max_nodes integer)
RETURNS TABLE (id bigint, workflow text, name text, state task_state, app text,
               command text, shell boolean, env_script text, params jsonb, args text[],
               env jsonb, num_nodes integer, ranks_per_node integer,
               threads_per_rank integer, gpus_per_rank integer,
               node_packing_count integer, wall_time_min double precision)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
-- Pinned to the ordered index scan whatever the statistics say: right after a bulk add
-- they are stale, and the planner then chose a bitmap scan plus a sort of every runnable
-- row to return 16 of them.
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off SET jit = off
AS $$
BEGIN
    -- A leader whose row is no longer RUNNING at this epoch (marked lost, adopted again
    -- by a newer leader, closed) claims nothing.
    PERFORM launcher_check_user(p_job);
    PERFORM 1 FROM public.batch_jobs b
      WHERE b.id = p_job AND b.lease_epoch = p_epoch AND b.state = 'RUNNING';
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
                  t.wall_time_min;
    ELSE
        RETURN QUERY
        WITH locked AS (
            SELECT c.id, c.priority, c.need
              FROM unnest(p_workflows) AS w(name)
             CROSS JOIN LATERAL (
                SELECT t.id, t.priority, 1.0::float8 / t.node_packing_count AS need
                  FROM public.tasks t
                 -- A range, not `=`: with `=` the planner treats the workflow as a
                 -- constant, drops it from the ORDER BY, and may walk tasks_runnable
                 -- filtering by workflow (the pitfall). As a range the ORDER BY below is
                 -- one only tasks_runnable_workflow yields without a sort (sorts are off).
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
                  t.wall_time_min;
    END IF;
END $$;

-- A batch of node reports, in one call. Every row names the claim it belongs to
-- (batch job + lease epoch) and the state it must be in, so a report from a superseded
-- claim, or about a task killed meanwhile, changes nothing (fencing; a kill is never
-- overwritten). The node's own times (epoch seconds) go into the UPDATE that changes
-- the state, so the events carry them. Returns how many rows each step changed.
--   started:  READY / RESTART_READY -> RUNNING (started_at)
--   finished: RUNNING -> RUN_DONE -> JOB_FINISHED (rc 0)
--             RUNNING -> RUN_ERROR -> RESTART_READY (retries left) or FAILED   (f_kind 1)
--             RUNNING -> RUN_TIMEOUT -> RESTART_READY (retries left) or FAILED (f_kind 2)
--             RUNNING -> RESTART_READY, uncounted (f_kind 3: cut off by the launcher)
CREATE FUNCTION launcher_report(
    p_job bigint, p_epoch bigint,
    s_ids bigint[], s_at double precision[],
    f_ids bigint[], f_kind smallint[], f_rc integer[], f_started double precision[],
    f_ended double precision[], f_tail text[])
RETURNS TABLE (step text, changed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n bigint;
    ok_ids bigint[];
    bad_ids bigint[];
BEGIN
    PERFORM launcher_check_user(p_job);
    IF cardinality(s_ids) > 0 THEN
        UPDATE public.tasks t SET state = 'RUNNING', started_at = to_timestamp(s.at), state_message = ''
          FROM unnest(s_ids, s_at) AS s(id, at)
         WHERE t.id = s.id AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('READY', 'RESTART_READY');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'started'; changed := n; RETURN NEXT;
    END IF;
    IF cardinality(f_ids) = 0 THEN
        RETURN;
    END IF;

    -- The end of the run, at the node's time.
    UPDATE public.tasks t
       SET state = CASE f.kind WHEN 0 THEN 'RUN_DONE'::public.task_state
                               WHEN 2 THEN 'RUN_TIMEOUT'::public.task_state
                               WHEN 3 THEN 'RESTART_READY'::public.task_state
                               ELSE 'RUN_ERROR'::public.task_state END,
           started_at = coalesce(t.started_at, to_timestamp(f.started)),
           ended_at = to_timestamp(f.ended),
           exit_code = f.rc,
           output_tail = CASE WHEN f.kind = 0 THEN '' ELSE f.tail END,
           state_message = CASE f.kind WHEN 0 THEN ''
                                       WHEN 2 THEN 'ran over its wall_time_min'
                                       WHEN 3 THEN 'requeued: the batch job stopped it'
                                       ELSE format('exit code %s', f.rc) END,
           batch_job_id = CASE WHEN f.kind = 3 THEN NULL ELSE t.batch_job_id END
      FROM unnest(f_ids, f_kind, f_rc, f_started, f_ended, f_tail)
           AS f(id, kind, rc, started, ended, tail)
     WHERE t.id = f.id AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
       AND t.state = 'RUNNING';
    GET DIAGNOSTICS n = ROW_COUNT;
    step := 'ended'; changed := n; RETURN NEXT;

    SELECT array_agg(x.id) FILTER (WHERE x.kind = 0),
           array_agg(x.id) FILTER (WHERE x.kind IN (1, 2))
      INTO ok_ids, bad_ids
      FROM unnest(f_ids, f_kind) AS x(id, kind);

    -- Successes finish (postprocessing arrives with issue 7).
    IF ok_ids IS NOT NULL THEN
        UPDATE public.tasks t SET state = 'JOB_FINISHED'
         WHERE t.id = ANY (ok_ids) AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state = 'RUN_DONE';
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'finished'; changed := n; RETURN NEXT;
    END IF;

    -- Errors and timeouts: retry while the task's own counter allows, else FAILED. The
    -- counters count the retries granted, so a FAILED task shows its limit reached.
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

-- The leader's heartbeat; false when the row is no longer this leader's to keep.
CREATE FUNCTION launcher_heartbeat(p_job bigint, p_epoch bigint)
RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    WITH beat AS (
        UPDATE public.batch_jobs b SET heartbeat_at = now()
         WHERE b.id = p_job AND b.lease_epoch = p_epoch AND b.state = 'RUNNING'
           AND b."user" = session_user
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM beat);
$$;

-- Which of this leader's tasks were killed meanwhile (USER_KILLED keeps the claim's
-- batch_job_id): the leader polls every second or two and sends the kills to the nodes.
CREATE FUNCTION launcher_kills(p_job bigint, p_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    RETURN QUERY
    SELECT t.id FROM public.tasks t
     WHERE t.id = ANY (p_ids) AND t.batch_job_id = p_job AND t.state = 'USER_KILLED';
END $$;

-- Give back claims that never started, requeue what still runs (see below), then close
-- the row with its state and reason.
CREATE FUNCTION launcher_close_job(p_job bigint, p_epoch bigint, p_state batch_job_state,
                                   p_reason text)
RETURNS TABLE (released bigint, requeued bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    r bigint;
    q bigint;
BEGIN
    PERFORM launcher_check_user(p_job);
    UPDATE public.tasks t SET batch_job_id = NULL, claimed_at = NULL
     WHERE t.batch_job_id = p_job AND t.lease_epoch = p_epoch
       AND t.state IN ('READY', 'RESTART_READY');
    GET DIAGNOSTICS r = ROW_COUNT;
    -- A launcher that failed lost its tasks (the lost counter, FAILED past its limit); one
    -- that stopped them on purpose (drain, wall time, signal) requeues them for free.
    UPDATE public.tasks t
       SET state = CASE WHEN p_state = 'FAILED' AND t.lost_retries >= t.lost_retry_limit
                        THEN 'FAILED'::public.task_state
                        ELSE 'RESTART_READY'::public.task_state END,
           lost_retries = t.lost_retries
                          + (p_state = 'FAILED' AND t.lost_retries < t.lost_retry_limit)::integer,
           batch_job_id = NULL, claimed_at = NULL,
           state_message = CASE WHEN p_state = 'FAILED' THEN 'lost: ' ELSE 'requeued: ' END
                           || p_reason
     WHERE t.batch_job_id = p_job AND t.lease_epoch = p_epoch AND t.state = 'RUNNING';
    GET DIAGNOSTICS q = ROW_COUNT;
    UPDATE public.batch_jobs b SET state = p_state, ended_at = now(), end_reason = p_reason
     WHERE b.id = p_job AND b.lease_epoch = p_epoch AND b.state = 'RUNNING';
    released := r; requeued := q; RETURN NEXT;
END $$;

GRANT EXECUTE ON FUNCTION
    launcher_open_job(bigint, text, text, text, integer, integer, jsonb,
                      double precision, double precision),
    launcher_claim(bigint, bigint, integer, double precision, double precision, text[],
                   jsonb, text[], double precision, integer),
    launcher_report(bigint, bigint, bigint[], double precision[], bigint[], smallint[],
                    integer[], double precision[], double precision[], text[]),
    launcher_heartbeat(bigint, bigint),
    launcher_kills(bigint, bigint[]),
    launcher_close_job(bigint, bigint, batch_job_state, text)
TO balsam_member;
