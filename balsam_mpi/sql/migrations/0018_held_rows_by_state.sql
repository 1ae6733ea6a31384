-- 0018_held_rows_by_state: the held-rows index is keyed by the job *and* the state.
--
-- launcher_held_elsewhere (launcher.sql) asks, for each batch job holding work an idle
-- launcher could run, whether some of it is queued and unstarted (0015's hand-back). With
-- tasks_batch_job keyed by the job alone (0016), that probe read every row the holder
-- held until it met a READY or RESTART_READY one: at the end of a big run, when holders
-- have tens of thousands of RUNNING tasks and nothing queued, every row of every holder,
-- from each idle launcher, every claim_idle_s (a test counted 3,000 rows read and
-- dropped for one holder of 3,000 runs; tests/db/test_index_writes.py). Keyed by
-- (job, state), the probe goes straight to the queued rows; the readers that want all
-- of a job's held rows (close, lease expiry, jobs list, the first probe) use the leading
-- column as before.
--
-- No write adds an entry it did not add before: a task's state is in the predicate
-- already, so every change of state wrote a new entry anyway. An entry grows from 16 to
-- 24 bytes.
DROP INDEX tasks_batch_job;
CREATE INDEX tasks_batch_job ON tasks (batch_job_id, state)
    WHERE batch_job_id IS NOT NULL
      AND state IN ('READY', 'RESTART_READY', 'PREPROCESSED', 'RUNNING', 'RUN_DONE',
                    'RUN_ERROR', 'RUN_TIMEOUT', 'POSTPROCESSED');
