-- 0006_mpi_tasks: the report function learns the app's pre/postprocessing (issue 7).
--
-- The node runs the app's preprocess before a task's first run and its postprocess after
-- the run (balsam_mpi/node/prepost.py); the report's kind says how both went, and this
-- function moves the states as legacy Balsam did, one set-based UPDATE per step:
--   started:  READY -> PREPROCESSED (the app has a preprocess) -> RUNNING
--   kind 0    RUNNING -> RUN_DONE -> JOB_FINISHED                 (no postprocess)
--   kind 5    RUNNING -> RUN_DONE -> POSTPROCESSED -> JOB_FINISHED
--   kind 6    RUNNING -> RUN_DONE -> FAILED                       (postprocess failed)
--   kind 7/10 RUNNING -> RUN_ERROR/RUN_TIMEOUT -> POSTPROCESSED -> JOB_FINISHED
--             (the error/timeout handler exited 0: it dealt with it)
--   kind 1/2, and 8/11 (the handler exited 75: retry)
--             RUNNING -> RUN_ERROR/RUN_TIMEOUT -> RESTART_READY (retries left) or FAILED
--   kind 9/12 RUNNING -> RUN_ERROR/RUN_TIMEOUT -> FAILED          (the handler failed)
--   kind 3    RUNNING -> RESTART_READY, uncounted (cut off by the launcher)
--   kind 13   READY -> FAILED (the preprocess failed; the task never ran)
-- Every row is still matched on (batch_job_id, lease_epoch, expected state): a report
-- from a superseded claim, or about a task killed meanwhile, changes nothing.
CREATE OR REPLACE FUNCTION launcher_report(
    p_job bigint, p_epoch bigint,
    s_ids bigint[], s_at double precision[],
    f_ids bigint[], f_kind smallint[], f_rc integer[], f_started double precision[],
    f_ended double precision[], f_tail text[])
RETURNS TABLE (step text, changed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n bigint;
    m bigint := 0;
    ok_ids bigint[];
    post_ids bigint[];
    bad_ids bigint[];
    failed_ids bigint[];
BEGIN
    PERFORM launcher_check_user(p_job);
    IF cardinality(s_ids) > 0 THEN
        -- The node ran the app's preprocess before this first run (it does so for a
        -- claimed READY task whose app has one): record PREPROCESSED on the way. Skipped
        -- outright while no app has a preprocess (the common, no-op-throughput case).
        IF EXISTS (SELECT 1 FROM public.apps a WHERE a.preprocess <> '') THEN
            UPDATE public.tasks t SET state = 'PREPROCESSED'
              FROM unnest(s_ids) AS s(id), public.apps a
             WHERE t.id = s.id AND a.id = t.app_id AND a.preprocess <> ''
               AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch AND t.state = 'READY';
        END IF;
        UPDATE public.tasks t SET state = 'RUNNING', started_at = to_timestamp(s.at), state_message = ''
          FROM unnest(s_ids, s_at) AS s(id, at)
         WHERE t.id = s.id AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('READY', 'RESTART_READY', 'PREPROCESSED');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'started'; changed := n; RETURN NEXT;
    END IF;
    IF cardinality(f_ids) = 0 THEN
        RETURN;
    END IF;

    -- The preprocess failed: the task never ran, and Balsam fails it.
    IF 13 = ANY (f_kind) THEN
        UPDATE public.tasks t
           SET state = 'FAILED', ended_at = to_timestamp(f.ended), exit_code = f.rc,
               output_tail = f.tail, state_message = format('preprocess exit code %s', f.rc),
               batch_job_id = NULL
          FROM unnest(f_ids, f_kind, f_rc, f_ended, f_tail) AS f(id, kind, rc, ended, tail)
         WHERE f.kind = 13 AND t.id = f.id AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state = 'READY';
        GET DIAGNOSTICS m = ROW_COUNT;
    END IF;

    -- The end of the run, at the node's time.
    UPDATE public.tasks t
       SET state = CASE WHEN f.kind IN (0, 5, 6) THEN 'RUN_DONE'::public.task_state
                        WHEN f.kind IN (2, 10, 11, 12) THEN 'RUN_TIMEOUT'::public.task_state
                        WHEN f.kind = 3 THEN 'RESTART_READY'::public.task_state
                        ELSE 'RUN_ERROR'::public.task_state END,
           started_at = coalesce(t.started_at, to_timestamp(f.started)),
           ended_at = to_timestamp(f.ended),
           exit_code = f.rc,
           output_tail = CASE WHEN f.kind IN (0, 5) THEN '' ELSE f.tail END,
           state_message = CASE
               WHEN f.kind IN (0, 5) THEN ''
               WHEN f.kind = 6 THEN 'the postprocess failed'
               WHEN f.kind IN (2, 11) THEN 'ran over its wall_time_min'
               WHEN f.kind = 10 THEN 'ran over its wall_time_min; the timeout handler dealt with it'
               WHEN f.kind = 12 THEN 'ran over its wall_time_min; the timeout handler failed'
               WHEN f.kind = 3 THEN 'requeued: the batch job stopped it'
               WHEN f.kind = 7 THEN format('exit code %s; the error handler dealt with it', f.rc)
               WHEN f.kind = 9 THEN format('exit code %s; the error handler failed', f.rc)
               ELSE format('exit code %s', f.rc) END,
           batch_job_id = CASE WHEN f.kind = 3 THEN NULL ELSE t.batch_job_id END
      FROM unnest(f_ids, f_kind, f_rc, f_started, f_ended, f_tail)
           AS f(id, kind, rc, started, ended, tail)
     WHERE f.kind <> 13 AND t.id = f.id AND t.batch_job_id = p_job
       AND t.lease_epoch = p_epoch AND t.state = 'RUNNING';
    GET DIAGNOSTICS n = ROW_COUNT;
    step := 'ended'; changed := n + m; RETURN NEXT;

    SELECT array_agg(x.id) FILTER (WHERE x.kind = 0),
           array_agg(x.id) FILTER (WHERE x.kind IN (5, 7, 10)),
           array_agg(x.id) FILTER (WHERE x.kind IN (1, 2, 8, 11)),
           array_agg(x.id) FILTER (WHERE x.kind IN (6, 9, 12))
      INTO ok_ids, post_ids, bad_ids, failed_ids
      FROM unnest(f_ids, f_kind) AS x(id, kind);

    IF ok_ids IS NOT NULL THEN
        UPDATE public.tasks t SET state = 'JOB_FINISHED'
         WHERE t.id = ANY (ok_ids) AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state = 'RUN_DONE';
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'finished'; changed := n; RETURN NEXT;
    END IF;

    -- Postprocessed (after a success, or a handler that dealt with an error/timeout).
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

    -- A failed postprocess, or a handler that could not deal with it: FAILED.
    IF failed_ids IS NOT NULL THEN
        UPDATE public.tasks t SET state = 'FAILED', batch_job_id = NULL
         WHERE t.id = ANY (failed_ids) AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('RUN_DONE', 'RUN_ERROR', 'RUN_TIMEOUT');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'failed'; changed := n; RETURN NEXT;
    END IF;

    -- Errors and timeouts (and handlers asking for a retry): retry while the task's own
    -- counter allows, else FAILED. The counters count the retries granted.
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

GRANT EXECUTE ON FUNCTION
    launcher_report(bigint, bigint, bigint[], double precision[], bigint[], smallint[],
                    integer[], double precision[], double precision[], text[])
TO balsam_member;
