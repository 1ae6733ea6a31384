-- 0033_reports_skip_locked_rows: a launcher's flush never waits on another session's
-- row locks; the reports of the rows it cannot lock wait in the launcher for its next
-- flush (launcher/reports.py, docs/reliability.md "A member's bulk kill or retry").
--
-- A member's `task kill` or `task retry` over a whole project is one statement (a filter
-- acts on every task it matches or on none: docs/tasks.md); over 1M tasks it held the
-- row lock of every task it changed for 37-55 s. A launcher running some of those tasks
-- wrote its starts and ends with launcher_report, whose UPDATEs waited on those locks for
-- the whole statement: its flushes, and every call queued behind them on the leader's
-- connection (the kills poll, the heartbeat), stalled with it.
-- (tests/db/test_report_locks.py::test_a_flush_never_waits_on_a_members_bulk_kill)
--
-- The leader now opens its flush with launcher_lock_reports, in the flush's own
-- transaction: it locks the rows the reports will write (this job's, at this epoch) and
-- the direct children of the tasks that ended (the DAG trigger writes their counts) FOR
-- NO KEY UPDATE SKIP LOCKED — the lock an UPDATE of tasks takes, so it meets the kill's,
-- the retry's and a delete's — and returns the reported tasks it could not lock. The
-- launcher leaves every report of those tasks out of the statement and keeps them, in
-- order, for the next flush; the journal's mark (launcher_report's p_through) then stops
-- before the first report left out, so a replay after a crash still has them. Rows the
-- lock does not cover (deeper descendants) are bounded by the flush's short lock_timeout
-- (launcher.sql, launcher_report_lock_timeout): the flush fails and is retried, as it is
-- when the server is away.
--
-- Rights: only the job's own user, only rows that job holds at that epoch and their
-- children, held for one flush's transaction — what launcher_report's UPDATEs lock anyway.

CREATE FUNCTION launcher_lock_reports(p_job bigint, p_epoch bigint, p_ids bigint[],
                                      p_ended bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    RETURN QUERY
    WITH mine AS MATERIALIZED (
        -- The statement's snapshot: a row another session is changing still shows its
        -- version from before that change, so a task the report would write is here.
        SELECT t.id FROM public.tasks t
         WHERE t.id = ANY (p_ids) AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
    ), locked AS MATERIALIZED (
        SELECT t.id FROM public.tasks t
         WHERE t.id = ANY (p_ids) AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           FOR NO KEY UPDATE SKIP LOCKED
    ), children AS MATERIALIZED (
        SELECT d.parent_id, d.child_id FROM public.task_deps d
         WHERE d.parent_id = ANY (p_ended)
    ), children_locked AS MATERIALIZED (
        SELECT t.id FROM public.tasks t
         WHERE t.id IN (SELECT c.child_id FROM children c)
           FOR NO KEY UPDATE SKIP LOCKED
    )
    SELECT m.id FROM mine m WHERE NOT EXISTS (SELECT 1 FROM locked l WHERE l.id = m.id)
    UNION
    SELECT c.parent_id FROM children c
     WHERE EXISTS (SELECT 1 FROM mine m WHERE m.id = c.parent_id)
       AND NOT EXISTS (SELECT 1 FROM children_locked l WHERE l.id = c.child_id);
END $$;

REVOKE ALL ON FUNCTION launcher_lock_reports(bigint, bigint, bigint[], bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION launcher_lock_reports(bigint, bigint, bigint[], bigint[])
    TO balsam_member;
