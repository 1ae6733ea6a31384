-- 0032_batch_job_cluster_and_uncertain: a batch job records the scheduler cluster it was
-- submitted to, and a submission whose outcome is unknown is held, not closed.
--
-- 1. `job sync` closes a QUEUED row whose job the scheduler no longer lists, but a
--    project's database may serve several machines whose job ids mean nothing to one
--    another, so it did that only on the host the row was submitted from. An autoscaler
--    restarted on another login node of the same cluster then left such rows QUEUED for
--    ever (and counted them as queued jobs). Now `submit` records the scheduler cluster's
--    identity (batch/clusterid.py: Slurm's ClusterName and controller, PBS's server) in
--    sched_cluster, and any host whose scheduler has the same identity may close the row;
--    a row without one (older rows, an identity that could not be read) keeps the host rule.
--
-- 2. When sbatch did not answer (its timeout, a signal), the job may be queued or not.
--    The row was closed FAILED; a queued job then started under a closed row while the
--    next autoscaler look, seeing no job queued, submitted a second one. Now the
--    submission carries `--comment=balsam:<row id>:<submit_token>` (a random token: ids
--    repeat in a restored or copied database), the row stays QUEUED without a scheduler id
--    and with uncertain_at set, so that it still counts as a queued job, and `job sync`
--    looks for a job of the caller carrying that comment: found, its id is recorded;
--    still unknown once no submission could still appear, the row is closed.

ALTER TABLE batch_jobs
    ADD COLUMN sched_cluster text,
    ADD COLUMN submit_token text,
    ADD COLUMN uncertain_at timestamptz,
    -- Both reach a command line's comparison only, never a shell; the shapes keep them
    -- what batch/clusterid.py and batch/submit.py write.
    ADD CONSTRAINT batch_jobs_sched_cluster_shape CHECK (
        sched_cluster IS NULL OR (sched_cluster ~ '^[A-Za-z0-9_.:@-]+$'
                                  AND char_length(sched_cluster) <= 256)),
    ADD CONSTRAINT batch_jobs_submit_token_shape CHECK (
        submit_token IS NULL OR submit_token ~ '^[0-9a-f]{16,64}$');

CREATE FUNCTION batch_job_submit(p_scheduler text, p_host text, p_nodes integer,
                                 p_filters jsonb, p_wall_time_min double precision,
                                 p_sched_cluster text, p_submit_token text)
RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    INSERT INTO public.batch_jobs (scheduler, host, nodes, ranks, filters, wall_time_min,
                                   state, submitted_at, sched_cluster, submit_token)
    VALUES (p_scheduler, p_host, p_nodes, p_nodes, p_filters, p_wall_time_min, 'QUEUED',
            now(), p_sched_cluster, p_submit_token)
    RETURNING id
$$;

-- The scheduler's answer was lost: the caller's QUEUED row without a scheduler id stays
-- QUEUED, marked, until `job sync` finds its job by comment or knows there is none.
CREATE FUNCTION batch_job_submit_uncertain(p_job bigint) RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    UPDATE public.batch_jobs b SET uncertain_at = coalesce(b.uncertain_at, now())
     WHERE b.id = p_job AND b."user" = session_user AND b.state = 'QUEUED'
       AND b.scheduler_job_id IS NULL AND b.submit_token IS NOT NULL
    RETURNING b.id
$$;

GRANT EXECUTE ON FUNCTION
    batch_job_submit(text, text, integer, jsonb, double precision, text, text),
    batch_job_submit_uncertain(bigint)
    TO balsam_member;
