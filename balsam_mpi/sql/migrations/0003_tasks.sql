-- 0003_tasks: the DAG in the database. Parents finishing make children READY and parents
-- failing fail their descendants in the same transaction as the UPDATE that moved them,
-- whoever wrote it (the client, or a launcher's bulk report), so nobody has to remember a
-- sweep. Statement-level triggers over transition tables: one set-based pass per UPDATE,
-- never a per-row round trip, never a scan of all tasks.

-- The ancestor whose FAILED / USER_KILLED state failed this task; `task retry` of that
-- ancestor reinstates every task that names it (one indexed lookup, no graph walk).
ALTER TABLE tasks ADD COLUMN failed_by bigint;
CREATE INDEX tasks_failed_by ON tasks (failed_by) WHERE failed_by IS NOT NULL;

-- Listings filter by workflow and/or state and page by id (`task ls --workflow w --state
-- READY --limit 20`): with id as the last column the page is read in order from the
-- index instead of sorting every match (or scanning the primary key past other
-- workflows' tasks, which took half a second over 1M tasks). They replace 0001's
-- (workflow, state) and (state) indexes, which they serve as well (`balsam-mpi ls` stays
-- an index-only scan), so a bulk insert maintains no more indexes than before.
DROP INDEX tasks_workflow_state;
DROP INDEX tasks_state;
CREATE INDEX tasks_workflow_state_id ON tasks (workflow, state, id);
CREATE INDEX tasks_state_id ON tasks (state, id);

-- The foreign key tasks.app_id → apps checked once per statement instead of once per row:
-- the row-level RI trigger was the largest single cost of a 100k-task insert. The apps
-- named by the new rows are locked (KEY SHARE, as the foreign key did) before their
-- existence is checked, so a concurrent `app rm` either waits or is seen.
ALTER TABLE tasks DROP CONSTRAINT tasks_app_id_fkey;

CREATE FUNCTION tasks_check_apps() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    missing bigint;
BEGIN
    PERFORM 1 FROM public.apps a
     WHERE a.id IN (SELECT DISTINCT n.app_id FROM new_rows n) FOR KEY SHARE;
    SELECT n.app_id INTO missing
      FROM (SELECT DISTINCT app_id FROM new_rows) n
     WHERE NOT EXISTS (SELECT 1 FROM public.apps a WHERE a.id = n.app_id)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'no app with id %', missing USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_apps_exist AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_check_apps();

-- Changing a task's app (nobody's API does; raw SQL could) is checked row by row: the
-- WHEN clause keeps it free for every other UPDATE.
CREATE FUNCTION tasks_check_app_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM 1 FROM public.apps a WHERE a.id = NEW.app_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no app with id %', NEW.app_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tasks_app_change BEFORE UPDATE OF app_id ON tasks
    FOR EACH ROW WHEN (NEW.app_id IS DISTINCT FROM OLD.app_id)
    EXECUTE FUNCTION tasks_check_app_change();

-- ON DELETE RESTRICT, kept: an app with tasks cannot go.
CREATE FUNCTION apps_refuse_delete_used() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.tasks t WHERE t.app_id = OLD.id) THEN
        RAISE EXCEPTION 'app % still has tasks; delete them first', OLD.name
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER apps_delete_restrict BEFORE DELETE ON apps
    FOR EACH ROW EXECUTE FUNCTION apps_refuse_delete_used();

-- SECURITY DEFINER: a member's finished or killed task must move its descendants even
-- when other members own them (row-level security would hide those rows from the caller).
CREATE FUNCTION tasks_propagate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    -- Cheap exit for the launcher's common case (RUNNING, RUN_DONE, …): nothing to do.
    -- new_rows alone decides it (no join): the CTEs below compare with old_rows.
    IF NOT EXISTS (
        SELECT 1 FROM new_rows n WHERE n.state IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED')
    ) THEN
        RETURN NULL;
    END IF;

    -- Parents that just finished: one decrement per (child, finished parents) pair; a
    -- child whose count reaches 0 while it waits becomes READY.
    WITH done AS (
        SELECT n.id FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.state = 'JOB_FINISHED' AND o.state <> 'JOB_FINISHED'
    ), counts AS (
        SELECT d.child_id, count(*)::integer AS k
          FROM public.task_deps d JOIN done ON d.parent_id = done.id
         GROUP BY d.child_id
    )
    UPDATE public.tasks c
       SET pending_parents = greatest(c.pending_parents - counts.k, 0),
           state = CASE WHEN c.state = 'AWAITING_PARENTS' AND c.pending_parents <= counts.k
                        THEN 'READY'::task_state ELSE c.state END,
           state_message = CASE WHEN c.state = 'AWAITING_PARENTS'
                                 AND c.pending_parents <= counts.k
                                THEN 'parents finished' ELSE c.state_message END
      FROM counts
     WHERE c.id = counts.child_id;

    -- Parents that just stopped (FAILED or USER_KILLED): every waiting descendant reached
    -- through children that fail with their parents is FAILED, naming the ancestor.
    -- Rows stopped by this same statement are already stopped here, so a bulk kill of a
    -- whole workflow does not walk its graph again.
    WITH RECURSIVE stopped AS (
        SELECT n.id, n.state FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.state IN ('FAILED', 'USER_KILLED')
           AND o.state NOT IN ('FAILED', 'USER_KILLED')
    ), down (id, root, root_state) AS (
        SELECT d.child_id, s.id, s.state
          FROM stopped s
          JOIN public.task_deps d ON d.parent_id = s.id
          JOIN public.tasks c ON c.id = d.child_id
         WHERE c.fail_with_parents AND c.state IN ('CREATED', 'AWAITING_PARENTS')
        UNION
        SELECT d.child_id, down.root, down.root_state
          FROM down
          JOIN public.task_deps d ON d.parent_id = down.id
          JOIN public.tasks c ON c.id = d.child_id
         WHERE c.fail_with_parents AND c.state IN ('CREATED', 'AWAITING_PARENTS')
    ), first_root AS (
        SELECT DISTINCT ON (id) id, root, root_state FROM down ORDER BY id, root
    )
    UPDATE public.tasks c
       SET state = 'FAILED',
           failed_by = f.root,
           state_message = format('upstream task %s is %s', f.root, f.root_state)
      FROM first_root f
     WHERE c.id = f.id;

    -- Children that opt out (fail_with_parents = false) count a stopped parent as done.
    WITH stopped AS (
        SELECT n.id FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.state IN ('FAILED', 'USER_KILLED')
           AND o.state NOT IN ('FAILED', 'USER_KILLED')
    ), counts AS (
        SELECT d.child_id, count(*)::integer AS k
          FROM public.task_deps d JOIN stopped s ON d.parent_id = s.id
          JOIN public.tasks c ON c.id = d.child_id
         WHERE NOT c.fail_with_parents AND c.state IN ('CREATED', 'AWAITING_PARENTS')
         GROUP BY d.child_id
    )
    UPDATE public.tasks c
       SET pending_parents = greatest(c.pending_parents - counts.k, 0),
           state = CASE WHEN c.state = 'AWAITING_PARENTS' AND c.pending_parents <= counts.k
                        THEN 'READY'::task_state ELSE c.state END,
           state_message = CASE WHEN c.state = 'AWAITING_PARENTS'
                                 AND c.pending_parents <= counts.k
                                THEN 'parents done (some did not finish)'
                                ELSE c.state_message END
      FROM counts
     WHERE c.id = counts.child_id;
    RETURN NULL;
END $$;

-- Named to sort after tasks_events_update: triggers of one event fire in name order, so
-- a parent's JOB_FINISHED event is written before its children's READY events.
CREATE TRIGGER tasks_propagate AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_propagate();

-- A block of n consecutive task ids handed out before a bulk add (returns the first), so
-- the client knows every new task's id (and can resolve in-batch parent references)
-- without a RETURNING per row, and the sequence is advanced once instead of n times
-- (100k nextval calls cost more than a second). Reservations take an advisory lock so two
-- of them never overlap; an INSERT that takes the identity default without it could only
-- collide inside the microseconds between nextval and setval, and would then fail on the
-- primary key, never duplicate a task. SECURITY DEFINER: members need no privilege on the
-- sequence itself.
CREATE FUNCTION tasks_reserve_ids(n integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    seq text := pg_get_serial_sequence('public.tasks', 'id');
    first bigint;
BEGIN
    IF n < 1 THEN
        RAISE EXCEPTION 'reserve at least one id, not %', n;
    END IF;
    PERFORM pg_advisory_lock(hashtext('balsam_mpi.tasks_reserve_ids'));
    first := nextval(seq);
    IF n > 1 THEN
        PERFORM setval(seq, first + n - 1);
    END IF;
    PERFORM pg_advisory_unlock(hashtext('balsam_mpi.tasks_reserve_ids'));
    RETURN first;
END $$;

-- The states of would-be parents, locked FOR SHARE until the caller commits, so a parent
-- cannot finish unseen between reading its state and the new dependency becoming
-- visible (its trigger then waits and sees the dependency). SECURITY DEFINER because
-- locking needs UPDATE rights that members lack on other members' tasks.
CREATE FUNCTION tasks_lock_parents(ids bigint[])
RETURNS TABLE (id bigint, state task_state, workflow text, name text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT t.id, t.state, t.workflow, t.name FROM public.tasks t
     WHERE t.id = ANY (ids) ORDER BY t.id FOR SHARE
$$;

-- Recount the unfinished parents of the given tasks from task_deps (the truth), and make
-- those left waiting for nothing READY. Called after tasks are deleted, for their
-- children: those may belong to other members, whose rows the caller cannot update.
-- Safe to offer to every member: it only ever sets the true count.
CREATE FUNCTION tasks_recount(ids bigint[]) RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    WITH pend AS (
        SELECT c.id,
               (SELECT count(*) FROM public.task_deps d
                  JOIN public.tasks p ON p.id = d.parent_id
                 WHERE d.child_id = c.id AND p.state <> 'JOB_FINISHED'
                   AND (c.fail_with_parents OR p.state NOT IN ('FAILED', 'USER_KILLED'))
               )::integer AS k
          FROM public.tasks c
         WHERE c.id = ANY (ids) AND c.state IN ('CREATED', 'AWAITING_PARENTS', 'READY')
    ), changed AS (
        UPDATE public.tasks t SET
            pending_parents = pend.k,
            state = CASE WHEN t.state = 'AWAITING_PARENTS' AND pend.k = 0
                         THEN 'READY'::task_state ELSE t.state END,
            state_message = CASE WHEN t.state = 'AWAITING_PARENTS' AND pend.k = 0
                                 THEN 'parents finished or removed' ELSE t.state_message END
          FROM pend
         WHERE t.id = pend.id AND t.pending_parents <> pend.k
        RETURNING t.id
    )
    SELECT count(*)::integer FROM changed
$$;

-- After a retry of the given tasks: every task they failed (followed through failed_by,
-- so the whole failed subgraph) returns to AWAITING_PARENTS / READY with its parents
-- recounted. Only roots that are no longer stopped count, so calling it can only undo
-- failures whose cause is gone; hence SECURITY DEFINER is safe, and a member's retry
-- brings back descendants other members own. Their counters are untouched: they never ran.
CREATE FUNCTION tasks_reinstate_followers(roots bigint[]) RETURNS SETOF bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    WITH RECURSIVE live AS (
        SELECT t.id FROM unnest(roots) AS r (id) JOIN public.tasks t ON t.id = r.id
         WHERE t.state NOT IN ('FAILED', 'USER_KILLED')
    ), followers (id) AS (
        -- failed_by is set only on FAILED tasks and cleared by retry, so its partial
        -- index alone finds them (no state test to lure the planner onto tasks_state)
        SELECT c.id FROM public.tasks c JOIN live ON c.failed_by = live.id
        UNION
        SELECT c.id FROM public.tasks c JOIN followers f ON c.failed_by = f.id
    ), pend AS (
        SELECT c.id,
               (SELECT count(*) FROM public.task_deps d
                  JOIN public.tasks p ON p.id = d.parent_id
                 WHERE d.child_id = c.id AND p.state <> 'JOB_FINISHED'
                   AND (c.fail_with_parents OR p.state NOT IN ('FAILED', 'USER_KILLED'))
               )::integer AS k
          FROM followers JOIN public.tasks c ON c.id = followers.id
         WHERE c.state = 'FAILED'
    )
    UPDATE public.tasks t SET
        state = CASE WHEN pend.k > 0 THEN 'AWAITING_PARENTS' ELSE 'READY' END::task_state,
        pending_parents = pend.k,
        failed_by = NULL,
        state_message = 'upstream task retried'
      FROM pend
     WHERE t.id = pend.id
    RETURNING t.id
$$;

-- After a retry: a reinstated task that still has a stopped parent (one not retried)
-- fails again at once, naming the root of that failure; the trigger fails its followers.
-- Truth-based like the one above (it fails only tasks whose parent is stopped), so safe
-- as SECURITY DEFINER. Driven from the id array through primary keys only: right after a
-- bulk retry the planner's idea of how many tasks are in which state is stale, and a plan
-- trusting it (a nested loop over "the few AWAITING_PARENTS tasks") took minutes.
CREATE FUNCTION tasks_refail(ids bigint[]) RETURNS SETOF bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    WITH blocked AS (
        SELECT DISTINCT ON (r.id) r.id AS child_id, coalesce(p.failed_by, p.id) AS root,
               p.state
          FROM unnest(ids) AS r (id)
          JOIN public.task_deps d ON d.child_id = r.id
          JOIN public.tasks p ON p.id = d.parent_id
         WHERE p.state IN ('FAILED', 'USER_KILLED')
         ORDER BY r.id, p.id
    )
    UPDATE public.tasks c SET state = 'FAILED', failed_by = b.root,
           state_message = format('upstream task %s is %s', b.root, b.state)
      FROM blocked b
     WHERE c.id = b.child_id AND c.fail_with_parents AND c.state = 'AWAITING_PARENTS'
    RETURNING c.id
$$;

GRANT EXECUTE ON FUNCTION tasks_reserve_ids(integer), tasks_lock_parents(bigint[]),
    tasks_recount(bigint[]), tasks_reinstate_followers(bigint[]), tasks_refail(bigint[])
    TO balsam_member;
