-- 0007_checked_writes: the database is the last line for what may change and by whom
-- (docs/security.md, "Inside the database").
--
--   1. Values: CHECK constraints mirror every client-side check with the caps of
--      balsam_mpi/base/limits.py (tests/db/test_limits.py drives them from there), so a raw
--      INSERT cannot plant a row that crashes whoever claims it.
--   2. States: a statement-level trigger refuses every state change that
--      balsam_mpi/tasks/states.py's TRANSITIONS does not list, whoever sends it.
--   3. Writes: members and the owner lose table-level UPDATE / DELETE on tasks and every
--      write on task_deps and batch_jobs. A raw INSERT may set only what a new task may
--      have (column grants + the policy); plain edits (priority, tags, data) keep column
--      grants; everything else goes through the SECURITY DEFINER functions below, which
--      check who asks (a member: their own tasks; the owner: any) and what the task's
--      state allows (a claimed task is treated as started).
--   4. Locks and catalog functions: large objects, advisory locks and NOTIFY are no longer
--      PUBLIC; only the definer functions take advisory locks. DAG edits are serialized by
--      one transaction-level advisory lock.
--   5. Batch jobs: a launcher adopts only a row its own user made; another user's row
--      with the same scheduler job id neither blocks nor is adopted.
--   6. Propagation: the DAG and event triggers are planned for the rows they get (a plan
--      cached from a one-row statement nested-looped 10,000 × 10,000 rows: a kill of the
--      root of a 10,000-deep chain took from 16 s to over a minute).

-- ==== 1. Values =========================================================================
-- Helpers for the CHECK constraints: IMMUTABLE SQL, callable by whoever writes a row.
-- The cheap test comes first in each constraint, so a typical row (empty env, short
-- arguments) never calls them. JSON sizes are bytes of the text form; JSON depth counts
-- containers on the deepest path ({} is 1, {"a": [1]} is 2).

CREATE FUNCTION json_within(doc jsonb, max_bytes integer) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN octet_length(doc::text) > max_bytes THEN false
        -- 64 nested containers need at least 128 bytes of brackets
        WHEN octet_length(doc::text) < 128 THEN true
        ELSE NOT jsonb_path_exists(
            doc, 'strict $.**{64} ? (@.type() == "object" || @.type() == "array")')
    END
$$;

-- Environment names as a shell and execve take them; values are text. (A raw INSERT with
-- env {"A=B": "x"} crashed every launcher that claimed the task.)
CREATE FUNCTION env_names_ok(env jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(env) <> 'object' THEN false ELSE
        (SELECT coalesce(bool_and(e.key ~ '^[A-Za-z_][A-Za-z0-9_]*$'
                                  AND jsonb_typeof(e.value) = 'string'
                                  AND char_length(e.value #>> '{}') <= 65536), true)
           FROM jsonb_each(env) AS e)
    END
$$;

CREATE FUNCTION keys_within(doc jsonb, max_chars integer) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(doc) <> 'object' THEN false ELSE
        (SELECT coalesce(bool_and(char_length(k) <= max_chars), true)
           FROM jsonb_object_keys(doc) AS k)
    END
$$;

CREATE FUNCTION items_within(items text[], max_chars integer) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(bool_and(char_length(x) <= max_chars), true) FROM unnest(items) AS x
$$;

-- input_files patterns stay inside the parent's directory: relative, no '..' (as
-- validate.check_pattern), and not empty.
CREATE FUNCTION patterns_ok(patterns text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(bool_and(p <> '' AND char_length(p) <= 4096
                             AND left(translate(p, '\', '/'), 1) <> '/'
                             AND '..' <> ALL (string_to_array(translate(p, '\', '/'), '/'))),
                    true)
      FROM unnest(patterns) AS p
$$;

GRANT EXECUTE ON FUNCTION json_within(jsonb, integer), env_names_ok(jsonb),
    keys_within(jsonb, integer), items_within(text[], integer), patterns_ok(text[])
    TO balsam_member;

-- Rows written before these rules that break them are made harmless first: the bad value
-- goes back to its default and a task that could still run is FAILED, saying why (an
-- event records it). Nothing in a fresh database matches.
UPDATE batch_jobs SET lease_sec = 60 WHERE NOT (lease_sec > 0 AND lease_sec <= 86400);
UPDATE batch_jobs SET wall_time_min = NULL
 WHERE wall_time_min IS NOT NULL AND NOT (wall_time_min > 0 AND wall_time_min <= 525600);
UPDATE batch_jobs SET nodes = least(nodes, 100000), ranks = least(ranks, 100000)
 WHERE nodes > 100000 OR ranks > 100000;

DO $$
DECLARE
    bad CONSTANT text := $c$
        NOT (char_length(workflow) <= 256 AND char_length(name) <= 256
             AND json_within(params, 262144) AND json_within(tags, 16384)
             AND keys_within(tags, 256) AND json_within(data, 262144)
             AND octet_length(env::text) <= 131072 AND env_names_ok(env)
             AND cardinality(args) <= 4096 AND array_position(args, NULL) IS NULL
             AND items_within(args, 65536)
             AND cardinality(input_files) <= 256
             AND array_position(input_files, NULL) IS NULL AND patterns_ok(input_files)
             AND num_nodes <= 100000 AND ranks_per_node <= 4096
             AND threads_per_rank <= 4096 AND gpus_per_rank <= 64
             AND node_packing_count <= 4096 AND priority BETWEEN -1000000 AND 1000000
             AND error_retry_limit <= 1000 AND timeout_retry_limit <= 1000
             AND lost_retry_limit <= 1000 AND wall_time_min <= 525600)$c$;
BEGIN
    EXECUTE format($u$
        UPDATE tasks SET
            state = CASE WHEN state IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED') THEN state
                         ELSE 'FAILED'::task_state END,
            state_message = 'a value broke the limits of migration 0007 and was reset',
            batch_job_id = CASE WHEN state IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED')
                                THEN batch_job_id END,
            workflow = left(workflow, 256), name = left(name, 256),
            params = CASE WHEN json_within(params, 262144) THEN params ELSE '{}' END,
            tags = CASE WHEN json_within(tags, 16384) AND keys_within(tags, 256) THEN tags
                        ELSE '{}' END,
            data = CASE WHEN json_within(data, 262144) THEN data ELSE '{}' END,
            env = CASE WHEN octet_length(env::text) <= 131072 AND env_names_ok(env) THEN env
                       ELSE '{}' END,
            args = CASE WHEN cardinality(args) <= 4096 AND array_position(args, NULL) IS NULL
                             AND items_within(args, 65536) THEN args ELSE '{}' END,
            input_files = CASE WHEN cardinality(input_files) <= 256
                                    AND array_position(input_files, NULL) IS NULL
                                    AND patterns_ok(input_files) THEN input_files
                               ELSE '{}' END,
            num_nodes = least(num_nodes, 100000),
            ranks_per_node = least(ranks_per_node, 4096),
            threads_per_rank = least(threads_per_rank, 4096),
            gpus_per_rank = least(gpus_per_rank, 64),
            node_packing_count = least(node_packing_count, 4096),
            priority = greatest(least(priority, 1000000), -1000000),
            error_retry_limit = least(error_retry_limit, 1000),
            timeout_retry_limit = least(timeout_retry_limit, 1000),
            lost_retry_limit = least(lost_retry_limit, 1000),
            wall_time_min = CASE WHEN wall_time_min <= 525600 THEN wall_time_min ELSE 0 END
         WHERE %s$u$, bad);
    UPDATE apps SET command = left(command, 65536), preprocess = left(preprocess, 65536),
                    postprocess = left(postprocess, 65536),
                    env_script = left(env_script, 65536),
                    description = left(description, 4096),
                    error_retry_limit = least(error_retry_limit, 1000)
     WHERE char_length(command) > 65536 OR char_length(preprocess) > 65536
        OR char_length(postprocess) > 65536 OR char_length(env_script) > 65536
        OR char_length(description) > 4096 OR error_retry_limit > 1000;
END $$;

-- The caps of balsam_mpi/base/limits.py. Constraint names say the field, so the one-line
-- refusal names it too; they replace 0001's one-sided checks of the same fields.
ALTER TABLE tasks
    DROP CONSTRAINT tasks_num_nodes_check, DROP CONSTRAINT tasks_ranks_per_node_check,
    DROP CONSTRAINT tasks_threads_per_rank_check, DROP CONSTRAINT tasks_gpus_per_rank_check,
    DROP CONSTRAINT tasks_node_packing_count_check, DROP CONSTRAINT tasks_wall_time_min_check,
    DROP CONSTRAINT tasks_error_retry_limit_check,
    DROP CONSTRAINT tasks_timeout_retry_limit_check,
    DROP CONSTRAINT tasks_lost_retry_limit_check,
    ADD CONSTRAINT tasks_workflow_limit CHECK (char_length(workflow) <= 256),
    ADD CONSTRAINT tasks_name_limit CHECK (char_length(name) <= 256),
    ADD CONSTRAINT tasks_params_limit CHECK (params = '{}' OR json_within(params, 262144)),
    ADD CONSTRAINT tasks_tags_limit CHECK (
        tags = '{}' OR (json_within(tags, 16384) AND keys_within(tags, 256))),
    ADD CONSTRAINT tasks_data_limit CHECK (data = '{}' OR json_within(data, 262144)),
    ADD CONSTRAINT tasks_env_limit CHECK (
        env = '{}' OR (octet_length(env::text) <= 131072 AND env_names_ok(env))),
    ADD CONSTRAINT tasks_args_limit CHECK (
        cardinality(args) = 0
        OR (cardinality(args) <= 4096 AND array_position(args, NULL) IS NULL
            AND (char_length(array_to_string(args, '')) <= 65536
                 OR items_within(args, 65536)))),
    ADD CONSTRAINT tasks_input_files_limit CHECK (
        cardinality(input_files) = 0
        OR (cardinality(input_files) <= 256 AND array_position(input_files, NULL) IS NULL
            AND patterns_ok(input_files))),
    ADD CONSTRAINT tasks_num_nodes_limit CHECK (num_nodes BETWEEN 1 AND 100000),
    ADD CONSTRAINT tasks_ranks_per_node_limit CHECK (ranks_per_node BETWEEN 1 AND 4096),
    ADD CONSTRAINT tasks_threads_per_rank_limit CHECK (threads_per_rank BETWEEN 1 AND 4096),
    ADD CONSTRAINT tasks_gpus_per_rank_limit CHECK (gpus_per_rank BETWEEN 0 AND 64),
    ADD CONSTRAINT tasks_node_packing_count_limit CHECK (node_packing_count BETWEEN 1 AND 4096),
    ADD CONSTRAINT tasks_priority_limit CHECK (priority BETWEEN -1000000 AND 1000000),
    ADD CONSTRAINT tasks_error_retry_limit_limit CHECK (error_retry_limit BETWEEN 0 AND 1000),
    ADD CONSTRAINT tasks_timeout_retry_limit_limit CHECK (
        timeout_retry_limit BETWEEN 0 AND 1000),
    ADD CONSTRAINT tasks_lost_retry_limit_limit CHECK (lost_retry_limit BETWEEN 0 AND 1000),
    -- NaN sorts above every number in Postgres, so this refuses NaN and both infinities
    ADD CONSTRAINT tasks_wall_time_min_limit CHECK (wall_time_min BETWEEN 0 AND 525600),
    ADD CONSTRAINT tasks_failed_by_state CHECK (failed_by IS NULL OR state = 'FAILED');

ALTER TABLE apps
    DROP CONSTRAINT apps_error_retry_limit_check,
    ADD CONSTRAINT apps_name_limit CHECK (char_length(name) <= 256),
    ADD CONSTRAINT apps_command_limit CHECK (char_length(command) <= 65536),
    ADD CONSTRAINT apps_preprocess_limit CHECK (char_length(preprocess) <= 65536),
    ADD CONSTRAINT apps_postprocess_limit CHECK (char_length(postprocess) <= 65536),
    ADD CONSTRAINT apps_env_script_limit CHECK (char_length(env_script) <= 65536),
    ADD CONSTRAINT apps_description_limit CHECK (char_length(description) <= 4096),
    ADD CONSTRAINT apps_error_retry_limit_limit CHECK (error_retry_limit BETWEEN 0 AND 1000);

-- A lease of inf or NaN made make_interval() fail in every sweep (`interval out of
-- range`), so no crashed job was recovered any more; a day is far above any heartbeat.
ALTER TABLE batch_jobs
    DROP CONSTRAINT batch_jobs_lease_sec_check, DROP CONSTRAINT batch_jobs_wall_time_min_check,
    DROP CONSTRAINT batch_jobs_nodes_check, DROP CONSTRAINT batch_jobs_ranks_check,
    ADD CONSTRAINT batch_jobs_lease_sec_limit CHECK (lease_sec > 0 AND lease_sec <= 86400),
    ADD CONSTRAINT batch_jobs_wall_time_min_limit CHECK (
        wall_time_min IS NULL OR (wall_time_min > 0 AND wall_time_min <= 525600)),
    ADD CONSTRAINT batch_jobs_nodes_limit CHECK (nodes BETWEEN 1 AND 100000),
    ADD CONSTRAINT batch_jobs_ranks_limit CHECK (ranks BETWEEN 1 AND 100000);

-- ==== 2. States =========================================================================
-- balsam_mpi/tasks/states.py TRANSITIONS, as rows (tests/db/test_transitions.py compares them).
CREATE TABLE task_transitions (
    from_state  task_state NOT NULL,
    to_state    task_state NOT NULL,
    PRIMARY KEY (from_state, to_state)
);
INSERT INTO task_transitions (from_state, to_state)
SELECT f::task_state, t::task_state FROM (VALUES
    ('CREATED', '{AWAITING_PARENTS,READY,USER_KILLED,FAILED}'),
    ('AWAITING_PARENTS', '{READY,FAILED,USER_KILLED}'),
    ('READY', '{PREPROCESSED,RUNNING,AWAITING_PARENTS,FAILED,USER_KILLED}'),
    ('PREPROCESSED', '{RUNNING,READY,FAILED,USER_KILLED}'),
    ('RUNNING', '{RUN_DONE,RUN_ERROR,RUN_TIMEOUT,RESTART_READY,READY,FAILED,USER_KILLED}'),
    ('RUN_DONE', '{POSTPROCESSED,JOB_FINISHED,FAILED,USER_KILLED}'),
    ('POSTPROCESSED', '{JOB_FINISHED,FAILED,USER_KILLED}'),
    ('RUN_ERROR', '{RESTART_READY,POSTPROCESSED,FAILED,USER_KILLED}'),
    ('RUN_TIMEOUT', '{RESTART_READY,POSTPROCESSED,FAILED,USER_KILLED}'),
    ('RESTART_READY', '{PREPROCESSED,RUNNING,READY,FAILED,USER_KILLED}'),
    ('FAILED', '{READY,AWAITING_PARENTS}'),
    ('USER_KILLED', '{READY,AWAITING_PARENTS}')
) AS m (f, targets), unnest(targets::text[]) AS t;

-- Statement-level over the transition tables: one hash join per UPDATE, not a trigger
-- call per row. Named to fire before the event and DAG triggers (they fire in name order).
CREATE FUNCTION tasks_check_transitions() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_nestloop = off AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.id, o.state AS from_state, n.state AS to_state INTO bad
      FROM new_rows n JOIN old_rows o ON o.id = n.id
     WHERE n.state <> o.state
       AND NOT EXISTS (SELECT 1 FROM public.task_transitions x
                        WHERE x.from_state = o.state AND x.to_state = n.state)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'task %: % -> % is not a state change balsam allows', bad.id,
            bad.from_state, bad.to_state USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_check_transitions AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_check_transitions();

-- ==== 3. Writes =========================================================================
-- Tasks: SELECT for all (0002); a raw INSERT names only columns a new task may set and
-- the policy keeps its state new; raw UPDATE only of the plain columns; no raw DELETE.
-- Without table-level INSERT/UPDATE/DELETE a member can no longer LOCK TABLE tasks in
-- any mode that blocks launchers (column grants do not count for LOCK TABLE).
REVOKE INSERT, UPDATE, DELETE ON tasks FROM balsam_member;
GRANT INSERT (workflow, name, app_id, params, args, tags, num_nodes, ranks_per_node,
              threads_per_rank, gpus_per_rank, node_packing_count, wall_time_min, env,
              input_files, priority, state, owner, error_retry_limit, timeout_retry_limit,
              lost_retry_limit, fail_with_parents, data)
    ON tasks TO balsam_member;
GRANT UPDATE (priority, tags, data) ON tasks TO balsam_member;
ALTER POLICY tasks_add ON tasks
    WITH CHECK (owner = session_user AND state IN ('CREATED', 'AWAITING_PARENTS', 'READY'));
DROP POLICY tasks_delete_own ON tasks;
DROP POLICY tasks_delete_any ON tasks;

-- Dependencies and batch jobs: written only by the functions below.
REVOKE INSERT, DELETE ON task_deps FROM balsam_member;
DROP POLICY task_deps_own ON task_deps;
DROP POLICY task_deps_any ON task_deps;
REVOKE INSERT, UPDATE ON batch_jobs FROM balsam_member;
DROP POLICY batch_jobs_add ON batch_jobs;
DROP POLICY batch_jobs_change_own ON batch_jobs;
DROP POLICY batch_jobs_change_any ON batch_jobs;

-- The functions of the client's bulk path before 0007 now run only inside the functions
-- below (they are SECURITY DEFINER and owned by balsam_objects, so they may call them).
REVOKE EXECUTE ON FUNCTION tasks_recount(bigint[]), tasks_reinstate_followers(bigint[]),
    tasks_refail(bigint[]) FROM balsam_member;

-- Who may change a task: its owner, or the project owner (a member of balsam_owner; the
-- superuser). Each function below decides `any_task` once (pg_has_role) and then tests
-- `any_task OR t.owner = session_user` per row; session_user is the login role even
-- inside a SECURITY DEFINER function.

-- ---- adding tasks (Client.add_tasks) ----------------------------------------------------
-- Ids are reserved in blocks (tasks_reserve_ids) and the rows carry them, so the client
-- can name new tasks as parents of new tasks. A block belongs to the transaction that
-- reserved it: tasks_add and tasks_add_deps take only ids of the caller's own blocks, so
-- nobody can squat the ids another add is about to use (its insert would fail).
CREATE TABLE task_id_blocks (
    xact   xid8 NOT NULL,
    first  bigint NOT NULL,
    n      integer NOT NULL CHECK (n > 0)
);
REVOKE ALL ON task_id_blocks FROM balsam_member, balsam_viewer;

-- As 0003's, with the block recorded. The advisory lock is now one that only definer
-- functions can take (4. below), so nobody can hold it to stall every add.
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
    PERFORM pg_advisory_lock(hashtext('balsam_mpi.tasks_reserve_ids'));
    first := nextval(seq);
    IF n > 1 THEN
        PERFORM setval(seq, first + n - 1);
    END IF;
    PERFORM pg_advisory_unlock(hashtext('balsam_mpi.tasks_reserve_ids'));
    -- Blocks of transactions that have ended are dead; SKIP LOCKED, so concurrent adds
    -- never wait on each other's clean-up.
    DELETE FROM public.task_id_blocks b WHERE b.ctid IN (
        SELECT x.ctid FROM public.task_id_blocks x
         WHERE x.xact < pg_snapshot_xmin(pg_current_snapshot())
           FOR UPDATE SKIP LOCKED);
    INSERT INTO public.task_id_blocks (xact, first, n) VALUES (pg_current_xact_id(), first, n);
    RETURN first;
END $$;

-- Are all of these ids inside one block this transaction reserved?
CREATE FUNCTION tasks_ids_reserved(lo bigint, hi bigint) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT EXISTS (SELECT 1 FROM public.task_id_blocks b
                    WHERE b.xact = pg_current_xact_id()
                      AND lo >= b.first AND hi <= b.first + b.n - 1)
$$;

-- One chunk of a bulk add: rows (JSON objects holding what differs) over base (defaults
-- and shared values), as tasks.sql's tasks_insert_json did before 0007. Only the columns a
-- new task may set are read; owner is the caller; the first state is READY,
-- AWAITING_PARENTS (parents pending) or FAILED (a parent is stopped), as the client
-- decided from the parents it locked. Returns the number of rows.
CREATE FUNCTION tasks_add(p_base jsonb, p_rows jsonb) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n bigint;
    lo bigint;
    hi bigint;
    states_ok boolean;
BEGIN
    WITH added AS (
        INSERT INTO public.tasks (id, workflow, name, app_id, params, args, tags, num_nodes,
                           ranks_per_node, threads_per_rank, gpus_per_rank,
                           node_packing_count, wall_time_min, env, input_files, priority,
                           state, state_message, error_retry_limit, timeout_retry_limit,
                           lost_retry_limit, fail_with_parents, pending_parents, failed_by,
                           data)
        OVERRIDING SYSTEM VALUE
        SELECT u.id, u.workflow, u.name, u.app_id, u.params, u.args, u.tags, u.num_nodes,
               u.ranks_per_node, u.threads_per_rank, u.gpus_per_rank, u.node_packing_count,
               u.wall_time_min, u.env, u.input_files, u.priority, u.state,
               left(u.state_message, 4096), u.error_retry_limit, u.timeout_retry_limit,
               u.lost_retry_limit, u.fail_with_parents, u.pending_parents, u.failed_by,
               u.data
          FROM jsonb_populate_recordset(jsonb_populate_record(NULL::public.tasks, p_base),
                                        p_rows) AS u
        RETURNING tasks.id, tasks.state, tasks.pending_parents
    )
    SELECT count(*), min(a.id), max(a.id),
           coalesce(bool_and(a.state = 'READY' AND a.pending_parents = 0
                             OR a.state = 'AWAITING_PARENTS' AND a.pending_parents > 0
                             OR a.state = 'FAILED'), true)
      INTO n, lo, hi, states_ok
      FROM added a;
    IF n > 0 AND NOT tasks_ids_reserved(lo, hi) THEN
        RAISE EXCEPTION 'task ids % to % were not reserved by this transaction '
            '(tasks_reserve_ids)', lo, hi USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT states_ok THEN
        RAISE EXCEPTION 'state: a new task is READY, AWAITING_PARENTS with parents '
            'pending, or FAILED' USING ERRCODE = 'check_violation';
    END IF;
    RETURN n;
END $$;

-- The dependencies of one bulk add: every child is a task of this add (so no edge can
-- close a cycle through stored tasks); parents must exist (the foreign key).
CREATE FUNCTION tasks_add_deps(p_children bigint[], p_parents bigint[]) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n bigint;
BEGIN
    IF cardinality(p_children) IS DISTINCT FROM cardinality(p_parents) THEN
        RAISE EXCEPTION 'parents: % children but % parents', cardinality(p_children),
            cardinality(p_parents) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(p_children) = 0 THEN
        RETURN 0;
    END IF;
    IF NOT tasks_ids_reserved((SELECT min(c) FROM unnest(p_children) c),
                              (SELECT max(c) FROM unnest(p_children) c)) THEN
        RAISE EXCEPTION 'parents: only tasks added in this transaction get parents here '
            '(`balsam-mpi dep` for stored tasks)' USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO public.task_deps (child_id, parent_id)
    SELECT * FROM unnest(p_children, p_parents);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- ---- changing tasks -------------------------------------------------------------------
-- Each takes ids (an empty array means none, NULL is refused: never "every task") and
-- returns one row per id with what happened to it, so the caller reports what the
-- database did. A claimed task (READY / RESTART_READY with a batch_job_id) may start at
-- any moment: it is treated as started.

CREATE FUNCTION tasks_check_ids(p_ids bigint[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_ids IS NULL THEN
        RAISE EXCEPTION 'ids: give an array of task ids; NULL does not mean every task'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
END $$;

-- Why a task was left alone, for the outcome rows (plain SQL: inlined where it is used).
CREATE FUNCTION tasks_why_not(t public.tasks, any_task boolean) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN t.id IS NULL THEN 'no such task'
        WHEN NOT (any_task OR t.owner = session_user)
            THEN format('not yours (owner %s)', t.owner)
        WHEN t.state IN ('PREPROCESSED', 'RUNNING', 'RUN_DONE', 'POSTPROCESSED',
                         'RUN_ERROR', 'RUN_TIMEOUT')
            THEN format('%s in batch job %s', t.state, coalesce(t.batch_job_id::text, '?'))
        WHEN t.batch_job_id IS NOT NULL AND t.state IN ('READY', 'RESTART_READY')
            THEN format('claimed by batch job %s (it may start at any moment)',
                        t.batch_job_id)
        ELSE t.state::text
    END
$$;

CREATE FUNCTION tasks_kill(p_ids bigint[], p_message text DEFAULT NULL)
RETURNS TABLE (id bigint, outcome text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    any_task CONSTANT boolean := pg_has_role(session_user, 'balsam_owner', 'MEMBER');
BEGIN
    PERFORM tasks_check_ids(p_ids);
    RETURN QUERY
    WITH killed AS (
        -- USER_KILLED keeps the claim's batch_job_id: its launcher polls for it and stops
        -- the process. The DAG trigger fails the waiting descendants.
        UPDATE public.tasks t
           SET state = 'USER_KILLED',
               state_message = left(coalesce(p_message, 'killed by ' || session_user), 4096)
         WHERE t.id = ANY (p_ids) AND (any_task OR t.owner = session_user)
           AND t.state NOT IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED')
        RETURNING t.id
    ), left_alone AS (  -- usually few: only these are looked up again
        SELECT DISTINCT w.id FROM unnest(p_ids) AS w (id)
         WHERE NOT EXISTS (SELECT 1 FROM killed k WHERE k.id = w.id)
    )
    SELECT k.id, 'killed'::text FROM killed k
    UNION ALL
    SELECT l.id, CASE WHEN t.id IS NULL THEN 'no such task'
                      WHEN NOT (any_task OR t.owner = session_user)
                          THEN format('not yours (owner %s)', t.owner)
                      ELSE format('already %s', t.state) END
      FROM left_alone l LEFT JOIN public.tasks t ON t.id = l.id;
END $$;

-- FAILED / USER_KILLED tasks back to READY or AWAITING_PARENTS, counters reset, then the
-- tasks they failed (followed through failed_by, whoever owns them), then those still
-- under another stopped parent fail again. Outcomes: 'retried' (asked for), 'reinstated'
-- (a descendant back with it), 'failed again' (another parent is still stopped).
CREATE FUNCTION tasks_retry(p_ids bigint[])
RETURNS TABLE (id bigint, outcome text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    any_task CONSTANT boolean := pg_has_role(session_user, 'balsam_owner', 'MEMBER');
    back bigint[];
    followers bigint[];
    again bigint[];
BEGIN
    PERFORM tasks_check_ids(p_ids);
    WITH target AS (
        SELECT t.id FROM public.tasks t
         WHERE t.id = ANY (p_ids) AND t.state IN ('FAILED', 'USER_KILLED')
           AND (any_task OR t.owner = session_user)
           FOR NO KEY UPDATE
    ), pend AS (
        SELECT c.id,
               (SELECT count(*) FROM public.task_deps d JOIN public.tasks p ON p.id = d.parent_id
                 WHERE d.child_id = c.id AND p.state <> 'JOB_FINISHED'
                   AND (c.fail_with_parents OR p.state NOT IN ('FAILED', 'USER_KILLED'))
               )::integer AS k
          FROM target JOIN public.tasks c ON c.id = target.id
    ), done AS (
        UPDATE public.tasks t SET
            state = CASE WHEN pend.k > 0 THEN 'AWAITING_PARENTS' ELSE 'READY' END::task_state,
            pending_parents = pend.k, failed_by = NULL,
            state_message = 'retried by ' || session_user,
            error_retries = 0, timeout_retries = 0, lost_retries = 0,
            batch_job_id = NULL, claimed_at = NULL, started_at = NULL, ended_at = NULL,
            exit_code = NULL
          FROM pend
         WHERE t.id = pend.id
        RETURNING t.id
    )
    SELECT array_agg(done.id) INTO back FROM done;
    IF back IS NOT NULL THEN
        SELECT array_agg(f) INTO followers FROM tasks_reinstate_followers(back) AS f;
        SELECT array_agg(a) INTO again
          FROM tasks_refail(back || coalesce(followers, '{}')) AS a;
    END IF;
    RETURN QUERY
    WITH a AS (SELECT DISTINCT x AS id FROM unnest(again) x),
    b AS (SELECT x AS id FROM unnest(back) x WHERE NOT EXISTS (SELECT 1 FROM a WHERE a.id = x)),
    f AS (SELECT DISTINCT x AS id FROM unnest(followers) x
           WHERE NOT EXISTS (SELECT 1 FROM a WHERE a.id = x)
             AND NOT EXISTS (SELECT 1 FROM b WHERE b.id = x)),
    left_alone AS (
        SELECT DISTINCT w.id FROM unnest(p_ids) AS w (id)
         WHERE NOT EXISTS (SELECT 1 FROM a WHERE a.id = w.id)
           AND NOT EXISTS (SELECT 1 FROM b WHERE b.id = w.id)
           AND NOT EXISTS (SELECT 1 FROM f WHERE f.id = w.id)
    )
    SELECT a.id, 'failed again'::text FROM a
    UNION ALL SELECT b.id, 'retried' FROM b
    UNION ALL SELECT f.id, 'reinstated' FROM f
    UNION ALL
    SELECT l.id,
           CASE WHEN t.id IS NULL THEN 'no such task'
                WHEN NOT (any_task OR t.owner = session_user)
                    THEN format('not yours (owner %s)', t.owner)
                ELSE format('%s (only FAILED or USER_KILLED tasks are retried)', t.state)
           END
      FROM left_alone l LEFT JOIN public.tasks t ON t.id = l.id;
END $$;

-- `task modify`: p_changes holds the fields to change (validate.MODIFIABLE). priority,
-- tags and data change on any task (nothing that runs reads them); the rest only on a task
-- no launcher holds: a claimed task would run with its old values and be stored with the
-- new ones.
CREATE FUNCTION tasks_modify(p_ids bigint[], p_changes jsonb)
RETURNS TABLE (id bigint, outcome text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    allowed CONSTANT text[] := '{workflow,name,params,args,tags,env,data,input_files,
        num_nodes,ranks_per_node,threads_per_rank,gpus_per_rank,node_packing_count,
        wall_time_min,priority,error_retry_limit,timeout_retry_limit,lost_retry_limit,
        fail_with_parents}';
    plain CONSTANT text[] := '{priority,tags,data}';
    any_task CONSTANT boolean := pg_has_role(session_user, 'balsam_owner', 'MEMBER');
    keys text[];
    r public.tasks;
    only_plain boolean;
    changed bigint[];
BEGIN
    PERFORM tasks_check_ids(p_ids);
    IF p_changes IS NULL OR jsonb_typeof(p_changes) <> 'object' OR p_changes = '{}' THEN
        RAISE EXCEPTION 'nothing to change: give at least one field'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    keys := ARRAY(SELECT jsonb_object_keys(p_changes));
    IF NOT keys <@ allowed THEN
        RAISE EXCEPTION '%: cannot be modified (modifiable: %)',
            (SELECT k FROM unnest(keys) k WHERE k <> ALL (allowed) ORDER BY k LIMIT 1),
            array_to_string(allowed, ', ') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    only_plain := keys <@ plain;
    r := jsonb_populate_record(NULL::public.tasks, p_changes);
    WITH done AS (
        UPDATE public.tasks t SET
            workflow = CASE WHEN p_changes ? 'workflow' THEN r.workflow ELSE t.workflow END,
            name = CASE WHEN p_changes ? 'name' THEN r.name ELSE t.name END,
            params = CASE WHEN p_changes ? 'params' THEN r.params ELSE t.params END,
            args = CASE WHEN p_changes ? 'args' THEN r.args ELSE t.args END,
            tags = CASE WHEN p_changes ? 'tags' THEN r.tags ELSE t.tags END,
            env = CASE WHEN p_changes ? 'env' THEN r.env ELSE t.env END,
            data = CASE WHEN p_changes ? 'data' THEN r.data ELSE t.data END,
            input_files = CASE WHEN p_changes ? 'input_files' THEN r.input_files
                               ELSE t.input_files END,
            num_nodes = CASE WHEN p_changes ? 'num_nodes' THEN r.num_nodes ELSE t.num_nodes END,
            ranks_per_node = CASE WHEN p_changes ? 'ranks_per_node' THEN r.ranks_per_node
                                  ELSE t.ranks_per_node END,
            threads_per_rank = CASE WHEN p_changes ? 'threads_per_rank' THEN r.threads_per_rank
                                    ELSE t.threads_per_rank END,
            gpus_per_rank = CASE WHEN p_changes ? 'gpus_per_rank' THEN r.gpus_per_rank
                                 ELSE t.gpus_per_rank END,
            node_packing_count = CASE WHEN p_changes ? 'node_packing_count'
                                      THEN r.node_packing_count ELSE t.node_packing_count END,
            wall_time_min = CASE WHEN p_changes ? 'wall_time_min' THEN r.wall_time_min
                                 ELSE t.wall_time_min END,
            priority = CASE WHEN p_changes ? 'priority' THEN r.priority ELSE t.priority END,
            error_retry_limit = CASE WHEN p_changes ? 'error_retry_limit'
                                     THEN r.error_retry_limit ELSE t.error_retry_limit END,
            timeout_retry_limit = CASE WHEN p_changes ? 'timeout_retry_limit'
                                       THEN r.timeout_retry_limit
                                       ELSE t.timeout_retry_limit END,
            lost_retry_limit = CASE WHEN p_changes ? 'lost_retry_limit'
                                    THEN r.lost_retry_limit ELSE t.lost_retry_limit END,
            fail_with_parents = CASE WHEN p_changes ? 'fail_with_parents'
                                     THEN r.fail_with_parents ELSE t.fail_with_parents END
         WHERE t.id = ANY (p_ids) AND (any_task OR t.owner = session_user)
           AND (only_plain
                OR t.state NOT IN ('PREPROCESSED', 'RUNNING', 'RUN_DONE', 'POSTPROCESSED',
                                   'RUN_ERROR', 'RUN_TIMEOUT')
                   AND NOT (t.batch_job_id IS NOT NULL
                            AND t.state IN ('READY', 'RESTART_READY')))
        RETURNING t.id
    )
    SELECT array_agg(done.id) INTO changed FROM done;
    -- Opting in or out of failing with parents changes what the parents' states mean.
    IF changed IS NOT NULL AND p_changes ? 'fail_with_parents' THEN
        PERFORM tasks_recount(changed);
        PERFORM tasks_refail(changed);
    END IF;
    RETURN QUERY
    WITH done AS (SELECT x AS id FROM unnest(changed) x),
    left_alone AS (
        SELECT DISTINCT w.id FROM unnest(p_ids) AS w (id)
         WHERE NOT EXISTS (SELECT 1 FROM done WHERE done.id = w.id)
    )
    SELECT done.id, 'modified'::text FROM done
    UNION ALL
    SELECT l.id, tasks_why_not(t, any_task)
      FROM left_alone l LEFT JOIN public.tasks t ON t.id = l.id;
END $$;

-- `task rm`: the caller's tasks (any, for the owner) go; history stays in task_events;
-- children that remain stop waiting for them. A claimed or running task is deleted too:
-- its launcher sees the task gone (launcher_kills below) and stops the process.
CREATE FUNCTION tasks_delete(p_ids bigint[])
RETURNS TABLE (id bigint, outcome text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    any_task CONSTANT boolean := pg_has_role(session_user, 'balsam_owner', 'MEMBER');
    gone bigint[];
    held bigint[];
    kids bigint[];
BEGIN
    PERFORM tasks_check_ids(p_ids);
    SELECT array_agg(x.id),
           array_agg(x.id) FILTER (WHERE x.batch_job_id IS NOT NULL
                                   AND x.state NOT IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED'))
      INTO gone, held
      FROM (SELECT t.id, t.batch_job_id, t.state FROM public.tasks t
             WHERE t.id = ANY (p_ids) AND (any_task OR t.owner = session_user)
             ORDER BY t.id FOR UPDATE) x;
    IF gone IS NOT NULL THEN
        -- their task_deps rows go with them (ON DELETE CASCADE): recount the children left
        SELECT array_agg(DISTINCT d.child_id) INTO kids
          FROM public.task_deps d
         WHERE d.parent_id = ANY (gone) AND NOT d.child_id = ANY (gone);
        DELETE FROM public.tasks t WHERE t.id = ANY (gone);
        IF kids IS NOT NULL THEN
            PERFORM tasks_recount(kids);
        END IF;
    END IF;
    RETURN QUERY
    WITH h AS (SELECT x AS id FROM unnest(held) x),
    g AS (SELECT x AS id FROM unnest(gone) x WHERE NOT EXISTS (SELECT 1 FROM h WHERE h.id = x)),
    left_alone AS (
        SELECT DISTINCT w.id FROM unnest(p_ids) AS w (id)
         WHERE NOT EXISTS (SELECT 1 FROM h WHERE h.id = w.id)
           AND NOT EXISTS (SELECT 1 FROM g WHERE g.id = w.id)
    )
    SELECT h.id, 'deleted (its launcher stops it)'::text FROM h
    UNION ALL SELECT g.id, 'deleted' FROM g
    UNION ALL
    SELECT l.id, tasks_why_not(t, any_task)
      FROM left_alone l LEFT JOIN public.tasks t ON t.id = l.id;
END $$;

-- `balsam-mpi dep PARENT CHILD`. Every DAG edit takes the same transaction-level advisory
-- lock (only definer functions can), so the cycle check below sees every edge committed
-- before it and no edge can appear beside it: two concurrent `dep a b` / `dep b a` no
-- longer make a cycle (they did 30 times out of 30 under READ COMMITTED with row locks).
CREATE FUNCTION tasks_add_dependency(p_parent bigint, p_child bigint) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    child public.tasks;
    parent public.tasks;
BEGIN
    IF p_parent IS NULL OR p_child IS NULL THEN
        RAISE EXCEPTION 'dep: give a parent and a child task id'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_parent = p_child THEN
        RAISE EXCEPTION 'task % cannot depend on itself', p_child
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('balsam_mpi.dag_edits'));
    SELECT * INTO child FROM public.tasks t WHERE t.id = p_child FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no task with id %; see `balsam-mpi task ls`', p_child
            USING ERRCODE = 'no_data_found';
    END IF;
    IF NOT (child.owner = session_user
            OR pg_has_role(session_user, 'balsam_owner', 'MEMBER')) THEN
        RAISE EXCEPTION 'task % belongs to %: only they or the project owner can give it '
            'a parent', p_child, child.owner USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT * INTO parent FROM public.tasks t WHERE t.id = p_parent FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no task with id %; see `balsam-mpi task ls`', p_parent
            USING ERRCODE = 'no_data_found';
    END IF;
    IF child.state NOT IN ('CREATED', 'AWAITING_PARENTS', 'READY') THEN
        RAISE EXCEPTION 'task % is %: a parent can only be added to a task that has not '
            'started', p_child, child.state USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF child.batch_job_id IS NOT NULL THEN
        RAISE EXCEPTION 'task % is claimed by batch job % and may start at any moment: a '
            'parent can only be added to a task no launcher holds', p_child,
            child.batch_job_id USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF EXISTS (
        WITH RECURSIVE down (id) AS (
            SELECT d.child_id FROM public.task_deps d WHERE d.parent_id = p_child
            UNION
            SELECT x.child_id FROM down CROSS JOIN LATERAL (
                SELECT d.child_id FROM public.task_deps d WHERE d.parent_id = down.id
                OFFSET 0) x
        )
        SELECT 1 FROM down WHERE down.id = p_parent
    ) THEN
        RAISE EXCEPTION 'task % already depends on task %: the dependency would make a '
            'cycle', p_parent, p_child USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO public.task_deps (child_id, parent_id) VALUES (p_child, p_parent)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF parent.state IN ('FAILED', 'USER_KILLED') THEN
        IF child.fail_with_parents THEN
            UPDATE public.tasks c SET state = 'FAILED',
                   failed_by = coalesce(parent.failed_by, parent.id),
                   state_message = format('upstream task %s is %s',
                                          coalesce(parent.failed_by, parent.id), parent.state)
             WHERE c.id = p_child;
        END IF;
    ELSIF parent.state <> 'JOB_FINISHED' THEN
        UPDATE public.tasks c SET
            pending_parents = c.pending_parents + 1,
            state = CASE WHEN c.state IN ('CREATED', 'READY') THEN 'AWAITING_PARENTS'
                         ELSE c.state END::task_state,
            state_message = format('waiting for parent %s', p_parent)
         WHERE c.id = p_child;
    END IF;
    RETURN true;
END $$;

GRANT EXECUTE ON FUNCTION tasks_add(jsonb, jsonb), tasks_add_deps(bigint[], bigint[]),
    tasks_kill(bigint[], text), tasks_retry(bigint[]), tasks_modify(bigint[], jsonb),
    tasks_delete(bigint[]), tasks_add_dependency(bigint, bigint) TO balsam_member;

-- ==== 4. Locks and catalog functions ====================================================
-- Catalog functions belong to the bootstrap superuser, so these statements run as it (the
-- migration runs on its connection; SET ROLE balsam_objects is restored after). Large
-- objects (a viewer wrote 62 MB through lo_from_bytea), NOTIFY and logical messages are
-- nobody's business here; advisory locks are taken only inside definer functions (a
-- viewer held the lock every task add waited for).
RESET ROLE;
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'pg_catalog'::regnamespace
                AND (p.proname LIKE 'lo\_%' OR p.proname IN ('loread', 'lowrite', 'pg_notify',
                                                            'pg_logical_emit_message')
                     OR p.proname LIKE 'pg\_advisory\_%'
                     OR p.proname LIKE 'pg\_try\_advisory\_%')
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'pg_catalog'::regnamespace
                AND (p.proname LIKE 'pg\_advisory\_%' OR p.proname LIKE 'pg\_try\_advisory\_%')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO balsam_objects', f);
    END LOOP;
END $$;
SET ROLE balsam_objects;

-- ==== 5. Batch jobs =====================================================================
-- A scheduler job id is unique per user: another user's row with the same id (a mistake,
-- or a member squatting someone's next job id) no longer stops that user's launcher.
DROP INDEX batch_jobs_scheduler_id;
CREATE UNIQUE INDEX batch_jobs_scheduler_id ON batch_jobs (scheduler, scheduler_job_id, "user")
    WHERE scheduler_job_id IS NOT NULL;

-- As 0004's, but a launcher adopts only a row its own user made: by id (the row
-- `balsam-mpi submit` made: another user's is refused, naming its owner), or by scheduler
-- and scheduler job id among the caller's own rows only.
CREATE OR REPLACE FUNCTION launcher_open_job(
    p_job_id bigint, p_scheduler text, p_scheduler_job_id text, p_host text,
    p_nodes integer, p_ranks integer, p_filters jsonb, p_wall_time_min double precision,
    p_lease_sec double precision)
RETURNS TABLE (job_id bigint, lease_epoch bigint, adopted boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    found_id bigint;
    found_user text;
BEGIN
    IF p_lease_sec IS NULL OR NOT (p_lease_sec > 0 AND p_lease_sec <= 86400) THEN
        RAISE EXCEPTION 'lease_sec: must be more than 0 and at most 86400 seconds, got %',
            p_lease_sec USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_job_id IS NOT NULL THEN
        SELECT b.id, b."user" INTO found_id, found_user
          FROM public.batch_jobs b WHERE b.id = p_job_id FOR UPDATE;
        IF found_id IS NULL THEN
            RAISE EXCEPTION 'batch job % does not exist', p_job_id
                USING ERRCODE = 'no_data_found';
        END IF;
        IF found_user <> session_user THEN
            RAISE EXCEPTION 'batch job % belongs to %: only its own launcher can use it '
                '(a launcher adopts only batch jobs its own user submitted; check '
                'BALSAM_BATCH_JOB_ID)', p_job_id, found_user
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    ELSIF p_scheduler_job_id IS NOT NULL THEN
        SELECT b.id INTO found_id FROM public.batch_jobs b
         WHERE b.scheduler = p_scheduler AND b.scheduler_job_id = p_scheduler_job_id
           AND b."user" = session_user
           FOR UPDATE;
    END IF;
    IF found_id IS NOT NULL THEN
        RETURN QUERY
        UPDATE public.batch_jobs b
           SET state = 'RUNNING', host = p_host, nodes = p_nodes, ranks = p_ranks,
               filters = p_filters,
               wall_time_min = coalesce(p_wall_time_min, b.wall_time_min),
               lease_sec = p_lease_sec, lease_epoch = b.lease_epoch + 1,
               started_at = coalesce(b.started_at, now()), heartbeat_at = now(),
               ended_at = NULL, end_reason = NULL
         WHERE b.id = found_id
        RETURNING b.id, b.lease_epoch, true;
    ELSE
        RETURN QUERY
        INSERT INTO public.batch_jobs (scheduler, scheduler_job_id, host, nodes, ranks,
                                       filters, wall_time_min, state, lease_epoch,
                                       lease_sec, started_at, heartbeat_at)
        VALUES (p_scheduler, p_scheduler_job_id, p_host, p_nodes, p_ranks, p_filters,
                p_wall_time_min, 'RUNNING', 1, p_lease_sec, now(), now())
        RETURNING batch_jobs.id, batch_jobs.lease_epoch, false;
    END IF;
END $$;

-- `balsam-mpi submit` (sql/submit.sql): the QUEUED row of the caller, its scheduler job id
-- once the scheduler gave one (set once), and FAILED with the reason when the scheduler
-- refused the job. Nothing else of a batch job is written outside the launcher functions.
CREATE FUNCTION batch_job_submit(p_scheduler text, p_host text, p_nodes integer,
                                 p_filters jsonb, p_wall_time_min double precision)
RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    INSERT INTO public.batch_jobs (scheduler, host, nodes, ranks, filters, wall_time_min,
                                   state, submitted_at)
    VALUES (p_scheduler, p_host, p_nodes, p_nodes, p_filters, p_wall_time_min, 'QUEUED',
            now())
    RETURNING id
$$;

CREATE FUNCTION batch_job_set_scheduler_id(p_job bigint, p_scheduler_job_id text)
RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    UPDATE public.batch_jobs b SET scheduler_job_id = p_scheduler_job_id
     WHERE b.id = p_job AND b."user" = session_user
       AND (b.scheduler_job_id IS NULL OR b.scheduler_job_id = p_scheduler_job_id)
    RETURNING b.id
$$;

CREATE FUNCTION batch_job_submit_failed(p_job bigint, p_reason text) RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    UPDATE public.batch_jobs b
       SET state = 'FAILED', ended_at = now(), end_reason = left(p_reason, 4096)
     WHERE b.id = p_job AND b."user" = session_user AND b.state = 'QUEUED'
    RETURNING b.id
$$;

GRANT EXECUTE ON FUNCTION batch_job_submit(text, text, integer, jsonb, double precision),
    batch_job_set_scheduler_id(bigint, text), batch_job_submit_failed(bigint, text)
    TO balsam_member;

-- As 0004's, and a task this launcher tracks that is no longer its own — deleted
-- (`task rm` of a running task), retried, or requeued after its lease ran out — is
-- reported too, so the launcher stops a process whose task now lives elsewhere or not
-- at all. A launcher tracks a task from its claim to its end, and every path that clears
-- batch_job_id runs after that end or takes the task away from it.
CREATE OR REPLACE FUNCTION launcher_kills(p_job bigint, p_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    RETURN QUERY
    SELECT w.id FROM unnest(p_ids) AS w (id) LEFT JOIN public.tasks t ON t.id = w.id
     WHERE t.id IS NULL OR t.batch_job_id IS DISTINCT FROM p_job
        OR t.state = 'USER_KILLED';
END $$;

-- ==== 6. Propagation ====================================================================
-- The event trigger joins its two transition tables; plpgsql cached that plan from the
-- first statement of the session, so after a one-row UPDATE a 10,000-row one (the
-- descendants a kill fails) ran as a nested loop of 10^8 comparisons (12 s). A hash join
-- costs nothing at one row and stays linear.
ALTER FUNCTION tasks_events_on_update() SET enable_nestloop = off;

-- As 0003's, with the same rules. The rows that changed state are found by a statement
-- planned for this call's transition tables (EXECUTE: never a cached nested loop); every
-- later step starts from those ids. Each step of the walk down the DAG looks children up
-- one parent at a time (LATERAL … OFFSET 0), so a 10,000-deep chain is 10,000 index
-- probes whatever the planner thinks of the tables' sizes, while the first step (a bulk
-- kill's 100,000 roots) is left to the planner (a hash join).
CREATE OR REPLACE FUNCTION tasks_propagate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    done bigint[];
    stopped bigint[];
BEGIN
    -- Cheap exit for the launcher's common case (RUNNING, RUN_DONE, …): nothing to do.
    IF NOT EXISTS (
        SELECT 1 FROM new_rows n WHERE n.state IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED')
    ) THEN
        RETURN NULL;
    END IF;
    EXECUTE $q$
        SELECT array_agg(n.id) FILTER (WHERE n.state = 'JOB_FINISHED'),
               array_agg(n.id) FILTER (WHERE n.state <> 'JOB_FINISHED')
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.state = 'JOB_FINISHED' AND o.state <> 'JOB_FINISHED'
            OR n.state IN ('FAILED', 'USER_KILLED')
               AND o.state NOT IN ('FAILED', 'USER_KILLED')$q$
      INTO done, stopped;

    -- Parents that just finished: one decrement per (child, finished parents) pair; a
    -- child whose count reaches 0 while it waits becomes READY.
    IF done IS NOT NULL THEN
        WITH counts AS (
            SELECT d.child_id, count(*)::integer AS k
              FROM unnest(done) AS p (id) JOIN public.task_deps d ON d.parent_id = p.id
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
    END IF;
    IF stopped IS NULL THEN
        RETURN NULL;
    END IF;

    -- Parents that just stopped (FAILED or USER_KILLED): every waiting descendant reached
    -- through children that fail with their parents is FAILED, naming the ancestor.
    -- Rows stopped by this same statement are already stopped here, so a bulk kill of a
    -- whole workflow does not walk its graph again.
    WITH RECURSIVE down (id, root) AS (
        SELECT d.child_id, s.id FROM unnest(stopped) AS s (id)
          JOIN public.task_deps d ON d.parent_id = s.id
          JOIN public.tasks c ON c.id = d.child_id
         WHERE c.fail_with_parents AND c.state IN ('CREATED', 'AWAITING_PARENTS')
        UNION
        SELECT x.child_id, down.root FROM down CROSS JOIN LATERAL (
            SELECT d.child_id FROM public.task_deps d
              JOIN public.tasks c ON c.id = d.child_id
             WHERE d.parent_id = down.id AND c.fail_with_parents
               AND c.state IN ('CREATED', 'AWAITING_PARENTS')
            OFFSET 0) x
    ), first_root AS (
        SELECT DISTINCT ON (down.id) down.id, down.root FROM down ORDER BY down.id, down.root
    )
    UPDATE public.tasks c
       SET state = 'FAILED',
           failed_by = f.root,
           state_message = format('upstream task %s is %s', f.root, r.state)
      FROM first_root f JOIN public.tasks r ON r.id = f.root
     WHERE c.id = f.id;

    -- Children that opt out (fail_with_parents = false) count a stopped parent as done.
    WITH counts AS (
        SELECT d.child_id, count(*)::integer AS k
          FROM unnest(stopped) AS s (id) JOIN public.task_deps d ON d.parent_id = s.id
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
