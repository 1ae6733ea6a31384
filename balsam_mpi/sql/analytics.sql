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

-- name: analytics_run_bins
-- Per (batch job, bin): the change of busy nodes across the bin (level_change), the
-- node-seconds the steps inside the bin contribute before its end (partial_node_seconds),
-- runs that ended well or badly, and the first run start / last run end (seconds from t0).
-- Times are clipped to the job's own life, then to the report window [t0, t1]; a run
-- that ends exactly at t1 (often: at its job's end) counts, in the last bin.
WITH j AS (
    SELECT * FROM unnest(%(job_ids)s::bigint[], %(job_starts)s::timestamptz[],
                         %(job_ends)s::timestamptz[]) AS j(id, started_at, alive_until)
), marks AS (
    SELECT e.batch_job_id AS job_id, e.to_state,
           CASE WHEN e.to_state = 'RUNNING' THEN 1.0::float8 ELSE -1.0::float8 END
             * t.num_nodes / t.node_packing_count AS w,
           least(greatest(e.at, j.started_at), j.alive_until) AS at
      FROM task_events e
      JOIN j ON j.id = e.batch_job_id
      JOIN tasks t ON t.id = e.task_id
     WHERE (e.to_state = 'RUNNING' OR e.from_state = 'RUNNING')
       AND (%(workflow)s::text IS NULL OR t.workflow = %(workflow)s::text)
       AND (%(owner)s::text IS NULL OR t.owner = %(owner)s::text)
    UNION ALL
    -- runs still open: their task is RUNNING now; they end when the job stops
    SELECT t.batch_job_id, NULL, -1.0::float8 * t.num_nodes / t.node_packing_count, j.alive_until
      FROM tasks t
      JOIN j ON j.id = t.batch_job_id
     WHERE t.state = 'RUNNING'
       AND (%(workflow)s::text IS NULL OR t.workflow = %(workflow)s::text)
       AND (%(owner)s::text IS NULL OR t.owner = %(owner)s::text)
), rel AS (
    SELECT job_id, to_state, w, at >= %(t0)s AND at <= %(t1)s AS inside,
           date_part('epoch', least(greatest(at, %(t0)s), %(t1)s) - %(t0)s::timestamptz) AS x
      FROM marks
), binned AS (
    SELECT *, least(floor(x / %(width)s::float8)::int, %(nbins)s::int - 1) AS bin FROM rel
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
 ORDER BY job_id, bin

-- name: analytics_usage
-- Busy node-seconds and runs per (batch job, workflow, task owner) inside [t0, t1]:
-- over a run's two steps, -sum(w * t) = -(w * start - w * end) = w * (end - start), so no
-- pairing is needed.
WITH j AS (
    SELECT * FROM unnest(%(job_ids)s::bigint[], %(job_starts)s::timestamptz[],
                         %(job_ends)s::timestamptz[]) AS j(id, started_at, alive_until)
), marks AS (
    SELECT e.batch_job_id AS job_id, t.workflow, t.owner, e.to_state,
           CASE WHEN e.to_state = 'RUNNING' THEN 1.0::float8 ELSE -1.0::float8 END
             * t.num_nodes / t.node_packing_count AS w,
           least(greatest(e.at, j.started_at), j.alive_until) AS at
      FROM task_events e
      JOIN j ON j.id = e.batch_job_id
      JOIN tasks t ON t.id = e.task_id
     WHERE (e.to_state = 'RUNNING' OR e.from_state = 'RUNNING')
       AND (%(workflow)s::text IS NULL OR t.workflow = %(workflow)s::text)
       AND (%(owner)s::text IS NULL OR t.owner = %(owner)s::text)
    UNION ALL
    SELECT t.batch_job_id, t.workflow, t.owner, NULL,
           -1.0::float8 * t.num_nodes / t.node_packing_count, j.alive_until
      FROM tasks t
      JOIN j ON j.id = t.batch_job_id
     WHERE t.state = 'RUNNING'
       AND (%(workflow)s::text IS NULL OR t.workflow = %(workflow)s::text)
       AND (%(owner)s::text IS NULL OR t.owner = %(owner)s::text)
)
SELECT job_id, workflow, owner,
       -sum(w * date_part('epoch', least(greatest(at, %(t0)s), %(t1)s) - %(t0)s::timestamptz))
         AS node_seconds,
       count(*) FILTER (WHERE w < 0 AND at >= %(t0)s AND at <= %(t1)s
                          AND to_state IN ('RUN_DONE', 'POSTPROCESSED', 'JOB_FINISHED')) AS done,
       count(*) FILTER (WHERE w < 0 AND at >= %(t0)s AND at <= %(t1)s
                          AND to_state IN ('RUN_ERROR', 'RUN_TIMEOUT', 'FAILED')) AS failed
  FROM marks
 GROUP BY job_id, workflow, owner
 ORDER BY job_id, workflow, owner

-- name: analytics_latency
-- Each task's latest pass through the pipeline: when it last became runnable, was claimed,
-- started running and finished well. A stage counts only when its two ends are in order
-- (a task requeued after its last run has no fresh claim yet). Seconds, per stage.
WITH per_task AS (
    SELECT e.task_id,
           max(e.at) FILTER (WHERE e.to_state IN ('READY', 'RESTART_READY')) AS ready_at,
           max(e.at) FILTER (WHERE e.to_state = 'RUNNING') AS running_at,
           max(e.at) FILTER (WHERE e.from_state = 'RUNNING'
                               AND e.to_state IN ('RUN_DONE', 'POSTPROCESSED', 'JOB_FINISHED'))
             AS done_at
      FROM task_events e
     WHERE e.to_state IN ('READY', 'RESTART_READY', 'RUNNING', 'RUN_DONE', 'POSTPROCESSED',
                          'JOB_FINISHED')
     GROUP BY e.task_id
), stages AS (
    SELECT s.stage, s.ord, date_part('epoch', s.b - s.a) AS seconds
      FROM per_task p
      JOIN tasks t ON t.id = p.task_id
      LEFT JOIN batch_jobs bj ON bj.id = t.batch_job_id
     CROSS JOIN LATERAL (VALUES
         (1, 'ready_to_claimed', p.ready_at, t.claimed_at),
         (2, 'claimed_to_running', t.claimed_at, p.running_at),
         (3, 'running_to_done', p.running_at, p.done_at),
         (4, 'ready_to_done', p.ready_at, p.done_at)) AS s(ord, stage, a, b)
     WHERE s.a IS NOT NULL AND s.b IS NOT NULL AND s.b >= s.a
       AND p.running_at >= %(t0)s AND p.running_at < %(t1)s
       AND (%(workflow)s::text IS NULL OR t.workflow = %(workflow)s::text)
       AND (%(owner)s::text IS NULL OR t.owner = %(owner)s::text)
       AND (%(batch_job)s::bigint IS NULL OR t.batch_job_id = %(batch_job)s::bigint)
       AND (%(user)s::text IS NULL OR bj."user" = %(user)s::text)
)
SELECT stage, count(*) AS n, avg(seconds) AS mean,
       percentile_cont(ARRAY[0.5, 0.9, 0.99]::float8[]) WITHIN GROUP (ORDER BY seconds) AS pct,
       max(seconds) AS max
  FROM stages
 GROUP BY stage, ord
 ORDER BY ord

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
