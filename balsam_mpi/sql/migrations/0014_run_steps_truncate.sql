-- 0014_run_steps_truncate: a TRUNCATE of the history takes its run steps (0010) with it.
--
-- run_steps sums the run events of each batch job. Row deletes of tasks, events and batch
-- jobs mark or remove their steps (0010's triggers), but TRUNCATE fires no row trigger:
-- after `TRUNCATE task_events, tasks, batch_jobs RESTART IDENTITY` (the owner's way to
-- start a project's history over, and the benchmarks' between rounds) the next batch
-- job 1 inherited the old job 1's steps, and a report said 1.4–1.9 for a run that kept
-- its nodes 0.86 busy. A statement trigger on each of the three tables empties run_steps
-- as well (TRUNCATE … CASCADE fires the triggers of every table it empties).
CREATE FUNCTION run_steps_on_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    TRUNCATE public.run_steps;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION run_steps_on_truncate() FROM PUBLIC;
CREATE TRIGGER tasks_run_steps_truncate AFTER TRUNCATE ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION run_steps_on_truncate();
CREATE TRIGGER task_events_run_steps_truncate AFTER TRUNCATE ON task_events
    FOR EACH STATEMENT EXECUTE FUNCTION run_steps_on_truncate();
CREATE TRIGGER batch_jobs_run_steps_truncate AFTER TRUNCATE ON batch_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION run_steps_on_truncate();
