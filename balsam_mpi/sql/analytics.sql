-- Utilization, throughput, usage, latency and failure reports, and `balsam-mpi job ls|show`.
--
-- The heavy lifting happens here: every query reads task_events once and returns a few
-- rows per (batch job, time bin) or per group, never one row per event. Optional filters
-- are NULL when unused (typed casts, since Postgres cannot infer the type of a bare NULL).
--
-- Busy time without pairing events: a run adds +w nodes when a task enters RUNNING and
-- -w when it leaves RUNNING (done, error, timeout, or cut off by a requeue or kill), where
-- w = num_nodes / node_packing_count. A run still open is closed at its batch job's end.
-- Summing those steps per time bin gives the busy-nodes step function exactly, so retried
-- tasks count every run and no window function has to sort three million events.

-- name: analytics_batch_jobs
-- The batch jobs a report covers. `alive_until` is when the job stopped holding its nodes:
-- its recorded end; for a lost job its last heartbeat; for a running job now, unless its
-- heartbeat is older than its lease (then it died at heartbeat + lease).
SELECT id, scheduler, scheduler_job_id, "user", host, nodes, ranks, state::text AS state,
       wall_time_min, submitted_at, started_at, heartbeat_at, ended_at, end_reason,
       CASE
         WHEN started_at IS NULL THEN NULL
         WHEN state = 'LOST' THEN greatest(started_at, coalesce(heartbeat_at, ended_at, started_at))
         WHEN ended_at IS NOT NULL THEN greatest(started_at, ended_at)
         WHEN state = 'RUNNING' THEN greatest(started_at, least(
              statement_timestamp(),
              coalesce(heartbeat_at, statement_timestamp()) + lease_sec * interval '1 second'))
         ELSE greatest(started_at, coalesce(heartbeat_at, started_at))
       END AS alive_until,
       statement_timestamp() AS now
  FROM batch_jobs
 WHERE (%(batch_job)s::bigint IS NULL OR id = %(batch_job)s::bigint)
   AND (%(user)s::text IS NULL OR "user" = %(user)s::text)
 ORDER BY id

-- name: analytics_planner_settings
-- For the report's own transaction: a JIT compile costs seconds on these one-off scans
-- and buys nothing; a hash join of all tasks needs more than the default work_mem; and
-- the planner cannot know that (batch job, bin) has a few hundred values, so it would
-- sort two million rows to group them. Reset by analytics_planner_reset.
SELECT set_config('jit', 'off', true), set_config('work_mem', '128MB', true),
       set_config('enable_sort', 'off', true)

-- name: analytics_planner_reset
SELECT set_config('enable_sort', 'on', true)

-- name: analytics_run_bins
-- Per (batch job, bin): the change of busy nodes across the bin (level_change), the
-- node-seconds the steps inside the bin contribute before its end (partial_node_seconds),
-- runs that ended well or badly, and the first run start / last run end (seconds from t0).
-- Times are epoch seconds (float8: cheaper than interval arithmetic, microsecond-exact at
-- today's epochs), clipped to the job's own life, then to the report window [e0, e1]; a
-- run that ends exactly at e1 (often: at its job's end) counts, in the last bin.
WITH marks AS (
    SELECT e.batch_job_id AS job_id, e.to_state,
           CASE WHEN e.to_state = 'RUNNING' THEN 1.0::float8 ELSE -1.0::float8 END
             * t.num_nodes / t.node_packing_count AS w,
           least(greatest(date_part('epoch', e.at), j.s), j.e) AS at
      FROM task_events e
      JOIN unnest(%(job_ids)s::bigint[], %(job_s)s::float8[], %(job_e)s::float8[])
           AS j(id, s, e) ON j.id = e.batch_job_id
      JOIN tasks t ON t.id = e.task_id
     WHERE (e.to_state = 'RUNNING' OR e.from_state = 'RUNNING')
       AND (%(workflow)s::text IS NULL OR t.workflow = %(workflow)s::text)
       AND (%(owner)s::text IS NULL OR t.owner = %(owner)s::text)
    UNION ALL
    -- runs still open: their task is RUNNING now; they end when the job stops
    SELECT t.batch_job_id, NULL, -1.0::float8 * t.num_nodes / t.node_packing_count, j.e
      FROM tasks t
      JOIN unnest(%(job_ids)s::bigint[], %(job_s)s::float8[], %(job_e)s::float8[])
           AS j(id, s, e) ON j.id = t.batch_job_id
     WHERE t.state = 'RUNNING'
       AND (%(workflow)s::text IS NULL OR t.workflow = %(workflow)s::text)
       AND (%(owner)s::text IS NULL OR t.owner = %(owner)s::text)
), rel AS (
    SELECT job_id, to_state, w, at >= %(e0)s::float8 AND at <= %(e1)s::float8 AS inside,
           least(greatest(at, %(e0)s::float8), %(e1)s::float8) - %(e0)s::float8 AS x
      FROM marks
    OFFSET 0  -- a fence: x is computed once per row, not once per use below
), binned AS (
    SELECT *, least(floor(x / %(width)s::float8)::int, %(nbins)s::int - 1) AS bin FROM rel
    OFFSET 0
)
SELECT job_id, bin,
       sum(w) AS level_change,
       sum(w * (least((bin + 1) * %(width)s::float8, %(span)s::float8) - x))
         AS partial_node_seconds,
       count(*) FILTER (WHERE inside AND w < 0
                          AND to_state IN ('RUN_DONE', 'POSTPROCESSED', 'JOB_FINISHED')) AS done,
       count(*) FILTER (WHERE inside AND w < 0
                          AND to_state IN ('RUN_ERROR', 'RUN_TIMEOUT', 'FAILED')) AS failed,
       min(x) FILTER (WHERE w > 0 AND inside) AS first_start,
       max(x) FILTER (WHERE w < 0 AND x > 0) AS last_end
  FROM binned
 GROUP BY job_id, bin

-- name: analytics_usage
-- Busy node-seconds and runs per (batch job, workflow, task owner) inside [e0, e1]:
-- over a run's two steps, -sum(w * t) = -(w * start - w * end) = w * (end - start), so no
-- pairing is needed. Times as in analytics_run_bins.
WITH marks AS (
    SELECT e.batch_job_id AS job_id, t.workflow, t.owner, e.to_state,
           CASE WHEN e.to_state = 'RUNNING' THEN 1.0::float8 ELSE -1.0::float8 END
             * t.num_nodes / t.node_packing_count AS w,
           least(greatest(date_part('epoch', e.at), j.s), j.e) AS at
      FROM task_events e
      JOIN unnest(%(job_ids)s::bigint[], %(job_s)s::float8[], %(job_e)s::float8[])
           AS j(id, s, e) ON j.id = e.batch_job_id
      JOIN tasks t ON t.id = e.task_id
     WHERE (e.to_state = 'RUNNING' OR e.from_state = 'RUNNING')
       AND (%(workflow)s::text IS NULL OR t.workflow = %(workflow)s::text)
       AND (%(owner)s::text IS NULL OR t.owner = %(owner)s::text)
    UNION ALL
    SELECT t.batch_job_id, t.workflow, t.owner, NULL,
           -1.0::float8 * t.num_nodes / t.node_packing_count, j.e
      FROM tasks t
      JOIN unnest(%(job_ids)s::bigint[], %(job_s)s::float8[], %(job_e)s::float8[])
           AS j(id, s, e) ON j.id = t.batch_job_id
     WHERE t.state = 'RUNNING'
       AND (%(workflow)s::text IS NULL OR t.workflow = %(workflow)s::text)
       AND (%(owner)s::text IS NULL OR t.owner = %(owner)s::text)
)
SELECT job_id, workflow, owner,
       -sum(w * (least(greatest(at, %(e0)s::float8), %(e1)s::float8) - %(e0)s::float8))
         AS node_seconds,
       count(*) FILTER (WHERE w < 0 AND at >= %(e0)s::float8 AND at <= %(e1)s::float8
                          AND to_state IN ('RUN_DONE', 'POSTPROCESSED', 'JOB_FINISHED')) AS done,
       count(*) FILTER (WHERE w < 0 AND at >= %(e0)s::float8 AND at <= %(e1)s::float8
                          AND to_state IN ('RUN_ERROR', 'RUN_TIMEOUT', 'FAILED')) AS failed
  FROM marks
 GROUP BY job_id, workflow, owner

-- name: analytics_latency
-- Each task's latest pass: when it last became runnable (its latest READY or RESTART_READY
-- event), was claimed, started, and ended well (tasks.claimed_at / started_at / ended_at
-- hold the latest run). A stage counts only when its ends are in order (a requeued task
-- has no fresh claim yet; a running one has no end). Tasks that started inside [t0, t1).
-- Over a million tasks, one in `every` (by id) is enough for the percentiles and keeps
-- the per-task grouping small; the caller says so in the report.
-- Returned as a histogram per stage — 20 log-spaced buckets per decade from 1 ms, with
-- each bucket's exact count, sum, min and max — so percentiles need no sort of a million
-- values; numpy interpolates inside a bucket between its own min and max.
WITH ready AS (
    SELECT e.task_id, max(e.at) AS ready_at
      FROM task_events e
     WHERE e.to_state IN ('READY', 'RESTART_READY')
       AND e.task_id %% %(every)s::bigint = 0
     GROUP BY e.task_id
), per_task AS (
    SELECT date_part('epoch', t.claimed_at - r.ready_at) AS a,
           date_part('epoch', t.started_at - t.claimed_at) AS b,
           CASE WHEN t.state IN ('RUN_DONE', 'POSTPROCESSED', 'JOB_FINISHED')
                THEN date_part('epoch', t.ended_at - t.started_at) END AS c,
           CASE WHEN t.state IN ('RUN_DONE', 'POSTPROCESSED', 'JOB_FINISHED')
                THEN date_part('epoch', t.ended_at - r.ready_at) END AS d
      FROM tasks t
      LEFT JOIN ready r ON r.task_id = t.id
      LEFT JOIN batch_jobs bj ON bj.id = t.batch_job_id
     WHERE t.started_at >= %(t0)s AND t.started_at < %(t1)s
       AND t.id %% %(every)s::bigint = 0
       AND (%(workflow)s::text IS NULL OR t.workflow = %(workflow)s::text)
       AND (%(owner)s::text IS NULL OR t.owner = %(owner)s::text)
       AND (%(batch_job)s::bigint IS NULL OR t.batch_job_id = %(batch_job)s::bigint)
       AND (%(user)s::text IS NULL OR bj."user" = %(user)s::text)
), stages AS (
    SELECT s.stage, s.seconds
      FROM per_task p
     CROSS JOIN LATERAL (VALUES (1, p.a), (2, p.b), (3, p.c), (4, p.d)) AS s(stage, seconds)
     WHERE s.seconds >= 0
)
SELECT stage,
       CASE WHEN seconds < 0.001 THEN 0 ELSE 1 + floor(20 * log(seconds * 1000))::int END
         AS bucket,
       count(*) AS n, sum(seconds) AS total, min(seconds) AS lo, max(seconds) AS hi
  FROM stages
 GROUP BY 1, 2

-- name: analytics_failures
-- Tasks whose latest run failed, grouped by what they have in common. The host is the
-- batch job's; the first non-blank line of the output tail usually names the error.
SELECT a.name AS app, t.state::text AS state, t.exit_code, coalesce(bj.host, '') AS host,
       left(substring(btrim(t.output_tail, E' \t\r\n') FROM '^[^\n]*'), 160) AS first_line,
       count(*) AS tasks,
       (array_agg(t.id ORDER BY t.id))[1:5] AS example_ids,
       max(coalesce(t.ended_at, t.started_at, t.created_at)) AS last_at
  FROM tasks t
  JOIN apps a ON a.id = t.app_id
  LEFT JOIN batch_jobs bj ON bj.id = t.batch_job_id
 WHERE t.state IN ('RUN_ERROR', 'RUN_TIMEOUT', 'FAILED')
   AND coalesce(t.ended_at, t.started_at, t.created_at) >= %(t0)s
   AND coalesce(t.ended_at, t.started_at, t.created_at) < %(t1)s
   AND (%(workflow)s::text IS NULL OR t.workflow = %(workflow)s::text)
   AND (%(owner)s::text IS NULL OR t.owner = %(owner)s::text)
   AND (%(batch_job)s::bigint IS NULL OR t.batch_job_id = %(batch_job)s::bigint)
   AND (%(user)s::text IS NULL OR bj."user" = %(user)s::text)
 GROUP BY 1, 2, 3, 4, 5
 ORDER BY tasks DESC, app, state, exit_code NULLS LAST, host, first_line
 LIMIT %(limit)s

-- name: analytics_task_estimate
-- The planner's row estimate of tasks (no scan): enough to choose a latency sample.
SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'tasks'::regclass

-- name: analytics_event_span
-- The first and last event, for reports over projects without any started batch job.
SELECT min(at), max(at) FROM task_events

-- name: jobs_list
-- Batch jobs, newest first, with the tasks each holds now.
SELECT bj.id, bj.scheduler, bj.scheduler_job_id, bj."user", bj.host, bj.nodes, bj.ranks,
       bj.state::text AS state, bj.wall_time_min, bj.submitted_at, bj.started_at,
       bj.heartbeat_at, bj.ended_at, bj.end_reason, bj.filters,
       (SELECT count(*) FROM tasks t
         WHERE t.batch_job_id = bj.id AND t.state IN ('PREPROCESSED', 'RUNNING')) AS running
  FROM batch_jobs bj
 WHERE (%(state)s::text IS NULL OR bj.state::text = %(state)s::text)
   AND (%(user)s::text IS NULL OR bj."user" = %(user)s::text)
 ORDER BY bj.id DESC
 LIMIT %(limit)s
