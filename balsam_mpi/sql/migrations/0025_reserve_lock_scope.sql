-- 0025_reserve_lock_scope: a cancelled id reservation no longer leaves its lock behind.
--
-- What went wrong. tasks_reserve_ids (0007) made nextval and setval one step under a
-- session-level advisory lock, taken with pg_advisory_lock and given back with
-- pg_advisory_unlock two statements later. A session-level lock is not released when the
-- transaction fails: if the statement is cancelled between the two (a cancel request, a
-- statement_timeout, Ctrl-C or a notebook's interrupt during Client.add_tasks) the
-- session keeps the lock, and every other reservation — every `task add`, every bulk add,
-- every member's — waits on it, and fails at its lock_timeout, for as long as that session
-- stays connected. A member does it on purpose in a few milliseconds: one session calls
-- tasks_reserve_ids(1) in a loop while a second of their own sends pg_cancel_backend to
-- it (allowed between sessions of one role); the lock stuck after 9 calls here
-- (tests/db/test_checked_writes.py::test_a_cancelled_reservation_leaves_no_lock_behind).
--
-- The fix. The lock is now a transaction-level one taken inside a block of its own, and
-- the block ends by raising an exception that its handler catches: that rolls back the
-- block's subtransaction, and with it goes every lock taken inside it. nextval and
-- setval are never rolled back (sequences are not transactional), and PL/pgSQL variables
-- keep their values, so the block still hands out the block of ids. Whatever interrupts
-- the block — a cancel anywhere inside it — also ends its subtransaction, so there is no
-- moment at which the lock can outlive it, and the lock is still held only for the two
-- sequence calls (an xact lock taken at the top level would serialize whole adds).

CREATE OR REPLACE FUNCTION tasks_reserve_ids(n integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    seq text := pg_get_serial_sequence('public.tasks', 'id');
    first bigint;
BEGIN
    IF n IS NULL OR n < 1 THEN
        RAISE EXCEPTION 'reserve at least one id, not %', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtext('balsam_mpi.tasks_reserve_ids'));
        first := nextval(seq);
        IF n > 1 THEN
            PERFORM setval(seq, first + n - 1);
        END IF;
        -- Ends the subtransaction, and the lock with it; `first` and the sequence stay.
        RAISE EXCEPTION USING ERRCODE = 'BR001';
    EXCEPTION WHEN SQLSTATE 'BR001' THEN
        NULL;
    END;
    -- Blocks of transactions that have ended are dead; SKIP LOCKED, so concurrent adds
    -- never wait on each other's clean-up.
    DELETE FROM public.task_id_blocks b WHERE b.ctid IN (
        SELECT x.ctid FROM public.task_id_blocks x
         WHERE x.xact < pg_snapshot_xmin(pg_current_snapshot())
           FOR UPDATE SKIP LOCKED);
    INSERT INTO public.task_id_blocks (xact, first, n) VALUES (pg_current_xact_id(), first, n);
    RETURN first;
END $$;
