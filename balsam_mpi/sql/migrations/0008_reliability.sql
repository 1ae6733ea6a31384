-- 0008_reliability: reports that survive their leader, kills that keep the run they
-- raced, claims that carry what a node needs (docs/reliability.md).
--
-- * launcher_report becomes a thin, checked wrapper around launcher_apply_reports, which
--   `launcher_replay` shares: a leader's journal (balsam_mpi/launcher/journal.py) is applied by
--   exactly the code that applies its live reports.
-- * New report kinds: 14 = lost (the task's worker rank stopped answering: counted like
--   a lost lease), 15 = failed by the launcher (a row it cannot run, a report the
--   database cannot store): FAILED at once, the state message is the reason.
-- * A task killed while its run was under way keeps that run in its history: its start
--   and end (the node's times, the exit code) are recorded; its state stays USER_KILLED.
-- * launcher_claim also returns the priority (the leader keeps the claim's order), the
--   task's input_files and its parents' (workflow, id, name), so the node links inputs.

-- ---- the journal's keys ----------------------------------------------------------------
-- One secret per (batch job, lease epoch), handed only to that job's own user while the
-- job runs at that epoch. Every journal line carries HMAC-SHA256(key, line); the replay
-- recomputes it, so a group member who writes a file into the project cannot make a
-- journal say that someone else's tasks finished. Nobody but balsam_objects reads this
-- table: the definer functions below are the only way in.
-- A run that ended well while its batch job was cut off from the database is written from
-- that job's journal even after the lease sweep requeued the task (nobody claimed it
-- since): RESTART_READY goes straight to the run's end state (models.TRANSITIONS).
INSERT INTO task_transitions (from_state, to_state)
VALUES ('RESTART_READY', 'RUN_DONE'), ('RESTART_READY', 'RUN_ERROR'),
       ('RESTART_READY', 'RUN_TIMEOUT');

CREATE TABLE launcher_journals (
    job_id        bigint NOT NULL REFERENCES batch_jobs (id) ON DELETE CASCADE,
    lease_epoch   bigint NOT NULL,
    mac_key       bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    replayed_seq  bigint NOT NULL DEFAULT 0,  -- lines a replay went through, in order
    -- Reports come in groups (one per node report), numbered by the leader; its flushes
    -- say up to which group they wrote, in the same transaction, so a replay skips what
    -- the live leader already wrote (applying a report twice is not harmless: the task
    -- may have been claimed and started again under the same batch job and epoch).
    applied_through bigint NOT NULL DEFAULT 0,
    done          boolean NOT NULL DEFAULT false,  -- closed cleanly, or its end line applied
    PRIMARY KEY (job_id, lease_epoch)
);
REVOKE ALL ON launcher_journals FROM PUBLIC, balsam_member, balsam_viewer;

-- The journal key of the caller's own running batch job (made on first use).
-- gen_random_uuid() draws from the server's strong random source (PostgreSQL >= 13).
CREATE FUNCTION launcher_journal_key(p_job bigint, p_epoch bigint) RETURNS bytea
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    k bytea;
BEGIN
    PERFORM launcher_check_user(p_job);
    PERFORM 1 FROM public.batch_jobs b
      WHERE b.id = p_job AND b.lease_epoch = p_epoch AND b.state = 'RUNNING';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch job % (epoch %) no longer holds its lease', p_job, p_epoch
            USING ERRCODE = 'lock_not_available';
    END IF;
    INSERT INTO public.launcher_journals (job_id, lease_epoch, mac_key)
    VALUES (p_job, p_epoch,
            sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text
                              || gen_random_uuid()::text, 'UTF8')))
    ON CONFLICT DO NOTHING;
    SELECT j.mac_key INTO k FROM public.launcher_journals j
     WHERE j.job_id = p_job AND j.lease_epoch = p_epoch;
    RETURN k;
END $$;

-- The leader closed its batch job with everything written: its journal is not needed.
CREATE FUNCTION launcher_journal_done(p_job bigint, p_epoch bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    UPDATE public.launcher_journals j SET done = true
     WHERE j.job_id = p_job AND j.lease_epoch = p_epoch;
END $$;

-- Journals that may hold reports nobody wrote: not done, of a job that no longer runs
-- at that epoch or whose lease ran out, made in the last week (older ones are left).
CREATE FUNCTION launcher_journals_due()
RETURNS TABLE (job_id bigint, lease_epoch bigint, job_user text, replayed_seq bigint)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT j.job_id, j.lease_epoch, b."user", j.replayed_seq
      FROM public.launcher_journals j JOIN public.batch_jobs b ON b.id = j.job_id
     WHERE NOT j.done AND j.created_at > now() - interval '7 days'
       AND (b.state <> 'RUNNING' OR b.lease_epoch <> j.lease_epoch
            OR coalesce(b.heartbeat_at, b.started_at)
               < now() - make_interval(secs => b.lease_sec))
     ORDER BY j.job_id, j.lease_epoch;
$$;

-- ---- reports ----------------------------------------------------------------------------
-- The states a batch of reports moves (0006's steps, plus kinds 14 and 15 and the runs of
-- killed tasks). Not granted to anyone: launcher_report (the leader, checked to be the
-- job's user) and launcher_replay (anyone, checked by the journal's MAC) call it.
CREATE FUNCTION launcher_apply_reports(
    p_job bigint, p_epoch bigint,
    s_ids bigint[], s_at double precision[],
    f_ids bigint[], f_kind smallint[], f_rc integer[], f_started double precision[],
    f_ended double precision[], f_tail text[])
RETURNS TABLE (step text, changed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n bigint;
    m bigint := 0;
    lost bigint := 0;
    n_ends bigint;
    ok_ids bigint[];
    post_ids bigint[];
    bad_ids bigint[];
    failed_ids bigint[];
BEGIN
    IF cardinality(s_ids) > 0 THEN
        IF EXISTS (SELECT 1 FROM public.apps a WHERE a.preprocess <> '') THEN
            UPDATE public.tasks t SET state = 'PREPROCESSED'
              FROM unnest(s_ids) AS s(id), public.apps a
             WHERE t.id = s.id AND a.id = t.app_id AND a.preprocess <> ''
               AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch AND t.state = 'READY';
        END IF;
        UPDATE public.tasks t SET state = 'RUNNING', started_at = to_timestamp(s.at),
                                  state_message = ''
          FROM unnest(s_ids, s_at) AS s(id, at)
         WHERE t.id = s.id AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('READY', 'RESTART_READY', 'PREPROCESSED');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'started'; changed := n; RETURN NEXT;
        -- Some starts matched nothing: a task killed before its start was written keeps
        -- the run it had (its RUNNING event at the node's time; the state stays killed).
        IF n < cardinality(s_ids) THEN
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
    IF cardinality(f_ids) = 0 THEN
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
    step := 'ended'; changed := n + m + lost; RETURN NEXT;

    -- Ends that matched nothing, of tasks killed under this claim: the run is kept. If
    -- the kill found the task RUNNING, its kill event already ends the run, and the row
    -- takes the node's end time and exit code; if the kill came before the start was
    -- written (the start was recorded above), an end event at the node's time closes it.
    SELECT count(*) INTO n_ends FROM unnest(f_kind) AS k(kind) WHERE k.kind NOT IN (13, 14);
    IF n < n_ends THEN
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

    IF ok_ids IS NOT NULL THEN
        UPDATE public.tasks t SET state = 'JOB_FINISHED'
         WHERE t.id = ANY (ok_ids) AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state = 'RUN_DONE';
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'finished'; changed := n; RETURN NEXT;
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

-- The leader's reports: only the batch job's own user (the rest as 0006 documented).
CREATE OR REPLACE FUNCTION launcher_report(
    p_job bigint, p_epoch bigint,
    s_ids bigint[], s_at double precision[],
    f_ids bigint[], f_kind smallint[], f_rc integer[], f_started double precision[],
    f_ended double precision[], f_tail text[])
RETURNS TABLE (step text, changed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    RETURN QUERY SELECT * FROM launcher_apply_reports(p_job, p_epoch, s_ids, s_at, f_ids,
                                                      f_kind, f_rc, f_started, f_ended,
                                                      f_tail);
END $$;

-- The same, for a leader that keeps a journal: ``p_through`` is the last report group
-- this batch completes, recorded in the same transaction (see launcher_journals).
CREATE FUNCTION launcher_report(
    p_job bigint, p_epoch bigint,
    s_ids bigint[], s_at double precision[],
    f_ids bigint[], f_kind smallint[], f_rc integer[], f_started double precision[],
    f_ended double precision[], f_tail text[], p_through bigint)
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
                                                      f_tail);
END $$;

-- ---- replaying a journal ----------------------------------------------------------------
-- Anyone may replay anyone's journal (the next leader, `balsam-dbctl recover`); what makes
-- it safe is here, not in the caller:
--   * every line's HMAC-SHA256 under the job's key is checked (a line that fails stops
--     the replay there), and its job and epoch must be the ones named;
--   * lines are taken in order, each once: they must continue exactly where the last
--     replay stopped (replayed_seq + 1, no gaps), so a replayer cannot skip or reorder;
--   * report groups the live leader wrote (applied_through) are skipped;
--   * a job that still holds its lease is not replayed (its leader writes for itself);
--   * reports apply as the live leader's would, fenced by (job, epoch, expected state);
--     besides, a success also applies to a task that this job's end requeued (a lost
--     lease, a failed close) as long as nothing claimed it since: the lost counter that
--     requeue spent is given back.
-- p_lines are the lines' JSON texts exactly as written, p_macs their MACs in hex. A line:
-- {"job", "epoch", "seq", "g": [[group, [Started...], [Finished...]], ...], "end"?} with
-- the protocol's tuples, Started (id, epoch, at) and Finished (id, epoch, kind, rc,
-- started, ended, tail).
CREATE FUNCTION launcher_replay(p_job bigint, p_epoch bigint, p_lines text[],
                                p_macs text[])
RETURNS TABLE (step text, changed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    j public.launcher_journals%ROWTYPE;
    job public.batch_jobs%ROWTYPE;
    ikey bytea;
    okey bytea;
    k bytea;
    doc jsonb;
    grp jsonb;
    groups jsonb := '[]';
    seq bigint;
    through bigint;
    i integer;
    applied integer := 0;
    finished boolean := false;
    s_ids bigint[];
    s_at float8[];
    f_ids bigint[];
    f_kind smallint[];
    f_rc integer[];
    f_started float8[];
    f_ended float8[];
    f_tail text[];
    all_f_ids bigint[] := '{}';
    all_f_kind smallint[] := '{}';
    all_f_rc integer[] := '{}';
    all_f_started float8[] := '{}';
    all_f_ended float8[] := '{}';
    r record;
    n bigint;
    ok_ids bigint[];
    post_ids bigint[];
BEGIN
    SELECT * INTO j FROM public.launcher_journals x
     WHERE x.job_id = p_job AND x.lease_epoch = p_epoch FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch job % (epoch %) has no journal', p_job, p_epoch
            USING ERRCODE = 'no_data_found';
    END IF;
    SELECT * INTO job FROM public.batch_jobs b WHERE b.id = p_job;
    IF job.state = 'RUNNING' AND job.lease_epoch = p_epoch
       AND coalesce(job.heartbeat_at, job.started_at)
           >= now() - make_interval(secs => job.lease_sec) THEN
        RAISE EXCEPTION 'batch job % still holds its lease: its own leader writes its reports',
            p_job USING ERRCODE = 'lock_not_available';
    END IF;
    -- HMAC-SHA256 (RFC 2104) from the built-in sha256(): the 32-byte key padded to the
    -- 64-byte block, XORed with the inner and outer pads once per call.
    k := j.mac_key || decode(repeat('00', 64 - length(j.mac_key)), 'hex');
    ikey := k;
    okey := k;
    FOR i IN 0..63 LOOP
        ikey := set_byte(ikey, i, get_byte(k, i) # 54);
        okey := set_byte(okey, i, get_byte(k, i) # 92);
    END LOOP;
    seq := j.replayed_seq;
    through := j.applied_through;
    FOR i IN 1..coalesce(cardinality(p_lines), 0) LOOP
        EXIT WHEN p_macs[i] IS NULL OR lower(p_macs[i]) <> encode(
            sha256(okey || sha256(ikey || convert_to(p_lines[i], 'UTF8'))), 'hex');
        doc := p_lines[i]::jsonb;
        EXIT WHEN (doc->>'job')::bigint IS DISTINCT FROM p_job
               OR (doc->>'epoch')::bigint IS DISTINCT FROM p_epoch;
        CONTINUE WHEN (doc->>'seq')::bigint <= seq;  -- taken by an earlier replay
        EXIT WHEN (doc->>'seq')::bigint <> seq + 1;  -- a gap: stop where it is known good
        seq := seq + 1;
        applied := applied + 1;
        finished := finished OR coalesce((doc->>'end')::boolean, false);
        FOR grp IN SELECT g.value FROM jsonb_array_elements(coalesce(doc->'g', '[]')) g LOOP
            CONTINUE WHEN (grp->>0)::bigint <= through;  -- written by the live leader
            through := (grp->>0)::bigint;
            groups := groups || jsonb_build_array(grp);
        END LOOP;
    END LOOP;
    step := 'lines'; changed := applied; RETURN NEXT;
    IF applied = 0 THEN
        RETURN;
    END IF;

    -- Everything in one call when each task appears once; else group by group, in order
    -- (a task reported twice ran twice under this claim, after a retry).
    SELECT coalesce(array_agg((e->>0)::bigint), '{}'), coalesce(array_agg((e->>2)::float8), '{}')
      INTO s_ids, s_at
      FROM jsonb_array_elements(groups) g, jsonb_array_elements(g.value->1) e;
    SELECT coalesce(array_agg((e->>0)::bigint), '{}'),
           coalesce(array_agg((e->>2)::smallint), '{}'),
           coalesce(array_agg((e->>3)::integer), '{}'),
           coalesce(array_agg((e->>4)::float8), '{}'),
           coalesce(array_agg((e->>5)::float8), '{}'),
           coalesce(array_agg(e->>6), '{}')
      INTO f_ids, f_kind, f_rc, f_started, f_ended, f_tail
      FROM jsonb_array_elements(groups) g, jsonb_array_elements(g.value->2) e;
    all_f_ids := f_ids; all_f_kind := f_kind; all_f_rc := f_rc;
    all_f_started := f_started; all_f_ended := f_ended;
    IF (SELECT count(*) = count(DISTINCT x) FROM unnest(s_ids) x)
       AND (SELECT count(*) = count(DISTINCT x) FROM unnest(f_ids) x) THEN
        FOR r IN SELECT * FROM launcher_apply_reports(p_job, p_epoch, s_ids, s_at, f_ids,
                                                      f_kind, f_rc, f_started, f_ended,
                                                      f_tail) LOOP
            step := r.step; changed := r.changed; RETURN NEXT;
        END LOOP;
    ELSE
        FOR grp IN SELECT g.value FROM jsonb_array_elements(groups) g LOOP
            SELECT coalesce(array_agg((e->>0)::bigint), '{}'),
                   coalesce(array_agg((e->>2)::float8), '{}')
              INTO s_ids, s_at FROM jsonb_array_elements(grp->1) e;
            SELECT coalesce(array_agg((e->>0)::bigint), '{}'),
                   coalesce(array_agg((e->>2)::smallint), '{}'),
                   coalesce(array_agg((e->>3)::integer), '{}'),
                   coalesce(array_agg((e->>4)::float8), '{}'),
                   coalesce(array_agg((e->>5)::float8), '{}'),
                   coalesce(array_agg(e->>6), '{}')
              INTO f_ids, f_kind, f_rc, f_started, f_ended, f_tail
              FROM jsonb_array_elements(grp->2) e;
            PERFORM launcher_apply_reports(p_job, p_epoch, s_ids, s_at, f_ids, f_kind,
                                           f_rc, f_started, f_ended, f_tail);
        END LOOP;
    END IF;

    -- Successes of tasks this job's end requeued (lost lease, failed close) and nobody
    -- claimed since: the last event is that requeue, by this job.
    WITH ok AS (
        SELECT f.id, f.kind, f.rc, f.started, f.ended
          FROM unnest(all_f_ids, all_f_kind, all_f_rc, all_f_started, all_f_ended)
               AS f(id, kind, rc, started, ended)
         WHERE f.kind IN (0, 5, 7, 10)
    ), hit AS (
        UPDATE public.tasks t
           SET state = CASE ok.kind WHEN 7 THEN 'RUN_ERROR'::public.task_state
                                    WHEN 10 THEN 'RUN_TIMEOUT'::public.task_state
                                    ELSE 'RUN_DONE'::public.task_state END,
               started_at = to_timestamp(ok.started), ended_at = to_timestamp(ok.ended),
               exit_code = ok.rc, output_tail = '',
               lost_retries = greatest(0, t.lost_retries
                                          - (last.message LIKE 'lost:%')::integer),
               state_message = format('finished while batch job %s was cut off; '
                                      'written from its journal', p_job)
          FROM ok, LATERAL (SELECT e.from_state, e.to_state, e.batch_job_id, e.message
                              FROM public.task_events e WHERE e.task_id = ok.id
                             ORDER BY e.id DESC LIMIT 1) last
         WHERE t.id = ok.id AND t.state = 'RESTART_READY' AND t.batch_job_id IS NULL
           AND t.lease_epoch = p_epoch AND last.from_state = 'RUNNING'
           AND last.to_state = 'RESTART_READY' AND last.batch_job_id = p_job
        RETURNING t.id, ok.kind
    )
    SELECT array_agg(h.id), array_agg(h.id) FILTER (WHERE h.kind <> 0)
      INTO ok_ids, post_ids FROM hit h;
    IF ok_ids IS NOT NULL THEN
        IF post_ids IS NOT NULL THEN
            UPDATE public.tasks t SET state = 'POSTPROCESSED' WHERE t.id = ANY (post_ids);
        END IF;
        UPDATE public.tasks t SET state = 'JOB_FINISHED'
         WHERE t.id = ANY (ok_ids) AND t.state IN ('RUN_DONE', 'POSTPROCESSED');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'finished_after_requeue'; changed := n; RETURN NEXT;
    END IF;

    UPDATE public.launcher_journals x
       SET replayed_seq = seq, applied_through = through, done = x.done OR finished
     WHERE x.job_id = p_job AND x.lease_epoch = p_epoch;
END $$;

-- ---- the claim --------------------------------------------------------------------------
-- As in 0004, and also the priority (the leader keeps this order), the input_files and,
-- only for tasks that have input_files, their parents as [workflow, id, name] in id order
-- (the node links matching files from those directories before the task starts).
DROP FUNCTION launcher_claim(bigint, bigint, integer, double precision, double precision,
                             text[], jsonb, text[], double precision, integer);
CREATE FUNCTION launcher_claim(
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

GRANT EXECUTE ON FUNCTION
    launcher_claim(bigint, bigint, integer, double precision, double precision, text[],
                   jsonb, text[], double precision, integer),
    launcher_journal_key(bigint, bigint),
    launcher_journal_done(bigint, bigint),
    launcher_journals_due(),
    launcher_replay(bigint, bigint, text[], text[]),
    launcher_report(bigint, bigint, bigint[], double precision[], bigint[], smallint[],
                    integer[], double precision[], double precision[], text[], bigint)
TO balsam_member;
