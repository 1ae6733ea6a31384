-- 0012_bulk_copy: bulk adds through binary COPY (docs/tasks.md, "How the bulk add is fast").
--
-- Postgres refuses COPY FROM into a table with row-level security for anyone the policies
-- apply to, so a bulk add copies its rows into a staging table without any, and one
-- checked function moves them into tasks:
--
--   1. The staging table is a temporary table of the caller's own session, made by
--      tasks_stage_open() as balsam_objects (the database's owner, so it may make
--      temporary tables; members may not, so nobody else can make or shadow one). No other
--      session can read or write it — Postgres refuses another session's temporary
--      tables to everyone, the superuser included — and the caller holds only INSERT on
--      it (COPY), not SELECT, UPDATE, DELETE, TRUNCATE, nor its definition. Its rows carry
--      no owner: whoever's session moves them owns them (session_user, as tasks_add). ON
--      COMMIT DELETE ROWS: nothing staged outlives the transaction that staged it.
--   2. tasks_add_staged(children, parents) moves every staged row into tasks, then the
--      dependencies, with every check of tasks_add and tasks_add_deps (0007) and more:
--      ids inside a block this transaction reserved; only the columns a new task may set;
--      owner = session_user; the CHECK constraints of limits.py and the app check of 0003
--      (the rows go into tasks); every child a row of this add, every parent a stored task
--      or a row of this add, no cycle (a new parent has a smaller id than its child: the
--      client hands out ids in dependency order), and each first state (READY,
--      AWAITING_PARENTS with the right count, FAILED under a stopped parent) matching the
--      states of the parents, which it locks itself.

CREATE FUNCTION tasks_stage_open() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF to_regclass('pg_temp.task_stage') IS NOT NULL THEN
        RETURN;
    END IF;
    -- The columns a new task may set (0007's column grants), with tasks' defaults, so a
    -- COPY names only the columns its rows give. state is text: a client need not know
    -- the enum's type oid to send it in binary.
    CREATE TEMPORARY TABLE task_stage (
        id                   bigint NOT NULL,
        workflow             text,
        name                 text NOT NULL DEFAULT '',
        app_id               bigint,
        params               jsonb NOT NULL DEFAULT '{}',
        args                 text[] NOT NULL DEFAULT '{}',
        tags                 jsonb NOT NULL DEFAULT '{}',
        num_nodes            integer NOT NULL DEFAULT 1,
        ranks_per_node       integer NOT NULL DEFAULT 1,
        threads_per_rank     integer NOT NULL DEFAULT 1,
        gpus_per_rank        integer NOT NULL DEFAULT 0,
        node_packing_count   integer NOT NULL DEFAULT 1,
        wall_time_min        double precision NOT NULL DEFAULT 0,
        env                  jsonb NOT NULL DEFAULT '{}',
        input_files          text[] NOT NULL DEFAULT '{}',
        priority             integer NOT NULL DEFAULT 0,
        state                text NOT NULL DEFAULT 'READY',
        state_message        text NOT NULL DEFAULT '',
        error_retry_limit    integer NOT NULL DEFAULT 0,
        timeout_retry_limit  integer NOT NULL DEFAULT 3,
        lost_retry_limit     integer NOT NULL DEFAULT 3,
        fail_with_parents    boolean NOT NULL DEFAULT true,
        pending_parents      integer NOT NULL DEFAULT 0,
        failed_by            bigint,
        data                 jsonb NOT NULL DEFAULT '{}'
    ) ON COMMIT DELETE ROWS;
    -- 0002's default privileges gave members and viewers SELECT: only INSERT is needed.
    REVOKE ALL ON pg_temp.task_stage FROM PUBLIC, balsam_member, balsam_viewer;
    GRANT INSERT ON pg_temp.task_stage TO balsam_member;
END $$;

-- The first error of a staged add, as one line naming the task and the field; the client
-- puts the input's own name ("tasks.jsonl line 7") in place of "task <id>".
CREATE FUNCTION tasks_stage_refuse(p_task bigint, p_message text, p_code text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'task %: %', p_task, p_message USING ERRCODE = p_code;
END $$;

CREATE FUNCTION tasks_add_staged(p_children bigint[], p_parents bigint[]) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n bigint;
    lo bigint;
    hi bigint;
    odd bigint;
BEGIN
    IF p_children IS NULL OR p_parents IS NULL
       OR cardinality(p_children) <> cardinality(p_parents) THEN
        RAISE EXCEPTION 'parents: give two arrays of the same length (children, parents)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF to_regclass('pg_temp.task_stage') IS NULL THEN
        n := 0;
    ELSE
        SELECT count(*), min(s.id), max(s.id),
               min(s.id) FILTER (WHERE NOT (s.state = 'READY' AND s.pending_parents = 0
                                            AND s.failed_by IS NULL))
          INTO n, lo, hi, odd
          FROM pg_temp.task_stage s;
    END IF;
    IF n = 0 THEN
        IF cardinality(p_children) > 0 THEN
            RAISE EXCEPTION 'parents: only tasks of this add get parents here (`balsam-mpi '
                'dep` for stored tasks)' USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN 0;
    END IF;
    IF NOT tasks_ids_reserved(lo, hi) THEN
        RAISE EXCEPTION 'task ids % to % were not reserved by this transaction '
            '(tasks_reserve_ids)', lo, hi USING ERRCODE = 'insufficient_privilege';
    END IF;

    IF cardinality(p_children) = 0 THEN
        -- The common case: no parents, so every task starts READY.
        IF odd IS NOT NULL THEN
            PERFORM tasks_stage_refuse(odd, 'state: a task without parents starts READY, '
                'with no parents pending and failed by nobody', 'check_violation');
        END IF;
    ELSE
        PERFORM tasks_stage_check_deps(p_children, p_parents);
    END IF;

    INSERT INTO public.tasks (id, workflow, name, app_id, params, args, tags, num_nodes,
                              ranks_per_node, threads_per_rank, gpus_per_rank,
                              node_packing_count, wall_time_min, env, input_files, priority,
                              state, state_message, error_retry_limit, timeout_retry_limit,
                              lost_retry_limit, fail_with_parents, pending_parents, failed_by,
                              data)
    OVERRIDING SYSTEM VALUE
    SELECT s.id, s.workflow, s.name, s.app_id, s.params, s.args, s.tags, s.num_nodes,
           s.ranks_per_node, s.threads_per_rank, s.gpus_per_rank, s.node_packing_count,
           s.wall_time_min, s.env, s.input_files, s.priority, s.state::task_state,
           left(s.state_message, 4096), s.error_retry_limit, s.timeout_retry_limit,
           s.lost_retry_limit, s.fail_with_parents, s.pending_parents, s.failed_by, s.data
      FROM pg_temp.task_stage s;
    IF cardinality(p_children) > 0 THEN
        INSERT INTO public.task_deps (child_id, parent_id)
        SELECT * FROM unnest(p_children, p_parents);
    END IF;
    -- The next chunk of this add starts from an empty table (in place: the table was
    -- made or emptied in this transaction, so no new file after the first time).
    TRUNCATE pg_temp.task_stage;
    RETURN n;
END $$;

-- The dependency rules of a staged add: every child is a staged row; every parent a stored
-- task (locked FOR SHARE until commit, so none changes state unseen) or a staged row; a
-- parent of this transaction's own ids comes before its child in id order (so no cycle);
-- each staged row's first state is what its parents' states make it.
CREATE FUNCTION tasks_stage_check_deps(p_children bigint[], p_parents bigint[])
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_nestloop = off AS $$
DECLARE
    bad record;
    stored_ids bigint[];
    stored_states text[];
    stored_roots bigint[];
BEGIN
    SELECT d.c, d.p INTO bad
      FROM unnest(p_children, p_parents) AS d (c, p)
     WHERE NOT EXISTS (SELECT 1 FROM pg_temp.task_stage s WHERE s.id = d.c)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'parents: task % is not a task of this add; only new tasks get '
            'parents here (`balsam-mpi dep` for stored tasks)', bad.c
            USING ERRCODE = 'insufficient_privilege';
    END IF;

    SELECT d.c, d.p INTO bad
      FROM unnest(p_children, p_parents) AS d (c, p)
     WHERE d.p >= d.c
       AND EXISTS (SELECT 1 FROM public.task_id_blocks b
                    WHERE b.xact = pg_current_xact_id()
                      AND d.p BETWEEN b.first AND b.first + b.n - 1)
     LIMIT 1;
    IF FOUND THEN
        PERFORM tasks_stage_refuse(bad.c, format('parents: task %s of this add must come '
            'before its child in id order (new tasks get ids parents first); a '
            'dependency on a later or the same task can close a cycle', bad.p),
            'invalid_parameter_value');
    END IF;

    SELECT array_agg(t.id), array_agg(t.state::text), array_agg(coalesce(t.failed_by, t.id))
      INTO stored_ids, stored_states, stored_roots
      FROM (SELECT x.id, x.state, x.failed_by FROM public.tasks x
             WHERE x.id = ANY (p_parents) ORDER BY x.id FOR SHARE) t;

    WITH parent AS (
        SELECT s.id, s.state, s.id AS root FROM pg_temp.task_stage s
        UNION ALL
        SELECT u.id, u.state, u.root FROM unnest(stored_ids, stored_states, stored_roots)
            AS u (id, state, root)
    ), edge AS (
        SELECT d.c, d.p, p.state, p.root
          FROM unnest(p_children, p_parents) AS d (c, p) LEFT JOIN parent p ON p.id = d.p
    ), per_child AS (
        SELECT e.c,
               count(*) FILTER (WHERE e.state IS NULL) AS missing,
               min(e.p) FILTER (WHERE e.state IS NULL) AS missing_id,
               count(*) FILTER (WHERE e.state NOT IN ('JOB_FINISHED', 'FAILED',
                                                      'USER_KILLED')) AS pend,
               array_agg(e.p) FILTER (WHERE e.state IN ('FAILED', 'USER_KILLED'))
                   || array_agg(e.root) FILTER (WHERE e.state IN ('FAILED', 'USER_KILLED'))
                   AS roots
          FROM edge e GROUP BY e.c
    ), expect AS (
        SELECT s.id, s.state, s.pending_parents, s.failed_by, k.missing, k.missing_id,
               coalesce(k.pend, 0) AS pend,
               s.fail_with_parents AND k.roots IS NOT NULL AS fails, k.roots
          FROM pg_temp.task_stage s LEFT JOIN per_child k ON k.c = s.id
    )
    SELECT * INTO bad FROM expect x
     WHERE x.missing > 0
        OR x.pending_parents IS DISTINCT FROM x.pend
        OR (x.fails AND NOT (x.state = 'FAILED' AND x.failed_by = ANY (x.roots)))
        OR (NOT x.fails AND (x.failed_by IS NOT NULL OR x.state IS DISTINCT FROM
            CASE WHEN x.pend > 0 THEN 'AWAITING_PARENTS' ELSE 'READY' END))
     ORDER BY x.id LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF bad.missing > 0 THEN
        PERFORM tasks_stage_refuse(bad.id, format('parents: no task with id %s',
            bad.missing_id), 'foreign_key_violation');
    END IF;
    PERFORM tasks_stage_refuse(bad.id, format('state: its parents make it %s with %s '
        'parents pending, not %s with %s%s', CASE WHEN bad.fails THEN 'FAILED'
        WHEN bad.pend > 0 THEN 'AWAITING_PARENTS' ELSE 'READY' END, bad.pend, bad.state,
        bad.pending_parents, CASE WHEN bad.failed_by IS NULL THEN ''
        ELSE format(' (failed by %s)', bad.failed_by) END), 'check_violation');
END $$;

GRANT EXECUTE ON FUNCTION tasks_stage_open(), tasks_add_staged(bigint[], bigint[])
    TO balsam_member;
