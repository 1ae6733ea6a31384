-- 0021_superseded_runs: the tasks of a batch job's earlier run, when the scheduler starts
-- the same job again (docs/reliability.md, docs/schedulers.md).
--
-- Slurm requeues a job whose node failed, that was preempted, or that `scontrol requeue`
-- named, and PBS reruns one (`qrerun`): the same scheduler job id starts again, and its
-- launcher adopts the same batch-job row under a new lease epoch. If the earlier run died
-- without closing the row (SIGKILL, a node lost) and its lease was still fresh, its RUNNING
-- tasks and unstarted claims kept the row's id with the old epoch: the new run's claims
-- skip rows that have a batch job, its close touches only its own epoch, and the lease
-- sweep looks only at rows whose heartbeat stopped. They stayed RUNNING for ever.
--
-- The earlier run's leader, if it still lives, stops them as any leader stops its tasks:
-- its heartbeat now fails (the epoch moved on) and it cuts them at once, or it cannot
-- reach the database and cuts them at half its lease. So at adoption the row records when
-- the superseded run has surely stopped: its last heartbeat plus its lease, the bound the
-- lease sweep (0005) uses for a whole job. After that instant, whoever sweeps (every
-- leader's loop, `balsam-dbctl recover`) requeues them as that sweep would: RUNNING ->
-- RESTART_READY with the lost counter +1 (FAILED at its limit) and a state message,
-- unstarted claims released. The adopting leader waits for them before it counts itself
-- idle (sql/launcher.sql, launcher_held_elsewhere).

ALTER TABLE batch_jobs ADD COLUMN superseded_until timestamptz;

CREATE OR REPLACE FUNCTION launcher_open_job(
    p_job_id bigint, p_scheduler text, p_scheduler_job_id text, p_host text,
    p_nodes integer, p_ranks integer, p_filters jsonb, p_wall_time_min double precision,
    p_lease_sec double precision)
RETURNS TABLE (job_id bigint, lease_epoch bigint, adopted boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    found_id bigint;
    found_user text;
BEGIN
    IF p_lease_sec IS NULL OR NOT (p_lease_sec > 0 AND p_lease_sec <= 86400) THEN
        RAISE EXCEPTION 'lease_sec: must be more than 0 and at most 86400 seconds, got %',
            p_lease_sec USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_job_id IS NOT NULL THEN
        SELECT b.id, b."user" INTO found_id, found_user
          FROM public.batch_jobs b WHERE b.id = p_job_id FOR UPDATE;
        IF found_id IS NULL THEN
            RAISE EXCEPTION 'batch job % does not exist', p_job_id
                USING ERRCODE = 'no_data_found';
        END IF;
        IF found_user <> session_user THEN
            RAISE EXCEPTION 'batch job % belongs to %: only its own launcher can use it '
                '(a launcher adopts only batch jobs its own user submitted; check '
                'BALSAM_BATCH_JOB_ID)', p_job_id, found_user
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    ELSIF p_scheduler_job_id IS NOT NULL THEN
        SELECT b.id INTO found_id FROM public.batch_jobs b
         WHERE b.scheduler = p_scheduler AND b.scheduler_job_id = p_scheduler_job_id
           AND b."user" = session_user
           FOR UPDATE;
    END IF;
    IF found_id IS NOT NULL THEN
        RETURN QUERY
        UPDATE public.batch_jobs b
           SET state = 'RUNNING', host = p_host, nodes = p_nodes, ranks = p_ranks,
               filters = p_filters,
               wall_time_min = coalesce(p_wall_time_min, b.wall_time_min),
               lease_sec = p_lease_sec, lease_epoch = b.lease_epoch + 1,
               started_at = coalesce(b.started_at, now()), heartbeat_at = now(),
               ended_at = NULL, end_reason = NULL,
               -- Tasks an earlier run still holds: stopped for sure once that run's
               -- lease (from its last heartbeat) has run out. A later adoption never
               -- brings the instant forward.
               superseded_until = CASE
                   WHEN EXISTS (SELECT 1 FROM public.tasks t WHERE t.batch_job_id = b.id)
                   THEN greatest(b.superseded_until,
                                 coalesce(b.heartbeat_at, b.started_at, now())
                                 + make_interval(secs => b.lease_sec))
                   ELSE b.superseded_until END
         WHERE b.id = found_id
        RETURNING b.id, b.lease_epoch, true;
    ELSE
        RETURN QUERY
        INSERT INTO public.batch_jobs (scheduler, scheduler_job_id, host, nodes, ranks,
                                       filters, wall_time_min, state, lease_epoch,
                                       lease_sec, started_at, heartbeat_at)
        VALUES (p_scheduler, p_scheduler_job_id, p_host, p_nodes, p_ranks, p_filters,
                p_wall_time_min, 'RUNNING', 1, p_lease_sec, now(), now())
        RETURNING batch_jobs.id, batch_jobs.lease_epoch, false;
    END IF;
END $$;

-- The sweep of superseded runs (all rows that have one due, or only p_job): the tasks of
-- a row's earlier epochs requeued as 0005's sweep requeues a lost job's, one row per
-- batch job swept. Rows are taken with SKIP LOCKED, like 0005's; the tasks are re-checked
-- under their lock, so a report that committed first wins (a superseded run's reports
-- are refused anyway: they carry its epoch).
CREATE FUNCTION launcher_sweep_superseded(p_job bigint DEFAULT NULL)
RETURNS TABLE (job_id bigint, job_user text, requeued bigint, failed bigint,
               released bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    jobs bigint[];
    users text[];
    epochs bigint[];
    lost_jobs bigint[];
    lost_states public.task_state[];
    freed_jobs bigint[];
BEGIN
    WITH due AS (
        SELECT b.id FROM public.batch_jobs b
         WHERE b.superseded_until IS NOT NULL AND b.superseded_until < now()
           AND (p_job IS NULL OR b.id = p_job)
           FOR UPDATE SKIP LOCKED
    ), cleared AS (
        UPDATE public.batch_jobs b SET superseded_until = NULL
          FROM due d WHERE b.id = d.id
        RETURNING b.id, b."user", b.lease_epoch
    )
    SELECT array_agg(c.id), array_agg(c."user"), array_agg(c.lease_epoch)
      INTO jobs, users, epochs
      FROM cleared c;
    IF jobs IS NULL THEN
        RETURN;
    END IF;

    WITH hit AS (
        UPDATE public.tasks t
           SET state = CASE WHEN t.lost_retries >= t.lost_retry_limit
                            THEN 'FAILED'::public.task_state
                            ELSE 'RESTART_READY'::public.task_state END,
               lost_retries = t.lost_retries
                              + (t.lost_retries < t.lost_retry_limit)::integer,
               batch_job_id = NULL, claimed_at = NULL,
               state_message = format('lost: the run of batch job %s at epoch %s ended '
                                      'without closing it, and the job was started again '
                                      '(a scheduler''s requeue)', j.id, t.lease_epoch)
          FROM unnest(jobs, epochs) AS j(id, epoch)
         WHERE t.batch_job_id = j.id AND t.lease_epoch < j.epoch AND t.state = 'RUNNING'
        RETURNING j.id AS job, t.state
    )
    SELECT array_agg(h.job), array_agg(h.state) INTO lost_jobs, lost_states FROM hit h;

    WITH freed AS (
        UPDATE public.tasks t SET batch_job_id = NULL, claimed_at = NULL
          FROM unnest(jobs, epochs) AS j(id, epoch)
         WHERE t.batch_job_id = j.id AND t.lease_epoch < j.epoch
           AND t.state IN ('READY', 'RESTART_READY')
        RETURNING j.id AS job
    )
    SELECT array_agg(f.job) INTO freed_jobs FROM freed f;

    RETURN QUERY
    SELECT u.id, u.who,
           (SELECT count(*) FROM unnest(lost_jobs, lost_states) AS x(job, st)
             WHERE x.job = u.id AND x.st <> 'FAILED'),
           (SELECT count(*) FROM unnest(lost_jobs, lost_states) AS x(job, st)
             WHERE x.job = u.id AND x.st = 'FAILED'),
           (SELECT count(*) FROM unnest(freed_jobs) AS x(job) WHERE x.job = u.id)
      FROM unnest(jobs, users) AS u(id, who)
     ORDER BY u.id;
END $$;

GRANT EXECUTE ON FUNCTION launcher_sweep_superseded(bigint) TO balsam_member;
