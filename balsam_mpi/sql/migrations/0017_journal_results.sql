-- 0017_journal_results: a Python task's return value is written from its leader's
-- journal too (docs/python-tasks.md, docs/reliability.md).
--
-- A leader cut off from the database keeps its nodes' reports in its journal (0008), the
-- return values of Python calls included (the protocol's Finished carries them as an
-- eighth element since 0009). The replay wrote the ends but not the values, so a task
-- whose function had returned a value could be JOB_FINISHED with no result, and a
-- workflow waiting on it read None. The replay now writes them, under the rules of a live
-- flush (launcher_results, 0009): a success only, fenced by the job and its epoch, never
-- over a value already written, the same cap, and text that is not JSON refused alone
-- with a state message. A task the dead job's end had requeued and the replay finished
-- (0008's "finished_after_requeue") no longer names the job; the replay passes those ids.
--
-- launcher_results and the replay share one writer. It is nobody's to call (functions are
-- not executable by PUBLIC here, 0002): launcher_results checks its caller is the job's
-- user first; the replay has checked every line's MAC.

CREATE FUNCTION launcher_write_results(p_job bigint, p_epoch bigint, p_ids bigint[],
                                       p_results text[], p_also bigint[])
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n bigint := 0;
    m bigint;
    one record;
BEGIN
    BEGIN
        UPDATE public.tasks t
           SET result = CASE WHEN octet_length(r.doc) <= 262144 THEN r.doc::json END,
               state_message = CASE WHEN octet_length(r.doc) <= 262144 THEN t.state_message
                   ELSE format('the result was not stored: %s bytes of JSON, over the cap '
                               'of 262144', octet_length(r.doc)) END
          FROM unnest(p_ids, p_results) AS r(id, doc)
         WHERE t.id = r.id AND (t.batch_job_id = p_job OR t.id = ANY (p_also))
           AND t.lease_epoch = p_epoch
           AND t.state = 'JOB_FINISHED' AND t.result IS NULL;
        GET DIAGNOSTICS n = ROW_COUNT;
    EXCEPTION WHEN invalid_text_representation OR untranslatable_character
                   OR character_not_in_repertoire THEN
        n := 0;
        FOR one IN SELECT r.id, r.doc FROM unnest(p_ids, p_results) AS r(id, doc) LOOP
            BEGIN
                UPDATE public.tasks t
                   SET result = CASE WHEN octet_length(one.doc) <= 262144
                                     THEN one.doc::json END,
                       state_message = CASE WHEN octet_length(one.doc) <= 262144
                           THEN t.state_message
                           ELSE format('the result was not stored: %s bytes of JSON, over '
                                       'the cap of 262144', octet_length(one.doc)) END
                 WHERE t.id = one.id AND (t.batch_job_id = p_job OR t.id = ANY (p_also))
                   AND t.lease_epoch = p_epoch AND t.state = 'JOB_FINISHED'
                   AND t.result IS NULL;
                GET DIAGNOSTICS m = ROW_COUNT;
                n := n + m;
            EXCEPTION WHEN invalid_text_representation OR untranslatable_character
                           OR character_not_in_repertoire THEN
                UPDATE public.tasks t
                   SET state_message = 'the result was not stored: not valid JSON'
                 WHERE t.id = one.id AND (t.batch_job_id = p_job OR t.id = ANY (p_also))
                   AND t.lease_epoch = p_epoch AND t.state = 'JOB_FINISHED';
            END;
        END LOOP;
    END;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION launcher_results(p_job bigint, p_epoch bigint, p_ids bigint[],
                                            p_results text[])
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    RETURN launcher_write_results(p_job, p_epoch, p_ids, p_results, '{}');
END $$;


-- ---- the replay, as in 0008, and then the values ---------------------------------------
-- Finished is (id, epoch, kind, rc, started, ended, tail, result): result is the JSON
-- text a call returned, or null; journals written before 0009 have seven elements.
CREATE OR REPLACE FUNCTION launcher_replay(p_job bigint, p_epoch bigint, p_lines text[],
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
    v_ids bigint[];
    v_docs text[];
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

    -- The return values of the successes (the node sent them with the ends, 0017): held
    -- to the rules of a live flush, and to tasks this replay may speak for: still this
    -- job's, or just finished above after this job's requeue.
    SELECT array_agg((e->>0)::bigint), array_agg(e->>7)
      INTO v_ids, v_docs
      FROM jsonb_array_elements(groups) g, jsonb_array_elements(g.value->2) e
     WHERE (e->>2)::smallint = 0 AND e->>7 IS NOT NULL;
    IF v_ids IS NOT NULL THEN
        step := 'results';
        changed := launcher_write_results(p_job, p_epoch, v_ids, v_docs,
                                          coalesce(ok_ids, '{}'));
        RETURN NEXT;
    END IF;

    UPDATE public.launcher_journals x
       SET replayed_seq = seq, applied_through = through, done = x.done OR finished
     WHERE x.job_id = p_job AND x.lease_epoch = p_epoch;
END $$;
