-- `balsam-mpi submit`: a submitted batch job's row, written before the scheduler knows
-- the job so that the script can carry its id (BALSAM_BATCH_JOB_ID); the launcher adopts
-- it when it starts (launcher_open_job). Nothing is ever left QUEUED for a job that was
-- not submitted: submit_fail closes the row with the reason.

-- name: submit_insert
-- The caller's QUEUED row; members write batch jobs only through functions
-- (migrations/0007). The scheduler cluster's identity and the token the submission's
-- comment carries (migrations/0032).
SELECT batch_job_submit(%(scheduler)s, %(host)s, %(nodes)s, %(filters)s,
                        %(wall_time_min)s, %(sched_cluster)s, %(submit_token)s) AS id

-- name: submit_set_scheduler_id
-- Not limited to QUEUED: a fast scheduler (or a local run) may already have started the
-- launcher, which adopted the row by its id. Set once; only on the caller's own row.
SELECT batch_job_set_scheduler_id(%(id)s, %(scheduler_job_id)s) AS id

-- name: submit_uncertain
-- The scheduler's answer was lost (sbatch timed out, or a signal ended it): the row stays
-- QUEUED, marked, for `job sync` to find its job by comment (migrations/0032).
SELECT batch_job_submit_uncertain(%(id)s) AS id

-- name: submit_fail
SELECT batch_job_submit_failed(%(id)s, %(reason)s) AS id

-- name: submit_get
SELECT id, scheduler, scheduler_job_id, "user", host, nodes, ranks, filters, wall_time_min,
       state::text, submitted_at, started_at, ended_at, end_reason, sched_cluster,
       submit_token, uncertain_at
  FROM batch_jobs WHERE id = %(id)s

-- name: batch_job_filters
-- What a batch job's launcher takes (`job show`): its workflows, tags and owners.
SELECT filters FROM batch_jobs WHERE id = %(id)s

-- name: jobs_queued_own
-- `job sync` / `autoscale` (batch/jobsync.py): the caller's rows still QUEUED with a
-- scheduler job id, to ask the scheduler about. Closing one goes through submit_fail
-- (batch_job_submit_failed: the caller's own row, only while it is QUEUED), so a
-- launcher that adopts the row meanwhile wins. sched_cluster: who else may close it.
SELECT id, scheduler, scheduler_job_id, nodes, filters, host, sched_cluster
  FROM batch_jobs
 WHERE "user" = session_user AND state = 'QUEUED' AND scheduler_job_id IS NOT NULL
 ORDER BY id

-- name: jobs_unsubmitted_own
-- `job sync` (batch/jobsync.py): the caller's QUEUED rows that never got a scheduler id
-- and are older than any submission can take (the submitter died between its row and
-- the scheduler's answer). A local run never gets an id: its launcher adopts the row.
-- A row whose submission carried a comment token is looked for instead (jobs_uncertain_own).
SELECT id, scheduler, nodes, filters, host
  FROM batch_jobs
 WHERE "user" = session_user AND state = 'QUEUED' AND scheduler_job_id IS NULL
   AND scheduler <> 'local' AND submit_token IS NULL
   AND submitted_at < now() - make_interval(secs => %(age)s)
 ORDER BY id

-- name: jobs_uncertain_own
-- `job sync` (batch/uncertain.py): the caller's QUEUED rows without a scheduler id whose
-- submission carried a comment token, once the scheduler's answer is known to be lost
-- (uncertain_at) or older than any submission can take; `stale`: old enough that a job
-- not listed by now never will be.
SELECT id, scheduler, nodes, filters, host, sched_cluster, submit_token,
       submitted_at < now() - make_interval(secs => %(age)s) AS stale
  FROM batch_jobs
 WHERE "user" = session_user AND state = 'QUEUED' AND scheduler_job_id IS NULL
   AND submit_token IS NOT NULL
   AND (uncertain_at IS NOT NULL
        OR submitted_at < now() - make_interval(secs => %(age)s))
 ORDER BY id

-- name: elastic_backlog
-- `autoscale` (batch/elastic.py): the runnable tasks no launcher holds that a job with
-- these filters would take (launcher_claim's conditions: state, no batch job, workflows,
-- tags, owners), in nodes (num_nodes / node_packing_count each), read through the
-- runnable index. Tasks no job of the autoscaler could run are counted apart: wider than
-- its largest job, or asking for more wall time than its launchers' time limit (a claim
-- skips them, so counting them would submit job after job that ends idle).
SELECT count(*) FILTER (WHERE f.fits) AS tasks,
       coalesce(sum(f.nodes) FILTER (WHERE f.fits), 0) AS nodes,
       coalesce(max(f.num_nodes) FILTER (WHERE f.fits), 0) AS widest,
       count(*) FILTER (WHERE f.num_nodes > %(max_nodes)s) AS too_wide,
       count(*) FILTER (WHERE f.num_nodes <= %(max_nodes)s AND NOT f.short) AS too_long
  FROM (SELECT t.num_nodes, t.num_nodes::float8 / t.node_packing_count AS nodes,
               (%(time_limit_min)s::float8 IS NULL
                OR t.wall_time_min <= %(time_limit_min)s::float8) AS short,
               t.num_nodes <= %(max_nodes)s
                 AND (%(time_limit_min)s::float8 IS NULL
                      OR t.wall_time_min <= %(time_limit_min)s::float8) AS fits
          FROM tasks t
         WHERE t.state IN ('READY', 'RESTART_READY') AND t.batch_job_id IS NULL
           AND (%(workflows)s::text[] IS NULL OR t.workflow = ANY (%(workflows)s::text[]))
           AND (%(tags)s::jsonb IS NULL OR t.tags @> %(tags)s::jsonb)
           AND (%(owners)s::text[] IS NULL OR t.owner = ANY (%(owners)s::text[]))) f

-- name: jobs_active_own
-- `autoscale`: the caller's batch jobs that are waiting or running, with their filters
-- (the autoscaler counts those with its own filters).
SELECT id, state::text, nodes, filters
  FROM batch_jobs
 WHERE "user" = session_user AND state IN ('QUEUED', 'RUNNING')
 ORDER BY id

-- name: elastic_lock
-- One look at a time per user and filters: a session lock, tried, not waited for
-- (migrations/0024).
SELECT autoscale_try_lock(%(filters)s) AS got

-- name: elastic_unlock
SELECT autoscale_unlock(%(filters)s) AS released
