-- tasks.sql: the queries of the Python API (client.py) and the `balsam-mpi` app / task
-- commands. `{placeholders}` are composed with psycopg.sql (identifiers and the shared
-- filter predicate only); values are always parameters.

-- name: client_session
-- Every statement here is short; JIT compilation (seconds, on bulk statements whose row
-- estimates are stale right after a bulk add) never pays for itself.
SET jit = off

-- name: apps_insert
INSERT INTO apps (name, command, description, preprocess, postprocess, env_script, shell,
                  postprocess_on_error, postprocess_on_timeout, error_retry_limit)
VALUES (%(name)s, %(command)s, %(description)s, %(preprocess)s, %(postprocess)s,
        %(env_script)s, %(shell)s, %(postprocess_on_error)s, %(postprocess_on_timeout)s,
        %(error_retry_limit)s)
RETURNING id

-- name: apps_all
SELECT id, name, command, python, description, preprocess, postprocess, env_script, shell,
       postprocess_on_error, postprocess_on_timeout, error_retry_limit, owner, created_at
  FROM apps ORDER BY name

-- name: apps_by_name
SELECT id, name, command, python, description, preprocess, postprocess, env_script, shell,
       postprocess_on_error, postprocess_on_timeout, error_retry_limit, owner, created_at
  FROM apps WHERE name = %(name)s

-- name: apps_task_count
SELECT count(*) FROM tasks t JOIN apps a ON a.id = t.app_id WHERE a.name = %(name)s

-- name: apps_delete
DELETE FROM apps WHERE name = %(name)s RETURNING id

-- name: tasks_reserve_ids
SELECT tasks_reserve_ids(%(n)s)

-- name: tasks_lock
SELECT id, state, workflow, name FROM tasks_lock_parents(%(ids)s)

-- name: tasks_insert_json
-- One chunk of a bulk add, sent as one JSON array of task objects and unpacked by the
-- server (as jsonb: a tenth to a quarter less server CPU than json): one statement, no temporary
-- table (members may not create those), allowed under row-level security (COPY FROM is
-- not), and no per-value adaptation in Python.
-- A task object holds only what it does not share with the chunk; the base parameter
-- (defaults and shared values, sent once) fills the rest. Ids were reserved first
-- (tasks_reserve_ids), so nothing needs RETURNING.
INSERT INTO tasks (id, workflow, name, app_id, params, args, tags, num_nodes,
                   ranks_per_node, threads_per_rank, gpus_per_rank, node_packing_count,
                   wall_time_min, env, input_files, priority, state, state_message,
                   error_retry_limit, timeout_retry_limit, lost_retry_limit,
                   fail_with_parents, pending_parents, failed_by, data)
OVERRIDING SYSTEM VALUE
SELECT u.id, u.workflow, u.name, u.app_id, u.params, u.args, u.tags, u.num_nodes,
       u.ranks_per_node, u.threads_per_rank, u.gpus_per_rank, u.node_packing_count,
       u.wall_time_min, u.env, u.input_files, u.priority, u.state, u.state_message,
       u.error_retry_limit, u.timeout_retry_limit, u.lost_retry_limit,
       u.fail_with_parents, u.pending_parents, u.failed_by, u.data
  FROM jsonb_populate_recordset(jsonb_populate_record(NULL::tasks, %(base)s::jsonb),
                                %(rows)s::jsonb) AS u

-- name: tasks_deps_insert
INSERT INTO task_deps (child_id, parent_id)
SELECT * FROM unnest(%(children)s::bigint[], %(parents)s::bigint[])

-- name: tasks_filter
-- The one predicate every listing, kill, retry and delete shares (alias t: tasks; apps
-- only through a subquery, so ORDER BY … LIMIT stays on one table's index). A NULL
-- parameter means "no filter"; the planner folds those away.
    (%(ids)s::bigint[] IS NULL OR t.id = ANY (%(ids)s))
AND (%(workflows)s::text[] IS NULL OR t.workflow = ANY (%(workflows)s))
AND (%(states)s::task_state[] IS NULL OR t.state = ANY (%(states)s))
-- One workflow / one state as plain equality: an index scan returns rows in id order
-- (the LIMIT stops after a page) only for equality, never for "= ANY (array)".
AND (%(workflow)s::text IS NULL OR t.workflow = %(workflow)s)
AND (%(state)s::task_state IS NULL OR t.state = %(state)s)
AND (%(apps)s::text[] IS NULL
     OR t.app_id IN (SELECT ap.id FROM apps ap WHERE ap.name = ANY (%(apps)s)))
AND (%(name_like)s::text IS NULL OR t.name LIKE %(name_like)s)
AND (%(tags)s::jsonb IS NULL OR t.tags @> %(tags)s)
AND (%(owners)s::text[] IS NULL OR t.owner = ANY (%(owners)s))
AND (%(after)s::bigint IS NULL OR t.id > %(after)s)

-- name: tasks_select
-- The page is chosen on tasks alone (ORDER BY … LIMIT on its index, whatever the
-- statistics say right after a bulk add), then joined to apps for their names.
SELECT t.id, t.workflow, t.name, a.name AS app, t.params, t.args, t.tags, t.num_nodes,
       t.ranks_per_node, t.threads_per_rank, t.gpus_per_rank, t.node_packing_count,
       t.wall_time_min, t.env, t.input_files, t.priority, t.state, t.state_message, t.owner,
       t.error_retries, t.error_retry_limit, t.timeout_retries, t.timeout_retry_limit,
       t.lost_retries, t.lost_retry_limit, t.fail_with_parents, t.pending_parents,
       t.failed_by, t.batch_job_id, t.lease_epoch, t.created_at, t.claimed_at, t.started_at,
       t.ended_at, t.exit_code, t.output_tail, t.data
  FROM (SELECT * FROM tasks t WHERE {where} ORDER BY {order} LIMIT %(limit)s) t
  JOIN apps a ON a.id = t.app_id
 ORDER BY {order}

-- name: tasks_select_ids
SELECT t.id FROM tasks t WHERE {where} ORDER BY t.id

-- name: tasks_counts
SELECT workflow, state, count(*) FROM tasks GROUP BY workflow, state ORDER BY workflow, state

-- name: tasks_parents
SELECT d.child_id, p.id, p.state, p.workflow, p.name
  FROM task_deps d JOIN tasks p ON p.id = d.parent_id
 WHERE d.child_id = ANY (%(ids)s) ORDER BY d.child_id, p.id

-- name: tasks_children
SELECT d.parent_id, d.child_id FROM task_deps d
 WHERE d.parent_id = ANY (%(ids)s) ORDER BY d.parent_id, d.child_id

-- name: tasks_history
SELECT task_id, from_state, to_state, at, batch_job_id, actor, message
  FROM task_events WHERE task_id = %(id)s ORDER BY at, id

-- name: tasks_update
-- `task modify`: a NULL parameter leaves the column as it is. Running tasks are left
-- alone (their launcher holds the old values); the caller reports which.
UPDATE tasks t SET
    workflow = coalesce(%(workflow)s, t.workflow),
    name = coalesce(%(name)s, t.name),
    params = coalesce(%(params)s::jsonb, t.params),
    args = coalesce(%(args)s::text[], t.args),
    tags = coalesce(%(tags)s::jsonb, t.tags),
    env = coalesce(%(env)s::jsonb, t.env),
    data = coalesce(%(data)s::jsonb, t.data),
    input_files = coalesce(%(input_files)s::text[], t.input_files),
    num_nodes = coalesce(%(num_nodes)s, t.num_nodes),
    ranks_per_node = coalesce(%(ranks_per_node)s, t.ranks_per_node),
    threads_per_rank = coalesce(%(threads_per_rank)s, t.threads_per_rank),
    gpus_per_rank = coalesce(%(gpus_per_rank)s, t.gpus_per_rank),
    node_packing_count = coalesce(%(node_packing_count)s, t.node_packing_count),
    wall_time_min = coalesce(%(wall_time_min)s, t.wall_time_min),
    priority = coalesce(%(priority)s, t.priority),
    error_retry_limit = coalesce(%(error_retry_limit)s, t.error_retry_limit),
    timeout_retry_limit = coalesce(%(timeout_retry_limit)s, t.timeout_retry_limit),
    lost_retry_limit = coalesce(%(lost_retry_limit)s, t.lost_retry_limit),
    fail_with_parents = coalesce(%(fail_with_parents)s, t.fail_with_parents)
 WHERE t.id = ANY (%(ids)s) AND t.state NOT IN ('PREPROCESSED', 'RUNNING')
RETURNING t.id

-- name: tasks_kill
-- A kill is final until a retry: the launcher's late reports must not overwrite it
-- (its report statements only move tasks it still holds in RUNNING). The DAG trigger
-- fails the waiting descendants.
UPDATE tasks t SET state = 'USER_KILLED',
       state_message = coalesce(%(message)s, 'killed by ' || session_user)
 WHERE ({where})
   AND t.state NOT IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED')
RETURNING t.id

-- name: tasks_retry
-- Stopped tasks matching the filter (and, under row-level security, the caller's own)
-- return to READY or AWAITING_PARENTS with their unfinished parents counted again and
-- their counters reset. The tasks they failed come back through
-- tasks_reinstate_followers, whoever owns them.
WITH target AS (
    SELECT t.id FROM tasks t
     WHERE ({where}) AND t.state IN ('FAILED', 'USER_KILLED')
), pend AS (
    SELECT c.id,
           (SELECT count(*) FROM task_deps d JOIN tasks p ON p.id = d.parent_id
             WHERE d.child_id = c.id AND p.state <> 'JOB_FINISHED'
               AND (c.fail_with_parents OR p.state NOT IN ('FAILED', 'USER_KILLED'))
           )::integer AS k
      FROM target JOIN tasks c ON c.id = target.id
)
UPDATE tasks t SET
    state = CASE WHEN pend.k > 0 THEN 'AWAITING_PARENTS' ELSE 'READY' END::task_state,
    pending_parents = pend.k,
    failed_by = NULL,
    state_message = 'retried by ' || session_user,
    error_retries = 0, timeout_retries = 0, lost_retries = 0,
    batch_job_id = NULL, claimed_at = NULL, started_at = NULL, ended_at = NULL,
    exit_code = NULL
  FROM pend
 WHERE t.id = pend.id
RETURNING t.id

-- name: tasks_reinstate_followers
SELECT tasks_reinstate_followers(%(ids)s)

-- name: tasks_refail
SELECT tasks_refail(%(ids)s)

-- name: tasks_children_outside
-- Children of tasks about to be deleted that are not deleted with them.
SELECT DISTINCT d.child_id FROM task_deps d
 WHERE d.parent_id = ANY (%(ids)s) AND NOT d.child_id = ANY (%(ids)s)

-- name: tasks_recount
SELECT tasks_recount(%(ids)s)

-- name: tasks_delete
DELETE FROM tasks WHERE id = ANY (%(ids)s) RETURNING id

-- name: tasks_is_descendant
-- Is the target task reachable from the start task through children? (`dep`'s cycle check)
WITH RECURSIVE down (id) AS (
    SELECT child_id FROM task_deps WHERE parent_id = %(start)s
    UNION
    SELECT d.child_id FROM task_deps d JOIN down ON d.parent_id = down.id
)
SELECT EXISTS (SELECT 1 FROM down WHERE id = %(target)s)

-- name: tasks_dep_insert
INSERT INTO task_deps (child_id, parent_id) VALUES (%(child)s, %(parent)s)
ON CONFLICT DO NOTHING RETURNING child_id

-- name: tasks_dep_apply
-- The child of a new dependency: waits for an unfinished parent, fails with a stopped
-- one (unless it opts out), is untouched by a finished one.
UPDATE tasks c SET
    pending_parents = c.pending_parents + 1,
    state = CASE WHEN c.state IN ('CREATED', 'READY') THEN 'AWAITING_PARENTS'
                 ELSE c.state END::task_state,
    state_message = format('waiting for parent %%s', %(parent)s::bigint)
 WHERE c.id = %(child)s AND %(parent_state)s::task_state NOT IN
       ('JOB_FINISHED', 'FAILED', 'USER_KILLED')

-- name: tasks_dep_fail
UPDATE tasks c SET state = 'FAILED', failed_by = coalesce(p.failed_by, p.id),
       state_message = format('upstream task %%s is %%s', coalesce(p.failed_by, p.id), p.state)
  FROM tasks p
 WHERE c.id = %(child)s AND p.id = %(parent)s AND c.fail_with_parents
   AND p.state IN ('FAILED', 'USER_KILLED')

-- name: tasks_why_jobs
-- Batch jobs alive now (heartbeat within their lease) and what room they have left.
SELECT id, scheduler, scheduler_job_id, "user", host, nodes, filters, wall_time_min,
       started_at, heartbeat_at,
       CASE WHEN wall_time_min IS NULL OR started_at IS NULL THEN NULL
            ELSE wall_time_min - extract(epoch FROM now() - started_at) / 60 END AS left_min
  FROM batch_jobs
 WHERE state = 'RUNNING'
   AND (heartbeat_at IS NULL OR heartbeat_at > now() - make_interval(secs => lease_sec))
 ORDER BY id

-- name: tasks_batch_job
SELECT id, scheduler, scheduler_job_id, "user", host, state, started_at, heartbeat_at
  FROM batch_jobs WHERE id = %(id)s

-- name: tasks_ahead
-- Runnable tasks that a claim would take before this one (priority DESC, id order).
SELECT count(*) FROM tasks
 WHERE state IN ('READY', 'RESTART_READY')
   AND (priority > %(priority)s OR (priority = %(priority)s AND id < %(id)s))
