-- 0016_finished_rows_leave_indexes: a task's last write (→ JOB_FINISHED, the end of every
-- successful task) adds an entry to two indexes fewer (benchmarks/README.md, "The
-- database path per task").
--
-- An UPDATE that changes an indexed column (the end changes `state`) writes a new entry
-- into every index of the table whose predicate the new row version meets; with the
-- claim, that was 4 + 4 index entries per task, each about 1–1.5 µs here. Two of them
-- served nobody once the task was over:
--
-- * tasks_batch_job (0001) held every task a batch job ever claimed, finished ones
--   included. Its readers look for what a job *holds*: the close and the lease expiry
--   (READY, RESTART_READY claims; RUNNING runs), `held_elsewhere` (READY … RUNNING, which
--   walked past every finished task of the job to find one), `jobs list` (PREPROCESSED,
--   RUNNING). They now read an index of the held rows only. What a job ran is history
--   (task_events.batch_job_id, run_steps); the few readers of a job's finished tasks
--   (`balsam-dbctl prune`, a deleted job's release below, the demo's and benchmarks'
--   run summary) scan, as they run once per prune or run.
-- * tasks_state_id (0003) held finished tasks, the bulk of a project's table, which
--   nobody asks for by state alone: lists by state go through tasks_workflow_state_id or
--   a scan of all rows, counts by state read every row. The index now leaves out
--   JOB_FINISHED, so it stays the size of the live work.
--
-- Each predicate is a list of states, so a reader's `state = 'RUNNING'` or
-- `state IN ('READY', 'RESTART_READY')` is implied by it and the planner keeps the index
-- (tests/db/test_index_writes.py reads the plans).

DROP INDEX tasks_batch_job;
CREATE INDEX tasks_batch_job ON tasks (batch_job_id)
    WHERE batch_job_id IS NOT NULL
      AND state IN ('READY', 'RESTART_READY', 'PREPROCESSED', 'RUNNING', 'RUN_DONE',
                    'RUN_ERROR', 'RUN_TIMEOUT', 'POSTPROCESSED');

DROP INDEX tasks_state_id;
CREATE INDEX tasks_state_id ON tasks (state, id) WHERE state <> 'JOB_FINISHED';

-- 0011's release of a deleted job's tasks, which now finds the finished ones by a scan:
-- one hash join over the table for the whole DELETE statement, never a scan per job.
CREATE OR REPLACE FUNCTION batch_jobs_release_tasks() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_nestloop = off AS $$
BEGIN
    UPDATE public.tasks t SET batch_job_id = NULL
      FROM old_rows o WHERE t.batch_job_id = o.id;
    RETURN NULL;
END $$;
