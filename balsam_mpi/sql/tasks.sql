-- tasks.sql: the queries of the Python API (tasks/client.py) and the `balsam-mpi` app / task
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
       postprocess_on_error, postprocess_on_timeout, error_retry_limit, task_dirs, owner,
       created_at
  FROM apps ORDER BY name

-- name: apps_by_name
SELECT id, name, command, python, description, preprocess, postprocess, env_script, shell,
       postprocess_on_error, postprocess_on_timeout, error_retry_limit, task_dirs, owner,
       created_at
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
-- server (as jsonb: a tenth to a quarter less server CPU than json): one statement, no
-- temporary table, no per-value adaptation in Python. A task object holds only what it
-- does not share with the chunk; the base parameter (defaults and shared values, sent
-- once) fills the rest. Ids were reserved first (tasks_reserve_ids); tasks_add
-- (migrations/0007) takes only ids of this transaction's blocks and only the columns a
-- new task may set.
SELECT tasks_add(%(base)s::jsonb, %(rows)s::jsonb)

-- name: tasks_deps_insert
SELECT tasks_add_deps(%(children)s::bigint[], %(parents)s::bigint[])

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

-- The changes: each function (migrations/0007) checks who asks and what the task's state
-- allows, and returns one (id, outcome) row per id; an empty array means no task.

-- name: tasks_update
SELECT id, outcome FROM tasks_modify(%(ids)s::bigint[], %(changes)s::jsonb)

-- name: tasks_kill
SELECT id, outcome FROM tasks_kill(%(ids)s::bigint[], %(message)s::text)

-- name: tasks_retry
SELECT id, outcome FROM tasks_retry(%(ids)s::bigint[])

-- name: tasks_delete
SELECT id, outcome FROM tasks_delete(%(ids)s::bigint[])

-- name: tasks_dep_add
SELECT tasks_add_dependency(%(parent)s::bigint, %(child)s::bigint)

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

-- name: owners_unknown
-- Of the roles named by an --owner filter, those no task can have: neither a login role
-- that is a member of the project now (balsam_member, the owner through balsam_owner;
-- it may add tasks at any time) nor the owner of a task already there (a dropped
-- member's tasks stay, still naming them). The task read has no index on owner and so
-- scans the table for a name that owns nothing: it runs once per submit or launcher
-- start, and only for a name that is not a member.
SELECT o.name
  FROM unnest(%(owners)s::text[]) WITH ORDINALITY AS o(name, n)
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                    WHERE r.rolname = o.name AND r.rolcanlogin
                      AND pg_catalog.pg_has_role(r.oid, 'balsam_member', 'MEMBER'))
   AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.owner = o.name)
 ORDER BY o.n
