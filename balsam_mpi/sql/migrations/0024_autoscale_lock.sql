-- 0024_autoscale_lock: one `balsam-mpi autoscale` look at a time per user and filters
-- (batch/elastic.py). Two autoscalers of one user with the same filters (two shells, a
-- loop and a cron line) would otherwise both see no job queued and both submit.
--
-- Members hold no EXECUTE on the advisory-lock functions (0002 revoked them with every
-- function), so this pair is the door: the key is the caller's own name and filters, so
-- no member can hold up another's looks, and a session holds at most one such lock at a
-- time (the function says no to a second), so nobody can fill the shared lock table with
-- made-up filters. The class key, 1650551923 ("bals" in ASCII), keeps these locks apart
-- from every other advisory lock of the database; a hash collision of two filters only
-- skips a look.

CREATE FUNCTION autoscale_try_lock(p_filters jsonb) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM pg_locks l
                      WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid()
                        AND l.classid = 1650551923 AND l.objsubid = 2)
        THEN false
        ELSE pg_try_advisory_lock(1650551923, hashtext(session_user || ' ' || p_filters::text))
    END
$$;

CREATE FUNCTION autoscale_unlock(p_filters jsonb) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT pg_advisory_unlock(1650551923, hashtext(session_user || ' ' || p_filters::text))
$$;

GRANT EXECUTE ON FUNCTION autoscale_try_lock(jsonb), autoscale_unlock(jsonb)
    TO balsam_member;
