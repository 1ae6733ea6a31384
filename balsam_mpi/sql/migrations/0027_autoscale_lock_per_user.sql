-- 0027_autoscale_lock_per_user: no member can hold another member's autoscale lock.
--
-- 0024 keyed the lock by (1650551923, hashtext(user || ' ' || filters)): the user was
-- inside a 32-bit hash. Filters are the caller's to choose, so a member can search for
-- filters of their own whose key equals another member's (the other's filters are in
-- their batch jobs' rows, readable by all): about 2**32 hashes for a given target, minutes
-- of CPU off the server. Holding that lock in an idle session, they made every look of the
-- other's autoscaler with those filters be skipped (autoscale_try_lock said false), so it
-- never submitted again; 0024's "a hash collision only skips a look" held for chance
-- collisions, not chosen ones. (tests/db/test_autoscale.py::
-- test_no_member_holds_up_anothers_autoscaler_with_a_colliding_key finds such a pair.)
--
-- Now the first key is the caller's role oid (its 32 bits as an int4), the second the
-- hash of the filters. Two users never share a first key, so a chosen collision can only
-- hold up the chooser's own looks. The two-key form stays apart from the database's other
-- advisory locks, which all take one bigint key (pg_locks.objsubid 1, these 2); the
-- one-lock-per-session rule now looks for a two-key advisory lock under the caller's oid.

CREATE FUNCTION autoscale_lock_class() RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT (r.oid::bigint - CASE WHEN r.oid::bigint > 2147483647 THEN 4294967296
                                 ELSE 0 END)::integer
      FROM pg_catalog.pg_roles r WHERE r.rolname = session_user
$$;

CREATE OR REPLACE FUNCTION autoscale_try_lock(p_filters jsonb) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM pg_locks l
                      WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid()
                        AND l.objsubid = 2
                        AND l.classid = (SELECT r.oid FROM pg_catalog.pg_roles r
                                          WHERE r.rolname = session_user))
        THEN false
        ELSE pg_try_advisory_lock(autoscale_lock_class(), hashtext(p_filters::text))
    END
$$;

CREATE OR REPLACE FUNCTION autoscale_unlock(p_filters jsonb) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT pg_advisory_unlock(autoscale_lock_class(), hashtext(p_filters::text))
$$;
