-- 0001_initial: the tables of docs/architecture.md §4 and the indexes the claim and reports use.
-- Objects are created while `SET ROLE balsam_objects` is in effect, so a NOLOGIN role owns
-- them (docs/architecture.md §6); grants and row-level security come in later migrations.

CREATE TYPE task_state AS ENUM (
    'CREATED', 'AWAITING_PARENTS', 'READY', 'PREPROCESSED', 'RUNNING', 'RUN_DONE',
    'POSTPROCESSED', 'JOB_FINISHED', 'RUN_ERROR', 'RUN_TIMEOUT', 'RESTART_READY',
    'FAILED', 'USER_KILLED'
);

CREATE TYPE batch_job_state AS ENUM ('QUEUED', 'RUNNING', 'FINISHED', 'LOST', 'FAILED');

-- One row, rewritten by `balsam-dbctl start`: lets a client check that the server it
-- reached serves its own project directory and not a copy's (docs/architecture.md §3).
CREATE TABLE balsam_instance (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    nonce       text NOT NULL,
    data_dev    bigint NOT NULL,
    data_ino    bigint NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE apps (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_.-]+$'),
    command         text NOT NULL CHECK (command <> ''),
    description     text NOT NULL DEFAULT '',
    preprocess      text NOT NULL DEFAULT '',
    postprocess     text NOT NULL DEFAULT '',
    env_script      text NOT NULL DEFAULT '',
    shell           boolean NOT NULL DEFAULT false,
    postprocess_on_error   boolean NOT NULL DEFAULT false,
    postprocess_on_timeout boolean NOT NULL DEFAULT false,
    error_retry_limit      integer NOT NULL DEFAULT 0 CHECK (error_retry_limit >= 0),
    owner           text NOT NULL DEFAULT session_user,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE batch_jobs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scheduler         text NOT NULL DEFAULT 'local',
    scheduler_job_id  text,
    "user"            text NOT NULL DEFAULT session_user,
    host              text NOT NULL DEFAULT '',
    nodes             integer NOT NULL DEFAULT 1 CHECK (nodes >= 1),
    ranks             integer NOT NULL DEFAULT 1 CHECK (ranks >= 1),
    filters           jsonb NOT NULL DEFAULT '{}',
    wall_time_min     double precision CHECK (wall_time_min IS NULL OR wall_time_min > 0),
    state             batch_job_state NOT NULL DEFAULT 'QUEUED',
    lease_epoch       bigint NOT NULL DEFAULT 0,
    lease_sec         double precision NOT NULL DEFAULT 60 CHECK (lease_sec > 0),
    submitted_at      timestamptz,
    started_at        timestamptz,
    heartbeat_at      timestamptz,
    ended_at          timestamptz,
    end_reason        text
);
CREATE UNIQUE INDEX batch_jobs_scheduler_id ON batch_jobs (scheduler, scheduler_job_id)
    WHERE scheduler_job_id IS NOT NULL;
CREATE INDEX batch_jobs_alive ON batch_jobs (heartbeat_at) WHERE state = 'RUNNING';

CREATE TABLE tasks (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow             text NOT NULL CHECK (workflow <> ''),
    name                 text NOT NULL DEFAULT '',
    app_id               bigint NOT NULL REFERENCES apps (id) ON DELETE RESTRICT,
    params               jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(params) = 'object'),
    args                 text[] NOT NULL DEFAULT '{}',
    tags                 jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(tags) = 'object'),
    num_nodes            integer NOT NULL DEFAULT 1 CHECK (num_nodes >= 1),
    ranks_per_node       integer NOT NULL DEFAULT 1 CHECK (ranks_per_node >= 1),
    threads_per_rank     integer NOT NULL DEFAULT 1 CHECK (threads_per_rank >= 1),
    gpus_per_rank        integer NOT NULL DEFAULT 0 CHECK (gpus_per_rank >= 0),
    node_packing_count   integer NOT NULL DEFAULT 1 CHECK (node_packing_count >= 1),
    wall_time_min        double precision NOT NULL DEFAULT 0 CHECK (wall_time_min >= 0),
    env                  jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(env) = 'object'),
    input_files          text[] NOT NULL DEFAULT '{}',
    priority             integer NOT NULL DEFAULT 0,
    state                task_state NOT NULL DEFAULT 'CREATED',
    state_message        text NOT NULL DEFAULT '',
    owner                text NOT NULL DEFAULT session_user,
    error_retries        integer NOT NULL DEFAULT 0,
    error_retry_limit    integer NOT NULL DEFAULT 0 CHECK (error_retry_limit >= 0),
    timeout_retries      integer NOT NULL DEFAULT 0,
    timeout_retry_limit  integer NOT NULL DEFAULT 3 CHECK (timeout_retry_limit >= 0),
    lost_retries         integer NOT NULL DEFAULT 0,
    lost_retry_limit     integer NOT NULL DEFAULT 3 CHECK (lost_retry_limit >= 0),
    fail_with_parents    boolean NOT NULL DEFAULT true,
    pending_parents      integer NOT NULL DEFAULT 0 CHECK (pending_parents >= 0),
    batch_job_id         bigint REFERENCES batch_jobs (id) ON DELETE SET NULL,
    lease_epoch          bigint NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now(),
    claimed_at           timestamptz,
    started_at           timestamptz,
    ended_at             timestamptz,
    exit_code            integer,
    output_tail          text NOT NULL DEFAULT '',
    data                 jsonb NOT NULL DEFAULT '{}'
);
-- The claim reads runnable rows in (priority DESC, id) order; these partial indexes keep
-- it on an index with and without a workflow filter (pitfall: the id index scanned 60k
-- discarded rows per claim as a workflow drained).
CREATE INDEX tasks_runnable ON tasks (priority DESC, id)
    WHERE state IN ('READY', 'RESTART_READY');
CREATE INDEX tasks_runnable_workflow ON tasks (workflow, priority DESC, id)
    WHERE state IN ('READY', 'RESTART_READY');
CREATE INDEX tasks_batch_job ON tasks (batch_job_id) WHERE batch_job_id IS NOT NULL;
CREATE INDEX tasks_workflow_state ON tasks (workflow, state);
CREATE INDEX tasks_state ON tasks (state);

CREATE TABLE task_deps (
    child_id   bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    parent_id  bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    PRIMARY KEY (child_id, parent_id),
    CHECK (child_id <> parent_id)
);
CREATE INDEX task_deps_parent ON task_deps (parent_id);

-- Append-only history: the one source of truth for `task show` and the analytics.
CREATE TABLE task_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id       bigint NOT NULL,
    from_state    task_state,
    to_state      task_state NOT NULL,
    at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    batch_job_id  bigint,
    actor         text NOT NULL DEFAULT session_user,
    message       text NOT NULL DEFAULT ''
);
CREATE INDEX task_events_task ON task_events (task_id, at);
CREATE INDEX task_events_at ON task_events USING brin (at);

-- Every change of a task's state writes one event, in bulk: statement-level triggers over
-- transition tables turn a 4,096-row UPDATE into one INSERT … SELECT. An event's time is
-- the node's own clock when the same statement records it (started_at for RUNNING,
-- ended_at for the end of a run), so history keeps real timestamps even when reports are
-- flushed late; otherwise it is the statement's clock.
CREATE FUNCTION tasks_events_on_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_events (task_id, from_state, to_state, at, batch_job_id, message)
    SELECT n.id, NULL, n.state, clock_timestamp(), n.batch_job_id, n.state_message
      FROM new_rows n;
    RETURN NULL;
END $$;

CREATE FUNCTION tasks_events_on_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_events (task_id, from_state, to_state, at, batch_job_id, message)
    SELECT n.id, o.state, n.state,
           CASE
             WHEN n.state = 'RUNNING' AND n.started_at IS DISTINCT FROM o.started_at
                  AND n.started_at IS NOT NULL THEN n.started_at
             WHEN n.state IN ('RUN_DONE', 'RUN_ERROR', 'RUN_TIMEOUT')
                  AND n.ended_at IS DISTINCT FROM o.ended_at
                  AND n.ended_at IS NOT NULL THEN n.ended_at
             ELSE clock_timestamp()
           END,
           coalesce(n.batch_job_id, o.batch_job_id), n.state_message
      FROM new_rows n JOIN old_rows o ON o.id = n.id
     WHERE n.state IS DISTINCT FROM o.state;
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_events_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_events_on_insert();
CREATE TRIGGER tasks_events_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_events_on_update();
