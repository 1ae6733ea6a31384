-- 0010_run_steps: the reports' busy-node steps, summed per batch job and 10-second bucket
-- by the statements that write the events (docs/analytics.md, "What is stored").
--
-- A run adds +w busy nodes at its RUNNING event and -w at the event that leaves RUNNING
-- (w = num_nodes / node_packing_count of its task). Reports summed those steps over every
-- event, joined to its task for w: seconds for 3M events. run_steps holds the same sums
-- per (batch job, bucket, workflow, owner, writing session): the steps' total, their
-- moment inside the bucket, counts, and the range of the events' ids. A report reads those
-- rows, and raw events only in the buckets it cannot take whole (where a batch job's life,
-- the report's range or a bin boundary cuts a bucket, or where it was marked dirty: found
-- by their id ranges in the primary key) and the events written outside the event trigger
-- (rolled_up = false: found through their partial index). Either way the figures are those of the events
-- joined to their tasks as they are now, which is what the reports computed before.
--
-- The invariant the tests check: for every bucket not marked dirty, the rows of run_steps
-- add up to the run events with rolled_up = true of that batch job and bucket, each
-- weighed, and grouped by workflow and owner, as its task is now.

-- The bucket of an instant (epoch seconds, a multiple of run_step_seconds()). Plain SQL
-- functions, so the planner inlines them in the trigger and in the reports.
CREATE FUNCTION run_step_seconds() RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS 'SELECT 10';
CREATE FUNCTION run_step_bucket(at timestamptz) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS 'SELECT (floor(date_part(''epoch'', at) / 10) * 10)::bigint';
GRANT EXECUTE ON FUNCTION run_step_seconds(), run_step_bucket(timestamptz)
   TO balsam_member, balsam_viewer;

-- One row per (batch job, bucket, workflow, owner, writer). `writer` is the backend pid
-- of the session that wrote the row: a session only ever updates its own rows, so no
-- statement waits on another session's (a member's kill left open in a transaction must
-- not hold up a launcher's flush), and no two statements can deadlock over them.
-- Readable by members and viewers (0002's default privileges); written only by the
-- triggers below, which run as balsam_objects.
CREATE TABLE run_steps (
    batch_job_id  bigint NOT NULL,
    bucket        bigint NOT NULL,
    workflow      text NOT NULL,
    owner         text NOT NULL,
    writer        integer NOT NULL,
    level_change  double precision NOT NULL DEFAULT 0,  -- sum of +w (starts) and -w (ends)
    moment        double precision NOT NULL DEFAULT 0,  -- sum of ±w * (t - bucket)
    starts        bigint NOT NULL DEFAULT 0,            -- steps into RUNNING
    ends          bigint NOT NULL DEFAULT 0,            -- steps out of RUNNING
    done          bigint NOT NULL DEFAULT 0,            -- ends to RUN_DONE, POSTPROCESSED, JOB_FINISHED
    failed        bigint NOT NULL DEFAULT 0,            -- ends to RUN_ERROR, RUN_TIMEOUT, FAILED
    first_start   double precision,                     -- min (t - bucket) of the starts
    last_end      double precision,                     -- max (t - bucket) of the ends
    first_event   bigint,                               -- min task_events.id summed here
    last_event    bigint,                               -- max task_events.id summed here
    dirty         boolean NOT NULL DEFAULT false,       -- read this bucket from the events
    PRIMARY KEY (batch_job_id, bucket, workflow, owner, writer)
) WITH (fillfactor = 70);  -- room for HOT updates: a flush adds to the same row 100 times
CREATE INDEX run_steps_dirty ON run_steps (batch_job_id, bucket) WHERE dirty;
-- As tasks (0002): everyone in the project reads every row; and no policy lets anyone
-- but the owner of the table (balsam_objects: the triggers) write one, should a write
-- privilege ever be granted by mistake.
ALTER TABLE run_steps ENABLE ROW LEVEL SECURITY;
CREATE POLICY run_steps_read ON run_steps FOR SELECT TO balsam_member, balsam_viewer
    USING (true);

-- Events the trigger below summed into run_steps. Existing events are summed by this
-- migration (hence the default true for them: no rewrite of the table); events written
-- any other way (by hand, or by a function that inserts history itself) stay false and
-- the reports read them raw, through the partial index, which holds only those.
ALTER TABLE task_events ADD COLUMN rolled_up boolean NOT NULL DEFAULT true;
ALTER TABLE task_events ALTER COLUMN rolled_up SET DEFAULT false;
CREATE INDEX task_events_not_rolled_up ON task_events (batch_job_id)
    WHERE NOT rolled_up AND (to_state = 'RUNNING' OR from_state = 'RUNNING');
-- A rolled-up run event's weight (its task's num_nodes / node_packing_count when it was
-- written): a report that reads a cut bucket's events needs no task for them while the
-- bucket is not dirty (no task of it changed shape or went away since). NULL for the
-- events before this migration (no rewrite of the table): those are joined to their tasks.
ALTER TABLE task_events ADD COLUMN weight double precision;

-- As 0001's (events in bulk, timed from started_at / ended_at) and 0007's (a hash join),
-- and also, in the same statement: the run steps of the new events added to run_steps,
-- one upsert per (batch job, bucket, workflow, owner); and, for tasks whose workflow or
-- size changed (task modify, between runs), their buckets marked dirty (their past runs
-- are read from the events from then on, so they count under the task's new values, as
-- before). The CTE is materialized once: the event and its step share one clock reading
-- and one id, drawn here (as the column's identity would) so that each row of run_steps
-- knows the range of ids it summed: a report reads a cut bucket's events by those ids,
-- whatever order the table's pages are in. Sorting off: the planner guesses a tenth of
-- the rows and would sort a 4,096-row flush to group it into two or three rows, and to
-- merge-join the transition tables; hashing both is cheaper (measured with auto_explain:
-- the upsert 2.6-4.5 ms -> 1.9-2.0 ms for 4,096 starts).
CREATE OR REPLACE FUNCTION tasks_events_on_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_nestloop = off SET enable_sort = off AS $$
DECLARE
    reshaped bigint[];
BEGIN
    WITH changed AS MATERIALIZED (
        SELECT n.id, o.state AS from_state, n.state AS to_state,
               CASE
                 WHEN n.state = 'RUNNING' AND n.started_at IS DISTINCT FROM o.started_at
                      AND n.started_at IS NOT NULL THEN n.started_at
                 WHEN n.state IN ('RUN_DONE', 'RUN_ERROR', 'RUN_TIMEOUT')
                      AND n.ended_at IS DISTINCT FROM o.ended_at
                      AND n.ended_at IS NOT NULL THEN n.ended_at
                 ELSE clock_timestamp()
               END AS at,
               coalesce(n.batch_job_id, o.batch_job_id) AS job_id, n.state_message,
               CASE WHEN n.state IS DISTINCT FROM o.state
                    THEN nextval('task_events_id_seq'::regclass) END AS event_id,
               n.workflow, n.owner, n.num_nodes::float8 / n.node_packing_count AS w,
               n.state IS DISTINCT FROM o.state AS moved,
               (n.workflow, n.num_nodes, n.node_packing_count)
                 IS DISTINCT FROM (o.workflow, o.num_nodes, o.node_packing_count) AS reshaped
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.state IS DISTINCT FROM o.state
            OR (n.workflow, n.num_nodes, n.node_packing_count)
                 IS DISTINCT FROM (o.workflow, o.num_nodes, o.node_packing_count)
    ), events AS (
        INSERT INTO task_events (id, task_id, from_state, to_state, at, batch_job_id,
                                 message, rolled_up, weight)
        OVERRIDING SYSTEM VALUE
        SELECT c.event_id, c.id, c.from_state, c.to_state, c.at, c.job_id, c.state_message,
               c.run_step, CASE WHEN c.run_step THEN c.w END
          FROM (SELECT c.*, c.job_id IS NOT NULL
                            AND (c.to_state = 'RUNNING' OR c.from_state = 'RUNNING') AS run_step
                  FROM changed c) c
         WHERE c.moved
    ), steps AS (
        INSERT INTO run_steps AS r (batch_job_id, bucket, workflow, owner, writer,
                                    level_change, moment, starts, ends, done, failed,
                                    first_start, last_end, first_event, last_event)
        SELECT s.job_id, s.bucket, s.workflow, s.owner, pg_backend_pid(),
               sum(s.sw), sum(s.sw * s.dt),
               count(*) FILTER (WHERE s.sw > 0), count(*) FILTER (WHERE s.sw < 0),
               count(*) FILTER (WHERE s.sw < 0
                                  AND s.to_state IN ('RUN_DONE', 'POSTPROCESSED', 'JOB_FINISHED')),
               count(*) FILTER (WHERE s.sw < 0
                                  AND s.to_state IN ('RUN_ERROR', 'RUN_TIMEOUT', 'FAILED')),
               min(s.dt) FILTER (WHERE s.sw > 0), max(s.dt) FILTER (WHERE s.sw < 0),
               min(s.event_id), max(s.event_id)
          FROM (SELECT c.job_id, run_step_bucket(c.at) AS bucket, c.workflow, c.owner,
                       c.to_state, c.event_id,
                       CASE WHEN c.to_state = 'RUNNING' THEN c.w ELSE -c.w END AS sw,
                       date_part('epoch', c.at) - run_step_bucket(c.at) AS dt
                  FROM changed c
                 WHERE c.moved AND c.job_id IS NOT NULL
                   AND (c.to_state = 'RUNNING' OR c.from_state = 'RUNNING')) s
         GROUP BY s.job_id, s.bucket, s.workflow, s.owner
        ON CONFLICT (batch_job_id, bucket, workflow, owner, writer) DO UPDATE
           SET level_change = r.level_change + excluded.level_change,
               moment = r.moment + excluded.moment,
               starts = r.starts + excluded.starts,
               ends = r.ends + excluded.ends,
               done = r.done + excluded.done,
               failed = r.failed + excluded.failed,
               first_start = least(r.first_start, excluded.first_start),
               last_end = greatest(r.last_end, excluded.last_end),
               first_event = least(r.first_event, excluded.first_event),
               last_event = greatest(r.last_event, excluded.last_event)
    )
    SELECT array_agg(c.id) FILTER (WHERE c.reshaped) INTO reshaped FROM changed c;
    IF reshaped IS NOT NULL THEN
        PERFORM run_steps_mark_dirty(reshaped);
    END IF;
    RETURN NULL;
END $$;

-- The buckets that hold rolled-up run events of these tasks: read from the events from
-- now on. One index probe per task whatever the planner thinks (LATERAL … OFFSET 0; the
-- caller runs with nested loops discouraged). Not granted to anyone: triggers call it.
CREATE FUNCTION run_steps_mark_dirty(p_ids bigint[]) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    INSERT INTO run_steps AS r (batch_job_id, bucket, workflow, owner, writer, dirty)
    SELECT DISTINCT e.batch_job_id, run_step_bucket(e.at), '', '', pg_backend_pid(), true
      FROM unnest(p_ids) AS x(id)
     CROSS JOIN LATERAL (SELECT ev.batch_job_id, ev.at FROM task_events ev
                          WHERE ev.task_id = x.id AND ev.rolled_up
                            AND ev.batch_job_id IS NOT NULL OFFSET 0) e
    ON CONFLICT (batch_job_id, bucket, workflow, owner, writer) DO UPDATE SET dirty = true
$$;

-- A deleted task's runs leave the reports (they join events to tasks): its buckets are
-- marked dirty. Deleted events (balsam-dbctl prune) likewise; a deleted batch job takes
-- its rows with it. Statement-level, like every trigger on these tables.
CREATE FUNCTION tasks_run_steps_on_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    ids bigint[];
BEGIN
    SELECT array_agg(o.id) INTO ids FROM old_rows o;
    IF ids IS NOT NULL THEN
        PERFORM run_steps_mark_dirty(ids);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_run_steps_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_run_steps_on_delete();

CREATE FUNCTION task_events_run_steps_on_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    INSERT INTO run_steps AS r (batch_job_id, bucket, workflow, owner, writer, dirty)
    SELECT DISTINCT o.batch_job_id, run_step_bucket(o.at), '', '', pg_backend_pid(), true
      FROM old_rows o
     WHERE o.rolled_up AND o.batch_job_id IS NOT NULL
    ON CONFLICT (batch_job_id, bucket, workflow, owner, writer) DO UPDATE SET dirty = true;
    RETURN NULL;
END $$;
CREATE TRIGGER task_events_run_steps_delete AFTER DELETE ON task_events
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_events_run_steps_on_delete();

CREATE FUNCTION batch_jobs_run_steps_on_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    DELETE FROM run_steps r USING old_rows o WHERE r.batch_job_id = o.id;
    RETURN NULL;
END $$;
CREATE TRIGGER batch_jobs_run_steps_delete AFTER DELETE ON batch_jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION batch_jobs_run_steps_on_delete();

-- run_steps from the events alone: what this migration fills in for existing histories
-- (every event so far counts as rolled up), and what the tests compare the rows kept by
-- the trigger with. Rebuilds the given batch jobs (all when NULL) as one writer, 0. Not
-- granted: only the database superuser runs it by hand, on batch jobs nobody writes to.
CREATE FUNCTION run_steps_rebuild(p_jobs bigint[] DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n bigint;
BEGIN
    DELETE FROM run_steps r WHERE p_jobs IS NULL OR r.batch_job_id = ANY (p_jobs);
    INSERT INTO run_steps (batch_job_id, bucket, workflow, owner, writer, level_change,
                           moment, starts, ends, done, failed, first_start, last_end,
                           first_event, last_event)
    SELECT s.job_id, s.bucket, s.workflow, s.owner, 0,
           sum(s.sw), sum(s.sw * s.dt),
           count(*) FILTER (WHERE s.sw > 0), count(*) FILTER (WHERE s.sw < 0),
           count(*) FILTER (WHERE s.sw < 0
                              AND s.to_state IN ('RUN_DONE', 'POSTPROCESSED', 'JOB_FINISHED')),
           count(*) FILTER (WHERE s.sw < 0
                              AND s.to_state IN ('RUN_ERROR', 'RUN_TIMEOUT', 'FAILED')),
           min(s.dt) FILTER (WHERE s.sw > 0), max(s.dt) FILTER (WHERE s.sw < 0),
           min(s.id), max(s.id)
      FROM (SELECT e.batch_job_id AS job_id, run_step_bucket(e.at) AS bucket, t.workflow,
                   t.owner, e.to_state, e.id,
                   CASE WHEN e.to_state = 'RUNNING' THEN 1.0::float8 ELSE -1.0::float8 END
                     * t.num_nodes / t.node_packing_count AS sw,
                   date_part('epoch', e.at) - run_step_bucket(e.at) AS dt
              FROM task_events e
              JOIN tasks t ON t.id = e.task_id
              JOIN batch_jobs bj ON bj.id = e.batch_job_id
             WHERE e.rolled_up AND (e.to_state = 'RUNNING' OR e.from_state = 'RUNNING')
               AND (p_jobs IS NULL OR e.batch_job_id = ANY (p_jobs))) s
     GROUP BY s.job_id, s.bucket, s.workflow, s.owner;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

SELECT run_steps_rebuild();
