-- 0031_end_hogging_sessions: a collaborator's session that fills one of the server's
-- shared structures, or holds a transaction open past the project's own timeouts, is ended
-- by the project itself, without the owner.
--
-- Two structures have no privilege in front of them (docs/security.md, "The server's
-- shared queues"):
-- * the lock table: every open subtransaction that has written holds a lock on its own
--   transaction id there. A member nesting savepoints, each with an INSERT, in one
--   transaction left open, filled the table (about 42,000 entries here, for a nominal
--   max_locks_per_transaction × connections = 25,600); until that session ended, every
--   other session that needed one more lock failed with "out of shared memory": other
--   members' updates, every launcher's flush.
-- * the notification queue: a session that LISTENs and stays in a transaction keeps it
--   from being cleared; 0030 keeps task ends committing while it is crowded, but waits are
--   then only as prompt as their periodic read.
-- And the row locks every correct add of a task takes, FOR SHARE on its parents
-- (tasks_lock_parents), are any member's to take on any task: held in a transaction left
-- open, they kept every launcher from claiming those tasks (claims skip locked rows) and
-- every report of them waiting. The session timeouts that would end such a transaction
-- (dbctl/rolelimits.py) are each session's own to lift.
--
-- end_hogging_sessions() ends (pg_terminate_backend) the collaborators' sessions that do
-- either, and returns who it ended and why. Any member or viewer may call it and every
-- running launcher does, with its sweep of expired leases (launcher/lease.py, every
-- expire_check_s): what it ends is fixed here, not by the caller, so calling it can hurt
-- only a session that hurts everyone. Never the superuser's or the owner's: the owner can
-- end any session anyway.
--
-- The rules, chosen so that no correct use of the project comes near them:
-- * locks: a login role whose sessions together hold more than a quarter of the table's
--   nominal size (max_locks_per_transaction × (max_connections + max_prepared_
--   transactions)), and of its sessions those holding more than max_locks_per_transaction
--   entries each (the share the server sizes the table for). Fast-path locks are not in
--   the table and are not counted. A launcher's or a CLI's session holds a few dozen (row
--   locks are kept in the rows, not in this table); a role's 64 connections kept under
--   max_locks_per_transaction each cannot reach a quarter of it.
-- * notifications: while the queue is more than half full (notify_queue_crowded(), 0030),
--   the sessions whose transaction has been open for more than two minutes. The holder
--   must have stayed in its transaction for as long as the queue took to fill (114 s for
--   half of it here, the fastest a viewer managed).
-- * idle transaction: idle in a transaction for more than two minutes, twice the longest
--   idle_in_transaction_session_timeout the project gives a collaborator (a member's 1
--   min): only a session that lifted its own timeout gets there.
-- * long transaction: a transaction open for more than an hour, four times the longest
--   statement_timeout the project gives (a member's 15 min). One transaction of many
--   short statements may rightly outlast that timeout: `task add --from-file` writes a
--   whole file in one (1M tasks took 79 s here, so an hour is some 45M), a kill or retry
--   of every task is one statement (1M: 37-55 s). The launcher lifts its
--   statement_timeout (launcher/store.py), but its longest work, a lease sweep or a
--   report over a large DAG, takes seconds. A session that holds share locks while it
--   runs statement after statement is caught only by this rule, so it bounds how long
--   claims of those tasks can be held up.
--
-- pg_signal_backend (to end a session) and pg_read_all_stats (to see when another role's
-- transaction began: pg_stat_get_activity hides it otherwise) are granted to
-- balsam_objects by `init` and `migrate` (dbctl/schema.py: roles are the cluster's, not a
-- migration's); a test checks that no other function of the schema signals a backend or
-- reads other sessions' activity. No superuser's backend can be signalled in any case.

-- The rules' times, in a function of their own so that a test's database can shorten
-- them (as tests replace notify_queue_crowded()).
CREATE FUNCTION session_time_limits(OUT idle_in_transaction interval,
                                    OUT open_transaction interval,
                                    OUT open_while_crowded interval)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT interval '2 minutes', interval '1 hour', interval '2 minutes'
$$;

CREATE FUNCTION end_hogging_sessions()
RETURNS TABLE (pid integer, username text, reason text, held bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    per_session constant bigint := current_setting('max_locks_per_transaction')::bigint;
    capacity constant bigint := per_session
        * (current_setting('max_connections')::bigint
           + current_setting('max_prepared_transactions')::bigint);
    crowded constant boolean := notify_queue_crowded();
    limits record;
    hog record;
BEGIN
    SELECT * INTO limits FROM session_time_limits();
    -- Functions only, no catalog table: once the lock table is full, a statement that
    -- must lock a shared catalog (pg_roles, the pg_locks and pg_stat_activity views' joins)
    -- fails too, and so does every new connection, the superuser's included. A session
    -- already open (a launcher's) can still run this and end the hog.
    FOR hog IN
        WITH lockers AS (
            SELECT l.pid, count(*) AS n
              FROM pg_lock_status() l
             WHERE NOT l.fastpath AND l.pid IS NOT NULL
             GROUP BY l.pid
        ), sessions AS (
            SELECT a.pid, a.usesysid, coalesce(h.n, 0) AS n,
                   sum(coalesce(h.n, 0)) OVER (PARTITION BY a.usesysid) AS role_total,
                   a.xact_start, a.state, a.state_change
              FROM pg_stat_get_activity(NULL) a
              LEFT JOIN lockers h ON h.pid = a.pid
             WHERE a.pid <> pg_backend_pid()
               AND a.usesysid IS NOT NULL
               -- Collaborators only: a superuser counts as a member of every role, so
               -- the owner's test excludes superusers too.
               AND (pg_has_role(a.usesysid, 'balsam_member', 'MEMBER')
                    OR pg_has_role(a.usesysid, 'balsam_viewer', 'MEMBER'))
               AND NOT pg_has_role(a.usesysid, 'balsam_owner', 'MEMBER')
        )
        , judged AS (
            SELECT s.pid, s.usesysid, s.n,
                   CASE WHEN s.role_total > capacity / 4 AND s.n > per_session
                        THEN 'locks'
                        WHEN crowded
                             AND s.xact_start < now() - limits.open_while_crowded
                        THEN 'notifications'
                        WHEN s.state LIKE 'idle in transaction%'
                             AND s.state_change < now() - limits.idle_in_transaction
                        THEN 'idle transaction'
                        WHEN s.xact_start < now() - limits.open_transaction
                        THEN 'long transaction'
                   END AS reason
              FROM sessions s
        )
        SELECT j.pid, pg_get_userbyid(j.usesysid)::text AS username, j.n, j.reason
          FROM judged j
         WHERE j.reason IS NOT NULL
    LOOP
        -- One at a time, after the selection: a qual is not where a side effect belongs
        -- (the planner may evaluate quals in any order).
        IF pg_terminate_backend(hog.pid) THEN
            pid := hog.pid;
            username := hog.username;
            reason := hog.reason;
            held := hog.n;
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION end_hogging_sessions() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION end_hogging_sessions() TO balsam_member, balsam_viewer;
