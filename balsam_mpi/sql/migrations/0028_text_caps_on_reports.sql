-- 0028_text_caps_on_reports: a launcher cannot store more than OUTPUT_TAIL_MAX characters
-- (base/limits.py, 4,096) of output in a task, nor make a message of more from it.
--
-- A member's launcher reports the ends of the tasks it runs, other members' tasks
-- included. Its client cuts a tail to OUTPUT_TAIL_MAX (launcher/reports.py), but the
-- database took whatever launcher_report was given: through psql, alice wrote 10 MB into
-- bob's task's output_tail, and with an end of kind 15 (REFUSED: the tail is the message)
-- into its state_message and the history's event message, where `task show`, `task ls`
-- and every report read them. (tests/db/test_checked_writes.py::
-- test_a_launcher_cannot_store_a_long_tail_in_the_tasks_it_runs)
--
-- Cut, not refused: a refusal would fail the whole flush of a launcher whose tail is a
-- little over, and everything else in it with it. Where: every report reaches the rows
-- through launcher_apply_reports (launcher_report's two signatures and launcher_replay's
-- journal lines), so the body of 0016 becomes launcher_write_reports, unchanged, and
-- launcher_apply_reports a wrapper that cuts the tails first — a tail keeps its end (what
-- the task printed last), a REFUSED end's message its start, as the functions of 0007 cut
-- theirs. Its cost is one look at the length of each tail per flush (octet_length reads
-- the header only), not a row trigger on every claimed and reported row: measured on the
-- launcher's own calls, a BEFORE UPDATE OF output_tail trigger with a WHEN added about
-- 0.5 µs per task to a report (benchmarks/dbparts.py).

ALTER FUNCTION launcher_apply_reports(bigint, bigint, bigint[], double precision[], bigint[],
                                      smallint[], integer[], double precision[],
                                      double precision[], text[], integer)
    RENAME TO launcher_write_reports;

CREATE FUNCTION launcher_apply_reports(
    p_job bigint, p_epoch bigint,
    s_ids bigint[], s_at double precision[],
    f_ids bigint[], f_kind smallint[], f_rc integer[], f_started double precision[],
    f_ended double precision[], f_tail text[], p_paired integer)
RETURNS TABLE (step text, changed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    -- 4,096 characters are at most 16,384 bytes: a tail within that needs no look at
    -- its characters.
    IF EXISTS (SELECT 1 FROM unnest(f_tail) AS t (tail) WHERE octet_length(t.tail) > 4096)
    THEN
        -- By position, as the writer pairs them (whatever the arrays' bounds), and
        -- the tails' count kept whatever the kinds' count.
        f_tail := ARRAY(
            SELECT CASE WHEN char_length(t.tail) <= 4096 THEN t.tail
                        WHEN k.kind = 15 THEN left(t.tail, 4096)
                        ELSE right(t.tail, 4096) END
              FROM unnest(f_tail) WITH ORDINALITY AS t (tail, i)
              LEFT JOIN unnest(f_kind) WITH ORDINALITY AS k (kind, i) ON k.i = t.i
             ORDER BY t.i);
    END IF;
    RETURN QUERY SELECT * FROM public.launcher_write_reports(
        p_job, p_epoch, s_ids, s_at, f_ids, f_kind, f_rc, f_started, f_ended, f_tail,
        p_paired);
END $$;
REVOKE ALL ON FUNCTION launcher_apply_reports(bigint, bigint, bigint[], double precision[],
                                              bigint[], smallint[], integer[],
                                              double precision[], double precision[],
                                              text[], integer) FROM PUBLIC;
