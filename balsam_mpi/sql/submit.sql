-- `balsam-mpi submit`: a submitted batch job's row, written before the scheduler knows
-- the job so that the script can carry its id (BALSAM_BATCH_JOB_ID); the launcher adopts
-- it when it starts (launcher_open_job). Nothing is ever left QUEUED for a job that was
-- not submitted: submit_fail closes the row with the reason.

-- name: submit_insert
INSERT INTO batch_jobs (scheduler, host, nodes, ranks, filters, wall_time_min, state,
                        submitted_at)
VALUES (%(scheduler)s, %(host)s, %(nodes)s, %(nodes)s, %(filters)s, %(wall_time_min)s,
        'QUEUED', now())
RETURNING id

-- name: submit_set_scheduler_id
-- Not limited to QUEUED: a fast scheduler (or a local run) may already have started the
-- launcher, which adopted the row by its id.
UPDATE batch_jobs SET scheduler_job_id = %(scheduler_job_id)s
 WHERE id = %(id)s
RETURNING id

-- name: submit_fail
UPDATE batch_jobs SET state = 'FAILED', ended_at = now(), end_reason = %(reason)s
 WHERE id = %(id)s AND state = 'QUEUED'
RETURNING id

-- name: submit_get
SELECT id, scheduler, scheduler_job_id, "user", host, nodes, ranks, filters, wall_time_min,
       state::text, submitted_at, started_at, ended_at, end_reason
  FROM batch_jobs WHERE id = %(id)s
