-- 0013_notify_plan: the waiters' notification (0009) plans its join for any size.
--
-- tasks_notify_final joins its two transition tables. PL/pgSQL keeps the plan of the
-- first statement of a session; after a one-row UPDATE that plan is a nested loop, and
-- the 9,999 descendants a kill fails in one statement made it rows² — killing the root
-- of a 10,000-deep chain took 6.6 s (5.5 s of server CPU) against 0.22 s with a hash
-- join, which costs nothing at one row. 0007 did the same for the event trigger;
-- tests/db/test_trigger_plans.py keeps every trigger that joins old and new rows so.
ALTER FUNCTION tasks_notify_final() SET enable_nestloop = off;
