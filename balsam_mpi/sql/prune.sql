-- `balsam-dbctl prune`: forgetting finished workflows (dbctl/prune.py).
--
-- A workflow goes with its tasks, their dependencies and events, and the batch jobs that
-- ran its tasks; never part of a batch job. Reports read runs from events joined to their
-- task and job, so removing a whole job with every run it made leaves every remaining
-- job's figures exactly as they were.

-- name: prune_workflows
-- Per workflow: its tasks, how many may still run (anything but JOB_FINISHED, FAILED,
-- USER_KILLED), and when it last changed (its latest event).
SELECT t.workflow, count(*) AS tasks,
       count(*) FILTER (WHERE t.state NOT IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED'))
         AS live,
       max(greatest(t.created_at, t.started_at, t.ended_at,
                    (SELECT max(e.at) FROM task_events e WHERE e.task_id = t.id)))
         AS last_at,
       count(*) FILTER (WHERE %(owner)s::text IS NOT NULL AND t.owner <> %(owner)s::text)
         AS others
  FROM tasks t
 WHERE %(workflows)s::text[] IS NULL OR t.workflow = ANY (%(workflows)s::text[])
 GROUP BY t.workflow
 ORDER BY t.workflow

-- name: prune_waiting_children
-- Tasks outside the selection that depend on a task in it and are not finished: a retry
-- or a run of theirs would still need the parent (and its directory's files).
SELECT c.id, c.workflow, c.state::text AS state, d.parent_id
  FROM task_deps d
  JOIN tasks p ON p.id = d.parent_id
  JOIN tasks c ON c.id = d.child_id
 WHERE p.workflow = ANY (%(workflows)s::text[])
   AND NOT c.workflow = ANY (%(workflows)s::text[])
   AND c.state <> 'JOB_FINISHED'
 ORDER BY c.id
 LIMIT 5

-- name: prune_jobs
-- The batch jobs that ran (or hold) tasks of the selection: their state, and a workflow
-- outside the selection they also ran tasks of, if any (such a job, and with it the
-- selection's runs, must stay for its reports to stay right).
WITH refs AS (
    SELECT e.batch_job_id AS job, t.workflow
      FROM task_events e
      JOIN tasks t ON t.id = e.task_id
     WHERE e.batch_job_id IS NOT NULL
    UNION ALL
    SELECT t.batch_job_id, t.workflow FROM tasks t WHERE t.batch_job_id IS NOT NULL
), per_job AS (
    SELECT job, bool_or(workflow = ANY (%(workflows)s::text[])) AS ours,
           min(workflow) FILTER (WHERE NOT workflow = ANY (%(workflows)s::text[])) AS other
      FROM refs
     GROUP BY job
)
SELECT p.job, coalesce(bj.state::text, '') AS state, p.other
  FROM per_job p
  LEFT JOIN batch_jobs bj ON bj.id = p.job
 WHERE p.ours
 ORDER BY p.job

-- name: prune_lock_tasks
-- The selection's tasks, a page at a time after id %(after)s, locked until the prune
-- commits: no retry, modify or dep can touch them meanwhile. Their directories are
-- derived from workflow, id and name.
SELECT id, workflow, name, state::text AS state, owner
  FROM tasks
 WHERE workflow = ANY (%(workflows)s::text[])
   AND id > %(after)s::bigint
 ORDER BY id
 LIMIT %(page)s::bigint
   FOR UPDATE

-- name: prune_tasks
-- The same pages without a lock (a dry run, or directories only).
SELECT id, workflow, name, state::text AS state, owner
  FROM tasks
 WHERE workflow = ANY (%(workflows)s::text[])
   AND id > %(after)s::bigint
 ORDER BY id
 LIMIT %(page)s::bigint

-- name: prune_tasks_of_ids
-- The rows of tasks the prune has already read (and, when it deletes, locked): where
-- their directories are.
SELECT id, workflow, name, state::text AS state, owner
  FROM tasks
 WHERE id = ANY (%(ids)s::bigint[])
 ORDER BY id

-- name: prune_lock_jobs
SELECT id FROM batch_jobs WHERE id = ANY (%(jobs)s::bigint[]) ORDER BY id FOR UPDATE

-- name: prune_count_events
SELECT count(*) FROM task_events
 WHERE task_id = ANY (%(ids)s::bigint[]) OR batch_job_id = ANY (%(jobs)s::bigint[])

-- name: prune_delete_events
-- The selection's events, and the events of its batch jobs left by tasks deleted earlier
-- (`task rm` keeps history; no report can read it once its task is gone).
WITH gone AS (
    DELETE FROM task_events
     WHERE task_id = ANY (%(ids)s::bigint[]) OR batch_job_id = ANY (%(jobs)s::bigint[])
    RETURNING 1
)
SELECT count(*) FROM gone

-- name: prune_delete_tasks
-- Dependencies go with them (ON DELETE CASCADE); children outside are finished (checked).
WITH gone AS (DELETE FROM tasks WHERE id = ANY (%(ids)s::bigint[]) RETURNING 1)
SELECT count(*) FROM gone

-- name: prune_delete_jobs
WITH gone AS (DELETE FROM batch_jobs WHERE id = ANY (%(jobs)s::bigint[]) RETURNING 1)
SELECT count(*) FROM gone

-- name: prune_workflow_of_tasks
SELECT DISTINCT workflow FROM tasks WHERE id = ANY (%(ids)s::bigint[])

-- name: prune_workflows_of_jobs
-- Which of the candidate workflows have tasks that these batch jobs ran (or hold).
SELECT DISTINCT t.workflow
  FROM tasks t
 WHERE t.workflow = ANY (%(workflows)s::text[])
   AND (t.batch_job_id = ANY (%(jobs)s::bigint[])
        OR EXISTS (SELECT 1 FROM task_events e
                    WHERE e.task_id = t.id AND e.batch_job_id = ANY (%(jobs)s::bigint[])))

-- name: prune_current_user
SELECT current_user
