-- Python tasks and waiting for tasks (migrations/0009_python_tasks.sql): apps by import
-- path and the queries of tasks/waiting.py / tasks/executor.py (the leader's statements: launcher.sql).

-- name: apps_insert_python
INSERT INTO apps (name, python, description, error_retry_limit, task_dirs)
VALUES (%(name)s, %(python)s, %(description)s, %(error_retry_limit)s, %(task_dirs)s)
RETURNING id

-- name: apps_by_python
-- The app a submit(fn_path) goes to: the first by name when several share the path.
SELECT name FROM apps WHERE python = %(python)s ORDER BY name LIMIT 1

-- name: tasks_final_listen
LISTEN balsam_task_final

-- name: tasks_final_unlisten
UNLISTEN balsam_task_final

-- name: tasks_outcomes
-- Where these tasks are; what they gave only for those that ended (a result can be big).
SELECT t.id, t.state::text,
       CASE WHEN t.state IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED') THEN t.result END,
       t.exit_code, t.state_message, t.output_tail
  FROM tasks t
 WHERE t.id = ANY (%(ids)s::bigint[])

-- name: task_result
SELECT result FROM tasks WHERE id = %(id)s
