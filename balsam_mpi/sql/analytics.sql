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
-- heartbeat is older than its lease (then it died at heartbeat + lease). `uncertain_at` as
-- in jobs_list.
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
       CASE WHEN state = 'QUEUED' AND scheduler_job_id IS NULL
            THEN uncertain_at END AS uncertain_at,
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
-- Per (batch job, bin), and also per workflow and owner when `split` (the usage report:
-- one bin), from the steps of the runs:
--   level_change          the change of busy nodes across the bin,
--   partial_node_seconds  the node-seconds the steps inside the bin add before its end,
--   node_seconds          -sum(w * x): the runs' node-seconds clipped to the window,
--   done / failed         runs that ended well / badly inside the window,
--   first_start, last_end the first run start and last run end (seconds from e0).
-- A step's time is clipped to its batch job's life [s, e], then to the window [e0, e1];
-- x is that minus e0; the step is inside when its job-clipped time is in [e0, e1]; its
-- bin is least(floor(x / width), nbins - 1), so a run ending exactly at e1 counts, in the
-- last bin. Times are epoch seconds (float8: microsecond-exact at today's epochs).
--
-- The steps come from run_steps (0010), read whole where a 10 s bucket allows it, else
-- from the events themselves:
--   * a bucket wholly before or after its job's life, or wholly outside the window, puts
--     all its steps at one point ('C', at c); a bucket inside the job's life, the window
--     and one bin keeps them apart by its moment ('I'): x = lo - e0 plus each step's
--     offset inside the bucket, whose sum w-weighted is the moment;
--   * any other bucket ('R': cut by s, e, e0, e1 or a bin boundary, or marked dirty) is
--     read from task_events by the id ranges its rows summed, each event weighed by the
--     weight stored on it (unless the bucket is dirty or the report picks or splits by
--     workflow or owner: then joined to its task, as every report did before 0010); so
--     are events not rolled up (partial index), always joined to their tasks;
--   * runs still open (their task is RUNNING now) end when their batch job stops.
WITH j AS MATERIALIZED (
    SELECT * FROM unnest(%(job_ids)s::bigint[], %(job_s)s::float8[], %(job_e)s::float8[])
           AS j(id, s, e)
), p AS MATERIALIZED (  -- the window, as typed values
    SELECT %(e0)s::float8 AS e0, %(e1)s::float8 AS e1, %(width)s::float8 AS width,
           %(nbins)s::int AS nbins, %(span)s::float8 AS span, %(split)s::boolean AS split,
           %(workflow)s::text AS workflow, %(owner)s::text AS owner,
           run_step_seconds()::float8 AS step
), grouped AS (
    SELECT r.batch_job_id AS job_id, r.bucket,
           CASE WHEN p.split THEN r.workflow END AS workflow,
           CASE WHEN p.split THEN r.owner END AS owner,
           count(*) FILTER (WHERE r.starts + r.ends > 0) AS n,
           sum(r.level_change) AS sum_w, sum(r.moment) AS moment,
           sum(r.starts) AS starts, sum(r.ends) AS ends, sum(r.done) AS done,
           sum(r.failed) AS failed, min(r.first_start) AS first_start,
           max(r.last_end) AS last_end
      FROM run_steps r
      JOIN j ON j.id = r.batch_job_id
     CROSS JOIN p
     WHERE (p.workflow IS NULL OR r.workflow = p.workflow)
       AND (p.owner IS NULL OR r.owner = p.owner)
     GROUP BY 1, 2, 3, 4
), dirty AS (  -- over every row of a bucket, whatever the filters pick
    SELECT DISTINCT r.batch_job_id AS job_id, r.bucket
      FROM run_steps r JOIN j ON j.id = r.batch_job_id
     WHERE r.dirty
), cut AS (
    SELECT g.*, b.lo, b.lo + p.step AS hi, j.s, j.e, p.e0, p.e1,
           floor((b.lo - p.e0) / p.width) AS k,
           CASE WHEN b.lo + p.step <= j.s THEN j.s WHEN b.lo >= j.e THEN j.e ELSE b.lo END
             AS c
      FROM grouped g
      JOIN j ON j.id = g.job_id
     CROSS JOIN p
     CROSS JOIN LATERAL (SELECT g.bucket::float8 AS lo) b
), classified AS (
    SELECT c.*,
           CASE
             WHEN EXISTS (SELECT 1 FROM dirty d WHERE d.job_id = c.job_id
                                                 AND d.bucket = c.bucket) THEN 'R'
             WHEN c.hi <= c.s OR c.lo >= c.e THEN 'C'        -- clipped to the job's start / end
             WHEN c.lo < c.s OR c.hi > c.e THEN 'R'          -- cut by the job's start or end
             WHEN c.hi <= c.e0 OR c.lo > c.e1 THEN 'C'       -- wholly outside the window
             WHEN c.lo < c.e0 OR c.hi > c.e1 THEN 'R'        -- cut by the window
             WHEN c.k >= p.nbins - 1 OR c.hi - c.e0 <= (c.k + 1) * p.width THEN 'I'
             ELSE 'R'                                        -- cut by a bin boundary
           END AS kind
      FROM cut c CROSS JOIN p
), raw_buckets AS MATERIALIZED (
    -- a dirty bucket even when the filters pick none of its rows: a task modified since
    -- its run has its steps under its old workflow there, and counts under its new one
    SELECT job_id, bucket FROM classified WHERE kind = 'R'
    UNION
    SELECT job_id, bucket FROM dirty
), raw_ranges AS (
    -- the event ids their rows summed (all rows, whatever the filters pick), overlapping
    -- ranges merged so that no event is read twice
    SELECT min(lo) AS lo, max(hi) AS hi
      FROM (SELECT lo, hi, count(*) FILTER (WHERE fresh) OVER (ORDER BY lo, hi) AS island
              FROM (SELECT lo, hi,
                           lo > coalesce(max(hi) OVER (ORDER BY lo, hi ROWS BETWEEN
                                                       UNBOUNDED PRECEDING AND 1 PRECEDING),
                                         lo - 1) AS fresh
                      FROM (SELECT r.first_event AS lo, r.last_event AS hi
                              FROM run_steps r
                              JOIN raw_buckets rb ON rb.job_id = r.batch_job_id
                                                 AND rb.bucket = r.bucket
                             WHERE r.first_event IS NOT NULL) ids) marked) grouped_ids
     GROUP BY island
), raw_events AS (
    -- rolled-up events of the cut buckets, by id (the primary key), with their weight
    -- where their bucket is not dirty (no task in it changed shape or went away since)
    SELECT e.task_id, e.batch_job_id, e.from_state, e.to_state, e.at,
           CASE WHEN NOT EXISTS (SELECT 1 FROM dirty d
                                  WHERE d.job_id = e.batch_job_id
                                    AND d.bucket = run_step_bucket(e.at))
                THEN e.weight END AS weight
      FROM raw_ranges rr
     CROSS JOIN LATERAL (
            SELECT ev.task_id, ev.batch_job_id, ev.from_state, ev.to_state, ev.at, ev.weight
              FROM task_events ev
             WHERE ev.id BETWEEN rr.lo AND rr.hi AND ev.rolled_up
               AND (ev.to_state = 'RUNNING' OR ev.from_state = 'RUNNING')
            OFFSET 0) e
     WHERE EXISTS (SELECT 1 FROM raw_buckets rb WHERE rb.job_id = e.batch_job_id
                                                 AND rb.bucket = run_step_bucket(e.at))
    UNION ALL
    -- events not rolled up, wherever they fall (none of them is in run_steps)
    SELECT ev.task_id, ev.batch_job_id, ev.from_state, ev.to_state, ev.at, NULL::float8
      FROM task_events ev
     WHERE NOT ev.rolled_up AND (ev.to_state = 'RUNNING' OR ev.from_state = 'RUNNING')
       AND ev.batch_job_id = ANY (%(job_ids)s::bigint[])
), steps AS (
    -- raw steps at their job-clipped time tj: weighed by the event itself when it has
    -- its weight and the report neither picks nor splits by workflow or owner (a
    -- million-row report reads 300,000 of these when its range is off the 10 s grid) …
    SELECT e.batch_job_id AS job_id, NULL::text AS workflow, NULL::text AS owner, e.to_state,
           CASE WHEN e.to_state = 'RUNNING' THEN 1.0::float8 ELSE -1.0::float8 END
             * e.weight AS w,
           least(greatest(date_part('epoch', e.at), j.s), j.e) AS tj
      FROM raw_events e
      JOIN j ON j.id = e.batch_job_id
     CROSS JOIN p
     WHERE e.weight IS NOT NULL AND NOT p.split AND p.workflow IS NULL AND p.owner IS NULL
    UNION ALL
    -- … else by its task as it is now
    SELECT e.batch_job_id AS job_id,
           CASE WHEN p.split THEN t.workflow END AS workflow,
           CASE WHEN p.split THEN t.owner END AS owner, e.to_state,
           CASE WHEN e.to_state = 'RUNNING' THEN 1.0::float8 ELSE -1.0::float8 END
             * t.num_nodes / t.node_packing_count AS w,
           least(greatest(date_part('epoch', e.at), j.s), j.e) AS tj
      FROM (SELECT e.* FROM raw_events e CROSS JOIN p
             WHERE e.weight IS NULL OR p.split OR p.workflow IS NOT NULL
                OR p.owner IS NOT NULL
            OFFSET 0) e  -- a fence: only these are joined to their tasks
      JOIN j ON j.id = e.batch_job_id
     CROSS JOIN p
      JOIN tasks t ON t.id = e.task_id
     WHERE (p.workflow IS NULL OR t.workflow = p.workflow)
       AND (p.owner IS NULL OR t.owner = p.owner)
    UNION ALL
    -- runs still open: their task is RUNNING now; they end when the job stops
    -- (found by state: a batch job's own index would visit every task it ever ran)
    SELECT t.batch_job_id, CASE WHEN p.split THEN t.workflow END,
           CASE WHEN p.split THEN t.owner END, NULL,
           -1.0::float8 * t.num_nodes / t.node_packing_count, j.e
      FROM (SELECT x.batch_job_id, x.workflow, x.owner, x.num_nodes, x.node_packing_count
              FROM tasks x WHERE x.state = 'RUNNING' OFFSET 0) t
      JOIN j ON j.id = t.batch_job_id
     CROSS JOIN p
     WHERE (p.workflow IS NULL OR t.workflow = p.workflow)
       AND (p.owner IS NULL OR t.owner = p.owner)
), pieces AS (
    -- (x, steps' sum, moment, counts inside the window, first start, last end)
    SELECT s.job_id, s.workflow, s.owner, q.x, s.w AS sum_w, 0.0::float8 AS moment,
           -- IS TRUE: an open run's end at its job's stop has no to_state (NULL), and a
           -- bin holding only such ends counted NULL runs done, not 0 (when "now" fell
           -- inside the window: a report racing a running job's clock).
           ((q.inside AND s.w < 0
              AND s.to_state IN ('RUN_DONE', 'POSTPROCESSED', 'JOB_FINISHED')) IS TRUE)::int
             AS done,
           ((q.inside AND s.w < 0
              AND s.to_state IN ('RUN_ERROR', 'RUN_TIMEOUT', 'FAILED')) IS TRUE)::int
             AS failed,
           CASE WHEN s.w > 0 AND q.inside THEN q.x END AS first_x,
           CASE WHEN s.w < 0 THEN q.x END AS last_x
      FROM steps s
     CROSS JOIN p
     CROSS JOIN LATERAL (SELECT least(greatest(s.tj, p.e0), p.e1) - p.e0 AS x,
                                s.tj >= p.e0 AND s.tj <= p.e1 AS inside) q
    UNION ALL
    SELECT c.job_id, c.workflow, c.owner, q.x, c.sum_w,
           CASE WHEN c.kind = 'I' THEN c.moment ELSE 0.0 END,
           CASE WHEN q.inside THEN c.done ELSE 0 END,
           CASE WHEN q.inside THEN c.failed ELSE 0 END,
           CASE WHEN c.starts > 0 AND q.inside
                THEN q.x + CASE WHEN c.kind = 'I' THEN c.first_start ELSE 0.0 END END,
           CASE WHEN c.ends > 0
                THEN q.x + CASE WHEN c.kind = 'I' THEN c.last_end ELSE 0.0 END END
      FROM classified c
     CROSS JOIN LATERAL (
            SELECT CASE WHEN c.kind = 'I' THEN c.lo - c.e0
                        ELSE least(greatest(c.c, c.e0), c.e1) - c.e0 END AS x,
                   c.kind = 'I' OR c.c >= c.e0 AND c.c <= c.e1 AS inside) q
     WHERE c.kind <> 'R' AND c.n > 0
), binned AS (
    SELECT pc.*, least(floor(pc.x / p.width)::int, p.nbins - 1) AS bin,
           p.width, p.span
      FROM pieces pc CROSS JOIN p
    OFFSET 0
)
SELECT job_id, bin, workflow, owner,
       sum(sum_w) AS level_change,
       sum(sum_w * (least((bin + 1) * width, span) - x) - moment) AS partial_node_seconds,
       -sum(sum_w * x + moment) AS node_seconds,
       sum(done) AS done, sum(failed) AS failed,
       min(first_x) AS first_start,
       max(last_x) FILTER (WHERE last_x > 0) AS last_end
  FROM binned
 GROUP BY job_id, bin, workflow, owner

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
-- batch job's; the first non-blank line of the output tail usually names the error. A
-- Python traceback's first line is the same for every error: there the exception's own
-- line is taken (the first unindented line after the last traceback's header).
SELECT a.name AS app, t.state::text AS state, t.exit_code, coalesce(bj.host, '') AS host,
       left(coalesce(exc.line,
                     substring(btrim(t.output_tail, E' \t\r\n') FROM '^[^\n]*')), 160)
         AS first_line,
       count(*) AS tasks,
       (array_agg(t.id ORDER BY t.id))[1:5] AS example_ids,
       max(coalesce(t.ended_at, t.started_at, t.created_at)) AS last_at
  FROM tasks t
  JOIN apps a ON a.id = t.app_id
  LEFT JOIN batch_jobs bj ON bj.id = t.batch_job_id
  LEFT JOIN LATERAL (
      SELECT m[1] AS line
        FROM regexp_matches(t.output_tail,
                            -- the regex's own escapes: \n newline, \t tab
                            'Traceback \(most recent call last\):\n'
                            '(?:[ \t][^\n]*\n|\n)*([^ \t\n][^\n]*)', 'g')
             WITH ORDINALITY AS r(m, n)
       ORDER BY n DESC LIMIT 1) exc ON true
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
-- Batch jobs, newest first, with the tasks each holds now. uncertain_at: a QUEUED row
-- whose scheduler's answer was lost, so whether its job exists is not known yet
-- (migrations/0032; `job sync` finds the job by its mark or closes the row).
SELECT bj.id, bj.scheduler, bj.scheduler_job_id, bj."user", bj.host, bj.nodes, bj.ranks,
       bj.state::text AS state, bj.wall_time_min, bj.submitted_at, bj.started_at,
       bj.heartbeat_at, bj.ended_at, bj.end_reason, bj.filters,
       (SELECT count(*) FROM tasks t
         WHERE t.batch_job_id = bj.id AND t.state IN ('PREPROCESSED', 'RUNNING')) AS running,
       CASE WHEN bj.state = 'QUEUED' AND bj.scheduler_job_id IS NULL
            THEN bj.uncertain_at END AS uncertain_at
  FROM batch_jobs bj
 WHERE (%(state)s::text IS NULL OR bj.state::text = %(state)s::text)
   AND (%(user)s::text IS NULL OR bj."user" = %(user)s::text)
 ORDER BY bj.id DESC
 LIMIT %(limit)s
