-- `balsam-mpi submit`: a submitted batch job's row, written before the scheduler knows
-- the job so that the script can carry its id (BALSAM_BATCH_JOB_ID); the launcher adopts
-- it when it starts (launcher_open_job). Nothing is ever left QUEUED for a job that was
-- not submitted: submit_fail closes the row with the reason.

-- name: submit_insert
-- The caller's QUEUED row; members write batch jobs only through functions
-- (migrations/0007).
SELECT batch_job_submit(%(scheduler)s, %(host)s, %(nodes)s, %(filters)s,
                        %(wall_time_min)s) AS id

-- name: submit_set_scheduler_id
-- Not limited to QUEUED: a fast scheduler (or a local run) may already have started the
-- launcher, which adopted the row by its id. Set once; only on the caller's own row.
SELECT batch_job_set_scheduler_id(%(id)s, %(scheduler_job_id)s) AS id

-- name: submit_fail
SELECT batch_job_submit_failed(%(id)s, %(reason)s) AS id

-- name: submit_get
SELECT id, scheduler, scheduler_job_id, "user", host, nodes, ranks, filters, wall_time_min,
       state::text, submitted_at, started_at, ended_at, end_reason
  FROM batch_jobs WHERE id = %(id)s

-- name: batch_job_filters
-- What a batch job's launcher takes (`job show`): its workflows, tags and owners.
SELECT filters FROM batch_jobs WHERE id = %(id)s
