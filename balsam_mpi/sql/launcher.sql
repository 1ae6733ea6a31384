-- The launcher's statements (launcher/store.py). Each calls one SECURITY DEFINER function of
-- migrations/0004_launcher.sql (0005_leases.sql for lease expiry, 0008_reliability.sql
-- for journals, 0009_python_tasks.sql for results), so a leader needs no table
-- privileges of its own; the few plain reads need only what every member has (SELECT).

-- name: launcher_session
-- The leader's connection: no statement_timeout (launcher/store.py says why).
SET statement_timeout = 0;

-- name: launcher_open_job
SELECT job_id, lease_epoch, adopted
  FROM launcher_open_job(%(job_id)s, %(scheduler)s, %(scheduler_job_id)s, %(host)s,
                         %(nodes)s, %(ranks)s, %(filters)s, %(wall_time_min)s,
                         %(lease_sec)s);

-- name: launcher_claim
SELECT id, workflow, name, state, app, command, shell, env_script, params::text,
       args, env::text, num_nodes, ranks_per_node, threads_per_rank, gpus_per_rank, node_packing_count,
       wall_time_min, priority, input_files, parents::text
  FROM launcher_claim(%(job)s, %(epoch)s, %(limit)s, %(capacity)s, %(max_need)s,
                      %(workflows)s, %(tags)s, %(owners)s, %(remaining_min)s,
                      %(max_nodes)s, %(not_tags)s::jsonb[]);

-- name: launcher_report
-- ``through``: the last report group of the leader's journal this batch completes (0 =
-- none); recorded with the reports, so a replay skips them (0008). ``paired``: how many
-- leading starts and ends are the start and plain success of the same task, each
-- written once, READY → JOB_FINISHED (0011).
SELECT step, changed
  FROM launcher_report(%(job)s, %(epoch)s, %(s_ids)s::bigint[], %(s_at)b::float8[],
                       %(f_ids)s::bigint[], %(f_kind)s::smallint[], %(f_rc)s::integer[],
                       %(f_started)b::float8[], %(f_ended)b::float8[], %(f_tail)s::text[],
                       %(through)s::bigint, %(paired)s::integer);

-- name: launcher_report_lock_timeout
-- A flush's transaction waits at most this long for any one lock (the rows
-- launcher_lock_reports could not cover: descendants further down the DAG). Under the
-- server's deadlock_timeout (1 s), so a flush caught in a cycle with a member's bulk
-- kill gives way first: it is retried, the member's statement is not cut (0033).
SET LOCAL lock_timeout = '500ms';

-- name: launcher_lock_reports
-- The flush's rows, locked for its transaction unless another session holds them; the
-- reported tasks whose rows (or an ended task's children) it could not lock (0033).
SELECT launcher_lock_reports FROM launcher_lock_reports(%(job)s::bigint, %(epoch)s::bigint,
                                                        %(ids)s::bigint[],
                                                        %(ended)s::bigint[]);

-- name: launcher_app_extras
-- What the claim does not return about the apps it returned: pre/postprocessing
-- (0006), a Python app's import path (0009) and whether its calls get directories of
-- their own (0020). Read once per app per leader (launcher/appinfo.py), so the claim's
-- pinned plan stays as it is.
SELECT a.name, a.preprocess, a.postprocess, a.postprocess_on_error,
       a.postprocess_on_timeout, coalesce(a.python, ''), a.task_dirs
  FROM apps a
 WHERE a.name = ANY (%(names)s::text[]);

-- name: launcher_results
-- Python tasks' return values, in the flush's transaction right after its reports (0009).
SELECT launcher_results(%(job)s, %(epoch)s, %(ids)s::bigint[], %(results)s::text[]);

-- name: launcher_heartbeat
SELECT launcher_heartbeat(%(job)s, %(epoch)s);

-- name: launcher_hunger
-- Record this launcher's hunger; is another live one hungry for what it holds (0015)?
SELECT launcher_hunger(%(job)s, %(epoch)s, %(hungry)s, %(holding)s);

-- name: launcher_give_back
-- Release claimed, unstarted tasks that a hungry launcher's filters take (0015).
SELECT launcher_give_back FROM launcher_give_back(%(job)s::bigint, %(epoch)s::bigint,
                                                  %(ids)s::bigint[]);

-- name: launcher_claim_peers
-- What a launcher prefers to claim (launcher/preference.py, launcher/division.py): the
-- workflows that have runnable, unclaimed rows (a loose scan of tasks_runnable_workflow:
-- one probe per workflow, at most 65 of them), the workflows other live launchers name
-- in their filters, and -- only while 2 to 64 launchers are live and one of them has
-- a workflow, an owner or a tag filter -- how many rows each workflow has (counted up to
-- a cap that keeps the whole count near 20,000 index entries) and every live launcher's
-- filter, nodes and unfinished rows (counted up to the same cap, through
-- tasks_batch_job). While one of them has an owner or a tag filter, the same rows are
-- counted per workflow, owner (while one filters by owner) and tag signature (while one
-- filters by tags: which of the live launchers' distinct tag filters the row matches, a
-- '0' or '1' each, in the order of the sixth column) instead: the fifth column; the
-- third is then NULL. More than 8 distinct tag filters: no division (each row's signature
-- costs a containment test per filter).
WITH RECURSIVE runnable(workflow, n) AS (
    (SELECT t.workflow, 1 FROM tasks t
      WHERE t.state IN ('READY', 'RESTART_READY') AND t.batch_job_id IS NULL
      ORDER BY t.workflow LIMIT 1)
    UNION ALL
    SELECT (SELECT t.workflow FROM tasks t
             WHERE t.state IN ('READY', 'RESTART_READY') AND t.batch_job_id IS NULL
               AND t.workflow > r.workflow
             ORDER BY t.workflow LIMIT 1), r.n + 1
      FROM runnable r
     WHERE r.workflow IS NOT NULL AND r.n <= 64
), found AS (
    SELECT r.workflow FROM runnable r WHERE r.workflow IS NOT NULL
), live AS (
    SELECT b.id, b.nodes, coalesce(b.filters -> 'workflows', '[]'::jsonb) AS workflows,
           coalesce(b.filters -> 'owners', '[]'::jsonb) AS owners,
           coalesce(b.filters -> 'tags', '{}'::jsonb) AS tags
      FROM batch_jobs b
     WHERE b.state = 'RUNNING'
       AND coalesce(b.heartbeat_at, b.started_at)
           > now() - make_interval(secs => b.lease_sec)
       AND launcher_filters_ok(b.filters)  -- a row from before 0022 may not pass it
), tag_filters AS (
    SELECT coalesce(array_agg(x.tags ORDER BY x.tags::text), '{}') AS filters
      FROM (SELECT DISTINCT l.tags FROM live l WHERE l.tags <> '{}'::jsonb) x
), divide AS (
    SELECT (SELECT count(*) FROM live) BETWEEN 2 AND 64  -- MAX_TAKERS (preference.py)
           AND cardinality(tf.filters) <= 8  -- MAX_TAG_FILTERS (preference.py)
           AND EXISTS (SELECT 1 FROM live l WHERE jsonb_array_length(l.workflows) > 0
                                              OR jsonb_array_length(l.owners) > 0
                                              OR l.tags <> '{}'::jsonb)
           AS needed,
           EXISTS (SELECT 1 FROM live l WHERE jsonb_array_length(l.owners) > 0) AS by_owner,
           cardinality(tf.filters) > 0 AS by_tag, tf.filters,
           greatest(500, 20000 / greatest((SELECT count(*) FROM found), 1)) AS cap,
           -- Reading each row's tags costs a heap fetch and its signature a test per
           -- filter (20,000 rows of distinct tags and 8 filters: 130 ms here), so rows
           -- are counted per signature up to a fifth of that.
           CASE WHEN cardinality(tf.filters) > 0
                THEN greatest(100, 4000 / greatest((SELECT count(*) FROM found), 1))
                ELSE greatest(500, 20000 / greatest((SELECT count(*) FROM found), 1))
           END AS kind_cap
      FROM tag_filters tf
)
SELECT array(SELECT f.workflow FROM found f ORDER BY f.workflow),
       array(SELECT DISTINCT w.name
               FROM live l CROSS JOIN LATERAL jsonb_array_elements_text(l.workflows) AS w(name)
              WHERE l.id <> %(job)s),
       CASE WHEN d.needed AND NOT (d.by_owner OR d.by_tag) THEN array(
           SELECT (SELECT count(*) FROM (
                       SELECT 1 FROM tasks t
                        WHERE t.workflow = f.workflow
                          AND t.state IN ('READY', 'RESTART_READY')
                          AND t.batch_job_id IS NULL
                        LIMIT d.cap) AS c)
             FROM found f ORDER BY f.workflow) END,
       CASE WHEN d.needed THEN (
           SELECT jsonb_agg(jsonb_build_array(
                      l.id, l.nodes,
                      to_jsonb(array(SELECT jsonb_array_elements_text(l.workflows))), (
                      SELECT count(*) FROM (
                          SELECT 1 FROM tasks t
                           WHERE t.batch_job_id = l.id
                             AND t.state IN ('READY', 'RESTART_READY', 'PREPROCESSED',
                                             'RUNNING')
                           LIMIT d.cap) AS h),
                      to_jsonb(array(SELECT jsonb_array_elements_text(l.owners))),
                      l.tags)
                  ORDER BY l.id)
             FROM live l) END,
       CASE WHEN d.needed AND (d.by_owner OR d.by_tag) THEN (
           SELECT jsonb_agg(jsonb_build_array(f.workflow, c.owner, c.sig, c.n)
                            ORDER BY f.workflow, c.owner, c.sig)
             FROM found f CROSS JOIN LATERAL (
                  -- Rows with the same tags have the same signature: each distinct set
                  -- is tested once against each filter.
                  SELECT g.owner, g.sig, sum(g.n)::bigint AS n FROM (
                      SELECT s.owner,
                             CASE WHEN d.by_tag THEN (
                                 SELECT string_agg(CASE WHEN s.tags @> u.f THEN '1'
                                                        ELSE '0' END, '' ORDER BY u.i)
                                   FROM unnest(d.filters) WITH ORDINALITY AS u(f, i))
                             END AS sig, s.n
                        FROM (SELECT r.owner, r.tags, count(*) AS n FROM (
                                  SELECT CASE WHEN d.by_owner THEN t.owner END AS owner,
                                         CASE WHEN d.by_tag THEN t.tags END AS tags
                                    FROM tasks t
                                   WHERE t.workflow = f.workflow
                                     AND t.state IN ('READY', 'RESTART_READY')
                                     AND t.batch_job_id IS NULL
                                   LIMIT d.kind_cap) AS r
                               GROUP BY r.owner, r.tags) AS s) AS g
                   GROUP BY g.owner, g.sig) AS c) END,
       to_jsonb(d.filters)
  FROM divide d;

-- name: launcher_kills
SELECT launcher_kills FROM launcher_kills(%(job)s::bigint, %(ids)s::bigint[]);

-- name: launcher_close_job
SELECT released, requeued
  FROM launcher_close_job(%(job)s, %(epoch)s, %(state)s, %(reason)s);

-- name: launcher_run_summary
-- What a run did, from the tasks' own start and end times: finished count, the span
-- from the first start to the last end, and busy node-seconds (a task holds
-- 1/node_packing_count of a node while it runs).
SELECT count(*) FILTER (WHERE state = 'JOB_FINISHED') AS finished,
       extract(epoch FROM min(started_at))::float8 AS first_start,
       extract(epoch FROM max(ended_at))::float8 AS last_end,
       coalesce(sum(extract(epoch FROM ended_at - started_at)::float8
                    / node_packing_count), 0) AS busy_node_s
  FROM tasks
 WHERE started_at IS NOT NULL AND ended_at IS NOT NULL
   AND (%(job)s::bigint IS NULL OR batch_job_id = %(job)s::bigint);

-- name: launcher_state_counts
SELECT workflow, state::text, count(*) FROM tasks GROUP BY workflow, state
 ORDER BY workflow, state;

-- name: launcher_last_job
SELECT id, state::text, nodes, end_reason,
       extract(epoch FROM started_at)::float8, extract(epoch FROM ended_at)::float8
  FROM batch_jobs ORDER BY id DESC LIMIT 1;

-- name: end_hogging_sessions
-- Collaborators' sessions that fill the server's lock table or hold its notification
-- queue, ended (migrations/0031).
SELECT pid, username, reason, held FROM end_hogging_sessions();

-- name: launcher_expire_leases
-- Batch jobs whose lease ran out: marked LOST, their tasks requeued (migrations/0005);
-- then the tasks of runs that a new run of the same job superseded, once their lease has
-- surely run out (migrations/0021). The last column says which.
SELECT job_id, job_user, requeued, failed, released, false
  FROM launcher_expire_leases(%(job)s::bigint)
UNION ALL
SELECT job_id, job_user, requeued, failed, released, true
  FROM launcher_sweep_superseded(%(job)s::bigint);

-- name: launcher_held_elsewhere
-- Other running batch jobs that hold work this launcher's filters match, with their last
-- heartbeat, and whether some of it is queued there unstarted (single-node, so it could
-- be handed back: 0015's launcher_give_back). A launcher with nothing to run does not
-- count itself idle until it has seen each of them renew its heartbeat: one that does
-- not may have died, and its tasks come back when its lease runs out (launcher.py); one
-- that holds queued work gets a moment to hand it back (claims.py, HANDBACK_WAIT_S).
-- Its own batch job is one of them while an earlier run of it holds tasks (0021): that
-- run's heartbeat is given as the instant its lease runs out less the lease, which never
-- moves, so the launcher waits until the sweep has requeued them.
-- Starts from the few RUNNING jobs; each probe stops at the first task it finds (an
-- idle launcher asks this every claim_idle_s); the second walks past the holder's
-- running rows, so it is asked only of jobs the first found.
SELECT b.id, h.n,
       extract(epoch FROM b.beat)::float8,
       extract(epoch FROM now() - b.beat)::float8,
       b.lease_sec,
       b.id <> %(job)s AND EXISTS (
           SELECT 1 FROM tasks t
            WHERE t.batch_job_id = b.id
              AND t.state IN ('READY', 'RESTART_READY') AND t.num_nodes = 1
              AND (%(workflows)s::text[] IS NULL OR t.workflow = ANY (%(workflows)s::text[]))
              AND (%(tags)s::jsonb IS NULL OR t.tags @> %(tags)s::jsonb)
              AND (%(owners)s::text[] IS NULL OR t.owner = ANY (%(owners)s::text[])))
  FROM (SELECT j.*,
               CASE WHEN j.id = %(job)s
                    THEN j.superseded_until - make_interval(secs => j.lease_sec)
                    ELSE coalesce(j.heartbeat_at, j.started_at) END AS beat
          FROM batch_jobs j
         WHERE j.state = 'RUNNING'
           AND (j.id <> %(job)s OR j.superseded_until IS NOT NULL)) b
 CROSS JOIN LATERAL (
       SELECT count(*)::bigint AS n FROM (
           SELECT 1 FROM tasks t
            WHERE t.batch_job_id = b.id
              AND (b.id <> %(job)s OR t.lease_epoch < b.lease_epoch)
              AND t.state IN ('READY', 'RESTART_READY', 'PREPROCESSED', 'RUNNING')
              AND t.num_nodes <= %(max_nodes)s
              AND (%(workflows)s::text[] IS NULL OR t.workflow = ANY (%(workflows)s::text[]))
              AND (%(tags)s::jsonb IS NULL OR t.tags @> %(tags)s::jsonb)
              AND (%(owners)s::text[] IS NULL OR t.owner = ANY (%(owners)s::text[]))
            LIMIT 1) x) h
 WHERE h.n > 0
 ORDER BY b.id;

-- name: launcher_journal_key
SELECT launcher_journal_key(%(job)s, %(epoch)s);

-- name: launcher_journal_done
SELECT launcher_journal_done(%(job)s, %(epoch)s);

-- name: launcher_journals_due
SELECT job_id, lease_epoch, job_user, replayed_seq FROM launcher_journals_due();

-- name: launcher_replay
SELECT step, changed
  FROM launcher_replay(%(job)s, %(epoch)s, %(lines)s::text[], %(macs)s::text[]);
