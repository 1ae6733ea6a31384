-- 0005_leases: lease expiry (docs/architecture.md §5). A batch job whose leader stopped heartbeating
-- for longer than its lease is marked LOST and its tasks go back to the queue, by whoever
-- looks first: every leader's loop (every few seconds) and `balsam-dbctl recover`.
--
-- Anyone who may run a launcher (balsam_member) may call it: it touches only rows whose
-- lease has run out by the server's own clock, which their leader has already given up
-- (a leader that cannot heartbeat for half its lease kills its own tasks), so no caller
-- can take work away from a live launcher. It never renews or forges a lease either.

-- Mark the expired batch jobs LOST (all of them, or only p_job) and requeue their tasks:
--   RUNNING -> RESTART_READY, lost counter +1 (FAILED once the counter is at its limit),
--              with an event saying why (the trigger of 0001 takes state_message);
--   claimed but never started (READY / RESTART_READY) -> released, nothing counted.
-- Rows are taken with SKIP LOCKED, so concurrent sweeps never wait on each other nor
-- requeue a job twice, and a heartbeat that commits first keeps its lease. A late report
-- of the lost leader matches nothing afterwards: its tasks no longer carry its batch job.
-- One row per job marked lost.
CREATE FUNCTION launcher_expire_leases(p_job bigint DEFAULT NULL)
RETURNS TABLE (job_id bigint, job_user text, requeued bigint, failed bigint,
               released bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    jobs bigint[];
    users text[];
    reasons text[];
    lost_jobs bigint[];
    lost_states public.task_state[];
    freed_jobs bigint[];
BEGIN
    WITH expired AS (
        SELECT b.id FROM public.batch_jobs b
         WHERE b.state = 'RUNNING'
           AND (p_job IS NULL OR b.id = p_job)
           AND coalesce(b.heartbeat_at, b.started_at)
               < now() - make_interval(secs => b.lease_sec)
           FOR UPDATE SKIP LOCKED
    ), marked AS (
        UPDATE public.batch_jobs b
           SET state = 'LOST', ended_at = now(),
               end_reason = format('lease expired: no heartbeat since %s (lease %s s)',
                                   to_char(coalesce(b.heartbeat_at, b.started_at)
                                           AT TIME ZONE 'UTC',
                                           'YYYY-MM-DD HH24:MI:SS "UTC"'),
                                   b.lease_sec)
          FROM expired e
         WHERE b.id = e.id
        RETURNING b.id, b."user", b.end_reason
    )
    SELECT array_agg(m.id), array_agg(m."user"), array_agg(m.end_reason)
      INTO jobs, users, reasons
      FROM marked m;
    IF jobs IS NULL THEN
        RETURN;
    END IF;

    -- What ran was lost with its launcher: counted, FAILED past the limit. The rows are
    -- re-checked under their lock (READ COMMITTED), so a report that committed first wins.
    WITH hit AS (
        UPDATE public.tasks t
           SET state = CASE WHEN t.lost_retries >= t.lost_retry_limit
                            THEN 'FAILED'::public.task_state
                            ELSE 'RESTART_READY'::public.task_state END,
               lost_retries = t.lost_retries
                              + (t.lost_retries < t.lost_retry_limit)::integer,
               batch_job_id = NULL, claimed_at = NULL,
               state_message = 'lost: ' || j.reason
          FROM unnest(jobs, reasons) AS j(id, reason)
         WHERE t.batch_job_id = j.id AND t.state = 'RUNNING'
        RETURNING j.id AS job, t.state
    )
    SELECT array_agg(h.job), array_agg(h.state) INTO lost_jobs, lost_states FROM hit h;

    -- Claimed but never started: only the claim goes (no state change, no event).
    WITH freed AS (
        UPDATE public.tasks t SET batch_job_id = NULL, claimed_at = NULL
          FROM unnest(jobs) AS j(id)
         WHERE t.batch_job_id = j.id AND t.state IN ('READY', 'RESTART_READY')
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

GRANT EXECUTE ON FUNCTION launcher_expire_leases(bigint) TO balsam_member;
