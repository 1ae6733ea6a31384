-- schema.sql: the schema of a fresh database. It must give the same catalog as
-- migrations/ applied in order (tests/db/test_schema.py checks it).

-- ==== 0001_initial.sql ====
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

-- ==== 0002_access.sql ====
-- 0002_access: least privilege inside the database (docs/architecture.md §6, docs/security.md).
--
-- Roles are cluster-wide, so balsam-dbctl makes them as the superuser before any migration
-- runs (dbctl/access.py): balsam_objects (NOLOGIN, owns every object; SECURITY DEFINER
-- functions run as it), balsam_member (collaborators), balsam_viewer (read only),
-- balsam_owner (the project owner's rights; a member of balsam_member) and balsam_app_admin
-- (members given `--app-admin`). Login roles are only ever members of these.
--
-- Conventions for later migrations: a function is `SECURITY DEFINER SET search_path =
-- pg_catalog, public`, owned by balsam_objects, and EXECUTE is granted explicitly to
-- balsam_member in the migration that creates it. A new table is readable by members and
-- viewers (default privileges below) and writable by nobody until its migration says so.

-- Nothing is callable by accident: PUBLIC gets EXECUTE on no function made from here on.
ALTER DEFAULT PRIVILEGES FOR ROLE balsam_objects REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE balsam_objects
    GRANT SELECT ON TABLES TO balsam_member, balsam_viewer;

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC;
-- Already so on PostgreSQL >= 15; said again for older servers. Nobody but
-- balsam_objects creates anything: no DDL for members.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO balsam_member, balsam_viewer;

-- `balsam-dbctl init` revoked CONNECT from PUBLIC; the project's roles get it back. The
-- database's name is not fixed (copies), hence the dynamic statement.
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO balsam_member, balsam_viewer',
                   current_database());
END $$;

GRANT SELECT ON balsam_instance, balsam_migrations, apps, tasks, task_deps, task_events,
                batch_jobs
   TO balsam_member, balsam_viewer;

-- Apps: written by the owner and by members given --app-admin; read by everyone.
GRANT INSERT, UPDATE, DELETE ON apps TO balsam_owner, balsam_app_admin;

-- Tasks: everyone reads every task; a member adds tasks as themselves and edits, kills,
-- retries and deletes their own; the owner any. Launcher work on other members' tasks
-- goes through SECURITY DEFINER functions, which run as the table's owner and so are not
-- subject to these policies (RLS is enabled, not forced).
GRANT INSERT, UPDATE, DELETE ON tasks TO balsam_member;
ALTER TABLE tasks ENABLE ROW LEVEL SECURITY;
CREATE POLICY tasks_read ON tasks FOR SELECT TO balsam_member, balsam_viewer USING (true);
CREATE POLICY tasks_add ON tasks FOR INSERT TO balsam_member
    WITH CHECK (owner = session_user);
CREATE POLICY tasks_change_own ON tasks FOR UPDATE TO balsam_member
    USING (owner = session_user) WITH CHECK (owner = session_user);
CREATE POLICY tasks_change_any ON tasks FOR UPDATE TO balsam_owner
    USING (true) WITH CHECK (true);
CREATE POLICY tasks_delete_own ON tasks FOR DELETE TO balsam_member
    USING (owner = session_user);
CREATE POLICY tasks_delete_any ON tasks FOR DELETE TO balsam_owner USING (true);

-- Who created a task (or opened a batch job) never changes, for anyone, the superuser
-- included. `BEFORE UPDATE OF` with a WHEN clause costs nothing on the launcher's bulk
-- updates, which never name these columns.
CREATE FUNCTION refuse_owner_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    RAISE EXCEPTION 'who created % % cannot change', TG_TABLE_NAME, OLD.id
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER tasks_owner_immutable BEFORE UPDATE OF owner ON tasks
    FOR EACH ROW WHEN (NEW.owner IS DISTINCT FROM OLD.owner)
    EXECUTE FUNCTION refuse_owner_change();

-- Dependencies: a member links parents to their own tasks only; the owner any.
GRANT INSERT, DELETE ON task_deps TO balsam_member;
ALTER TABLE task_deps ENABLE ROW LEVEL SECURITY;
CREATE POLICY task_deps_read ON task_deps FOR SELECT TO balsam_member, balsam_viewer
    USING (true);
CREATE POLICY task_deps_own ON task_deps FOR ALL TO balsam_member
    USING (EXISTS (SELECT 1 FROM tasks t WHERE t.id = child_id AND t.owner = session_user))
    WITH CHECK (EXISTS (SELECT 1 FROM tasks t
                         WHERE t.id = child_id AND t.owner = session_user));
CREATE POLICY task_deps_any ON task_deps FOR ALL TO balsam_owner
    USING (true) WITH CHECK (true);

-- History is insert-only and written only by the triggers of 0001, which now run as
-- balsam_objects: no member holds INSERT, UPDATE, DELETE or TRUNCATE on task_events.
ALTER FUNCTION tasks_events_on_insert() SECURITY DEFINER SET search_path = pg_catalog, public;
ALTER FUNCTION tasks_events_on_update() SECURITY DEFINER SET search_path = pg_catalog, public;

-- Batch jobs: a member opens and updates their own; the owner may update any (e.g. to
-- close a lost one). Heartbeats go through batch_job_heartbeat below.
GRANT INSERT, UPDATE ON batch_jobs TO balsam_member;
ALTER TABLE batch_jobs ENABLE ROW LEVEL SECURITY;
CREATE POLICY batch_jobs_read ON batch_jobs FOR SELECT TO balsam_member, balsam_viewer
    USING (true);
CREATE POLICY batch_jobs_add ON batch_jobs FOR INSERT TO balsam_member
    WITH CHECK ("user" = session_user);
CREATE POLICY batch_jobs_change_own ON batch_jobs FOR UPDATE TO balsam_member
    USING ("user" = session_user) WITH CHECK ("user" = session_user);
CREATE POLICY batch_jobs_change_any ON batch_jobs FOR UPDATE TO balsam_owner
    USING (true) WITH CHECK (true);
CREATE TRIGGER batch_jobs_user_immutable BEFORE UPDATE OF "user" ON batch_jobs
    FOR EACH ROW WHEN (NEW."user" IS DISTINCT FROM OLD."user")
    EXECUTE FUNCTION refuse_owner_change();

-- The first launcher function, and the pattern for the rest: it runs as balsam_objects,
-- so it checks by itself who is calling. session_user is the login role even inside a
-- SECURITY DEFINER function (current_user is balsam_objects there). Only the batch job's
-- own user may renew its lease: nobody can keep another's dead launcher looking alive.
CREATE FUNCTION batch_job_heartbeat(job_id bigint) RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    job public.batch_jobs%ROWTYPE;
BEGIN
    SELECT * INTO job FROM public.batch_jobs b WHERE b.id = job_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch job % does not exist', job_id USING ERRCODE = 'no_data_found';
    END IF;
    IF job."user" <> session_user THEN
        RAISE EXCEPTION 'batch job % belongs to %: only its own launcher can heartbeat it',
            job_id, job."user" USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF job.state <> 'RUNNING' THEN
        RAISE EXCEPTION 'batch job % is %, not RUNNING: it has no lease to renew',
            job_id, job.state USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE public.batch_jobs SET heartbeat_at = now() WHERE id = job_id;
    RETURN now();
END $$;
GRANT EXECUTE ON FUNCTION batch_job_heartbeat(bigint) TO balsam_member;

-- ==== 0003_tasks.sql ====
-- 0003_tasks: the DAG in the database. Parents finishing make children READY and parents
-- failing fail their descendants in the same transaction as the UPDATE that moved them,
-- whoever wrote it (the client, or a launcher's bulk report), so nobody has to remember a
-- sweep. Statement-level triggers over transition tables: one set-based pass per UPDATE,
-- never a per-row round trip, never a scan of all tasks.

-- The ancestor whose FAILED / USER_KILLED state failed this task; `task retry` of that
-- ancestor reinstates every task that names it (one indexed lookup, no graph walk).
ALTER TABLE tasks ADD COLUMN failed_by bigint;
CREATE INDEX tasks_failed_by ON tasks (failed_by) WHERE failed_by IS NOT NULL;

-- Listings filter by workflow and/or state and page by id (`task ls --workflow w --state
-- READY --limit 20`): with id as the last column the page is read in order from the
-- index instead of sorting every match (or scanning the primary key past other
-- workflows' tasks, which took half a second over 1M tasks). They replace 0001's
-- (workflow, state) and (state) indexes, which they serve as well (`balsam-mpi ls` stays
-- an index-only scan), so a bulk insert maintains no more indexes than before.
DROP INDEX tasks_workflow_state;
DROP INDEX tasks_state;
CREATE INDEX tasks_workflow_state_id ON tasks (workflow, state, id);
CREATE INDEX tasks_state_id ON tasks (state, id);

-- The foreign key tasks.app_id → apps checked once per statement instead of once per row:
-- the row-level RI trigger was the largest single cost of a 100k-task insert. The apps
-- named by the new rows are locked (KEY SHARE, as the foreign key did) before their
-- existence is checked, so a concurrent `app rm` either waits or is seen.
ALTER TABLE tasks DROP CONSTRAINT tasks_app_id_fkey;

CREATE FUNCTION tasks_check_apps() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    missing bigint;
BEGIN
    PERFORM 1 FROM public.apps a
     WHERE a.id IN (SELECT DISTINCT n.app_id FROM new_rows n) FOR KEY SHARE;
    SELECT n.app_id INTO missing
      FROM (SELECT DISTINCT app_id FROM new_rows) n
     WHERE NOT EXISTS (SELECT 1 FROM public.apps a WHERE a.id = n.app_id)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'no app with id %', missing USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_apps_exist AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_check_apps();

-- Changing a task's app (nobody's API does; raw SQL could) is checked row by row: the
-- WHEN clause keeps it free for every other UPDATE.
CREATE FUNCTION tasks_check_app_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM 1 FROM public.apps a WHERE a.id = NEW.app_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no app with id %', NEW.app_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tasks_app_change BEFORE UPDATE OF app_id ON tasks
    FOR EACH ROW WHEN (NEW.app_id IS DISTINCT FROM OLD.app_id)
    EXECUTE FUNCTION tasks_check_app_change();

-- ON DELETE RESTRICT, kept: an app with tasks cannot go.
CREATE FUNCTION apps_refuse_delete_used() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.tasks t WHERE t.app_id = OLD.id) THEN
        RAISE EXCEPTION 'app % still has tasks; delete them first', OLD.name
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER apps_delete_restrict BEFORE DELETE ON apps
    FOR EACH ROW EXECUTE FUNCTION apps_refuse_delete_used();

-- SECURITY DEFINER: a member's finished or killed task must move its descendants even
-- when other members own them (row-level security would hide those rows from the caller).
CREATE FUNCTION tasks_propagate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    -- Cheap exit for the launcher's common case (RUNNING, RUN_DONE, …): nothing to do.
    -- new_rows alone decides it (no join): the CTEs below compare with old_rows.
    IF NOT EXISTS (
        SELECT 1 FROM new_rows n WHERE n.state IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED')
    ) THEN
        RETURN NULL;
    END IF;

    -- Parents that just finished: one decrement per (child, finished parents) pair; a
    -- child whose count reaches 0 while it waits becomes READY.
    WITH done AS (
        SELECT n.id FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.state = 'JOB_FINISHED' AND o.state <> 'JOB_FINISHED'
    ), counts AS (
        SELECT d.child_id, count(*)::integer AS k
          FROM public.task_deps d JOIN done ON d.parent_id = done.id
         GROUP BY d.child_id
    )
    UPDATE public.tasks c
       SET pending_parents = greatest(c.pending_parents - counts.k, 0),
           state = CASE WHEN c.state = 'AWAITING_PARENTS' AND c.pending_parents <= counts.k
                        THEN 'READY'::task_state ELSE c.state END,
           state_message = CASE WHEN c.state = 'AWAITING_PARENTS'
                                 AND c.pending_parents <= counts.k
                                THEN 'parents finished' ELSE c.state_message END
      FROM counts
     WHERE c.id = counts.child_id;

    -- Parents that just stopped (FAILED or USER_KILLED): every waiting descendant reached
    -- through children that fail with their parents is FAILED, naming the ancestor.
    -- Rows stopped by this same statement are already stopped here, so a bulk kill of a
    -- whole workflow does not walk its graph again.
    WITH RECURSIVE stopped AS (
        SELECT n.id, n.state FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.state IN ('FAILED', 'USER_KILLED')
           AND o.state NOT IN ('FAILED', 'USER_KILLED')
    ), down (id, root, root_state) AS (
        SELECT d.child_id, s.id, s.state
          FROM stopped s
          JOIN public.task_deps d ON d.parent_id = s.id
          JOIN public.tasks c ON c.id = d.child_id
         WHERE c.fail_with_parents AND c.state IN ('CREATED', 'AWAITING_PARENTS')
        UNION
        SELECT d.child_id, down.root, down.root_state
          FROM down
          JOIN public.task_deps d ON d.parent_id = down.id
          JOIN public.tasks c ON c.id = d.child_id
         WHERE c.fail_with_parents AND c.state IN ('CREATED', 'AWAITING_PARENTS')
    ), first_root AS (
        SELECT DISTINCT ON (id) id, root, root_state FROM down ORDER BY id, root
    )
    UPDATE public.tasks c
       SET state = 'FAILED',
           failed_by = f.root,
           state_message = format('upstream task %s is %s', f.root, f.root_state)
      FROM first_root f
     WHERE c.id = f.id;

    -- Children that opt out (fail_with_parents = false) count a stopped parent as done.
    WITH stopped AS (
        SELECT n.id FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.state IN ('FAILED', 'USER_KILLED')
           AND o.state NOT IN ('FAILED', 'USER_KILLED')
    ), counts AS (
        SELECT d.child_id, count(*)::integer AS k
          FROM public.task_deps d JOIN stopped s ON d.parent_id = s.id
          JOIN public.tasks c ON c.id = d.child_id
         WHERE NOT c.fail_with_parents AND c.state IN ('CREATED', 'AWAITING_PARENTS')
         GROUP BY d.child_id
    )
    UPDATE public.tasks c
       SET pending_parents = greatest(c.pending_parents - counts.k, 0),
           state = CASE WHEN c.state = 'AWAITING_PARENTS' AND c.pending_parents <= counts.k
                        THEN 'READY'::task_state ELSE c.state END,
           state_message = CASE WHEN c.state = 'AWAITING_PARENTS'
                                 AND c.pending_parents <= counts.k
                                THEN 'parents done (some did not finish)'
                                ELSE c.state_message END
      FROM counts
     WHERE c.id = counts.child_id;
    RETURN NULL;
END $$;

-- Named to sort after tasks_events_update: triggers of one event fire in name order, so
-- a parent's JOB_FINISHED event is written before its children's READY events.
CREATE TRIGGER tasks_propagate AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_propagate();

-- A block of n consecutive task ids handed out before a bulk add (returns the first), so
-- the client knows every new task's id (and can resolve in-batch parent references)
-- without a RETURNING per row, and the sequence is advanced once instead of n times
-- (100k nextval calls cost more than a second). Reservations take an advisory lock so two
-- of them never overlap; an INSERT that takes the identity default without it could only
-- collide inside the microseconds between nextval and setval, and would then fail on the
-- primary key, never duplicate a task. SECURITY DEFINER: members need no privilege on the
-- sequence itself.
CREATE FUNCTION tasks_reserve_ids(n integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    seq text := pg_get_serial_sequence('public.tasks', 'id');
    first bigint;
BEGIN
    IF n < 1 THEN
        RAISE EXCEPTION 'reserve at least one id, not %', n;
    END IF;
    PERFORM pg_advisory_lock(hashtext('balsam_mpi.tasks_reserve_ids'));
    first := nextval(seq);
    IF n > 1 THEN
        PERFORM setval(seq, first + n - 1);
    END IF;
    PERFORM pg_advisory_unlock(hashtext('balsam_mpi.tasks_reserve_ids'));
    RETURN first;
END $$;

-- The states of would-be parents, locked FOR SHARE until the caller commits, so a parent
-- cannot finish unseen between reading its state and the new dependency becoming
-- visible (its trigger then waits and sees the dependency). SECURITY DEFINER because
-- locking needs UPDATE rights that members lack on other members' tasks.
CREATE FUNCTION tasks_lock_parents(ids bigint[])
RETURNS TABLE (id bigint, state task_state, workflow text, name text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT t.id, t.state, t.workflow, t.name FROM public.tasks t
     WHERE t.id = ANY (ids) ORDER BY t.id FOR SHARE
$$;

-- Recount the unfinished parents of the given tasks from task_deps (the truth), and make
-- those left waiting for nothing READY. Called after tasks are deleted, for their
-- children: those may belong to other members, whose rows the caller cannot update.
-- Safe to offer to every member: it only ever sets the true count.
CREATE FUNCTION tasks_recount(ids bigint[]) RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    WITH pend AS (
        SELECT c.id,
               (SELECT count(*) FROM public.task_deps d
                  JOIN public.tasks p ON p.id = d.parent_id
                 WHERE d.child_id = c.id AND p.state <> 'JOB_FINISHED'
                   AND (c.fail_with_parents OR p.state NOT IN ('FAILED', 'USER_KILLED'))
               )::integer AS k
          FROM public.tasks c
         WHERE c.id = ANY (ids) AND c.state IN ('CREATED', 'AWAITING_PARENTS', 'READY')
    ), changed AS (
        UPDATE public.tasks t SET
            pending_parents = pend.k,
            state = CASE WHEN t.state = 'AWAITING_PARENTS' AND pend.k = 0
                         THEN 'READY'::task_state ELSE t.state END,
            state_message = CASE WHEN t.state = 'AWAITING_PARENTS' AND pend.k = 0
                                 THEN 'parents finished or removed' ELSE t.state_message END
          FROM pend
         WHERE t.id = pend.id AND t.pending_parents <> pend.k
        RETURNING t.id
    )
    SELECT count(*)::integer FROM changed
$$;

-- After a retry of the given tasks: every task they failed (followed through failed_by,
-- so the whole failed subgraph) returns to AWAITING_PARENTS / READY with its parents
-- recounted. Only roots that are no longer stopped count, so calling it can only undo
-- failures whose cause is gone; hence SECURITY DEFINER is safe, and a member's retry
-- brings back descendants other members own. Their counters are untouched: they never ran.
CREATE FUNCTION tasks_reinstate_followers(roots bigint[]) RETURNS SETOF bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    WITH RECURSIVE live AS (
        SELECT t.id FROM unnest(roots) AS r (id) JOIN public.tasks t ON t.id = r.id
         WHERE t.state NOT IN ('FAILED', 'USER_KILLED')
    ), followers (id) AS (
        -- failed_by is set only on FAILED tasks and cleared by retry, so its partial
        -- index alone finds them (no state test to lure the planner onto tasks_state)
        SELECT c.id FROM public.tasks c JOIN live ON c.failed_by = live.id
        UNION
        SELECT c.id FROM public.tasks c JOIN followers f ON c.failed_by = f.id
    ), pend AS (
        SELECT c.id,
               (SELECT count(*) FROM public.task_deps d
                  JOIN public.tasks p ON p.id = d.parent_id
                 WHERE d.child_id = c.id AND p.state <> 'JOB_FINISHED'
                   AND (c.fail_with_parents OR p.state NOT IN ('FAILED', 'USER_KILLED'))
               )::integer AS k
          FROM followers JOIN public.tasks c ON c.id = followers.id
         WHERE c.state = 'FAILED'
    )
    UPDATE public.tasks t SET
        state = CASE WHEN pend.k > 0 THEN 'AWAITING_PARENTS' ELSE 'READY' END::task_state,
        pending_parents = pend.k,
        failed_by = NULL,
        state_message = 'upstream task retried'
      FROM pend
     WHERE t.id = pend.id
    RETURNING t.id
$$;

-- After a retry: a reinstated task that still has a stopped parent (one not retried)
-- fails again at once, naming the root of that failure; the trigger fails its followers.
-- Truth-based like the one above (it fails only tasks whose parent is stopped), so safe
-- as SECURITY DEFINER. Driven from the id array through primary keys only: right after a
-- bulk retry the planner's idea of how many tasks are in which state is stale, and a plan
-- trusting it (a nested loop over "the few AWAITING_PARENTS tasks") took minutes.
CREATE FUNCTION tasks_refail(ids bigint[]) RETURNS SETOF bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    WITH blocked AS (
        SELECT DISTINCT ON (r.id) r.id AS child_id, coalesce(p.failed_by, p.id) AS root,
               p.state
          FROM unnest(ids) AS r (id)
          JOIN public.task_deps d ON d.child_id = r.id
          JOIN public.tasks p ON p.id = d.parent_id
         WHERE p.state IN ('FAILED', 'USER_KILLED')
         ORDER BY r.id, p.id
    )
    UPDATE public.tasks c SET state = 'FAILED', failed_by = b.root,
           state_message = format('upstream task %s is %s', b.root, b.state)
      FROM blocked b
     WHERE c.id = b.child_id AND c.fail_with_parents AND c.state = 'AWAITING_PARENTS'
    RETURNING c.id
$$;

GRANT EXECUTE ON FUNCTION tasks_reserve_ids(integer), tasks_lock_parents(bigint[]),
    tasks_recount(bigint[]), tasks_reinstate_followers(bigint[]), tasks_refail(bigint[])
    TO balsam_member;

-- ==== 0004_launcher.sql ====
-- 0004_launcher: the launcher's work as SECURITY DEFINER functions (docs/architecture.md §5, §6).
--
-- A leader (whoever runs it: the owner or a member) changes tasks only through these
-- functions, which run as balsam_objects with a fixed search_path. Each one is a single
-- call from the leader, so a claim or a whole batch of reports costs one round trip.
--
-- A claimed task keeps its runnable state (READY or RESTART_READY) and is marked taken by
-- batch_job_id / lease_epoch / claimed_at; it moves to RUNNING only when its node reports
-- the real start time, in the same UPDATE that sets started_at, so the RUNNING event
-- carries the node's clock. The claim skips rows with a batch_job_id; releasing a claim is
-- setting it back to NULL.

-- Every launcher function runs as balsam_objects, so it checks by itself who calls:
-- only a batch job's own user (session_user, the login role) may work under it, as for
-- 0002's batch_job_heartbeat. Not granted to anyone: called from the functions below.
CREATE FUNCTION launcher_check_user(p_job bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    owner_name text;
BEGIN
    SELECT b."user" INTO owner_name FROM public.batch_jobs b WHERE b.id = p_job;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch job % does not exist', p_job USING ERRCODE = 'no_data_found';
    END IF;
    IF owner_name <> session_user THEN
        RAISE EXCEPTION 'batch job % belongs to %: only its own launcher can use it',
            p_job, owner_name USING ERRCODE = 'insufficient_privilege';
    END IF;
END $$;

-- The batch job a leader runs under: adopt the row `balsam-mpi submit` made (by id, or by
-- scheduler + scheduler job id), else open a new one. Each adoption bumps lease_epoch, so
-- reports of an earlier leader of the same row are refused (fencing).
CREATE FUNCTION launcher_open_job(
    p_job_id bigint, p_scheduler text, p_scheduler_job_id text, p_host text,
    p_nodes integer, p_ranks integer, p_filters jsonb, p_wall_time_min double precision,
    p_lease_sec double precision)
RETURNS TABLE (job_id bigint, lease_epoch bigint, adopted boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    found_id bigint;
BEGIN
    IF p_job_id IS NOT NULL THEN
        SELECT b.id INTO found_id FROM public.batch_jobs b WHERE b.id = p_job_id FOR UPDATE;
        IF found_id IS NULL THEN
            RAISE EXCEPTION 'batch job % does not exist', p_job_id
                USING ERRCODE = 'no_data_found';
        END IF;
    ELSIF p_scheduler_job_id IS NOT NULL THEN
        SELECT b.id INTO found_id FROM public.batch_jobs b
         WHERE b.scheduler = p_scheduler AND b.scheduler_job_id = p_scheduler_job_id
           FOR UPDATE;
    END IF;
    IF found_id IS NOT NULL THEN
        PERFORM launcher_check_user(found_id);
        RETURN QUERY
        UPDATE public.batch_jobs b
           SET state = 'RUNNING', host = p_host, nodes = p_nodes, ranks = p_ranks,
               filters = p_filters,
               wall_time_min = coalesce(p_wall_time_min, b.wall_time_min),
               lease_sec = p_lease_sec, lease_epoch = b.lease_epoch + 1,
               started_at = coalesce(b.started_at, now()), heartbeat_at = now(),
               ended_at = NULL, end_reason = NULL
         WHERE b.id = found_id
        RETURNING b.id, b.lease_epoch, true;
    ELSE
        RETURN QUERY
        INSERT INTO public.batch_jobs (scheduler, scheduler_job_id, host, nodes, ranks, filters,
                                wall_time_min, state, lease_epoch, lease_sec, started_at,
                                heartbeat_at)
        VALUES (p_scheduler, p_scheduler_job_id, p_host, p_nodes, p_ranks, p_filters,
                p_wall_time_min, 'RUNNING', 1, p_lease_sec, now(), now())
        RETURNING batch_jobs.id, batch_jobs.lease_epoch, false;
    END IF;
END $$;

-- The claim: ONE statement. The inner CTE locks up to p_limit runnable, unclaimed rows in
-- (priority DESC, id) order with SKIP LOCKED, so concurrent leaders never wait on each
-- other nor take the same row; the outer running sum keeps the prefix whose node shares
-- fit p_capacity (Postgres refuses window functions beside FOR UPDATE, hence two levels);
-- the UPDATE marks the kept rows claimed and returns what a node needs to run them.
-- Locked rows outside the prefix are free again at commit.
-- Two shapes, so each stays on its partial index (tasks_runnable, and
-- tasks_runnable_workflow through one index probe per workflow): a filter on workflow
-- with the plain index made the planner discard up to 60k rows per claim. An EXPLAIN
-- test (tests/db/test_claim.py) keeps it so.
CREATE FUNCTION launcher_claim(
    p_job bigint, p_epoch bigint, p_limit integer, p_capacity double precision,
    p_max_need double precision, p_workflows text[], p_tags jsonb, p_owners text[],
    p_remaining_min double precision, p_max_nodes integer)
RETURNS TABLE (id bigint, workflow text, name text, state task_state, app text,
               command text, shell boolean, env_script text, params jsonb, args text[],
               env jsonb, num_nodes integer, ranks_per_node integer,
               threads_per_rank integer, gpus_per_rank integer,
               node_packing_count integer, wall_time_min double precision)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
-- Pinned to the ordered index scan whatever the statistics say: right after a bulk add
-- they are stale, and the planner then chose a bitmap scan plus a sort of every runnable
-- row to return 16 of them.
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off SET jit = off
AS $$
BEGIN
    -- A leader whose row is no longer RUNNING at this epoch (marked lost, adopted again
    -- by a newer leader, closed) claims nothing.
    PERFORM launcher_check_user(p_job);
    PERFORM 1 FROM public.batch_jobs b
      WHERE b.id = p_job AND b.lease_epoch = p_epoch AND b.state = 'RUNNING';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch job % (epoch %) no longer holds its lease', p_job, p_epoch
            USING ERRCODE = 'lock_not_available';
    END IF;
    IF p_workflows IS NULL THEN
        RETURN QUERY
        WITH locked AS (
            SELECT t.id, t.priority, 1.0::float8 / t.node_packing_count AS need
              FROM public.tasks t
             WHERE t.state IN ('READY', 'RESTART_READY') AND t.batch_job_id IS NULL
               AND t.num_nodes <= p_max_nodes
               AND 1.0::float8 / t.node_packing_count <= p_max_need + 1e-9
               AND (p_remaining_min IS NULL OR t.wall_time_min <= p_remaining_min)
               AND (p_tags IS NULL OR t.tags @> p_tags)
               AND (p_owners IS NULL OR t.owner = ANY (p_owners))
             ORDER BY t.priority DESC, t.id
             LIMIT p_limit
               FOR UPDATE OF t SKIP LOCKED
        ), fitting AS (
            SELECT s.id FROM (
                SELECT l.id, sum(l.need) OVER (ORDER BY l.priority DESC, l.id) AS used
                  FROM locked l) s
             WHERE s.used <= p_capacity + 1e-9
        )
        UPDATE public.tasks t
           SET batch_job_id = p_job, lease_epoch = p_epoch, claimed_at = now()
          FROM fitting f, public.apps a
         WHERE t.id = f.id AND a.id = t.app_id
        RETURNING t.id, t.workflow, t.name, t.state, a.name, a.command, a.shell,
                  a.env_script, t.params, t.args, t.env, t.num_nodes, t.ranks_per_node,
                  t.threads_per_rank, t.gpus_per_rank, t.node_packing_count,
                  t.wall_time_min;
    ELSE
        RETURN QUERY
        WITH locked AS (
            SELECT c.id, c.priority, c.need
              FROM unnest(p_workflows) AS w(name)
             CROSS JOIN LATERAL (
                SELECT t.id, t.priority, 1.0::float8 / t.node_packing_count AS need
                  FROM public.tasks t
                 -- A range, not `=`: with `=` the planner treats the workflow as a
                 -- constant, drops it from the ORDER BY, and may walk tasks_runnable
                 -- filtering by workflow (the pitfall). As a range the ORDER BY below is
                 -- one only tasks_runnable_workflow yields without a sort (sorts are off).
                 WHERE t.workflow >= w.name AND t.workflow <= w.name
                   AND t.state IN ('READY', 'RESTART_READY') AND t.batch_job_id IS NULL
                   AND t.num_nodes <= p_max_nodes
                   AND 1.0::float8 / t.node_packing_count <= p_max_need + 1e-9
                   AND (p_remaining_min IS NULL OR t.wall_time_min <= p_remaining_min)
                   AND (p_tags IS NULL OR t.tags @> p_tags)
                   AND (p_owners IS NULL OR t.owner = ANY (p_owners))
                 ORDER BY t.workflow, t.priority DESC, t.id
                 LIMIT p_limit
                   FOR UPDATE OF t SKIP LOCKED) c
        ), fitting AS (
            SELECT s.id FROM (
                SELECT l.id, sum(l.need) OVER (ORDER BY l.priority DESC, l.id) AS used,
                       row_number() OVER (ORDER BY l.priority DESC, l.id) AS n
                  FROM locked l) s
             WHERE s.used <= p_capacity + 1e-9 AND s.n <= p_limit
        )
        UPDATE public.tasks t
           SET batch_job_id = p_job, lease_epoch = p_epoch, claimed_at = now()
          FROM fitting f, public.apps a
         WHERE t.id = f.id AND a.id = t.app_id
        RETURNING t.id, t.workflow, t.name, t.state, a.name, a.command, a.shell,
                  a.env_script, t.params, t.args, t.env, t.num_nodes, t.ranks_per_node,
                  t.threads_per_rank, t.gpus_per_rank, t.node_packing_count,
                  t.wall_time_min;
    END IF;
END $$;

-- A batch of node reports, in one call. Every row names the claim it belongs to
-- (batch job + lease epoch) and the state it must be in, so a report from a superseded
-- claim, or about a task killed meanwhile, changes nothing (fencing; a kill is never
-- overwritten). The node's own times (epoch seconds) go into the UPDATE that changes
-- the state, so the events carry them. Returns how many rows each step changed.
--   started:  READY / RESTART_READY -> RUNNING (started_at)
--   finished: RUNNING -> RUN_DONE -> JOB_FINISHED (rc 0)
--             RUNNING -> RUN_ERROR -> RESTART_READY (retries left) or FAILED   (f_kind 1)
--             RUNNING -> RUN_TIMEOUT -> RESTART_READY (retries left) or FAILED (f_kind 2)
--             RUNNING -> RESTART_READY, uncounted (f_kind 3: cut off by the launcher)
CREATE FUNCTION launcher_report(
    p_job bigint, p_epoch bigint,
    s_ids bigint[], s_at double precision[],
    f_ids bigint[], f_kind smallint[], f_rc integer[], f_started double precision[],
    f_ended double precision[], f_tail text[])
RETURNS TABLE (step text, changed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n bigint;
    ok_ids bigint[];
    bad_ids bigint[];
BEGIN
    PERFORM launcher_check_user(p_job);
    IF cardinality(s_ids) > 0 THEN
        UPDATE public.tasks t SET state = 'RUNNING', started_at = to_timestamp(s.at), state_message = ''
          FROM unnest(s_ids, s_at) AS s(id, at)
         WHERE t.id = s.id AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('READY', 'RESTART_READY');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'started'; changed := n; RETURN NEXT;
    END IF;
    IF cardinality(f_ids) = 0 THEN
        RETURN;
    END IF;

    -- The end of the run, at the node's time.
    UPDATE public.tasks t
       SET state = CASE f.kind WHEN 0 THEN 'RUN_DONE'::public.task_state
                               WHEN 2 THEN 'RUN_TIMEOUT'::public.task_state
                               WHEN 3 THEN 'RESTART_READY'::public.task_state
                               ELSE 'RUN_ERROR'::public.task_state END,
           started_at = coalesce(t.started_at, to_timestamp(f.started)),
           ended_at = to_timestamp(f.ended),
           exit_code = f.rc,
           output_tail = CASE WHEN f.kind = 0 THEN '' ELSE f.tail END,
           state_message = CASE f.kind WHEN 0 THEN ''
                                       WHEN 2 THEN 'ran over its wall_time_min'
                                       WHEN 3 THEN 'requeued: the batch job stopped it'
                                       ELSE format('exit code %s', f.rc) END,
           batch_job_id = CASE WHEN f.kind = 3 THEN NULL ELSE t.batch_job_id END
      FROM unnest(f_ids, f_kind, f_rc, f_started, f_ended, f_tail)
           AS f(id, kind, rc, started, ended, tail)
     WHERE t.id = f.id AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
       AND t.state = 'RUNNING';
    GET DIAGNOSTICS n = ROW_COUNT;
    step := 'ended'; changed := n; RETURN NEXT;

    SELECT array_agg(x.id) FILTER (WHERE x.kind = 0),
           array_agg(x.id) FILTER (WHERE x.kind IN (1, 2))
      INTO ok_ids, bad_ids
      FROM unnest(f_ids, f_kind) AS x(id, kind);

    -- Successes finish (postprocessing arrives with issue 7).
    IF ok_ids IS NOT NULL THEN
        UPDATE public.tasks t SET state = 'JOB_FINISHED'
         WHERE t.id = ANY (ok_ids) AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state = 'RUN_DONE';
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'finished'; changed := n; RETURN NEXT;
    END IF;

    -- Errors and timeouts: retry while the task's own counter allows, else FAILED. The
    -- counters count the retries granted, so a FAILED task shows its limit reached.
    IF bad_ids IS NOT NULL THEN
        UPDATE public.tasks t
           SET state = CASE WHEN r.retry THEN 'RESTART_READY'::public.task_state
                            ELSE 'FAILED'::public.task_state END,
               error_retries = t.error_retries
                               + (r.retry AND t.state = 'RUN_ERROR')::integer,
               timeout_retries = t.timeout_retries
                                 + (r.retry AND t.state = 'RUN_TIMEOUT')::integer,
               batch_job_id = NULL
          FROM (SELECT x.id,
                       x.state = 'RUN_ERROR' AND x.error_retries < x.error_retry_limit
                       OR x.state = 'RUN_TIMEOUT'
                          AND x.timeout_retries < x.timeout_retry_limit AS retry
                  FROM public.tasks x WHERE x.id = ANY (bad_ids)) r
         WHERE t.id = r.id AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state IN ('RUN_ERROR', 'RUN_TIMEOUT');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'retried_or_failed'; changed := n; RETURN NEXT;
    END IF;
END $$;

-- The leader's heartbeat; false when the row is no longer this leader's to keep.
CREATE FUNCTION launcher_heartbeat(p_job bigint, p_epoch bigint)
RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    WITH beat AS (
        UPDATE public.batch_jobs b SET heartbeat_at = now()
         WHERE b.id = p_job AND b.lease_epoch = p_epoch AND b.state = 'RUNNING'
           AND b."user" = session_user
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM beat);
$$;

-- Which of this leader's tasks were killed meanwhile (USER_KILLED keeps the claim's
-- batch_job_id): the leader polls every second or two and sends the kills to the nodes.
CREATE FUNCTION launcher_kills(p_job bigint, p_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    RETURN QUERY
    SELECT t.id FROM public.tasks t
     WHERE t.id = ANY (p_ids) AND t.batch_job_id = p_job AND t.state = 'USER_KILLED';
END $$;

-- Give back claims that never started, requeue what still runs (see below), then close
-- the row with its state and reason.
CREATE FUNCTION launcher_close_job(p_job bigint, p_epoch bigint, p_state batch_job_state,
                                   p_reason text)
RETURNS TABLE (released bigint, requeued bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    r bigint;
    q bigint;
BEGIN
    PERFORM launcher_check_user(p_job);
    UPDATE public.tasks t SET batch_job_id = NULL, claimed_at = NULL
     WHERE t.batch_job_id = p_job AND t.lease_epoch = p_epoch
       AND t.state IN ('READY', 'RESTART_READY');
    GET DIAGNOSTICS r = ROW_COUNT;
    -- A launcher that failed lost its tasks (the lost counter, FAILED past its limit); one
    -- that stopped them on purpose (drain, wall time, signal) requeues them for free.
    UPDATE public.tasks t
       SET state = CASE WHEN p_state = 'FAILED' AND t.lost_retries >= t.lost_retry_limit
                        THEN 'FAILED'::public.task_state
                        ELSE 'RESTART_READY'::public.task_state END,
           lost_retries = t.lost_retries
                          + (p_state = 'FAILED' AND t.lost_retries < t.lost_retry_limit)::integer,
           batch_job_id = NULL, claimed_at = NULL,
           state_message = CASE WHEN p_state = 'FAILED' THEN 'lost: ' ELSE 'requeued: ' END
                           || p_reason
     WHERE t.batch_job_id = p_job AND t.lease_epoch = p_epoch AND t.state = 'RUNNING';
    GET DIAGNOSTICS q = ROW_COUNT;
    UPDATE public.batch_jobs b SET state = p_state, ended_at = now(), end_reason = p_reason
     WHERE b.id = p_job AND b.lease_epoch = p_epoch AND b.state = 'RUNNING';
    released := r; requeued := q; RETURN NEXT;
END $$;

GRANT EXECUTE ON FUNCTION
    launcher_open_job(bigint, text, text, text, integer, integer, jsonb,
                      double precision, double precision),
    launcher_claim(bigint, bigint, integer, double precision, double precision, text[],
                   jsonb, text[], double precision, integer),
    launcher_report(bigint, bigint, bigint[], double precision[], bigint[], smallint[],
                    integer[], double precision[], double precision[], text[]),
    launcher_heartbeat(bigint, bigint),
    launcher_kills(bigint, bigint[]),
    launcher_close_job(bigint, bigint, batch_job_state, text)
TO balsam_member;

-- ==== 0005_leases.sql ====
-- 0005_leases: lease expiry (docs/architecture.md §5). A batch job whose leader stopped heartbeating
-- for longer than its lease is marked LOST and its tasks go back to the queue, by whoever
-- looks first: every leader's loop (every few seconds) and `balsam-dbctl recover`.
--
-- Anyone who may run a launcher (balsam_member) may call it: it touches only rows whose
-- lease has run out by the server's own clock, which their leader has already given up
-- (a leader that cannot heartbeat for half its lease kills its own tasks), so no caller
-- can take work away from a live launcher. It never renews or forges a lease either.

-- Mark the expired batch jobs LOST (all of them, or only p_job) and requeue their tasks:
--   RUNNING -> RESTART_READY, lost counter +1 (FAILED once the counter is at its limit),
--              with an event saying why (the trigger of 0001 takes state_message);
--   claimed but never started (READY / RESTART_READY) -> released, nothing counted.
-- Rows are taken with SKIP LOCKED, so concurrent sweeps never wait on each other nor
-- requeue a job twice, and a heartbeat that commits first keeps its lease. A late report
-- of the lost leader matches nothing afterwards: its tasks no longer carry its batch job.
-- One row per job marked lost.
CREATE FUNCTION launcher_expire_leases(p_job bigint DEFAULT NULL)
RETURNS TABLE (job_id bigint, job_user text, requeued bigint, failed bigint,
               released bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    jobs bigint[];
    users text[];
    reasons text[];
    lost_jobs bigint[];
    lost_states public.task_state[];
    freed_jobs bigint[];
BEGIN
    WITH expired AS (
        SELECT b.id FROM public.batch_jobs b
         WHERE b.state = 'RUNNING'
           AND (p_job IS NULL OR b.id = p_job)
           AND coalesce(b.heartbeat_at, b.started_at)
               < now() - make_interval(secs => b.lease_sec)
           FOR UPDATE SKIP LOCKED
    ), marked AS (
        UPDATE public.batch_jobs b
           SET state = 'LOST', ended_at = now(),
               end_reason = format('lease expired: no heartbeat since %s (lease %s s)',
                                   to_char(coalesce(b.heartbeat_at, b.started_at)
                                           AT TIME ZONE 'UTC',
                                           'YYYY-MM-DD HH24:MI:SS "UTC"'),
                                   b.lease_sec)
          FROM expired e
         WHERE b.id = e.id
        RETURNING b.id, b."user", b.end_reason
    )
    SELECT array_agg(m.id), array_agg(m."user"), array_agg(m.end_reason)
      INTO jobs, users, reasons
      FROM marked m;
    IF jobs IS NULL THEN
        RETURN;
    END IF;

    -- What ran was lost with its launcher: counted, FAILED past the limit. The rows are
    -- re-checked under their lock (READ COMMITTED), so a report that committed first wins.
    WITH hit AS (
        UPDATE public.tasks t
           SET state = CASE WHEN t.lost_retries >= t.lost_retry_limit
                            THEN 'FAILED'::public.task_state
                            ELSE 'RESTART_READY'::public.task_state END,
               lost_retries = t.lost_retries
                              + (t.lost_retries < t.lost_retry_limit)::integer,
               batch_job_id = NULL, claimed_at = NULL,
               state_message = 'lost: ' || j.reason
          FROM unnest(jobs, reasons) AS j(id, reason)
         WHERE t.batch_job_id = j.id AND t.state = 'RUNNING'
        RETURNING j.id AS job, t.state
    )
    SELECT array_agg(h.job), array_agg(h.state) INTO lost_jobs, lost_states FROM hit h;

    -- Claimed but never started: only the claim goes (no state change, no event).
    WITH freed AS (
        UPDATE public.tasks t SET batch_job_id = NULL, claimed_at = NULL
          FROM unnest(jobs) AS j(id)
         WHERE t.batch_job_id = j.id AND t.state IN ('READY', 'RESTART_READY')
        RETURNING j.id AS job
    )
    SELECT array_agg(f.job) INTO freed_jobs FROM freed f;

    RETURN QUERY
    SELECT u.id, u.who,
           (SELECT count(*) FROM unnest(lost_jobs, lost_states) AS x(job, st)
             WHERE x.job = u.id AND x.st <> 'FAILED'),
           (SELECT count(*) FROM unnest(lost_jobs, lost_states) AS x(job, st)
             WHERE x.job = u.id AND x.st = 'FAILED'),
           (SELECT count(*) FROM unnest(freed_jobs) AS x(job) WHERE x.job = u.id)
      FROM unnest(jobs, users) AS u(id, who)
     ORDER BY u.id;
END $$;

GRANT EXECUTE ON FUNCTION launcher_expire_leases(bigint) TO balsam_member;

-- ==== 0006_mpi_tasks.sql ====
-- 0006_mpi_tasks: the report function learns the app's pre/postprocessing (issue 7).
--
-- The node runs the app's preprocess before a task's first run and its postprocess after
-- the run (balsam_mpi/node/prepost.py); the report's kind says how both went, and this
-- function moves the states as legacy Balsam did, one set-based UPDATE per step:
--   started:  READY -> PREPROCESSED (the app has a preprocess) -> RUNNING
--   kind 0    RUNNING -> RUN_DONE -> JOB_FINISHED                 (no postprocess)
--   kind 5    RUNNING -> RUN_DONE -> POSTPROCESSED -> JOB_FINISHED
--   kind 6    RUNNING -> RUN_DONE -> FAILED                       (postprocess failed)
--   kind 7/10 RUNNING -> RUN_ERROR/RUN_TIMEOUT -> POSTPROCESSED -> JOB_FINISHED
--             (the error/timeout handler exited 0: it dealt with it)
--   kind 1/2, and 8/11 (the handler exited 75: retry)
--             RUNNING -> RUN_ERROR/RUN_TIMEOUT -> RESTART_READY (retries left) or FAILED
--   kind 9/12 RUNNING -> RUN_ERROR/RUN_TIMEOUT -> FAILED          (the handler failed)
--   kind 3    RUNNING -> RESTART_READY, uncounted (cut off by the launcher)
--   kind 13   READY -> FAILED (the preprocess failed; the task never ran)
-- Every row is still matched on (batch_job_id, lease_epoch, expected state): a report
-- from a superseded claim, or about a task killed meanwhile, changes nothing.
CREATE OR REPLACE FUNCTION launcher_report(
    p_job bigint, p_epoch bigint,
    s_ids bigint[], s_at double precision[],
    f_ids bigint[], f_kind smallint[], f_rc integer[], f_started double precision[],
    f_ended double precision[], f_tail text[])
RETURNS TABLE (step text, changed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n bigint;
    m bigint := 0;
    ok_ids bigint[];
    post_ids bigint[];
    bad_ids bigint[];
    failed_ids bigint[];
BEGIN
    PERFORM launcher_check_user(p_job);
    IF cardinality(s_ids) > 0 THEN
        -- The node ran the app's preprocess before this first run (it does so for a
        -- claimed READY task whose app has one): record PREPROCESSED on the way. Skipped
        -- outright while no app has a preprocess (the common, no-op-throughput case).
        IF EXISTS (SELECT 1 FROM public.apps a WHERE a.preprocess <> '') THEN
            UPDATE public.tasks t SET state = 'PREPROCESSED'
              FROM unnest(s_ids) AS s(id), public.apps a
             WHERE t.id = s.id AND a.id = t.app_id AND a.preprocess <> ''
               AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch AND t.state = 'READY';
        END IF;
        UPDATE public.tasks t SET state = 'RUNNING', started_at = to_timestamp(s.at), state_message = ''
          FROM unnest(s_ids, s_at) AS s(id, at)
         WHERE t.id = s.id AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('READY', 'RESTART_READY', 'PREPROCESSED');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'started'; changed := n; RETURN NEXT;
    END IF;
    IF cardinality(f_ids) = 0 THEN
        RETURN;
    END IF;

    -- The preprocess failed: the task never ran, and Balsam fails it.
    IF 13 = ANY (f_kind) THEN
        UPDATE public.tasks t
           SET state = 'FAILED', ended_at = to_timestamp(f.ended), exit_code = f.rc,
               output_tail = f.tail, state_message = format('preprocess exit code %s', f.rc),
               batch_job_id = NULL
          FROM unnest(f_ids, f_kind, f_rc, f_ended, f_tail) AS f(id, kind, rc, ended, tail)
         WHERE f.kind = 13 AND t.id = f.id AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state = 'READY';
        GET DIAGNOSTICS m = ROW_COUNT;
    END IF;

    -- The end of the run, at the node's time.
    UPDATE public.tasks t
       SET state = CASE WHEN f.kind IN (0, 5, 6) THEN 'RUN_DONE'::public.task_state
                        WHEN f.kind IN (2, 10, 11, 12) THEN 'RUN_TIMEOUT'::public.task_state
                        WHEN f.kind = 3 THEN 'RESTART_READY'::public.task_state
                        ELSE 'RUN_ERROR'::public.task_state END,
           started_at = coalesce(t.started_at, to_timestamp(f.started)),
           ended_at = to_timestamp(f.ended),
           exit_code = f.rc,
           output_tail = CASE WHEN f.kind IN (0, 5) THEN '' ELSE f.tail END,
           state_message = CASE
               WHEN f.kind IN (0, 5) THEN ''
               WHEN f.kind = 6 THEN 'the postprocess failed'
               WHEN f.kind IN (2, 11) THEN 'ran over its wall_time_min'
               WHEN f.kind = 10 THEN 'ran over its wall_time_min; the timeout handler dealt with it'
               WHEN f.kind = 12 THEN 'ran over its wall_time_min; the timeout handler failed'
               WHEN f.kind = 3 THEN 'requeued: the batch job stopped it'
               WHEN f.kind = 7 THEN format('exit code %s; the error handler dealt with it', f.rc)
               WHEN f.kind = 9 THEN format('exit code %s; the error handler failed', f.rc)
               ELSE format('exit code %s', f.rc) END,
           batch_job_id = CASE WHEN f.kind = 3 THEN NULL ELSE t.batch_job_id END
      FROM unnest(f_ids, f_kind, f_rc, f_started, f_ended, f_tail)
           AS f(id, kind, rc, started, ended, tail)
     WHERE f.kind <> 13 AND t.id = f.id AND t.batch_job_id = p_job
       AND t.lease_epoch = p_epoch AND t.state = 'RUNNING';
    GET DIAGNOSTICS n = ROW_COUNT;
    step := 'ended'; changed := n + m; RETURN NEXT;

    SELECT array_agg(x.id) FILTER (WHERE x.kind = 0),
           array_agg(x.id) FILTER (WHERE x.kind IN (5, 7, 10)),
           array_agg(x.id) FILTER (WHERE x.kind IN (1, 2, 8, 11)),
           array_agg(x.id) FILTER (WHERE x.kind IN (6, 9, 12))
      INTO ok_ids, post_ids, bad_ids, failed_ids
      FROM unnest(f_ids, f_kind) AS x(id, kind);

    IF ok_ids IS NOT NULL THEN
        UPDATE public.tasks t SET state = 'JOB_FINISHED'
         WHERE t.id = ANY (ok_ids) AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state = 'RUN_DONE';
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'finished'; changed := n; RETURN NEXT;
    END IF;

    -- Postprocessed (after a success, or a handler that dealt with an error/timeout).
    IF post_ids IS NOT NULL THEN
        UPDATE public.tasks t SET state = 'POSTPROCESSED'
         WHERE t.id = ANY (post_ids) AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('RUN_DONE', 'RUN_ERROR', 'RUN_TIMEOUT');
        UPDATE public.tasks t SET state = 'JOB_FINISHED'
         WHERE t.id = ANY (post_ids) AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state = 'POSTPROCESSED';
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'postprocessed'; changed := n; RETURN NEXT;
    END IF;

    -- A failed postprocess, or a handler that could not deal with it: FAILED.
    IF failed_ids IS NOT NULL THEN
        UPDATE public.tasks t SET state = 'FAILED', batch_job_id = NULL
         WHERE t.id = ANY (failed_ids) AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('RUN_DONE', 'RUN_ERROR', 'RUN_TIMEOUT');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'failed'; changed := n; RETURN NEXT;
    END IF;

    -- Errors and timeouts (and handlers asking for a retry): retry while the task's own
    -- counter allows, else FAILED. The counters count the retries granted.
    IF bad_ids IS NOT NULL THEN
        UPDATE public.tasks t
           SET state = CASE WHEN r.retry THEN 'RESTART_READY'::public.task_state
                            ELSE 'FAILED'::public.task_state END,
               error_retries = t.error_retries
                               + (r.retry AND t.state = 'RUN_ERROR')::integer,
               timeout_retries = t.timeout_retries
                                 + (r.retry AND t.state = 'RUN_TIMEOUT')::integer,
               batch_job_id = NULL
          FROM (SELECT x.id,
                       x.state = 'RUN_ERROR' AND x.error_retries < x.error_retry_limit
                       OR x.state = 'RUN_TIMEOUT'
                          AND x.timeout_retries < x.timeout_retry_limit AS retry
                  FROM public.tasks x WHERE x.id = ANY (bad_ids)) r
         WHERE t.id = r.id AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state IN ('RUN_ERROR', 'RUN_TIMEOUT');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'retried_or_failed'; changed := n; RETURN NEXT;
    END IF;
END $$;

GRANT EXECUTE ON FUNCTION
    launcher_report(bigint, bigint, bigint[], double precision[], bigint[], smallint[],
                    integer[], double precision[], double precision[], text[])
TO balsam_member;

-- ==== 0007_checked_writes.sql ====
-- 0007_checked_writes: the database is the last line for what may change and by whom
-- (docs/security.md, "Inside the database").
--
--   1. Values: CHECK constraints mirror every client-side check with the caps of
--      balsam_mpi/base/limits.py (tests/db/test_limits.py drives them from there), so a raw
--      INSERT cannot plant a row that crashes whoever claims it.
--   2. States: a statement-level trigger refuses every state change that
--      balsam_mpi/tasks/states.py's TRANSITIONS does not list, whoever sends it.
--   3. Writes: members and the owner lose table-level UPDATE / DELETE on tasks and every
--      write on task_deps and batch_jobs. A raw INSERT may set only what a new task may
--      have (column grants + the policy); plain edits (priority, tags, data) keep column
--      grants; everything else goes through the SECURITY DEFINER functions below, which
--      check who asks (a member: their own tasks; the owner: any) and what the task's
--      state allows (a claimed task is treated as started).
--   4. Locks and catalog functions: large objects, advisory locks and NOTIFY are no longer
--      PUBLIC; only the definer functions take advisory locks. DAG edits are serialized by
--      one transaction-level advisory lock.
--   5. Batch jobs: a launcher adopts only a row its own user made; another user's row
--      with the same scheduler job id neither blocks nor is adopted.
--   6. Propagation: the DAG and event triggers are planned for the rows they get (a plan
--      cached from a one-row statement nested-looped 10,000 × 10,000 rows: a kill of the
--      root of a 10,000-deep chain took from 16 s to over a minute).

-- ==== 1. Values =========================================================================
-- Helpers for the CHECK constraints: IMMUTABLE SQL, callable by whoever writes a row.
-- The cheap test comes first in each constraint, so a typical row (empty env, short
-- arguments) never calls them. JSON sizes are bytes of the text form; JSON depth counts
-- containers on the deepest path ({} is 1, {"a": [1]} is 2).

CREATE FUNCTION json_within(doc jsonb, max_bytes integer) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN octet_length(doc::text) > max_bytes THEN false
        -- 64 nested containers need at least 128 bytes of brackets
        WHEN octet_length(doc::text) < 128 THEN true
        ELSE NOT jsonb_path_exists(
            doc, 'strict $.**{64} ? (@.type() == "object" || @.type() == "array")')
    END
$$;

-- Environment names as a shell and execve take them; values are text. (A raw INSERT with
-- env {"A=B": "x"} crashed every launcher that claimed the task.)
CREATE FUNCTION env_names_ok(env jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(env) <> 'object' THEN false ELSE
        (SELECT coalesce(bool_and(e.key ~ '^[A-Za-z_][A-Za-z0-9_]*$'
                                  AND jsonb_typeof(e.value) = 'string'
                                  AND char_length(e.value #>> '{}') <= 65536), true)
           FROM jsonb_each(env) AS e)
    END
$$;

CREATE FUNCTION keys_within(doc jsonb, max_chars integer) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(doc) <> 'object' THEN false ELSE
        (SELECT coalesce(bool_and(char_length(k) <= max_chars), true)
           FROM jsonb_object_keys(doc) AS k)
    END
$$;

CREATE FUNCTION items_within(items text[], max_chars integer) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(bool_and(char_length(x) <= max_chars), true) FROM unnest(items) AS x
$$;

-- input_files patterns stay inside the parent's directory: relative, no '..' (as
-- validate.check_pattern), and not empty.
CREATE FUNCTION patterns_ok(patterns text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(bool_and(p <> '' AND char_length(p) <= 4096
                             AND left(translate(p, '\', '/'), 1) <> '/'
                             AND '..' <> ALL (string_to_array(translate(p, '\', '/'), '/'))),
                    true)
      FROM unnest(patterns) AS p
$$;

GRANT EXECUTE ON FUNCTION json_within(jsonb, integer), env_names_ok(jsonb),
    keys_within(jsonb, integer), items_within(text[], integer), patterns_ok(text[])
    TO balsam_member;

-- Rows written before these rules that break them are made harmless first: the bad value
-- goes back to its default and a task that could still run is FAILED, saying why (an
-- event records it). Nothing in a fresh database matches.
UPDATE batch_jobs SET lease_sec = 60 WHERE NOT (lease_sec > 0 AND lease_sec <= 86400);
UPDATE batch_jobs SET wall_time_min = NULL
 WHERE wall_time_min IS NOT NULL AND NOT (wall_time_min > 0 AND wall_time_min <= 525600);
UPDATE batch_jobs SET nodes = least(nodes, 100000), ranks = least(ranks, 100000)
 WHERE nodes > 100000 OR ranks > 100000;

DO $$
DECLARE
    bad CONSTANT text := $c$
        NOT (char_length(workflow) <= 256 AND char_length(name) <= 256
             AND json_within(params, 262144) AND json_within(tags, 16384)
             AND keys_within(tags, 256) AND json_within(data, 262144)
             AND octet_length(env::text) <= 131072 AND env_names_ok(env)
             AND cardinality(args) <= 4096 AND array_position(args, NULL) IS NULL
             AND items_within(args, 65536)
             AND cardinality(input_files) <= 256
             AND array_position(input_files, NULL) IS NULL AND patterns_ok(input_files)
             AND num_nodes <= 100000 AND ranks_per_node <= 4096
             AND threads_per_rank <= 4096 AND gpus_per_rank <= 64
             AND node_packing_count <= 4096 AND priority BETWEEN -1000000 AND 1000000
             AND error_retry_limit <= 1000 AND timeout_retry_limit <= 1000
             AND lost_retry_limit <= 1000 AND wall_time_min <= 525600)$c$;
BEGIN
    EXECUTE format($u$
        UPDATE tasks SET
            state = CASE WHEN state IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED') THEN state
                         ELSE 'FAILED'::task_state END,
            state_message = 'a value broke the limits of migration 0007 and was reset',
            batch_job_id = CASE WHEN state IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED')
                                THEN batch_job_id END,
            workflow = left(workflow, 256), name = left(name, 256),
            params = CASE WHEN json_within(params, 262144) THEN params ELSE '{}' END,
            tags = CASE WHEN json_within(tags, 16384) AND keys_within(tags, 256) THEN tags
                        ELSE '{}' END,
            data = CASE WHEN json_within(data, 262144) THEN data ELSE '{}' END,
            env = CASE WHEN octet_length(env::text) <= 131072 AND env_names_ok(env) THEN env
                       ELSE '{}' END,
            args = CASE WHEN cardinality(args) <= 4096 AND array_position(args, NULL) IS NULL
                             AND items_within(args, 65536) THEN args ELSE '{}' END,
            input_files = CASE WHEN cardinality(input_files) <= 256
                                    AND array_position(input_files, NULL) IS NULL
                                    AND patterns_ok(input_files) THEN input_files
                               ELSE '{}' END,
            num_nodes = least(num_nodes, 100000),
            ranks_per_node = least(ranks_per_node, 4096),
            threads_per_rank = least(threads_per_rank, 4096),
            gpus_per_rank = least(gpus_per_rank, 64),
            node_packing_count = least(node_packing_count, 4096),
            priority = greatest(least(priority, 1000000), -1000000),
            error_retry_limit = least(error_retry_limit, 1000),
            timeout_retry_limit = least(timeout_retry_limit, 1000),
            lost_retry_limit = least(lost_retry_limit, 1000),
            wall_time_min = CASE WHEN wall_time_min <= 525600 THEN wall_time_min ELSE 0 END
         WHERE %s$u$, bad);
    UPDATE apps SET command = left(command, 65536), preprocess = left(preprocess, 65536),
                    postprocess = left(postprocess, 65536),
                    env_script = left(env_script, 65536),
                    description = left(description, 4096),
                    error_retry_limit = least(error_retry_limit, 1000)
     WHERE char_length(command) > 65536 OR char_length(preprocess) > 65536
        OR char_length(postprocess) > 65536 OR char_length(env_script) > 65536
        OR char_length(description) > 4096 OR error_retry_limit > 1000;
END $$;

-- The caps of balsam_mpi/base/limits.py. Constraint names say the field, so the one-line
-- refusal names it too; they replace 0001's one-sided checks of the same fields.
ALTER TABLE tasks
    DROP CONSTRAINT tasks_num_nodes_check, DROP CONSTRAINT tasks_ranks_per_node_check,
    DROP CONSTRAINT tasks_threads_per_rank_check, DROP CONSTRAINT tasks_gpus_per_rank_check,
    DROP CONSTRAINT tasks_node_packing_count_check, DROP CONSTRAINT tasks_wall_time_min_check,
    DROP CONSTRAINT tasks_error_retry_limit_check,
    DROP CONSTRAINT tasks_timeout_retry_limit_check,
    DROP CONSTRAINT tasks_lost_retry_limit_check,
    ADD CONSTRAINT tasks_workflow_limit CHECK (char_length(workflow) <= 256),
    ADD CONSTRAINT tasks_name_limit CHECK (char_length(name) <= 256),
    ADD CONSTRAINT tasks_params_limit CHECK (params = '{}' OR json_within(params, 262144)),
    ADD CONSTRAINT tasks_tags_limit CHECK (
        tags = '{}' OR (json_within(tags, 16384) AND keys_within(tags, 256))),
    ADD CONSTRAINT tasks_data_limit CHECK (data = '{}' OR json_within(data, 262144)),
    ADD CONSTRAINT tasks_env_limit CHECK (
        env = '{}' OR (octet_length(env::text) <= 131072 AND env_names_ok(env))),
    ADD CONSTRAINT tasks_args_limit CHECK (
        cardinality(args) = 0
        OR (cardinality(args) <= 4096 AND array_position(args, NULL) IS NULL
            AND (char_length(array_to_string(args, '')) <= 65536
                 OR items_within(args, 65536)))),
    ADD CONSTRAINT tasks_input_files_limit CHECK (
        cardinality(input_files) = 0
        OR (cardinality(input_files) <= 256 AND array_position(input_files, NULL) IS NULL
            AND patterns_ok(input_files))),
    ADD CONSTRAINT tasks_num_nodes_limit CHECK (num_nodes BETWEEN 1 AND 100000),
    ADD CONSTRAINT tasks_ranks_per_node_limit CHECK (ranks_per_node BETWEEN 1 AND 4096),
    ADD CONSTRAINT tasks_threads_per_rank_limit CHECK (threads_per_rank BETWEEN 1 AND 4096),
    ADD CONSTRAINT tasks_gpus_per_rank_limit CHECK (gpus_per_rank BETWEEN 0 AND 64),
    ADD CONSTRAINT tasks_node_packing_count_limit CHECK (node_packing_count BETWEEN 1 AND 4096),
    ADD CONSTRAINT tasks_priority_limit CHECK (priority BETWEEN -1000000 AND 1000000),
    ADD CONSTRAINT tasks_error_retry_limit_limit CHECK (error_retry_limit BETWEEN 0 AND 1000),
    ADD CONSTRAINT tasks_timeout_retry_limit_limit CHECK (
        timeout_retry_limit BETWEEN 0 AND 1000),
    ADD CONSTRAINT tasks_lost_retry_limit_limit CHECK (lost_retry_limit BETWEEN 0 AND 1000),
    -- NaN sorts above every number in Postgres, so this refuses NaN and both infinities
    ADD CONSTRAINT tasks_wall_time_min_limit CHECK (wall_time_min BETWEEN 0 AND 525600),
    ADD CONSTRAINT tasks_failed_by_state CHECK (failed_by IS NULL OR state = 'FAILED');

ALTER TABLE apps
    DROP CONSTRAINT apps_error_retry_limit_check,
    ADD CONSTRAINT apps_name_limit CHECK (char_length(name) <= 256),
    ADD CONSTRAINT apps_command_limit CHECK (char_length(command) <= 65536),
    ADD CONSTRAINT apps_preprocess_limit CHECK (char_length(preprocess) <= 65536),
    ADD CONSTRAINT apps_postprocess_limit CHECK (char_length(postprocess) <= 65536),
    ADD CONSTRAINT apps_env_script_limit CHECK (char_length(env_script) <= 65536),
    ADD CONSTRAINT apps_description_limit CHECK (char_length(description) <= 4096),
    ADD CONSTRAINT apps_error_retry_limit_limit CHECK (error_retry_limit BETWEEN 0 AND 1000);

-- A lease of inf or NaN made make_interval() fail in every sweep (`interval out of
-- range`), so no crashed job was recovered any more; a day is far above any heartbeat.
ALTER TABLE batch_jobs
    DROP CONSTRAINT batch_jobs_lease_sec_check, DROP CONSTRAINT batch_jobs_wall_time_min_check,
    DROP CONSTRAINT batch_jobs_nodes_check, DROP CONSTRAINT batch_jobs_ranks_check,
    ADD CONSTRAINT batch_jobs_lease_sec_limit CHECK (lease_sec > 0 AND lease_sec <= 86400),
    ADD CONSTRAINT batch_jobs_wall_time_min_limit CHECK (
        wall_time_min IS NULL OR (wall_time_min > 0 AND wall_time_min <= 525600)),
    ADD CONSTRAINT batch_jobs_nodes_limit CHECK (nodes BETWEEN 1 AND 100000),
    ADD CONSTRAINT batch_jobs_ranks_limit CHECK (ranks BETWEEN 1 AND 100000);

-- ==== 2. States =========================================================================
-- balsam_mpi/tasks/states.py TRANSITIONS, as rows (tests/db/test_transitions.py compares them).
CREATE TABLE task_transitions (
    from_state  task_state NOT NULL,
    to_state    task_state NOT NULL,
    PRIMARY KEY (from_state, to_state)
);
INSERT INTO task_transitions (from_state, to_state)
SELECT f::task_state, t::task_state FROM (VALUES
    ('CREATED', '{AWAITING_PARENTS,READY,USER_KILLED,FAILED}'),
    ('AWAITING_PARENTS', '{READY,FAILED,USER_KILLED}'),
    ('READY', '{PREPROCESSED,RUNNING,AWAITING_PARENTS,FAILED,USER_KILLED}'),
    ('PREPROCESSED', '{RUNNING,READY,FAILED,USER_KILLED}'),
    ('RUNNING', '{RUN_DONE,RUN_ERROR,RUN_TIMEOUT,RESTART_READY,READY,FAILED,USER_KILLED}'),
    ('RUN_DONE', '{POSTPROCESSED,JOB_FINISHED,FAILED,USER_KILLED}'),
    ('POSTPROCESSED', '{JOB_FINISHED,FAILED,USER_KILLED}'),
    ('RUN_ERROR', '{RESTART_READY,POSTPROCESSED,FAILED,USER_KILLED}'),
    ('RUN_TIMEOUT', '{RESTART_READY,POSTPROCESSED,FAILED,USER_KILLED}'),
    ('RESTART_READY', '{PREPROCESSED,RUNNING,READY,FAILED,USER_KILLED}'),
    ('FAILED', '{READY,AWAITING_PARENTS}'),
    ('USER_KILLED', '{READY,AWAITING_PARENTS}')
) AS m (f, targets), unnest(targets::text[]) AS t;

-- Statement-level over the transition tables: one hash join per UPDATE, not a trigger
-- call per row. Named to fire before the event and DAG triggers (they fire in name order).
CREATE FUNCTION tasks_check_transitions() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_nestloop = off AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.id, o.state AS from_state, n.state AS to_state INTO bad
      FROM new_rows n JOIN old_rows o ON o.id = n.id
     WHERE n.state <> o.state
       AND NOT EXISTS (SELECT 1 FROM public.task_transitions x
                        WHERE x.from_state = o.state AND x.to_state = n.state)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'task %: % -> % is not a state change balsam allows', bad.id,
            bad.from_state, bad.to_state USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_check_transitions AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_check_transitions();

-- ==== 3. Writes =========================================================================
-- Tasks: SELECT for all (0002); a raw INSERT names only columns a new task may set and
-- the policy keeps its state new; raw UPDATE only of the plain columns; no raw DELETE.
-- Without table-level INSERT/UPDATE/DELETE a member can no longer LOCK TABLE tasks in
-- any mode that blocks launchers (column grants do not count for LOCK TABLE).
REVOKE INSERT, UPDATE, DELETE ON tasks FROM balsam_member;
GRANT INSERT (workflow, name, app_id, params, args, tags, num_nodes, ranks_per_node,
              threads_per_rank, gpus_per_rank, node_packing_count, wall_time_min, env,
              input_files, priority, state, owner, error_retry_limit, timeout_retry_limit,
              lost_retry_limit, fail_with_parents, data)
    ON tasks TO balsam_member;
GRANT UPDATE (priority, tags, data) ON tasks TO balsam_member;
ALTER POLICY tasks_add ON tasks
    WITH CHECK (owner = session_user AND state IN ('CREATED', 'AWAITING_PARENTS', 'READY'));
DROP POLICY tasks_delete_own ON tasks;
DROP POLICY tasks_delete_any ON tasks;

-- Dependencies and batch jobs: written only by the functions below.
REVOKE INSERT, DELETE ON task_deps FROM balsam_member;
DROP POLICY task_deps_own ON task_deps;
DROP POLICY task_deps_any ON task_deps;
REVOKE INSERT, UPDATE ON batch_jobs FROM balsam_member;
DROP POLICY batch_jobs_add ON batch_jobs;
DROP POLICY batch_jobs_change_own ON batch_jobs;
DROP POLICY batch_jobs_change_any ON batch_jobs;

-- The functions of the client's bulk path before 0007 now run only inside the functions
-- below (they are SECURITY DEFINER and owned by balsam_objects, so they may call them).
REVOKE EXECUTE ON FUNCTION tasks_recount(bigint[]), tasks_reinstate_followers(bigint[]),
    tasks_refail(bigint[]) FROM balsam_member;

-- Who may change a task: its owner, or the project owner (a member of balsam_owner; the
-- superuser). Each function below decides `any_task` once (pg_has_role) and then tests
-- `any_task OR t.owner = session_user` per row; session_user is the login role even
-- inside a SECURITY DEFINER function.

-- ---- adding tasks (Client.add_tasks) ----------------------------------------------------
-- Ids are reserved in blocks (tasks_reserve_ids) and the rows carry them, so the client
-- can name new tasks as parents of new tasks. A block belongs to the transaction that
-- reserved it: tasks_add and tasks_add_deps take only ids of the caller's own blocks, so
-- nobody can squat the ids another add is about to use (its insert would fail).
CREATE TABLE task_id_blocks (
    xact   xid8 NOT NULL,
    first  bigint NOT NULL,
    n      integer NOT NULL CHECK (n > 0)
);
REVOKE ALL ON task_id_blocks FROM balsam_member, balsam_viewer;

-- As 0003's, with the block recorded. The advisory lock is now one that only definer
-- functions can take (4. below), so nobody can hold it to stall every add.
CREATE OR REPLACE FUNCTION tasks_reserve_ids(n integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    seq text := pg_get_serial_sequence('public.tasks', 'id');
    first bigint;
BEGIN
    IF n IS NULL OR n < 1 THEN
        RAISE EXCEPTION 'reserve at least one id, not %', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_lock(hashtext('balsam_mpi.tasks_reserve_ids'));
    first := nextval(seq);
    IF n > 1 THEN
        PERFORM setval(seq, first + n - 1);
    END IF;
    PERFORM pg_advisory_unlock(hashtext('balsam_mpi.tasks_reserve_ids'));
    -- Blocks of transactions that have ended are dead; SKIP LOCKED, so concurrent adds
    -- never wait on each other's clean-up.
    DELETE FROM public.task_id_blocks b WHERE b.ctid IN (
        SELECT x.ctid FROM public.task_id_blocks x
         WHERE x.xact < pg_snapshot_xmin(pg_current_snapshot())
           FOR UPDATE SKIP LOCKED);
    INSERT INTO public.task_id_blocks (xact, first, n) VALUES (pg_current_xact_id(), first, n);
    RETURN first;
END $$;

-- Are all of these ids inside one block this transaction reserved?
CREATE FUNCTION tasks_ids_reserved(lo bigint, hi bigint) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT EXISTS (SELECT 1 FROM public.task_id_blocks b
                    WHERE b.xact = pg_current_xact_id()
                      AND lo >= b.first AND hi <= b.first + b.n - 1)
$$;

-- One chunk of a bulk add: rows (JSON objects holding what differs) over base (defaults
-- and shared values), as tasks.sql's tasks_insert_json did before 0007. Only the columns a
-- new task may set are read; owner is the caller; the first state is READY,
-- AWAITING_PARENTS (parents pending) or FAILED (a parent is stopped), as the client
-- decided from the parents it locked. Returns the number of rows.
CREATE FUNCTION tasks_add(p_base jsonb, p_rows jsonb) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n bigint;
    lo bigint;
    hi bigint;
    states_ok boolean;
BEGIN
    WITH added AS (
        INSERT INTO public.tasks (id, workflow, name, app_id, params, args, tags, num_nodes,
                           ranks_per_node, threads_per_rank, gpus_per_rank,
                           node_packing_count, wall_time_min, env, input_files, priority,
                           state, state_message, error_retry_limit, timeout_retry_limit,
                           lost_retry_limit, fail_with_parents, pending_parents, failed_by,
                           data)
        OVERRIDING SYSTEM VALUE
        SELECT u.id, u.workflow, u.name, u.app_id, u.params, u.args, u.tags, u.num_nodes,
               u.ranks_per_node, u.threads_per_rank, u.gpus_per_rank, u.node_packing_count,
               u.wall_time_min, u.env, u.input_files, u.priority, u.state,
               left(u.state_message, 4096), u.error_retry_limit, u.timeout_retry_limit,
               u.lost_retry_limit, u.fail_with_parents, u.pending_parents, u.failed_by,
               u.data
          FROM jsonb_populate_recordset(jsonb_populate_record(NULL::public.tasks, p_base),
                                        p_rows) AS u
        RETURNING tasks.id, tasks.state, tasks.pending_parents
    )
    SELECT count(*), min(a.id), max(a.id),
           coalesce(bool_and(a.state = 'READY' AND a.pending_parents = 0
                             OR a.state = 'AWAITING_PARENTS' AND a.pending_parents > 0
                             OR a.state = 'FAILED'), true)
      INTO n, lo, hi, states_ok
      FROM added a;
    IF n > 0 AND NOT tasks_ids_reserved(lo, hi) THEN
        RAISE EXCEPTION 'task ids % to % were not reserved by this transaction '
            '(tasks_reserve_ids)', lo, hi USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT states_ok THEN
        RAISE EXCEPTION 'state: a new task is READY, AWAITING_PARENTS with parents '
            'pending, or FAILED' USING ERRCODE = 'check_violation';
    END IF;
    RETURN n;
END $$;

-- The dependencies of one bulk add: every child is a task of this add (so no edge can
-- close a cycle through stored tasks); parents must exist (the foreign key).
CREATE FUNCTION tasks_add_deps(p_children bigint[], p_parents bigint[]) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n bigint;
BEGIN
    IF cardinality(p_children) IS DISTINCT FROM cardinality(p_parents) THEN
        RAISE EXCEPTION 'parents: % children but % parents', cardinality(p_children),
            cardinality(p_parents) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(p_children) = 0 THEN
        RETURN 0;
    END IF;
    IF NOT tasks_ids_reserved((SELECT min(c) FROM unnest(p_children) c),
                              (SELECT max(c) FROM unnest(p_children) c)) THEN
        RAISE EXCEPTION 'parents: only tasks added in this transaction get parents here '
            '(`balsam-mpi dep` for stored tasks)' USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO public.task_deps (child_id, parent_id)
    SELECT * FROM unnest(p_children, p_parents);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- ---- changing tasks -------------------------------------------------------------------
-- Each takes ids (an empty array means none, NULL is refused: never "every task") and
-- returns one row per id with what happened to it, so the caller reports what the
-- database did. A claimed task (READY / RESTART_READY with a batch_job_id) may start at
-- any moment: it is treated as started.

CREATE FUNCTION tasks_check_ids(p_ids bigint[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_ids IS NULL THEN
        RAISE EXCEPTION 'ids: give an array of task ids; NULL does not mean every task'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
END $$;

-- Why a task was left alone, for the outcome rows (plain SQL: inlined where it is used).
CREATE FUNCTION tasks_why_not(t public.tasks, any_task boolean) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN t.id IS NULL THEN 'no such task'
        WHEN NOT (any_task OR t.owner = session_user)
            THEN format('not yours (owner %s)', t.owner)
        WHEN t.state IN ('PREPROCESSED', 'RUNNING', 'RUN_DONE', 'POSTPROCESSED',
                         'RUN_ERROR', 'RUN_TIMEOUT')
            THEN format('%s in batch job %s', t.state, coalesce(t.batch_job_id::text, '?'))
        WHEN t.batch_job_id IS NOT NULL AND t.state IN ('READY', 'RESTART_READY')
            THEN format('claimed by batch job %s (it may start at any moment)',
                        t.batch_job_id)
        ELSE t.state::text
    END
$$;

CREATE FUNCTION tasks_kill(p_ids bigint[], p_message text DEFAULT NULL)
RETURNS TABLE (id bigint, outcome text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    any_task CONSTANT boolean := pg_has_role(session_user, 'balsam_owner', 'MEMBER');
BEGIN
    PERFORM tasks_check_ids(p_ids);
    RETURN QUERY
    WITH killed AS (
        -- USER_KILLED keeps the claim's batch_job_id: its launcher polls for it and stops
        -- the process. The DAG trigger fails the waiting descendants.
        UPDATE public.tasks t
           SET state = 'USER_KILLED',
               state_message = left(coalesce(p_message, 'killed by ' || session_user), 4096)
         WHERE t.id = ANY (p_ids) AND (any_task OR t.owner = session_user)
           AND t.state NOT IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED')
        RETURNING t.id
    ), left_alone AS (  -- usually few: only these are looked up again
        SELECT DISTINCT w.id FROM unnest(p_ids) AS w (id)
         WHERE NOT EXISTS (SELECT 1 FROM killed k WHERE k.id = w.id)
    )
    SELECT k.id, 'killed'::text FROM killed k
    UNION ALL
    SELECT l.id, CASE WHEN t.id IS NULL THEN 'no such task'
                      WHEN NOT (any_task OR t.owner = session_user)
                          THEN format('not yours (owner %s)', t.owner)
                      ELSE format('already %s', t.state) END
      FROM left_alone l LEFT JOIN public.tasks t ON t.id = l.id;
END $$;

-- FAILED / USER_KILLED tasks back to READY or AWAITING_PARENTS, counters reset, then the
-- tasks they failed (followed through failed_by, whoever owns them), then those still
-- under another stopped parent fail again. Outcomes: 'retried' (asked for), 'reinstated'
-- (a descendant back with it), 'failed again' (another parent is still stopped).
CREATE FUNCTION tasks_retry(p_ids bigint[])
RETURNS TABLE (id bigint, outcome text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    any_task CONSTANT boolean := pg_has_role(session_user, 'balsam_owner', 'MEMBER');
    back bigint[];
    followers bigint[];
    again bigint[];
BEGIN
    PERFORM tasks_check_ids(p_ids);
    WITH target AS (
        SELECT t.id FROM public.tasks t
         WHERE t.id = ANY (p_ids) AND t.state IN ('FAILED', 'USER_KILLED')
           AND (any_task OR t.owner = session_user)
           FOR NO KEY UPDATE
    ), pend AS (
        SELECT c.id,
               (SELECT count(*) FROM public.task_deps d JOIN public.tasks p ON p.id = d.parent_id
                 WHERE d.child_id = c.id AND p.state <> 'JOB_FINISHED'
                   AND (c.fail_with_parents OR p.state NOT IN ('FAILED', 'USER_KILLED'))
               )::integer AS k
          FROM target JOIN public.tasks c ON c.id = target.id
    ), done AS (
        UPDATE public.tasks t SET
            state = CASE WHEN pend.k > 0 THEN 'AWAITING_PARENTS' ELSE 'READY' END::task_state,
            pending_parents = pend.k, failed_by = NULL,
            state_message = 'retried by ' || session_user,
            error_retries = 0, timeout_retries = 0, lost_retries = 0,
            batch_job_id = NULL, claimed_at = NULL, started_at = NULL, ended_at = NULL,
            exit_code = NULL
          FROM pend
         WHERE t.id = pend.id
        RETURNING t.id
    )
    SELECT array_agg(done.id) INTO back FROM done;
    IF back IS NOT NULL THEN
        SELECT array_agg(f) INTO followers FROM tasks_reinstate_followers(back) AS f;
        SELECT array_agg(a) INTO again
          FROM tasks_refail(back || coalesce(followers, '{}')) AS a;
    END IF;
    RETURN QUERY
    WITH a AS (SELECT DISTINCT x AS id FROM unnest(again) x),
    b AS (SELECT x AS id FROM unnest(back) x WHERE NOT EXISTS (SELECT 1 FROM a WHERE a.id = x)),
    f AS (SELECT DISTINCT x AS id FROM unnest(followers) x
           WHERE NOT EXISTS (SELECT 1 FROM a WHERE a.id = x)
             AND NOT EXISTS (SELECT 1 FROM b WHERE b.id = x)),
    left_alone AS (
        SELECT DISTINCT w.id FROM unnest(p_ids) AS w (id)
         WHERE NOT EXISTS (SELECT 1 FROM a WHERE a.id = w.id)
           AND NOT EXISTS (SELECT 1 FROM b WHERE b.id = w.id)
           AND NOT EXISTS (SELECT 1 FROM f WHERE f.id = w.id)
    )
    SELECT a.id, 'failed again'::text FROM a
    UNION ALL SELECT b.id, 'retried' FROM b
    UNION ALL SELECT f.id, 'reinstated' FROM f
    UNION ALL
    SELECT l.id,
           CASE WHEN t.id IS NULL THEN 'no such task'
                WHEN NOT (any_task OR t.owner = session_user)
                    THEN format('not yours (owner %s)', t.owner)
                ELSE format('%s (only FAILED or USER_KILLED tasks are retried)', t.state)
           END
      FROM left_alone l LEFT JOIN public.tasks t ON t.id = l.id;
END $$;

-- `task modify`: p_changes holds the fields to change (validate.MODIFIABLE). priority,
-- tags and data change on any task (nothing that runs reads them); the rest only on a task
-- no launcher holds: a claimed task would run with its old values and be stored with the
-- new ones.
CREATE FUNCTION tasks_modify(p_ids bigint[], p_changes jsonb)
RETURNS TABLE (id bigint, outcome text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    allowed CONSTANT text[] := '{workflow,name,params,args,tags,env,data,input_files,
        num_nodes,ranks_per_node,threads_per_rank,gpus_per_rank,node_packing_count,
        wall_time_min,priority,error_retry_limit,timeout_retry_limit,lost_retry_limit,
        fail_with_parents}';
    plain CONSTANT text[] := '{priority,tags,data}';
    any_task CONSTANT boolean := pg_has_role(session_user, 'balsam_owner', 'MEMBER');
    keys text[];
    r public.tasks;
    only_plain boolean;
    changed bigint[];
BEGIN
    PERFORM tasks_check_ids(p_ids);
    IF p_changes IS NULL OR jsonb_typeof(p_changes) <> 'object' OR p_changes = '{}' THEN
        RAISE EXCEPTION 'nothing to change: give at least one field'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    keys := ARRAY(SELECT jsonb_object_keys(p_changes));
    IF NOT keys <@ allowed THEN
        RAISE EXCEPTION '%: cannot be modified (modifiable: %)',
            (SELECT k FROM unnest(keys) k WHERE k <> ALL (allowed) ORDER BY k LIMIT 1),
            array_to_string(allowed, ', ') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    only_plain := keys <@ plain;
    r := jsonb_populate_record(NULL::public.tasks, p_changes);
    WITH done AS (
        UPDATE public.tasks t SET
            workflow = CASE WHEN p_changes ? 'workflow' THEN r.workflow ELSE t.workflow END,
            name = CASE WHEN p_changes ? 'name' THEN r.name ELSE t.name END,
            params = CASE WHEN p_changes ? 'params' THEN r.params ELSE t.params END,
            args = CASE WHEN p_changes ? 'args' THEN r.args ELSE t.args END,
            tags = CASE WHEN p_changes ? 'tags' THEN r.tags ELSE t.tags END,
            env = CASE WHEN p_changes ? 'env' THEN r.env ELSE t.env END,
            data = CASE WHEN p_changes ? 'data' THEN r.data ELSE t.data END,
            input_files = CASE WHEN p_changes ? 'input_files' THEN r.input_files
                               ELSE t.input_files END,
            num_nodes = CASE WHEN p_changes ? 'num_nodes' THEN r.num_nodes ELSE t.num_nodes END,
            ranks_per_node = CASE WHEN p_changes ? 'ranks_per_node' THEN r.ranks_per_node
                                  ELSE t.ranks_per_node END,
            threads_per_rank = CASE WHEN p_changes ? 'threads_per_rank' THEN r.threads_per_rank
                                    ELSE t.threads_per_rank END,
            gpus_per_rank = CASE WHEN p_changes ? 'gpus_per_rank' THEN r.gpus_per_rank
                                 ELSE t.gpus_per_rank END,
            node_packing_count = CASE WHEN p_changes ? 'node_packing_count'
                                      THEN r.node_packing_count ELSE t.node_packing_count END,
            wall_time_min = CASE WHEN p_changes ? 'wall_time_min' THEN r.wall_time_min
                                 ELSE t.wall_time_min END,
            priority = CASE WHEN p_changes ? 'priority' THEN r.priority ELSE t.priority END,
            error_retry_limit = CASE WHEN p_changes ? 'error_retry_limit'
                                     THEN r.error_retry_limit ELSE t.error_retry_limit END,
            timeout_retry_limit = CASE WHEN p_changes ? 'timeout_retry_limit'
                                       THEN r.timeout_retry_limit
                                       ELSE t.timeout_retry_limit END,
            lost_retry_limit = CASE WHEN p_changes ? 'lost_retry_limit'
                                    THEN r.lost_retry_limit ELSE t.lost_retry_limit END,
            fail_with_parents = CASE WHEN p_changes ? 'fail_with_parents'
                                     THEN r.fail_with_parents ELSE t.fail_with_parents END
         WHERE t.id = ANY (p_ids) AND (any_task OR t.owner = session_user)
           AND (only_plain
                OR t.state NOT IN ('PREPROCESSED', 'RUNNING', 'RUN_DONE', 'POSTPROCESSED',
                                   'RUN_ERROR', 'RUN_TIMEOUT')
                   AND NOT (t.batch_job_id IS NOT NULL
                            AND t.state IN ('READY', 'RESTART_READY')))
        RETURNING t.id
    )
    SELECT array_agg(done.id) INTO changed FROM done;
    -- Opting in or out of failing with parents changes what the parents' states mean.
    IF changed IS NOT NULL AND p_changes ? 'fail_with_parents' THEN
        PERFORM tasks_recount(changed);
        PERFORM tasks_refail(changed);
    END IF;
    RETURN QUERY
    WITH done AS (SELECT x AS id FROM unnest(changed) x),
    left_alone AS (
        SELECT DISTINCT w.id FROM unnest(p_ids) AS w (id)
         WHERE NOT EXISTS (SELECT 1 FROM done WHERE done.id = w.id)
    )
    SELECT done.id, 'modified'::text FROM done
    UNION ALL
    SELECT l.id, tasks_why_not(t, any_task)
      FROM left_alone l LEFT JOIN public.tasks t ON t.id = l.id;
END $$;

-- `task rm`: the caller's tasks (any, for the owner) go; history stays in task_events;
-- children that remain stop waiting for them. A claimed or running task is deleted too:
-- its launcher sees the task gone (launcher_kills below) and stops the process.
CREATE FUNCTION tasks_delete(p_ids bigint[])
RETURNS TABLE (id bigint, outcome text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    any_task CONSTANT boolean := pg_has_role(session_user, 'balsam_owner', 'MEMBER');
    gone bigint[];
    held bigint[];
    kids bigint[];
BEGIN
    PERFORM tasks_check_ids(p_ids);
    SELECT array_agg(x.id),
           array_agg(x.id) FILTER (WHERE x.batch_job_id IS NOT NULL
                                   AND x.state NOT IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED'))
      INTO gone, held
      FROM (SELECT t.id, t.batch_job_id, t.state FROM public.tasks t
             WHERE t.id = ANY (p_ids) AND (any_task OR t.owner = session_user)
             ORDER BY t.id FOR UPDATE) x;
    IF gone IS NOT NULL THEN
        -- their task_deps rows go with them (ON DELETE CASCADE): recount the children left
        SELECT array_agg(DISTINCT d.child_id) INTO kids
          FROM public.task_deps d
         WHERE d.parent_id = ANY (gone) AND NOT d.child_id = ANY (gone);
        DELETE FROM public.tasks t WHERE t.id = ANY (gone);
        IF kids IS NOT NULL THEN
            PERFORM tasks_recount(kids);
        END IF;
    END IF;
    RETURN QUERY
    WITH h AS (SELECT x AS id FROM unnest(held) x),
    g AS (SELECT x AS id FROM unnest(gone) x WHERE NOT EXISTS (SELECT 1 FROM h WHERE h.id = x)),
    left_alone AS (
        SELECT DISTINCT w.id FROM unnest(p_ids) AS w (id)
         WHERE NOT EXISTS (SELECT 1 FROM h WHERE h.id = w.id)
           AND NOT EXISTS (SELECT 1 FROM g WHERE g.id = w.id)
    )
    SELECT h.id, 'deleted (its launcher stops it)'::text FROM h
    UNION ALL SELECT g.id, 'deleted' FROM g
    UNION ALL
    SELECT l.id, tasks_why_not(t, any_task)
      FROM left_alone l LEFT JOIN public.tasks t ON t.id = l.id;
END $$;

-- `balsam-mpi dep PARENT CHILD`. Every DAG edit takes the same transaction-level advisory
-- lock (only definer functions can), so the cycle check below sees every edge committed
-- before it and no edge can appear beside it: two concurrent `dep a b` / `dep b a` no
-- longer make a cycle (they did 30 times out of 30 under READ COMMITTED with row locks).
CREATE FUNCTION tasks_add_dependency(p_parent bigint, p_child bigint) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    child public.tasks;
    parent public.tasks;
BEGIN
    IF p_parent IS NULL OR p_child IS NULL THEN
        RAISE EXCEPTION 'dep: give a parent and a child task id'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_parent = p_child THEN
        RAISE EXCEPTION 'task % cannot depend on itself', p_child
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('balsam_mpi.dag_edits'));
    SELECT * INTO child FROM public.tasks t WHERE t.id = p_child FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no task with id %; see `balsam-mpi task ls`', p_child
            USING ERRCODE = 'no_data_found';
    END IF;
    IF NOT (child.owner = session_user
            OR pg_has_role(session_user, 'balsam_owner', 'MEMBER')) THEN
        RAISE EXCEPTION 'task % belongs to %: only they or the project owner can give it '
            'a parent', p_child, child.owner USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT * INTO parent FROM public.tasks t WHERE t.id = p_parent FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no task with id %; see `balsam-mpi task ls`', p_parent
            USING ERRCODE = 'no_data_found';
    END IF;
    IF child.state NOT IN ('CREATED', 'AWAITING_PARENTS', 'READY') THEN
        RAISE EXCEPTION 'task % is %: a parent can only be added to a task that has not '
            'started', p_child, child.state USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF child.batch_job_id IS NOT NULL THEN
        RAISE EXCEPTION 'task % is claimed by batch job % and may start at any moment: a '
            'parent can only be added to a task no launcher holds', p_child,
            child.batch_job_id USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF EXISTS (
        WITH RECURSIVE down (id) AS (
            SELECT d.child_id FROM public.task_deps d WHERE d.parent_id = p_child
            UNION
            SELECT x.child_id FROM down CROSS JOIN LATERAL (
                SELECT d.child_id FROM public.task_deps d WHERE d.parent_id = down.id
                OFFSET 0) x
        )
        SELECT 1 FROM down WHERE down.id = p_parent
    ) THEN
        RAISE EXCEPTION 'task % already depends on task %: the dependency would make a '
            'cycle', p_parent, p_child USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO public.task_deps (child_id, parent_id) VALUES (p_child, p_parent)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF parent.state IN ('FAILED', 'USER_KILLED') THEN
        IF child.fail_with_parents THEN
            UPDATE public.tasks c SET state = 'FAILED',
                   failed_by = coalesce(parent.failed_by, parent.id),
                   state_message = format('upstream task %s is %s',
                                          coalesce(parent.failed_by, parent.id), parent.state)
             WHERE c.id = p_child;
        END IF;
    ELSIF parent.state <> 'JOB_FINISHED' THEN
        UPDATE public.tasks c SET
            pending_parents = c.pending_parents + 1,
            state = CASE WHEN c.state IN ('CREATED', 'READY') THEN 'AWAITING_PARENTS'
                         ELSE c.state END::task_state,
            state_message = format('waiting for parent %s', p_parent)
         WHERE c.id = p_child;
    END IF;
    RETURN true;
END $$;

GRANT EXECUTE ON FUNCTION tasks_add(jsonb, jsonb), tasks_add_deps(bigint[], bigint[]),
    tasks_kill(bigint[], text), tasks_retry(bigint[]), tasks_modify(bigint[], jsonb),
    tasks_delete(bigint[]), tasks_add_dependency(bigint, bigint) TO balsam_member;

-- ==== 4. Locks and catalog functions ====================================================
-- Catalog functions belong to the bootstrap superuser, so these statements run as it (the
-- migration runs on its connection; SET ROLE balsam_objects is restored after). Large
-- objects (a viewer wrote 62 MB through lo_from_bytea), NOTIFY and logical messages are
-- nobody's business here; advisory locks are taken only inside definer functions (a
-- viewer held the lock every task add waited for).
RESET ROLE;
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'pg_catalog'::regnamespace
                AND (p.proname LIKE 'lo\_%' OR p.proname IN ('loread', 'lowrite', 'pg_notify',
                                                            'pg_logical_emit_message')
                     OR p.proname LIKE 'pg\_advisory\_%'
                     OR p.proname LIKE 'pg\_try\_advisory\_%')
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'pg_catalog'::regnamespace
                AND (p.proname LIKE 'pg\_advisory\_%' OR p.proname LIKE 'pg\_try\_advisory\_%')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO balsam_objects', f);
    END LOOP;
END $$;
SET ROLE balsam_objects;

-- ==== 5. Batch jobs =====================================================================
-- A scheduler job id is unique per user: another user's row with the same id (a mistake,
-- or a member squatting someone's next job id) no longer stops that user's launcher.
DROP INDEX batch_jobs_scheduler_id;
CREATE UNIQUE INDEX batch_jobs_scheduler_id ON batch_jobs (scheduler, scheduler_job_id, "user")
    WHERE scheduler_job_id IS NOT NULL;

-- As 0004's, but a launcher adopts only a row its own user made: by id (the row
-- `balsam-mpi submit` made: another user's is refused, naming its owner), or by scheduler
-- and scheduler job id among the caller's own rows only.
CREATE OR REPLACE FUNCTION launcher_open_job(
    p_job_id bigint, p_scheduler text, p_scheduler_job_id text, p_host text,
    p_nodes integer, p_ranks integer, p_filters jsonb, p_wall_time_min double precision,
    p_lease_sec double precision)
RETURNS TABLE (job_id bigint, lease_epoch bigint, adopted boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    found_id bigint;
    found_user text;
BEGIN
    IF p_lease_sec IS NULL OR NOT (p_lease_sec > 0 AND p_lease_sec <= 86400) THEN
        RAISE EXCEPTION 'lease_sec: must be more than 0 and at most 86400 seconds, got %',
            p_lease_sec USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_job_id IS NOT NULL THEN
        SELECT b.id, b."user" INTO found_id, found_user
          FROM public.batch_jobs b WHERE b.id = p_job_id FOR UPDATE;
        IF found_id IS NULL THEN
            RAISE EXCEPTION 'batch job % does not exist', p_job_id
                USING ERRCODE = 'no_data_found';
        END IF;
        IF found_user <> session_user THEN
            RAISE EXCEPTION 'batch job % belongs to %: only its own launcher can use it '
                '(a launcher adopts only batch jobs its own user submitted; check '
                'BALSAM_BATCH_JOB_ID)', p_job_id, found_user
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    ELSIF p_scheduler_job_id IS NOT NULL THEN
        SELECT b.id INTO found_id FROM public.batch_jobs b
         WHERE b.scheduler = p_scheduler AND b.scheduler_job_id = p_scheduler_job_id
           AND b."user" = session_user
           FOR UPDATE;
    END IF;
    IF found_id IS NOT NULL THEN
        RETURN QUERY
        UPDATE public.batch_jobs b
           SET state = 'RUNNING', host = p_host, nodes = p_nodes, ranks = p_ranks,
               filters = p_filters,
               wall_time_min = coalesce(p_wall_time_min, b.wall_time_min),
               lease_sec = p_lease_sec, lease_epoch = b.lease_epoch + 1,
               started_at = coalesce(b.started_at, now()), heartbeat_at = now(),
               ended_at = NULL, end_reason = NULL
         WHERE b.id = found_id
        RETURNING b.id, b.lease_epoch, true;
    ELSE
        RETURN QUERY
        INSERT INTO public.batch_jobs (scheduler, scheduler_job_id, host, nodes, ranks,
                                       filters, wall_time_min, state, lease_epoch,
                                       lease_sec, started_at, heartbeat_at)
        VALUES (p_scheduler, p_scheduler_job_id, p_host, p_nodes, p_ranks, p_filters,
                p_wall_time_min, 'RUNNING', 1, p_lease_sec, now(), now())
        RETURNING batch_jobs.id, batch_jobs.lease_epoch, false;
    END IF;
END $$;

-- `balsam-mpi submit` (sql/submit.sql): the QUEUED row of the caller, its scheduler job id
-- once the scheduler gave one (set once), and FAILED with the reason when the scheduler
-- refused the job. Nothing else of a batch job is written outside the launcher functions.
CREATE FUNCTION batch_job_submit(p_scheduler text, p_host text, p_nodes integer,
                                 p_filters jsonb, p_wall_time_min double precision)
RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    INSERT INTO public.batch_jobs (scheduler, host, nodes, ranks, filters, wall_time_min,
                                   state, submitted_at)
    VALUES (p_scheduler, p_host, p_nodes, p_nodes, p_filters, p_wall_time_min, 'QUEUED',
            now())
    RETURNING id
$$;

CREATE FUNCTION batch_job_set_scheduler_id(p_job bigint, p_scheduler_job_id text)
RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    UPDATE public.batch_jobs b SET scheduler_job_id = p_scheduler_job_id
     WHERE b.id = p_job AND b."user" = session_user
       AND (b.scheduler_job_id IS NULL OR b.scheduler_job_id = p_scheduler_job_id)
    RETURNING b.id
$$;

CREATE FUNCTION batch_job_submit_failed(p_job bigint, p_reason text) RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    UPDATE public.batch_jobs b
       SET state = 'FAILED', ended_at = now(), end_reason = left(p_reason, 4096)
     WHERE b.id = p_job AND b."user" = session_user AND b.state = 'QUEUED'
    RETURNING b.id
$$;

GRANT EXECUTE ON FUNCTION batch_job_submit(text, text, integer, jsonb, double precision),
    batch_job_set_scheduler_id(bigint, text), batch_job_submit_failed(bigint, text)
    TO balsam_member;

-- As 0004's, and a task this launcher tracks that is no longer its own — deleted
-- (`task rm` of a running task), retried, or requeued after its lease ran out — is
-- reported too, so the launcher stops a process whose task now lives elsewhere or not
-- at all. A launcher tracks a task from its claim to its end, and every path that clears
-- batch_job_id runs after that end or takes the task away from it.
CREATE OR REPLACE FUNCTION launcher_kills(p_job bigint, p_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    RETURN QUERY
    SELECT w.id FROM unnest(p_ids) AS w (id) LEFT JOIN public.tasks t ON t.id = w.id
     WHERE t.id IS NULL OR t.batch_job_id IS DISTINCT FROM p_job
        OR t.state = 'USER_KILLED';
END $$;

-- ==== 6. Propagation ====================================================================
-- The event trigger joins its two transition tables; plpgsql cached that plan from the
-- first statement of the session, so after a one-row UPDATE a 10,000-row one (the
-- descendants a kill fails) ran as a nested loop of 10^8 comparisons (12 s). A hash join
-- costs nothing at one row and stays linear.
ALTER FUNCTION tasks_events_on_update() SET enable_nestloop = off;

-- As 0003's, with the same rules. The rows that changed state are found by a statement
-- planned for this call's transition tables (EXECUTE: never a cached nested loop); every
-- later step starts from those ids. Each step of the walk down the DAG looks children up
-- one parent at a time (LATERAL … OFFSET 0), so a 10,000-deep chain is 10,000 index
-- probes whatever the planner thinks of the tables' sizes, while the first step (a bulk
-- kill's 100,000 roots) is left to the planner (a hash join).
CREATE OR REPLACE FUNCTION tasks_propagate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    done bigint[];
    stopped bigint[];
BEGIN
    -- Cheap exit for the launcher's common case (RUNNING, RUN_DONE, …): nothing to do.
    IF NOT EXISTS (
        SELECT 1 FROM new_rows n WHERE n.state IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED')
    ) THEN
        RETURN NULL;
    END IF;
    EXECUTE $q$
        SELECT array_agg(n.id) FILTER (WHERE n.state = 'JOB_FINISHED'),
               array_agg(n.id) FILTER (WHERE n.state <> 'JOB_FINISHED')
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.state = 'JOB_FINISHED' AND o.state <> 'JOB_FINISHED'
            OR n.state IN ('FAILED', 'USER_KILLED')
               AND o.state NOT IN ('FAILED', 'USER_KILLED')$q$
      INTO done, stopped;

    -- Parents that just finished: one decrement per (child, finished parents) pair; a
    -- child whose count reaches 0 while it waits becomes READY.
    IF done IS NOT NULL THEN
        WITH counts AS (
            SELECT d.child_id, count(*)::integer AS k
              FROM unnest(done) AS p (id) JOIN public.task_deps d ON d.parent_id = p.id
             GROUP BY d.child_id
        )
        UPDATE public.tasks c
           SET pending_parents = greatest(c.pending_parents - counts.k, 0),
               state = CASE WHEN c.state = 'AWAITING_PARENTS' AND c.pending_parents <= counts.k
                            THEN 'READY'::task_state ELSE c.state END,
               state_message = CASE WHEN c.state = 'AWAITING_PARENTS'
                                     AND c.pending_parents <= counts.k
                                    THEN 'parents finished' ELSE c.state_message END
          FROM counts
         WHERE c.id = counts.child_id;
    END IF;
    IF stopped IS NULL THEN
        RETURN NULL;
    END IF;

    -- Parents that just stopped (FAILED or USER_KILLED): every waiting descendant reached
    -- through children that fail with their parents is FAILED, naming the ancestor.
    -- Rows stopped by this same statement are already stopped here, so a bulk kill of a
    -- whole workflow does not walk its graph again.
    WITH RECURSIVE down (id, root) AS (
        SELECT d.child_id, s.id FROM unnest(stopped) AS s (id)
          JOIN public.task_deps d ON d.parent_id = s.id
          JOIN public.tasks c ON c.id = d.child_id
         WHERE c.fail_with_parents AND c.state IN ('CREATED', 'AWAITING_PARENTS')
        UNION
        SELECT x.child_id, down.root FROM down CROSS JOIN LATERAL (
            SELECT d.child_id FROM public.task_deps d
              JOIN public.tasks c ON c.id = d.child_id
             WHERE d.parent_id = down.id AND c.fail_with_parents
               AND c.state IN ('CREATED', 'AWAITING_PARENTS')
            OFFSET 0) x
    ), first_root AS (
        SELECT DISTINCT ON (down.id) down.id, down.root FROM down ORDER BY down.id, down.root
    )
    UPDATE public.tasks c
       SET state = 'FAILED',
           failed_by = f.root,
           state_message = format('upstream task %s is %s', f.root, r.state)
      FROM first_root f JOIN public.tasks r ON r.id = f.root
     WHERE c.id = f.id;

    -- Children that opt out (fail_with_parents = false) count a stopped parent as done.
    WITH counts AS (
        SELECT d.child_id, count(*)::integer AS k
          FROM unnest(stopped) AS s (id) JOIN public.task_deps d ON d.parent_id = s.id
          JOIN public.tasks c ON c.id = d.child_id
         WHERE NOT c.fail_with_parents AND c.state IN ('CREATED', 'AWAITING_PARENTS')
         GROUP BY d.child_id
    )
    UPDATE public.tasks c
       SET pending_parents = greatest(c.pending_parents - counts.k, 0),
           state = CASE WHEN c.state = 'AWAITING_PARENTS' AND c.pending_parents <= counts.k
                        THEN 'READY'::task_state ELSE c.state END,
           state_message = CASE WHEN c.state = 'AWAITING_PARENTS'
                                 AND c.pending_parents <= counts.k
                                THEN 'parents done (some did not finish)'
                                ELSE c.state_message END
      FROM counts
     WHERE c.id = counts.child_id;
    RETURN NULL;
END $$;

-- ==== 0008_reliability.sql ====
-- 0008_reliability: reports that survive their leader, kills that keep the run they
-- raced, claims that carry what a node needs (docs/reliability.md).
--
-- * launcher_report becomes a thin, checked wrapper around launcher_apply_reports, which
--   `launcher_replay` shares: a leader's journal (balsam_mpi/launcher/journal.py) is applied by
--   exactly the code that applies its live reports.
-- * New report kinds: 14 = lost (the task's worker rank stopped answering: counted like
--   a lost lease), 15 = failed by the launcher (a row it cannot run, a report the
--   database cannot store): FAILED at once, the state message is the reason.
-- * A task killed while its run was under way keeps that run in its history: its start
--   and end (the node's times, the exit code) are recorded; its state stays USER_KILLED.
-- * launcher_claim also returns the priority (the leader keeps the claim's order), the
--   task's input_files and its parents' (workflow, id, name), so the node links inputs.

-- ---- the journal's keys ----------------------------------------------------------------
-- One secret per (batch job, lease epoch), handed only to that job's own user while the
-- job runs at that epoch. Every journal line carries HMAC-SHA256(key, line); the replay
-- recomputes it, so a group member who writes a file into the project cannot make a
-- journal say that someone else's tasks finished. Nobody but balsam_objects reads this
-- table: the definer functions below are the only way in.
-- A run that ended well while its batch job was cut off from the database is written from
-- that job's journal even after the lease sweep requeued the task (nobody claimed it
-- since): RESTART_READY goes straight to the run's end state (models.TRANSITIONS).
INSERT INTO task_transitions (from_state, to_state)
VALUES ('RESTART_READY', 'RUN_DONE'), ('RESTART_READY', 'RUN_ERROR'),
       ('RESTART_READY', 'RUN_TIMEOUT');

CREATE TABLE launcher_journals (
    job_id        bigint NOT NULL REFERENCES batch_jobs (id) ON DELETE CASCADE,
    lease_epoch   bigint NOT NULL,
    mac_key       bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    replayed_seq  bigint NOT NULL DEFAULT 0,  -- lines a replay went through, in order
    -- Reports come in groups (one per node report), numbered by the leader; its flushes
    -- say up to which group they wrote, in the same transaction, so a replay skips what
    -- the live leader already wrote (applying a report twice is not harmless: the task
    -- may have been claimed and started again under the same batch job and epoch).
    applied_through bigint NOT NULL DEFAULT 0,
    done          boolean NOT NULL DEFAULT false,  -- closed cleanly, or its end line applied
    PRIMARY KEY (job_id, lease_epoch)
);
REVOKE ALL ON launcher_journals FROM PUBLIC, balsam_member, balsam_viewer;

-- The journal key of the caller's own running batch job (made on first use).
-- gen_random_uuid() draws from the server's strong random source (PostgreSQL >= 13).
CREATE FUNCTION launcher_journal_key(p_job bigint, p_epoch bigint) RETURNS bytea
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    k bytea;
BEGIN
    PERFORM launcher_check_user(p_job);
    PERFORM 1 FROM public.batch_jobs b
      WHERE b.id = p_job AND b.lease_epoch = p_epoch AND b.state = 'RUNNING';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch job % (epoch %) no longer holds its lease', p_job, p_epoch
            USING ERRCODE = 'lock_not_available';
    END IF;
    INSERT INTO public.launcher_journals (job_id, lease_epoch, mac_key)
    VALUES (p_job, p_epoch,
            sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text
                              || gen_random_uuid()::text, 'UTF8')))
    ON CONFLICT DO NOTHING;
    SELECT j.mac_key INTO k FROM public.launcher_journals j
     WHERE j.job_id = p_job AND j.lease_epoch = p_epoch;
    RETURN k;
END $$;

-- The leader closed its batch job with everything written: its journal is not needed.
CREATE FUNCTION launcher_journal_done(p_job bigint, p_epoch bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    UPDATE public.launcher_journals j SET done = true
     WHERE j.job_id = p_job AND j.lease_epoch = p_epoch;
END $$;

-- Journals that may hold reports nobody wrote: not done, of a job that no longer runs
-- at that epoch or whose lease ran out, made in the last week (older ones are left).
CREATE FUNCTION launcher_journals_due()
RETURNS TABLE (job_id bigint, lease_epoch bigint, job_user text, replayed_seq bigint)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT j.job_id, j.lease_epoch, b."user", j.replayed_seq
      FROM public.launcher_journals j JOIN public.batch_jobs b ON b.id = j.job_id
     WHERE NOT j.done AND j.created_at > now() - interval '7 days'
       AND (b.state <> 'RUNNING' OR b.lease_epoch <> j.lease_epoch
            OR coalesce(b.heartbeat_at, b.started_at)
               < now() - make_interval(secs => b.lease_sec))
     ORDER BY j.job_id, j.lease_epoch;
$$;

-- ---- reports ----------------------------------------------------------------------------
-- The states a batch of reports moves (0006's steps, plus kinds 14 and 15 and the runs of
-- killed tasks). Not granted to anyone: launcher_report (the leader, checked to be the
-- job's user) and launcher_replay (anyone, checked by the journal's MAC) call it.
CREATE FUNCTION launcher_apply_reports(
    p_job bigint, p_epoch bigint,
    s_ids bigint[], s_at double precision[],
    f_ids bigint[], f_kind smallint[], f_rc integer[], f_started double precision[],
    f_ended double precision[], f_tail text[])
RETURNS TABLE (step text, changed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n bigint;
    m bigint := 0;
    lost bigint := 0;
    n_ends bigint;
    ok_ids bigint[];
    post_ids bigint[];
    bad_ids bigint[];
    failed_ids bigint[];
BEGIN
    IF cardinality(s_ids) > 0 THEN
        IF EXISTS (SELECT 1 FROM public.apps a WHERE a.preprocess <> '') THEN
            UPDATE public.tasks t SET state = 'PREPROCESSED'
              FROM unnest(s_ids) AS s(id), public.apps a
             WHERE t.id = s.id AND a.id = t.app_id AND a.preprocess <> ''
               AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch AND t.state = 'READY';
        END IF;
        UPDATE public.tasks t SET state = 'RUNNING', started_at = to_timestamp(s.at),
                                  state_message = ''
          FROM unnest(s_ids, s_at) AS s(id, at)
         WHERE t.id = s.id AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('READY', 'RESTART_READY', 'PREPROCESSED');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'started'; changed := n; RETURN NEXT;
        -- Some starts matched nothing: a task killed before its start was written keeps
        -- the run it had (its RUNNING event at the node's time; the state stays killed).
        IF n < cardinality(s_ids) THEN
            WITH hit AS (
                UPDATE public.tasks t SET started_at = to_timestamp(s.at)
                  FROM unnest(s_ids, s_at) AS s(id, at),
                       LATERAL (SELECT e.from_state, e.to_state, e.batch_job_id
                                  FROM public.task_events e WHERE e.task_id = s.id
                                 ORDER BY e.id DESC LIMIT 1) last
                 WHERE t.id = s.id AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
                   AND t.state = 'USER_KILLED' AND last.to_state = 'USER_KILLED'
                   AND last.from_state IS DISTINCT FROM 'RUNNING'
                   AND last.batch_job_id = p_job
                RETURNING t.id, t.started_at, last.from_state
            )
            INSERT INTO public.task_events (task_id, from_state, to_state, at, batch_job_id,
                                            message)
            SELECT h.id, h.from_state, 'RUNNING', h.started_at, p_job,
                   'started on its node before the kill reached it'
              FROM hit h;
        END IF;
    END IF;
    IF cardinality(f_ids) = 0 THEN
        RETURN;
    END IF;

    IF 13 = ANY (f_kind) THEN  -- the preprocess failed: the task never ran
        UPDATE public.tasks t
           SET state = 'FAILED', ended_at = to_timestamp(f.ended), exit_code = f.rc,
               output_tail = f.tail, state_message = format('preprocess exit code %s', f.rc),
               batch_job_id = NULL
          FROM unnest(f_ids, f_kind, f_rc, f_ended, f_tail) AS f(id, kind, rc, ended, tail)
         WHERE f.kind = 13 AND t.id = f.id AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state = 'READY';
        GET DIAGNOSTICS m = ROW_COUNT;
    END IF;

    IF 14 = ANY (f_kind) THEN  -- its worker rank stopped answering: lost, as with a lease
        UPDATE public.tasks t
           SET state = CASE WHEN t.lost_retries >= t.lost_retry_limit
                            THEN 'FAILED'::public.task_state
                            ELSE 'RESTART_READY'::public.task_state END,
               lost_retries = t.lost_retries + (t.lost_retries < t.lost_retry_limit)::integer,
               batch_job_id = NULL, claimed_at = NULL, state_message = 'lost: ' || f.tail
          FROM unnest(f_ids, f_kind, f_tail) AS f(id, kind, tail)
         WHERE f.kind = 14 AND t.id = f.id AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state = 'RUNNING';
        GET DIAGNOSTICS lost = ROW_COUNT;
    END IF;

    UPDATE public.tasks t
       SET state = CASE WHEN f.kind IN (0, 5, 6) THEN 'RUN_DONE'::public.task_state
                        WHEN f.kind IN (2, 10, 11, 12) THEN 'RUN_TIMEOUT'::public.task_state
                        WHEN f.kind = 3 THEN 'RESTART_READY'::public.task_state
                        ELSE 'RUN_ERROR'::public.task_state END,
           started_at = coalesce(t.started_at, to_timestamp(f.started)),
           ended_at = to_timestamp(f.ended),
           exit_code = f.rc,
           output_tail = CASE WHEN f.kind IN (0, 5, 15) THEN '' ELSE f.tail END,
           state_message = CASE
               WHEN f.kind IN (0, 5) THEN ''
               WHEN f.kind = 6 THEN 'the postprocess failed'
               WHEN f.kind IN (2, 11) THEN 'ran over its wall_time_min'
               WHEN f.kind = 10 THEN 'ran over its wall_time_min; the timeout handler dealt with it'
               WHEN f.kind = 12 THEN 'ran over its wall_time_min; the timeout handler failed'
               WHEN f.kind = 3 THEN 'requeued: the batch job stopped it'
               WHEN f.kind = 7 THEN format('exit code %s; the error handler dealt with it', f.rc)
               WHEN f.kind = 9 THEN format('exit code %s; the error handler failed', f.rc)
               WHEN f.kind = 15 THEN f.tail
               ELSE format('exit code %s', f.rc) END,
           batch_job_id = CASE WHEN f.kind = 3 THEN NULL ELSE t.batch_job_id END
      FROM unnest(f_ids, f_kind, f_rc, f_started, f_ended, f_tail)
           AS f(id, kind, rc, started, ended, tail)
     WHERE f.kind NOT IN (4, 13, 14) AND t.id = f.id AND t.batch_job_id = p_job
       AND t.lease_epoch = p_epoch AND t.state = 'RUNNING';
    GET DIAGNOSTICS n = ROW_COUNT;
    step := 'ended'; changed := n + m + lost; RETURN NEXT;

    -- Ends that matched nothing, of tasks killed under this claim: the run is kept. If
    -- the kill found the task RUNNING, its kill event already ends the run, and the row
    -- takes the node's end time and exit code; if the kill came before the start was
    -- written (the start was recorded above), an end event at the node's time closes it.
    SELECT count(*) INTO n_ends FROM unnest(f_kind) AS k(kind) WHERE k.kind NOT IN (13, 14);
    IF n < n_ends THEN
        WITH hit AS (
            UPDATE public.tasks t
               SET started_at = coalesce(t.started_at, to_timestamp(f.started)),
                   ended_at = to_timestamp(f.ended), exit_code = f.rc,
                   output_tail = CASE WHEN f.kind IN (0, 5) THEN '' ELSE f.tail END
              FROM unnest(f_ids, f_kind, f_rc, f_started, f_ended, f_tail)
                   AS f(id, kind, rc, started, ended, tail),
                   LATERAL (SELECT e.from_state, e.to_state, e.batch_job_id
                              FROM public.task_events e WHERE e.task_id = f.id
                             ORDER BY e.id DESC LIMIT 1) last
             WHERE f.kind NOT IN (13, 14) AND t.id = f.id AND t.batch_job_id = p_job
               AND t.lease_epoch = p_epoch AND t.state = 'USER_KILLED'
               AND last.batch_job_id = p_job
               AND (last.to_state = 'RUNNING'
                    OR last.to_state = 'USER_KILLED' AND last.from_state = 'RUNNING')
            RETURNING t.id, t.ended_at, f.kind, f.rc, last.to_state AS last_state
        )
        INSERT INTO public.task_events (task_id, from_state, to_state, at, batch_job_id,
                                        message)
        SELECT h.id, 'RUNNING',
               CASE WHEN h.kind IN (0, 5, 6) THEN 'RUN_DONE'::public.task_state
                    WHEN h.kind IN (2, 10, 11, 12) THEN 'RUN_TIMEOUT'::public.task_state
                    WHEN h.kind IN (3, 4) THEN 'USER_KILLED'::public.task_state
                    ELSE 'RUN_ERROR'::public.task_state END,
               h.ended_at, p_job,
               format('exit code %s; the task stays killed', h.rc)
          FROM hit h WHERE h.last_state = 'RUNNING';
    END IF;

    SELECT array_agg(x.id) FILTER (WHERE x.kind = 0),
           array_agg(x.id) FILTER (WHERE x.kind IN (5, 7, 10)),
           array_agg(x.id) FILTER (WHERE x.kind IN (1, 2, 8, 11)),
           array_agg(x.id) FILTER (WHERE x.kind IN (6, 9, 12, 15))
      INTO ok_ids, post_ids, bad_ids, failed_ids
      FROM unnest(f_ids, f_kind) AS x(id, kind);

    IF ok_ids IS NOT NULL THEN
        UPDATE public.tasks t SET state = 'JOB_FINISHED'
         WHERE t.id = ANY (ok_ids) AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state = 'RUN_DONE';
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'finished'; changed := n; RETURN NEXT;
    END IF;

    IF post_ids IS NOT NULL THEN
        UPDATE public.tasks t SET state = 'POSTPROCESSED'
         WHERE t.id = ANY (post_ids) AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('RUN_DONE', 'RUN_ERROR', 'RUN_TIMEOUT');
        UPDATE public.tasks t SET state = 'JOB_FINISHED'
         WHERE t.id = ANY (post_ids) AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state = 'POSTPROCESSED';
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'postprocessed'; changed := n; RETURN NEXT;
    END IF;

    IF failed_ids IS NOT NULL THEN
        UPDATE public.tasks t SET state = 'FAILED', batch_job_id = NULL
         WHERE t.id = ANY (failed_ids) AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('RUN_DONE', 'RUN_ERROR', 'RUN_TIMEOUT');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'failed'; changed := n; RETURN NEXT;
    END IF;

    IF bad_ids IS NOT NULL THEN
        UPDATE public.tasks t
           SET state = CASE WHEN r.retry THEN 'RESTART_READY'::public.task_state
                            ELSE 'FAILED'::public.task_state END,
               error_retries = t.error_retries
                               + (r.retry AND t.state = 'RUN_ERROR')::integer,
               timeout_retries = t.timeout_retries
                                 + (r.retry AND t.state = 'RUN_TIMEOUT')::integer,
               batch_job_id = NULL
          FROM (SELECT x.id,
                       x.state = 'RUN_ERROR' AND x.error_retries < x.error_retry_limit
                       OR x.state = 'RUN_TIMEOUT'
                          AND x.timeout_retries < x.timeout_retry_limit AS retry
                  FROM public.tasks x WHERE x.id = ANY (bad_ids)) r
         WHERE t.id = r.id AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state IN ('RUN_ERROR', 'RUN_TIMEOUT');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'retried_or_failed'; changed := n; RETURN NEXT;
    END IF;
END $$;

-- The leader's reports: only the batch job's own user (the rest as 0006 documented).
CREATE OR REPLACE FUNCTION launcher_report(
    p_job bigint, p_epoch bigint,
    s_ids bigint[], s_at double precision[],
    f_ids bigint[], f_kind smallint[], f_rc integer[], f_started double precision[],
    f_ended double precision[], f_tail text[])
RETURNS TABLE (step text, changed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    RETURN QUERY SELECT * FROM launcher_apply_reports(p_job, p_epoch, s_ids, s_at, f_ids,
                                                      f_kind, f_rc, f_started, f_ended,
                                                      f_tail);
END $$;

-- The same, for a leader that keeps a journal: ``p_through`` is the last report group
-- this batch completes, recorded in the same transaction (see launcher_journals).
CREATE FUNCTION launcher_report(
    p_job bigint, p_epoch bigint,
    s_ids bigint[], s_at double precision[],
    f_ids bigint[], f_kind smallint[], f_rc integer[], f_started double precision[],
    f_ended double precision[], f_tail text[], p_through bigint)
RETURNS TABLE (step text, changed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    IF p_through > 0 THEN
        UPDATE public.launcher_journals j
           SET applied_through = greatest(j.applied_through, p_through)
         WHERE j.job_id = p_job AND j.lease_epoch = p_epoch;
    END IF;
    RETURN QUERY SELECT * FROM launcher_apply_reports(p_job, p_epoch, s_ids, s_at, f_ids,
                                                      f_kind, f_rc, f_started, f_ended,
                                                      f_tail);
END $$;

-- ---- replaying a journal ----------------------------------------------------------------
-- Anyone may replay anyone's journal (the next leader, `balsam-dbctl recover`); what makes
-- it safe is here, not in the caller:
--   * every line's HMAC-SHA256 under the job's key is checked (a line that fails stops
--     the replay there), and its job and epoch must be the ones named;
--   * lines are taken in order, each once: they must continue exactly where the last
--     replay stopped (replayed_seq + 1, no gaps), so a replayer cannot skip or reorder;
--   * report groups the live leader wrote (applied_through) are skipped;
--   * a job that still holds its lease is not replayed (its leader writes for itself);
--   * reports apply as the live leader's would, fenced by (job, epoch, expected state);
--     besides, a success also applies to a task that this job's end requeued (a lost
--     lease, a failed close) as long as nothing claimed it since: the lost counter that
--     requeue spent is given back.
-- p_lines are the lines' JSON texts exactly as written, p_macs their MACs in hex. A line:
-- {"job", "epoch", "seq", "g": [[group, [Started...], [Finished...]], ...], "end"?} with
-- the protocol's tuples, Started (id, epoch, at) and Finished (id, epoch, kind, rc,
-- started, ended, tail).
CREATE FUNCTION launcher_replay(p_job bigint, p_epoch bigint, p_lines text[],
                                p_macs text[])
RETURNS TABLE (step text, changed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    j public.launcher_journals%ROWTYPE;
    job public.batch_jobs%ROWTYPE;
    ikey bytea;
    okey bytea;
    k bytea;
    doc jsonb;
    grp jsonb;
    groups jsonb := '[]';
    seq bigint;
    through bigint;
    i integer;
    applied integer := 0;
    finished boolean := false;
    s_ids bigint[];
    s_at float8[];
    f_ids bigint[];
    f_kind smallint[];
    f_rc integer[];
    f_started float8[];
    f_ended float8[];
    f_tail text[];
    all_f_ids bigint[] := '{}';
    all_f_kind smallint[] := '{}';
    all_f_rc integer[] := '{}';
    all_f_started float8[] := '{}';
    all_f_ended float8[] := '{}';
    r record;
    n bigint;
    ok_ids bigint[];
    post_ids bigint[];
BEGIN
    SELECT * INTO j FROM public.launcher_journals x
     WHERE x.job_id = p_job AND x.lease_epoch = p_epoch FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch job % (epoch %) has no journal', p_job, p_epoch
            USING ERRCODE = 'no_data_found';
    END IF;
    SELECT * INTO job FROM public.batch_jobs b WHERE b.id = p_job;
    IF job.state = 'RUNNING' AND job.lease_epoch = p_epoch
       AND coalesce(job.heartbeat_at, job.started_at)
           >= now() - make_interval(secs => job.lease_sec) THEN
        RAISE EXCEPTION 'batch job % still holds its lease: its own leader writes its reports',
            p_job USING ERRCODE = 'lock_not_available';
    END IF;
    -- HMAC-SHA256 (RFC 2104) from the built-in sha256(): the 32-byte key padded to the
    -- 64-byte block, XORed with the inner and outer pads once per call.
    k := j.mac_key || decode(repeat('00', 64 - length(j.mac_key)), 'hex');
    ikey := k;
    okey := k;
    FOR i IN 0..63 LOOP
        ikey := set_byte(ikey, i, get_byte(k, i) # 54);
        okey := set_byte(okey, i, get_byte(k, i) # 92);
    END LOOP;
    seq := j.replayed_seq;
    through := j.applied_through;
    FOR i IN 1..coalesce(cardinality(p_lines), 0) LOOP
        EXIT WHEN p_macs[i] IS NULL OR lower(p_macs[i]) <> encode(
            sha256(okey || sha256(ikey || convert_to(p_lines[i], 'UTF8'))), 'hex');
        doc := p_lines[i]::jsonb;
        EXIT WHEN (doc->>'job')::bigint IS DISTINCT FROM p_job
               OR (doc->>'epoch')::bigint IS DISTINCT FROM p_epoch;
        CONTINUE WHEN (doc->>'seq')::bigint <= seq;  -- taken by an earlier replay
        EXIT WHEN (doc->>'seq')::bigint <> seq + 1;  -- a gap: stop where it is known good
        seq := seq + 1;
        applied := applied + 1;
        finished := finished OR coalesce((doc->>'end')::boolean, false);
        FOR grp IN SELECT g.value FROM jsonb_array_elements(coalesce(doc->'g', '[]')) g LOOP
            CONTINUE WHEN (grp->>0)::bigint <= through;  -- written by the live leader
            through := (grp->>0)::bigint;
            groups := groups || jsonb_build_array(grp);
        END LOOP;
    END LOOP;
    step := 'lines'; changed := applied; RETURN NEXT;
    IF applied = 0 THEN
        RETURN;
    END IF;

    -- Everything in one call when each task appears once; else group by group, in order
    -- (a task reported twice ran twice under this claim, after a retry).
    SELECT coalesce(array_agg((e->>0)::bigint), '{}'), coalesce(array_agg((e->>2)::float8), '{}')
      INTO s_ids, s_at
      FROM jsonb_array_elements(groups) g, jsonb_array_elements(g.value->1) e;
    SELECT coalesce(array_agg((e->>0)::bigint), '{}'),
           coalesce(array_agg((e->>2)::smallint), '{}'),
           coalesce(array_agg((e->>3)::integer), '{}'),
           coalesce(array_agg((e->>4)::float8), '{}'),
           coalesce(array_agg((e->>5)::float8), '{}'),
           coalesce(array_agg(e->>6), '{}')
      INTO f_ids, f_kind, f_rc, f_started, f_ended, f_tail
      FROM jsonb_array_elements(groups) g, jsonb_array_elements(g.value->2) e;
    all_f_ids := f_ids; all_f_kind := f_kind; all_f_rc := f_rc;
    all_f_started := f_started; all_f_ended := f_ended;
    IF (SELECT count(*) = count(DISTINCT x) FROM unnest(s_ids) x)
       AND (SELECT count(*) = count(DISTINCT x) FROM unnest(f_ids) x) THEN
        FOR r IN SELECT * FROM launcher_apply_reports(p_job, p_epoch, s_ids, s_at, f_ids,
                                                      f_kind, f_rc, f_started, f_ended,
                                                      f_tail) LOOP
            step := r.step; changed := r.changed; RETURN NEXT;
        END LOOP;
    ELSE
        FOR grp IN SELECT g.value FROM jsonb_array_elements(groups) g LOOP
            SELECT coalesce(array_agg((e->>0)::bigint), '{}'),
                   coalesce(array_agg((e->>2)::float8), '{}')
              INTO s_ids, s_at FROM jsonb_array_elements(grp->1) e;
            SELECT coalesce(array_agg((e->>0)::bigint), '{}'),
                   coalesce(array_agg((e->>2)::smallint), '{}'),
                   coalesce(array_agg((e->>3)::integer), '{}'),
                   coalesce(array_agg((e->>4)::float8), '{}'),
                   coalesce(array_agg((e->>5)::float8), '{}'),
                   coalesce(array_agg(e->>6), '{}')
              INTO f_ids, f_kind, f_rc, f_started, f_ended, f_tail
              FROM jsonb_array_elements(grp->2) e;
            PERFORM launcher_apply_reports(p_job, p_epoch, s_ids, s_at, f_ids, f_kind,
                                           f_rc, f_started, f_ended, f_tail);
        END LOOP;
    END IF;

    -- Successes of tasks this job's end requeued (lost lease, failed close) and nobody
    -- claimed since: the last event is that requeue, by this job.
    WITH ok AS (
        SELECT f.id, f.kind, f.rc, f.started, f.ended
          FROM unnest(all_f_ids, all_f_kind, all_f_rc, all_f_started, all_f_ended)
               AS f(id, kind, rc, started, ended)
         WHERE f.kind IN (0, 5, 7, 10)
    ), hit AS (
        UPDATE public.tasks t
           SET state = CASE ok.kind WHEN 7 THEN 'RUN_ERROR'::public.task_state
                                    WHEN 10 THEN 'RUN_TIMEOUT'::public.task_state
                                    ELSE 'RUN_DONE'::public.task_state END,
               started_at = to_timestamp(ok.started), ended_at = to_timestamp(ok.ended),
               exit_code = ok.rc, output_tail = '',
               lost_retries = greatest(0, t.lost_retries
                                          - (last.message LIKE 'lost:%')::integer),
               state_message = format('finished while batch job %s was cut off; '
                                      'written from its journal', p_job)
          FROM ok, LATERAL (SELECT e.from_state, e.to_state, e.batch_job_id, e.message
                              FROM public.task_events e WHERE e.task_id = ok.id
                             ORDER BY e.id DESC LIMIT 1) last
         WHERE t.id = ok.id AND t.state = 'RESTART_READY' AND t.batch_job_id IS NULL
           AND t.lease_epoch = p_epoch AND last.from_state = 'RUNNING'
           AND last.to_state = 'RESTART_READY' AND last.batch_job_id = p_job
        RETURNING t.id, ok.kind
    )
    SELECT array_agg(h.id), array_agg(h.id) FILTER (WHERE h.kind <> 0)
      INTO ok_ids, post_ids FROM hit h;
    IF ok_ids IS NOT NULL THEN
        IF post_ids IS NOT NULL THEN
            UPDATE public.tasks t SET state = 'POSTPROCESSED' WHERE t.id = ANY (post_ids);
        END IF;
        UPDATE public.tasks t SET state = 'JOB_FINISHED'
         WHERE t.id = ANY (ok_ids) AND t.state IN ('RUN_DONE', 'POSTPROCESSED');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'finished_after_requeue'; changed := n; RETURN NEXT;
    END IF;

    UPDATE public.launcher_journals x
       SET replayed_seq = seq, applied_through = through, done = x.done OR finished
     WHERE x.job_id = p_job AND x.lease_epoch = p_epoch;
END $$;

-- ---- the claim --------------------------------------------------------------------------
-- As in 0004, and also the priority (the leader keeps this order), the input_files and,
-- only for tasks that have input_files, their parents as [workflow, id, name] in id order
-- (the node links matching files from those directories before the task starts).
DROP FUNCTION launcher_claim(bigint, bigint, integer, double precision, double precision,
                             text[], jsonb, text[], double precision, integer);
CREATE FUNCTION launcher_claim(
    p_job bigint, p_epoch bigint, p_limit integer, p_capacity double precision,
    p_max_need double precision, p_workflows text[], p_tags jsonb, p_owners text[],
    p_remaining_min double precision, p_max_nodes integer)
RETURNS TABLE (id bigint, workflow text, name text, state task_state, app text,
               command text, shell boolean, env_script text, params jsonb, args text[],
               env jsonb, num_nodes integer, ranks_per_node integer,
               threads_per_rank integer, gpus_per_rank integer,
               node_packing_count integer, wall_time_min double precision,
               priority integer, input_files text[], parents jsonb)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off SET jit = off
AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    PERFORM 1 FROM public.batch_jobs b
      WHERE b.id = p_job AND b.lease_epoch = p_epoch AND b.state = 'RUNNING';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch job % (epoch %) no longer holds its lease', p_job, p_epoch
            USING ERRCODE = 'lock_not_available';
    END IF;
    IF p_workflows IS NULL THEN
        RETURN QUERY
        WITH locked AS (
            SELECT t.id, t.priority, 1.0::float8 / t.node_packing_count AS need
              FROM public.tasks t
             WHERE t.state IN ('READY', 'RESTART_READY') AND t.batch_job_id IS NULL
               AND t.num_nodes <= p_max_nodes
               AND 1.0::float8 / t.node_packing_count <= p_max_need + 1e-9
               AND (p_remaining_min IS NULL OR t.wall_time_min <= p_remaining_min)
               AND (p_tags IS NULL OR t.tags @> p_tags)
               AND (p_owners IS NULL OR t.owner = ANY (p_owners))
             ORDER BY t.priority DESC, t.id
             LIMIT p_limit
               FOR UPDATE OF t SKIP LOCKED
        ), fitting AS (
            SELECT s.id FROM (
                SELECT l.id, sum(l.need) OVER (ORDER BY l.priority DESC, l.id) AS used
                  FROM locked l) s
             WHERE s.used <= p_capacity + 1e-9
        )
        UPDATE public.tasks t
           SET batch_job_id = p_job, lease_epoch = p_epoch, claimed_at = now()
          FROM fitting f, public.apps a
         WHERE t.id = f.id AND a.id = t.app_id
        RETURNING t.id, t.workflow, t.name, t.state, a.name, a.command, a.shell,
                  a.env_script, t.params, t.args, t.env, t.num_nodes, t.ranks_per_node,
                  t.threads_per_rank, t.gpus_per_rank, t.node_packing_count,
                  t.wall_time_min, t.priority, t.input_files,
                  CASE WHEN cardinality(t.input_files) > 0 THEN
                      (SELECT jsonb_agg(jsonb_build_array(p.workflow, p.id, p.name)
                                        ORDER BY p.id)
                         FROM public.task_deps d JOIN public.tasks p ON p.id = d.parent_id
                        WHERE d.child_id = t.id) END;
    ELSE
        RETURN QUERY
        WITH locked AS (
            SELECT c.id, c.priority, c.need
              FROM unnest(p_workflows) AS w(name)
             CROSS JOIN LATERAL (
                SELECT t.id, t.priority, 1.0::float8 / t.node_packing_count AS need
                  FROM public.tasks t
                 -- A range, not `=` (0004 says why: it keeps tasks_runnable_workflow).
                 WHERE t.workflow >= w.name AND t.workflow <= w.name
                   AND t.state IN ('READY', 'RESTART_READY') AND t.batch_job_id IS NULL
                   AND t.num_nodes <= p_max_nodes
                   AND 1.0::float8 / t.node_packing_count <= p_max_need + 1e-9
                   AND (p_remaining_min IS NULL OR t.wall_time_min <= p_remaining_min)
                   AND (p_tags IS NULL OR t.tags @> p_tags)
                   AND (p_owners IS NULL OR t.owner = ANY (p_owners))
                 ORDER BY t.workflow, t.priority DESC, t.id
                 LIMIT p_limit
                   FOR UPDATE OF t SKIP LOCKED) c
        ), fitting AS (
            SELECT s.id FROM (
                SELECT l.id, sum(l.need) OVER (ORDER BY l.priority DESC, l.id) AS used,
                       row_number() OVER (ORDER BY l.priority DESC, l.id) AS n
                  FROM locked l) s
             WHERE s.used <= p_capacity + 1e-9 AND s.n <= p_limit
        )
        UPDATE public.tasks t
           SET batch_job_id = p_job, lease_epoch = p_epoch, claimed_at = now()
          FROM fitting f, public.apps a
         WHERE t.id = f.id AND a.id = t.app_id
        RETURNING t.id, t.workflow, t.name, t.state, a.name, a.command, a.shell,
                  a.env_script, t.params, t.args, t.env, t.num_nodes, t.ranks_per_node,
                  t.threads_per_rank, t.gpus_per_rank, t.node_packing_count,
                  t.wall_time_min, t.priority, t.input_files,
                  CASE WHEN cardinality(t.input_files) > 0 THEN
                      (SELECT jsonb_agg(jsonb_build_array(p.workflow, p.id, p.name)
                                        ORDER BY p.id)
                         FROM public.task_deps d JOIN public.tasks p ON p.id = d.parent_id
                        WHERE d.child_id = t.id) END;
    END IF;
END $$;

GRANT EXECUTE ON FUNCTION
    launcher_claim(bigint, bigint, integer, double precision, double precision, text[],
                   jsonb, text[], double precision, integer),
    launcher_journal_key(bigint, bigint),
    launcher_journal_done(bigint, bigint),
    launcher_journals_due(),
    launcher_replay(bigint, bigint, text[], text[]),
    launcher_report(bigint, bigint, bigint[], double precision[], bigint[], smallint[],
                    integer[], double precision[], double precision[], text[], bigint)
TO balsam_member;

-- ==== 0009_python_tasks.sql ====
-- 0009_python_tasks: Python apps by import path, their results, and a notification when
-- tasks reach a final state (docs/python-tasks.md).

-- An app runs a command line or calls a Python function, exactly one of the two. The
-- import path lives on the app, which only the owner and --app-admin members write
-- (0002); a task carries keyword arguments as JSON and nothing else, so no code can
-- travel through a task row. The shape is checked here as well as in the client
-- (tasks/pyapps.py): dotted identifiers, one colon, ASCII, at most limits.PYTHON_PATH_MAX.
ALTER TABLE apps ALTER COLUMN command DROP NOT NULL;
ALTER TABLE apps ADD COLUMN python text;
ALTER TABLE apps ADD CONSTRAINT apps_command_or_python
    CHECK ((command IS NULL) <> (python IS NULL));
ALTER TABLE apps ADD CONSTRAINT apps_python_path CHECK (
    python IS NULL OR (
        char_length(python) <= 1024
        AND python ~ '^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$'));
-- The function runs in a warm interpreter: there is no command line for a shell, no
-- environment script to source, and no process around the call to pre/postprocess.
ALTER TABLE apps ADD CONSTRAINT apps_python_plain CHECK (
    python IS NULL OR (NOT shell AND env_script = '' AND preprocess = ''
                       AND postprocess = '' AND NOT postprocess_on_error
                       AND NOT postprocess_on_timeout));

-- A Python task's return value, as the JSON text its interpreter wrote (`json`, not
-- `jsonb`: kept byte for byte, so the size the node checked is the size stored, and
-- any JSON Python writes is accepted). NULL: no result (not a Python task, not
-- finished, or the function returned None). Capped at limits.RESULT_MAX_BYTES.
ALTER TABLE tasks ADD COLUMN result json;
ALTER TABLE tasks ADD CONSTRAINT tasks_result_size
    CHECK (result IS NULL OR octet_length(result::text) <= 262144);

-- Only the launcher that ran a task writes its result, through launcher_results below
-- (which runs as balsam_objects). Members may update their own tasks (0002), so without
-- this a member could pass off a result no function returned. The WHEN clauses keep the
-- per-row cost away from the launcher and from every statement that leaves result alone.
CREATE FUNCTION refuse_result_write() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    RAISE EXCEPTION 'the result of task % is written only by the launcher that ran it',
        NEW.id USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER tasks_result_guard_update BEFORE UPDATE OF result ON tasks
    FOR EACH ROW WHEN (NEW.result::text IS DISTINCT FROM OLD.result::text
                       AND current_user <> 'balsam_objects')
    EXECUTE FUNCTION refuse_result_write();
CREATE TRIGGER tasks_result_guard_insert BEFORE INSERT ON tasks
    FOR EACH ROW WHEN (NEW.result IS NOT NULL AND current_user <> 'balsam_objects')
    EXECUTE FUNCTION refuse_result_write();

-- The results of a flush, written by the leader in the same transaction as the reports
-- (after launcher_report, so the rows are JOB_FINISHED): fenced like the reports on the
-- batch job and its lease epoch, so a superseded claim writes nothing. The node checks
-- every document; this is the last line: a document that is not JSON or is over the cap
-- is not stored and the task's state_message says so, and it cannot hold back the rest
-- of the flush (a failing flush would be retried for ever).
CREATE FUNCTION launcher_results(p_job bigint, p_epoch bigint, p_ids bigint[],
                                 p_results text[])
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n bigint := 0;
    m bigint;
    one record;
BEGIN
    PERFORM launcher_check_user(p_job);
    BEGIN
        UPDATE public.tasks t
           SET result = CASE WHEN octet_length(r.doc) <= 262144 THEN r.doc::json END,
               state_message = CASE WHEN octet_length(r.doc) <= 262144 THEN t.state_message
                   ELSE format('the result was not stored: %s bytes of JSON, over the cap '
                               'of 262144', octet_length(r.doc)) END
          FROM unnest(p_ids, p_results) AS r(id, doc)
         WHERE t.id = r.id AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state = 'JOB_FINISHED' AND t.result IS NULL;
        GET DIAGNOSTICS n = ROW_COUNT;
    EXCEPTION WHEN invalid_text_representation OR untranslatable_character
                   OR character_not_in_repertoire THEN
        n := 0;
        FOR one IN SELECT r.id, r.doc FROM unnest(p_ids, p_results) AS r(id, doc) LOOP
            BEGIN
                UPDATE public.tasks t
                   SET result = CASE WHEN octet_length(one.doc) <= 262144
                                     THEN one.doc::json END,
                       state_message = CASE WHEN octet_length(one.doc) <= 262144
                           THEN t.state_message
                           ELSE format('the result was not stored: %s bytes of JSON, over '
                                       'the cap of 262144', octet_length(one.doc)) END
                 WHERE t.id = one.id AND t.batch_job_id = p_job
                   AND t.lease_epoch = p_epoch AND t.state = 'JOB_FINISHED'
                   AND t.result IS NULL;
                GET DIAGNOSTICS m = ROW_COUNT;
                n := n + m;
            EXCEPTION WHEN invalid_text_representation OR untranslatable_character
                           OR character_not_in_repertoire THEN
                UPDATE public.tasks t
                   SET state_message = 'the result was not stored: not valid JSON'
                 WHERE t.id = one.id AND t.batch_job_id = p_job
                   AND t.lease_epoch = p_epoch AND t.state = 'JOB_FINISHED';
            END;
        END LOOP;
    END;
    RETURN n;
END $$;

-- Waiting without polling (tasks/waiting.py): a statement that brings tasks to a final state
-- notifies their ids on one channel, whoever wrote it (a launcher's flush, a kill, the
-- DAG failing descendants). Payloads are comma-separated ids, 350 to a notification, so
-- each stays under Postgres' 8000-byte limit (ids are at most 19 digits). Listeners
-- treat them as hints and read the states themselves. Notifications go out when the
-- transaction commits, so a listener never reads a state (or a result) that is not
-- there yet. pg_notify is nobody's since 0007 (members may not NOTIFY); these triggers
-- run as balsam_objects, which gets it here. A catalog function belongs to the
-- bootstrap superuser, so the grant runs as it (the migration's connection), as in 0007.
RESET ROLE;
GRANT EXECUTE ON FUNCTION pg_notify(text, text) TO balsam_objects;
SET ROLE balsam_objects;

CREATE FUNCTION tasks_notify_final() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    chunk text;
BEGIN
    -- Most statements (starts, claims, edits) end nothing: skip the join for them.
    IF NOT EXISTS (SELECT 1 FROM new_rows n
                    WHERE n.state IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED')) THEN
        RETURN NULL;
    END IF;
    FOR chunk IN
        SELECT string_agg(c.id::text, ',')
          FROM (SELECT n.id, (row_number() OVER ()) / 350 AS k
                  FROM new_rows n JOIN old_rows o ON o.id = n.id
                 WHERE n.state IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED')
                   AND o.state IS DISTINCT FROM n.state) c
         GROUP BY c.k
    LOOP
        PERFORM pg_notify('balsam_task_final', chunk);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_notify_final AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_notify_final();

-- A task deleted while someone waits for it will never end: say so the same way.
CREATE FUNCTION tasks_notify_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    chunk text;
BEGIN
    FOR chunk IN
        SELECT string_agg(c.id::text, ',')
          FROM (SELECT o.id, (row_number() OVER ()) / 350 AS k FROM old_rows o
                 WHERE o.state NOT IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED')) c
         GROUP BY c.k
    LOOP
        PERFORM pg_notify('balsam_task_final', chunk);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_notify_deleted AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_notify_deleted();

GRANT EXECUTE ON FUNCTION launcher_results(bigint, bigint, bigint[], text[])
TO balsam_member;

-- ==== 0010_run_steps.sql ====
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

-- ==== 0011_one_write_per_short_task.sql ====
-- 0011_one_write_per_short_task: a task whose start and plain success arrive in the same
-- flush is written once, READY → JOB_FINISHED, instead of three times (→ RUNNING,
-- → RUN_DONE, → JOB_FINISHED); its history is the same as when they come apart
-- (docs/launcher.md, "Reports").
--
-- Each write of a task row is a new row version with an entry in each of its indexes,
-- and it passes through every statement trigger; three writes per short task were most
-- of the launcher's database time. The history is kept by the event trigger, which
-- writes the three events the two-step path would have (the run's start at the node's
-- start time, its end at the node's end time, then the finish), and the transition
-- check, which lets a row skip from a startable state to JOB_FINISHED only when the
-- same write records a new run (a new start and a new end time) through steps that are
-- each allowed. Nothing but the report function writes such a row: members do not
-- write states (0007), and no other definer function moves a row from a startable
-- state to JOB_FINISHED.
--
-- The leader puts the pairs first (launcher/store.py): a start and a plain success of the same
-- task at the same index of the start and end arrays, ``p_paired`` of them. The server
-- checks them: if any pair is not one (ids that differ, an end that is not a plain
-- success) the batch is applied the usual way; a pair whose row is not this claim's in
-- a startable state is left to the usual statements, as if it had not been paired.
--
-- Also cheaper per claimed row (benchmarks/README.md, "The database path per task"): the
-- runnable indexes leave out claimed rows, and the foreign key tasks.batch_job_id →
-- batch_jobs, checked by a query per claimed row, gives way to one lock per claim and a
-- trigger that releases a deleted job's tasks. The DAG trigger skips its children's
-- UPDATE when the finished tasks have none.

-- ---- the history ---------------------------------------------------------------------
-- 0010's trigger (events in bulk, their run steps summed into run_steps, reshaped tasks'
-- buckets marked dirty), where a combined write's row gives the three events (and run
-- steps) of its two-step path: its start at started_at, its end at ended_at, its finish
-- at the statement's clock, with ids in that order. The step list joins each row of
-- the transition tables to (1), (2), (3): only a nested loop can, which keeps each
-- task's steps in order whichever side is outer; its penalty cost under
-- enable_nestloop = off would have the server compile the statement (jit: ≈ 0.2 s per
-- flush, more than the whole flush), hence jit = off.
CREATE OR REPLACE FUNCTION tasks_events_on_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_nestloop = off SET enable_sort = off SET jit = off AS $$
DECLARE
    reshaped bigint[];
BEGIN
    WITH changed AS MATERIALIZED (
        SELECT x.id, x.from_state, x.to_state,
               CASE
                 WHEN x.to_state = 'RUNNING' AND x.started_at IS DISTINCT FROM x.old_started
                      AND x.started_at IS NOT NULL THEN x.started_at
                 WHEN x.to_state IN ('RUN_DONE', 'RUN_ERROR', 'RUN_TIMEOUT')
                      AND x.ended_at IS DISTINCT FROM x.old_ended
                      AND x.ended_at IS NOT NULL THEN x.ended_at
                 ELSE clock_timestamp()
               END AS at,
               x.job_id, x.state_message,
               CASE WHEN x.moved THEN nextval('task_events_id_seq'::regclass) END AS event_id,
               x.workflow, x.owner, x.w, x.moved, x.reshaped
          FROM (SELECT n.id, n.started_at, o.started_at AS old_started, n.ended_at,
                       o.ended_at AS old_ended,
                       coalesce(n.batch_job_id, o.batch_job_id) AS job_id, n.state_message,
                       n.workflow, n.owner, n.num_nodes::float8 / n.node_packing_count AS w,
                       n.state IS DISTINCT FROM o.state AS moved,
                       k.step = 1 AND (n.workflow, n.num_nodes, n.node_packing_count)
                         IS DISTINCT FROM (o.workflow, o.num_nodes, o.node_packing_count)
                         AS reshaped,
                       CASE WHEN NOT c.combined OR k.step = 1 THEN o.state
                            WHEN k.step = 2 THEN 'RUNNING'::task_state
                            ELSE 'RUN_DONE'::task_state END AS from_state,
                       CASE WHEN NOT c.combined THEN n.state
                            WHEN k.step = 1 THEN 'RUNNING'::task_state
                            WHEN k.step = 2 THEN 'RUN_DONE'::task_state
                            ELSE n.state END AS to_state
                  FROM new_rows n JOIN old_rows o ON o.id = n.id
                 CROSS JOIN LATERAL (
                       SELECT n.state = 'JOB_FINISHED'
                              AND o.state IN ('READY', 'RESTART_READY', 'PREPROCESSED')
                              AS combined) c
                 CROSS JOIN (VALUES (1), (2), (3)) AS k (step)
                 WHERE (n.state IS DISTINCT FROM o.state
                        OR (n.workflow, n.num_nodes, n.node_packing_count)
                             IS DISTINCT FROM (o.workflow, o.num_nodes, o.node_packing_count))
                   AND (k.step = 1 OR c.combined)) x
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

-- 0007's check, and the one skip a combined write makes.
CREATE OR REPLACE FUNCTION tasks_check_transitions() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_nestloop = off AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.id, o.state AS from_state, n.state AS to_state INTO bad
      FROM new_rows n JOIN old_rows o ON o.id = n.id
     WHERE n.state <> o.state
       AND NOT EXISTS (SELECT 1 FROM public.task_transitions x
                        WHERE x.from_state = o.state AND x.to_state = n.state)
       AND NOT (n.state = 'JOB_FINISHED'
                AND o.state IN ('READY', 'RESTART_READY', 'PREPROCESSED')
                AND n.started_at IS NOT NULL AND n.started_at IS DISTINCT FROM o.started_at
                AND n.ended_at IS NOT NULL AND n.ended_at IS DISTINCT FROM o.ended_at
                AND EXISTS (SELECT 1 FROM public.task_transitions x
                             WHERE x.from_state = o.state AND x.to_state = 'RUNNING'))
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'task %: % -> % is not a state change balsam allows', bad.id,
            bad.from_state, bad.to_state USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

-- ---- the reports -----------------------------------------------------------------------
-- 0008's launcher_apply_reports with the combined write first; the counts are those the
-- two-step path returns (a combined task counts as started, ended and finished).
CREATE FUNCTION launcher_apply_reports(
    p_job bigint, p_epoch bigint,
    s_ids bigint[], s_at double precision[],
    f_ids bigint[], f_kind smallint[], f_rc integer[], f_started double precision[],
    f_ended double precision[], f_tail text[], p_paired integer)
RETURNS TABLE (step text, changed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    had_starts boolean := cardinality(s_ids) > 0;
    had_ends boolean := cardinality(f_ids) > 0;
    paired integer := least(greatest(coalesce(p_paired, 0), 0), cardinality(s_ids),
                            cardinality(f_ids));
    c bigint := 0;
    n bigint;
    n_started bigint := 0;
    m bigint := 0;
    lost bigint := 0;
    n_ends bigint;
    ok_ids bigint[];
    post_ids bigint[];
    bad_ids bigint[];
    failed_ids bigint[];
BEGIN
    IF had_starts AND EXISTS (SELECT 1 FROM public.apps a WHERE a.preprocess <> '') THEN
        UPDATE public.tasks t SET state = 'PREPROCESSED'
          FROM unnest(s_ids) AS s(id), public.apps a
         WHERE t.id = s.id AND a.id = t.app_id AND a.preprocess <> ''
           AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch AND t.state = 'READY';
    END IF;

    -- The pairs: one write each, READY (or RESTART_READY, PREPROCESSED) → JOB_FINISHED,
    -- fenced like every other write. The arrays are zipped, not joined: no plan to go
    -- wrong whatever the batch's size. A batch whose pairs are not pairs (a start and
    -- an end of different tasks, an end that is not a plain success) has none.
    IF paired > 0 AND EXISTS (
        SELECT 1 FROM unnest(s_ids[1:paired], f_ids[1:paired], f_kind[1:paired])
                      AS p(id, f_id, kind)
         WHERE p.f_id IS DISTINCT FROM p.id OR p.kind IS DISTINCT FROM 0) THEN
        paired := 0;
    END IF;
    IF paired > 0 THEN
        UPDATE public.tasks t
           SET state = 'JOB_FINISHED', started_at = to_timestamp(p.at),
               ended_at = to_timestamp(p.ended), exit_code = p.rc, output_tail = '',
               state_message = ''
          FROM unnest(s_ids[1:paired], s_at[1:paired], f_rc[1:paired], f_ended[1:paired])
               AS p(id, at, rc, ended)
         WHERE t.id = p.id AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('READY', 'RESTART_READY', 'PREPROCESSED')
           AND t.started_at IS DISTINCT FROM to_timestamp(p.at)
           AND t.ended_at IS DISTINCT FROM to_timestamp(p.ended);
        GET DIAGNOSTICS c = ROW_COUNT;
        IF c = paired THEN
            -- All written: the rest of the batch is what follows the pairs. (Otherwise
            -- every report goes on as usual; the rows written here no longer match.)
            s_ids := s_ids[paired + 1:]; s_at := s_at[paired + 1:];
            f_ids := f_ids[paired + 1:]; f_kind := f_kind[paired + 1:];
            f_rc := f_rc[paired + 1:]; f_started := f_started[paired + 1:];
            f_ended := f_ended[paired + 1:]; f_tail := f_tail[paired + 1:];
        END IF;
    END IF;

    IF cardinality(s_ids) > 0 THEN
        UPDATE public.tasks t SET state = 'RUNNING', started_at = to_timestamp(s.at),
                                  state_message = ''
          FROM unnest(s_ids, s_at) AS s(id, at)
         WHERE t.id = s.id AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('READY', 'RESTART_READY', 'PREPROCESSED');
        GET DIAGNOSTICS n_started = ROW_COUNT;
        -- Some starts matched nothing: a task killed before its start was written keeps
        -- the run it had (its RUNNING event at the node's time; the state stays killed).
        IF n_started + (CASE WHEN c = paired THEN 0 ELSE c END) < cardinality(s_ids) THEN
            WITH hit AS (
                UPDATE public.tasks t SET started_at = to_timestamp(s.at)
                  FROM unnest(s_ids, s_at) AS s(id, at),
                       LATERAL (SELECT e.from_state, e.to_state, e.batch_job_id
                                  FROM public.task_events e WHERE e.task_id = s.id
                                 ORDER BY e.id DESC LIMIT 1) last
                 WHERE t.id = s.id AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
                   AND t.state = 'USER_KILLED' AND last.to_state = 'USER_KILLED'
                   AND last.from_state IS DISTINCT FROM 'RUNNING'
                   AND last.batch_job_id = p_job
                RETURNING t.id, t.started_at, last.from_state
            )
            INSERT INTO public.task_events (task_id, from_state, to_state, at, batch_job_id,
                                            message)
            SELECT h.id, h.from_state, 'RUNNING', h.started_at, p_job,
                   'started on its node before the kill reached it'
              FROM hit h;
        END IF;
    END IF;
    IF had_starts THEN
        step := 'started'; changed := n_started + c; RETURN NEXT;
    END IF;
    IF NOT had_ends THEN
        RETURN;
    END IF;
    IF cardinality(f_ids) = 0 THEN
        step := 'ended'; changed := c; RETURN NEXT;
        step := 'finished'; changed := c; RETURN NEXT;
        RETURN;
    END IF;

    IF 13 = ANY (f_kind) THEN  -- the preprocess failed: the task never ran
        UPDATE public.tasks t
           SET state = 'FAILED', ended_at = to_timestamp(f.ended), exit_code = f.rc,
               output_tail = f.tail, state_message = format('preprocess exit code %s', f.rc),
               batch_job_id = NULL
          FROM unnest(f_ids, f_kind, f_rc, f_ended, f_tail) AS f(id, kind, rc, ended, tail)
         WHERE f.kind = 13 AND t.id = f.id AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state = 'READY';
        GET DIAGNOSTICS m = ROW_COUNT;
    END IF;

    IF 14 = ANY (f_kind) THEN  -- its worker rank stopped answering: lost, as with a lease
        UPDATE public.tasks t
           SET state = CASE WHEN t.lost_retries >= t.lost_retry_limit
                            THEN 'FAILED'::public.task_state
                            ELSE 'RESTART_READY'::public.task_state END,
               lost_retries = t.lost_retries + (t.lost_retries < t.lost_retry_limit)::integer,
               batch_job_id = NULL, claimed_at = NULL, state_message = 'lost: ' || f.tail
          FROM unnest(f_ids, f_kind, f_tail) AS f(id, kind, tail)
         WHERE f.kind = 14 AND t.id = f.id AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state = 'RUNNING';
        GET DIAGNOSTICS lost = ROW_COUNT;
    END IF;

    UPDATE public.tasks t
       SET state = CASE WHEN f.kind IN (0, 5, 6) THEN 'RUN_DONE'::public.task_state
                        WHEN f.kind IN (2, 10, 11, 12) THEN 'RUN_TIMEOUT'::public.task_state
                        WHEN f.kind = 3 THEN 'RESTART_READY'::public.task_state
                        ELSE 'RUN_ERROR'::public.task_state END,
           started_at = coalesce(t.started_at, to_timestamp(f.started)),
           ended_at = to_timestamp(f.ended),
           exit_code = f.rc,
           output_tail = CASE WHEN f.kind IN (0, 5, 15) THEN '' ELSE f.tail END,
           state_message = CASE
               WHEN f.kind IN (0, 5) THEN ''
               WHEN f.kind = 6 THEN 'the postprocess failed'
               WHEN f.kind IN (2, 11) THEN 'ran over its wall_time_min'
               WHEN f.kind = 10 THEN 'ran over its wall_time_min; the timeout handler dealt with it'
               WHEN f.kind = 12 THEN 'ran over its wall_time_min; the timeout handler failed'
               WHEN f.kind = 3 THEN 'requeued: the batch job stopped it'
               WHEN f.kind = 7 THEN format('exit code %s; the error handler dealt with it', f.rc)
               WHEN f.kind = 9 THEN format('exit code %s; the error handler failed', f.rc)
               WHEN f.kind = 15 THEN f.tail
               ELSE format('exit code %s', f.rc) END,
           batch_job_id = CASE WHEN f.kind = 3 THEN NULL ELSE t.batch_job_id END
      FROM unnest(f_ids, f_kind, f_rc, f_started, f_ended, f_tail)
           AS f(id, kind, rc, started, ended, tail)
     WHERE f.kind NOT IN (4, 13, 14) AND t.id = f.id AND t.batch_job_id = p_job
       AND t.lease_epoch = p_epoch AND t.state = 'RUNNING';
    GET DIAGNOSTICS n = ROW_COUNT;
    step := 'ended'; changed := n + m + lost + c; RETURN NEXT;

    -- Ends that matched nothing, of tasks killed under this claim: the run is kept (0008).
    SELECT count(*) INTO n_ends FROM unnest(f_kind) AS k(kind) WHERE k.kind NOT IN (13, 14);
    IF n + (CASE WHEN c = paired THEN 0 ELSE c END) < n_ends THEN
        WITH hit AS (
            UPDATE public.tasks t
               SET started_at = coalesce(t.started_at, to_timestamp(f.started)),
                   ended_at = to_timestamp(f.ended), exit_code = f.rc,
                   output_tail = CASE WHEN f.kind IN (0, 5) THEN '' ELSE f.tail END
              FROM unnest(f_ids, f_kind, f_rc, f_started, f_ended, f_tail)
                   AS f(id, kind, rc, started, ended, tail),
                   LATERAL (SELECT e.from_state, e.to_state, e.batch_job_id
                              FROM public.task_events e WHERE e.task_id = f.id
                             ORDER BY e.id DESC LIMIT 1) last
             WHERE f.kind NOT IN (13, 14) AND t.id = f.id AND t.batch_job_id = p_job
               AND t.lease_epoch = p_epoch AND t.state = 'USER_KILLED'
               AND last.batch_job_id = p_job
               AND (last.to_state = 'RUNNING'
                    OR last.to_state = 'USER_KILLED' AND last.from_state = 'RUNNING')
            RETURNING t.id, t.ended_at, f.kind, f.rc, last.to_state AS last_state
        )
        INSERT INTO public.task_events (task_id, from_state, to_state, at, batch_job_id,
                                        message)
        SELECT h.id, 'RUNNING',
               CASE WHEN h.kind IN (0, 5, 6) THEN 'RUN_DONE'::public.task_state
                    WHEN h.kind IN (2, 10, 11, 12) THEN 'RUN_TIMEOUT'::public.task_state
                    WHEN h.kind IN (3, 4) THEN 'USER_KILLED'::public.task_state
                    ELSE 'RUN_ERROR'::public.task_state END,
               h.ended_at, p_job,
               format('exit code %s; the task stays killed', h.rc)
          FROM hit h WHERE h.last_state = 'RUNNING';
    END IF;

    SELECT array_agg(x.id) FILTER (WHERE x.kind = 0),
           array_agg(x.id) FILTER (WHERE x.kind IN (5, 7, 10)),
           array_agg(x.id) FILTER (WHERE x.kind IN (1, 2, 8, 11)),
           array_agg(x.id) FILTER (WHERE x.kind IN (6, 9, 12, 15))
      INTO ok_ids, post_ids, bad_ids, failed_ids
      FROM unnest(f_ids, f_kind) AS x(id, kind);

    IF ok_ids IS NOT NULL OR c > 0 THEN
        n := 0;
        IF ok_ids IS NOT NULL THEN
            UPDATE public.tasks t SET state = 'JOB_FINISHED'
             WHERE t.id = ANY (ok_ids) AND t.batch_job_id = p_job
               AND t.lease_epoch = p_epoch AND t.state = 'RUN_DONE';
            GET DIAGNOSTICS n = ROW_COUNT;
        END IF;
        step := 'finished'; changed := n + c; RETURN NEXT;
    END IF;

    IF post_ids IS NOT NULL THEN
        UPDATE public.tasks t SET state = 'POSTPROCESSED'
         WHERE t.id = ANY (post_ids) AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('RUN_DONE', 'RUN_ERROR', 'RUN_TIMEOUT');
        UPDATE public.tasks t SET state = 'JOB_FINISHED'
         WHERE t.id = ANY (post_ids) AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state = 'POSTPROCESSED';
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'postprocessed'; changed := n; RETURN NEXT;
    END IF;

    IF failed_ids IS NOT NULL THEN
        UPDATE public.tasks t SET state = 'FAILED', batch_job_id = NULL
         WHERE t.id = ANY (failed_ids) AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           AND t.state IN ('RUN_DONE', 'RUN_ERROR', 'RUN_TIMEOUT');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'failed'; changed := n; RETURN NEXT;
    END IF;

    IF bad_ids IS NOT NULL THEN
        UPDATE public.tasks t
           SET state = CASE WHEN r.retry THEN 'RESTART_READY'::public.task_state
                            ELSE 'FAILED'::public.task_state END,
               error_retries = t.error_retries
                               + (r.retry AND t.state = 'RUN_ERROR')::integer,
               timeout_retries = t.timeout_retries
                                 + (r.retry AND t.state = 'RUN_TIMEOUT')::integer,
               batch_job_id = NULL
          FROM (SELECT x.id,
                       x.state = 'RUN_ERROR' AND x.error_retries < x.error_retry_limit
                       OR x.state = 'RUN_TIMEOUT'
                          AND x.timeout_retries < x.timeout_retry_limit AS retry
                  FROM public.tasks x WHERE x.id = ANY (bad_ids)) r
         WHERE t.id = r.id AND t.batch_job_id = p_job
           AND t.lease_epoch = p_epoch AND t.state IN ('RUN_ERROR', 'RUN_TIMEOUT');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'retried_or_failed'; changed := n; RETURN NEXT;
    END IF;
END $$;

-- 0008's entry points keep their meaning: no pairs (a replay's lines come in groups).
CREATE OR REPLACE FUNCTION launcher_apply_reports(
    p_job bigint, p_epoch bigint,
    s_ids bigint[], s_at double precision[],
    f_ids bigint[], f_kind smallint[], f_rc integer[], f_started double precision[],
    f_ended double precision[], f_tail text[])
RETURNS TABLE (step text, changed bigint)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT * FROM public.launcher_apply_reports(p_job, p_epoch, s_ids, s_at, f_ids, f_kind,
                                                f_rc, f_started, f_ended, f_tail, 0);
$$;

-- The leader's reports with their pairs: as 0008's journaled launcher_report.
CREATE FUNCTION launcher_report(
    p_job bigint, p_epoch bigint,
    s_ids bigint[], s_at double precision[],
    f_ids bigint[], f_kind smallint[], f_rc integer[], f_started double precision[],
    f_ended double precision[], f_tail text[], p_through bigint, p_paired integer)
RETURNS TABLE (step text, changed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    IF p_through > 0 THEN
        UPDATE public.launcher_journals j
           SET applied_through = greatest(j.applied_through, p_through)
         WHERE j.job_id = p_job AND j.lease_epoch = p_epoch;
    END IF;
    RETURN QUERY SELECT * FROM launcher_apply_reports(p_job, p_epoch, s_ids, s_at, f_ids,
                                                      f_kind, f_rc, f_started, f_ended,
                                                      f_tail, p_paired);
END $$;

GRANT EXECUTE ON FUNCTION
    launcher_report(bigint, bigint, bigint[], double precision[], bigint[], smallint[],
                    integer[], double precision[], double precision[], text[], bigint,
                    integer)
TO balsam_member;

-- ---- the claim's indexes ---------------------------------------------------------------
-- The runnable indexes (0001) leave out claimed rows: a claim's write (batch_job_id set)
-- is then no entry in them, two index writes fewer per claimed task, and the next claim
-- does not step over the rows claimed before it that have not started yet (it filtered
-- them out one by one). The claim already asks for batch_job_id IS NULL, so its plan
-- stays on these indexes (tests/db/test_claim.py, test_claim_index.py).
DROP INDEX tasks_runnable;
DROP INDEX tasks_runnable_workflow;
CREATE INDEX tasks_runnable ON tasks (priority DESC, id)
    WHERE state IN ('READY', 'RESTART_READY') AND batch_job_id IS NULL;
CREATE INDEX tasks_runnable_workflow ON tasks (workflow, priority DESC, id)
    WHERE state IN ('READY', 'RESTART_READY') AND batch_job_id IS NULL;

-- ---- the claim's foreign key ------------------------------------------------------------
-- tasks.batch_job_id referenced batch_jobs (0001): Postgres checked it with a query per
-- claimed row (a key-share lock on the job's row, for each of up to 4,096 rows). Only
-- launcher_claim sets it, to the caller's own running job, which it now locks once per
-- claim the same way; and what ON DELETE SET NULL did is done by a trigger on
-- batch_jobs (`balsam-dbctl prune` deletes jobs whose tasks may be kept).
ALTER TABLE tasks DROP CONSTRAINT tasks_batch_job_id_fkey;

CREATE FUNCTION batch_jobs_release_tasks() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    UPDATE public.tasks t SET batch_job_id = NULL
      FROM old_rows o WHERE t.batch_job_id = o.id;
    RETURN NULL;
END $$;
CREATE TRIGGER batch_jobs_release_tasks AFTER DELETE ON batch_jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION batch_jobs_release_tasks();

-- 0008's claim, with the job's row locked once (above).
CREATE OR REPLACE FUNCTION launcher_claim(
    p_job bigint, p_epoch bigint, p_limit integer, p_capacity double precision,
    p_max_need double precision, p_workflows text[], p_tags jsonb, p_owners text[],
    p_remaining_min double precision, p_max_nodes integer)
RETURNS TABLE (id bigint, workflow text, name text, state task_state, app text,
               command text, shell boolean, env_script text, params jsonb, args text[],
               env jsonb, num_nodes integer, ranks_per_node integer,
               threads_per_rank integer, gpus_per_rank integer,
               node_packing_count integer, wall_time_min double precision,
               priority integer, input_files text[], parents jsonb)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off SET jit = off
AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    -- FOR KEY SHARE: the job cannot be deleted before this claim commits (what the
    -- foreign key's check did for every row).
    PERFORM 1 FROM public.batch_jobs b
      WHERE b.id = p_job AND b.lease_epoch = p_epoch AND b.state = 'RUNNING'
        FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch job % (epoch %) no longer holds its lease', p_job, p_epoch
            USING ERRCODE = 'lock_not_available';
    END IF;
    IF p_workflows IS NULL THEN
        RETURN QUERY
        WITH locked AS (
            SELECT t.id, t.priority, 1.0::float8 / t.node_packing_count AS need
              FROM public.tasks t
             WHERE t.state IN ('READY', 'RESTART_READY') AND t.batch_job_id IS NULL
               AND t.num_nodes <= p_max_nodes
               AND 1.0::float8 / t.node_packing_count <= p_max_need + 1e-9
               AND (p_remaining_min IS NULL OR t.wall_time_min <= p_remaining_min)
               AND (p_tags IS NULL OR t.tags @> p_tags)
               AND (p_owners IS NULL OR t.owner = ANY (p_owners))
             ORDER BY t.priority DESC, t.id
             LIMIT p_limit
               FOR UPDATE OF t SKIP LOCKED
        ), fitting AS (
            SELECT s.id FROM (
                SELECT l.id, sum(l.need) OVER (ORDER BY l.priority DESC, l.id) AS used
                  FROM locked l) s
             WHERE s.used <= p_capacity + 1e-9
        )
        UPDATE public.tasks t
           SET batch_job_id = p_job, lease_epoch = p_epoch, claimed_at = now()
          FROM fitting f, public.apps a
         WHERE t.id = f.id AND a.id = t.app_id
        RETURNING t.id, t.workflow, t.name, t.state, a.name, a.command, a.shell,
                  a.env_script, t.params, t.args, t.env, t.num_nodes, t.ranks_per_node,
                  t.threads_per_rank, t.gpus_per_rank, t.node_packing_count,
                  t.wall_time_min, t.priority, t.input_files,
                  CASE WHEN cardinality(t.input_files) > 0 THEN
                      (SELECT jsonb_agg(jsonb_build_array(p.workflow, p.id, p.name)
                                        ORDER BY p.id)
                         FROM public.task_deps d JOIN public.tasks p ON p.id = d.parent_id
                        WHERE d.child_id = t.id) END;
    ELSE
        RETURN QUERY
        WITH locked AS (
            SELECT c.id, c.priority, c.need
              FROM unnest(p_workflows) AS w(name)
             CROSS JOIN LATERAL (
                SELECT t.id, t.priority, 1.0::float8 / t.node_packing_count AS need
                  FROM public.tasks t
                 -- A range, not `=` (0004 says why: it keeps tasks_runnable_workflow).
                 WHERE t.workflow >= w.name AND t.workflow <= w.name
                   AND t.state IN ('READY', 'RESTART_READY') AND t.batch_job_id IS NULL
                   AND t.num_nodes <= p_max_nodes
                   AND 1.0::float8 / t.node_packing_count <= p_max_need + 1e-9
                   AND (p_remaining_min IS NULL OR t.wall_time_min <= p_remaining_min)
                   AND (p_tags IS NULL OR t.tags @> p_tags)
                   AND (p_owners IS NULL OR t.owner = ANY (p_owners))
                 ORDER BY t.workflow, t.priority DESC, t.id
                 LIMIT p_limit
                   FOR UPDATE OF t SKIP LOCKED) c
        ), fitting AS (
            SELECT s.id FROM (
                SELECT l.id, sum(l.need) OVER (ORDER BY l.priority DESC, l.id) AS used,
                       row_number() OVER (ORDER BY l.priority DESC, l.id) AS n
                  FROM locked l) s
             WHERE s.used <= p_capacity + 1e-9 AND s.n <= p_limit
        )
        UPDATE public.tasks t
           SET batch_job_id = p_job, lease_epoch = p_epoch, claimed_at = now()
          FROM fitting f, public.apps a
         WHERE t.id = f.id AND a.id = t.app_id
        RETURNING t.id, t.workflow, t.name, t.state, a.name, a.command, a.shell,
                  a.env_script, t.params, t.args, t.env, t.num_nodes, t.ranks_per_node,
                  t.threads_per_rank, t.gpus_per_rank, t.node_packing_count,
                  t.wall_time_min, t.priority, t.input_files,
                  CASE WHEN cardinality(t.input_files) > 0 THEN
                      (SELECT jsonb_agg(jsonb_build_array(p.workflow, p.id, p.name)
                                        ORDER BY p.id)
                         FROM public.task_deps d JOIN public.tasks p ON p.id = d.parent_id
                        WHERE d.child_id = t.id) END;
    END IF;
END $$;


-- ---- the DAG trigger -------------------------------------------------------------------
-- As 0007's, but a statement that finished tasks with no children (most of a launcher's
-- flushes) no longer runs the children's UPDATE for nothing: that empty statement still
-- went through every statement trigger on tasks.
CREATE OR REPLACE FUNCTION tasks_propagate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    done bigint[];
    stopped bigint[];
BEGIN
    -- Cheap exit for the launcher's common case (RUNNING, RUN_DONE, …): nothing to do.
    IF NOT EXISTS (
        SELECT 1 FROM new_rows n WHERE n.state IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED')
    ) THEN
        RETURN NULL;
    END IF;
    EXECUTE $q$
        SELECT array_agg(n.id) FILTER (WHERE n.state = 'JOB_FINISHED'),
               array_agg(n.id) FILTER (WHERE n.state <> 'JOB_FINISHED')
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.state = 'JOB_FINISHED' AND o.state <> 'JOB_FINISHED'
            OR n.state IN ('FAILED', 'USER_KILLED')
               AND o.state NOT IN ('FAILED', 'USER_KILLED')$q$
      INTO done, stopped;

    -- Parents that just finished: one decrement per (child, finished parents) pair; a
    -- child whose count reaches 0 while it waits becomes READY.
    IF done IS NOT NULL AND EXISTS (
        SELECT 1 FROM unnest(done) AS p (id) JOIN public.task_deps d ON d.parent_id = p.id
    ) THEN
        WITH counts AS (
            SELECT d.child_id, count(*)::integer AS k
              FROM unnest(done) AS p (id) JOIN public.task_deps d ON d.parent_id = p.id
             GROUP BY d.child_id
        )
        UPDATE public.tasks c
           SET pending_parents = greatest(c.pending_parents - counts.k, 0),
               state = CASE WHEN c.state = 'AWAITING_PARENTS' AND c.pending_parents <= counts.k
                            THEN 'READY'::task_state ELSE c.state END,
               state_message = CASE WHEN c.state = 'AWAITING_PARENTS'
                                     AND c.pending_parents <= counts.k
                                    THEN 'parents finished' ELSE c.state_message END
          FROM counts
         WHERE c.id = counts.child_id;
    END IF;
    IF stopped IS NULL THEN
        RETURN NULL;
    END IF;

    -- Parents that just stopped (FAILED or USER_KILLED): every waiting descendant reached
    -- through children that fail with their parents is FAILED, naming the ancestor.
    -- Rows stopped by this same statement are already stopped here, so a bulk kill of a
    -- whole workflow does not walk its graph again.
    WITH RECURSIVE down (id, root) AS (
        SELECT d.child_id, s.id FROM unnest(stopped) AS s (id)
          JOIN public.task_deps d ON d.parent_id = s.id
          JOIN public.tasks c ON c.id = d.child_id
         WHERE c.fail_with_parents AND c.state IN ('CREATED', 'AWAITING_PARENTS')
        UNION
        SELECT x.child_id, down.root FROM down CROSS JOIN LATERAL (
            SELECT d.child_id FROM public.task_deps d
              JOIN public.tasks c ON c.id = d.child_id
             WHERE d.parent_id = down.id AND c.fail_with_parents
               AND c.state IN ('CREATED', 'AWAITING_PARENTS')
            OFFSET 0) x
    ), first_root AS (
        SELECT DISTINCT ON (down.id) down.id, down.root FROM down ORDER BY down.id, down.root
    )
    UPDATE public.tasks c
       SET state = 'FAILED',
           failed_by = f.root,
           state_message = format('upstream task %s is %s', f.root, r.state)
      FROM first_root f JOIN public.tasks r ON r.id = f.root
     WHERE c.id = f.id;

    -- Children that opt out (fail_with_parents = false) count a stopped parent as done.
    WITH counts AS (
        SELECT d.child_id, count(*)::integer AS k
          FROM unnest(stopped) AS s (id) JOIN public.task_deps d ON d.parent_id = s.id
          JOIN public.tasks c ON c.id = d.child_id
         WHERE NOT c.fail_with_parents AND c.state IN ('CREATED', 'AWAITING_PARENTS')
         GROUP BY d.child_id
    )
    UPDATE public.tasks c
       SET pending_parents = greatest(c.pending_parents - counts.k, 0),
           state = CASE WHEN c.state = 'AWAITING_PARENTS' AND c.pending_parents <= counts.k
                        THEN 'READY'::task_state ELSE c.state END,
           state_message = CASE WHEN c.state = 'AWAITING_PARENTS'
                                 AND c.pending_parents <= counts.k
                                THEN 'parents done (some did not finish)'
                                ELSE c.state_message END
      FROM counts
     WHERE c.id = counts.child_id;
    RETURN NULL;
END $$;


-- ==== 0012_bulk_copy.sql ====
-- 0012_bulk_copy: bulk adds through binary COPY (docs/tasks.md, "How the bulk add is fast").
--
-- Postgres refuses COPY FROM into a table with row-level security for anyone the policies
-- apply to, so a bulk add copies its rows into a staging table without any, and one
-- checked function moves them into tasks:
--
--   1. The staging table is a temporary table of the caller's own session, made by
--      tasks_stage_open() as balsam_objects (the database's owner, so it may make
--      temporary tables; members may not, so nobody else can make or shadow one). No other
--      session can read or write it — Postgres refuses another session's temporary
--      tables to everyone, the superuser included — and the caller holds only INSERT on
--      it (COPY), not SELECT, UPDATE, DELETE, TRUNCATE, nor its definition. Its rows carry
--      no owner: whoever's session moves them owns them (session_user, as tasks_add). ON
--      COMMIT DELETE ROWS: nothing staged outlives the transaction that staged it.
--   2. tasks_add_staged(children, parents) moves every staged row into tasks, then the
--      dependencies, with every check of tasks_add and tasks_add_deps (0007) and more:
--      ids inside a block this transaction reserved; only the columns a new task may set;
--      owner = session_user; the CHECK constraints of limits.py and the app check of 0003
--      (the rows go into tasks); every child a row of this add, every parent a stored task
--      or a row of this add, no cycle (a new parent has a smaller id than its child: the
--      client hands out ids in dependency order), and each first state (READY,
--      AWAITING_PARENTS with the right count, FAILED under a stopped parent) matching the
--      states of the parents, which it locks itself.

CREATE FUNCTION tasks_stage_open() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF to_regclass('pg_temp.task_stage') IS NOT NULL THEN
        RETURN;
    END IF;
    -- The columns a new task may set (0007's column grants), with tasks' defaults, so a
    -- COPY names only the columns its rows give. state is text: a client need not know
    -- the enum's type oid to send it in binary.
    CREATE TEMPORARY TABLE task_stage (
        id                   bigint NOT NULL,
        workflow             text,
        name                 text NOT NULL DEFAULT '',
        app_id               bigint,
        params               jsonb NOT NULL DEFAULT '{}',
        args                 text[] NOT NULL DEFAULT '{}',
        tags                 jsonb NOT NULL DEFAULT '{}',
        num_nodes            integer NOT NULL DEFAULT 1,
        ranks_per_node       integer NOT NULL DEFAULT 1,
        threads_per_rank     integer NOT NULL DEFAULT 1,
        gpus_per_rank        integer NOT NULL DEFAULT 0,
        node_packing_count   integer NOT NULL DEFAULT 1,
        wall_time_min        double precision NOT NULL DEFAULT 0,
        env                  jsonb NOT NULL DEFAULT '{}',
        input_files          text[] NOT NULL DEFAULT '{}',
        priority             integer NOT NULL DEFAULT 0,
        state                text NOT NULL DEFAULT 'READY',
        state_message        text NOT NULL DEFAULT '',
        error_retry_limit    integer NOT NULL DEFAULT 0,
        timeout_retry_limit  integer NOT NULL DEFAULT 3,
        lost_retry_limit     integer NOT NULL DEFAULT 3,
        fail_with_parents    boolean NOT NULL DEFAULT true,
        pending_parents      integer NOT NULL DEFAULT 0,
        failed_by            bigint,
        data                 jsonb NOT NULL DEFAULT '{}'
    ) ON COMMIT DELETE ROWS;
    -- 0002's default privileges gave members and viewers SELECT: only INSERT is needed.
    REVOKE ALL ON pg_temp.task_stage FROM PUBLIC, balsam_member, balsam_viewer;
    GRANT INSERT ON pg_temp.task_stage TO balsam_member;
END $$;

-- The first error of a staged add, as one line naming the task and the field; the client
-- puts the input's own name ("tasks.jsonl line 7") in place of "task <id>".
CREATE FUNCTION tasks_stage_refuse(p_task bigint, p_message text, p_code text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'task %: %', p_task, p_message USING ERRCODE = p_code;
END $$;

CREATE FUNCTION tasks_add_staged(p_children bigint[], p_parents bigint[]) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n bigint;
    lo bigint;
    hi bigint;
    odd bigint;
BEGIN
    IF p_children IS NULL OR p_parents IS NULL
       OR cardinality(p_children) <> cardinality(p_parents) THEN
        RAISE EXCEPTION 'parents: give two arrays of the same length (children, parents)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF to_regclass('pg_temp.task_stage') IS NULL THEN
        n := 0;
    ELSE
        SELECT count(*), min(s.id), max(s.id),
               min(s.id) FILTER (WHERE NOT (s.state = 'READY' AND s.pending_parents = 0
                                            AND s.failed_by IS NULL))
          INTO n, lo, hi, odd
          FROM pg_temp.task_stage s;
    END IF;
    IF n = 0 THEN
        IF cardinality(p_children) > 0 THEN
            RAISE EXCEPTION 'parents: only tasks of this add get parents here (`balsam-mpi '
                'dep` for stored tasks)' USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN 0;
    END IF;
    IF NOT tasks_ids_reserved(lo, hi) THEN
        RAISE EXCEPTION 'task ids % to % were not reserved by this transaction '
            '(tasks_reserve_ids)', lo, hi USING ERRCODE = 'insufficient_privilege';
    END IF;

    IF cardinality(p_children) = 0 THEN
        -- The common case: no parents, so every task starts READY.
        IF odd IS NOT NULL THEN
            PERFORM tasks_stage_refuse(odd, 'state: a task without parents starts READY, '
                'with no parents pending and failed by nobody', 'check_violation');
        END IF;
    ELSE
        PERFORM tasks_stage_check_deps(p_children, p_parents);
    END IF;

    INSERT INTO public.tasks (id, workflow, name, app_id, params, args, tags, num_nodes,
                              ranks_per_node, threads_per_rank, gpus_per_rank,
                              node_packing_count, wall_time_min, env, input_files, priority,
                              state, state_message, error_retry_limit, timeout_retry_limit,
                              lost_retry_limit, fail_with_parents, pending_parents, failed_by,
                              data)
    OVERRIDING SYSTEM VALUE
    SELECT s.id, s.workflow, s.name, s.app_id, s.params, s.args, s.tags, s.num_nodes,
           s.ranks_per_node, s.threads_per_rank, s.gpus_per_rank, s.node_packing_count,
           s.wall_time_min, s.env, s.input_files, s.priority, s.state::task_state,
           left(s.state_message, 4096), s.error_retry_limit, s.timeout_retry_limit,
           s.lost_retry_limit, s.fail_with_parents, s.pending_parents, s.failed_by, s.data
      FROM pg_temp.task_stage s;
    IF cardinality(p_children) > 0 THEN
        INSERT INTO public.task_deps (child_id, parent_id)
        SELECT * FROM unnest(p_children, p_parents);
    END IF;
    -- The next chunk of this add starts from an empty table (in place: the table was
    -- made or emptied in this transaction, so no new file after the first time).
    TRUNCATE pg_temp.task_stage;
    RETURN n;
END $$;

-- The dependency rules of a staged add: every child is a staged row; every parent a stored
-- task (locked FOR SHARE until commit, so none changes state unseen) or a staged row; a
-- parent of this transaction's own ids comes before its child in id order (so no cycle);
-- each staged row's first state is what its parents' states make it.
CREATE FUNCTION tasks_stage_check_deps(p_children bigint[], p_parents bigint[])
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_nestloop = off AS $$
DECLARE
    bad record;
    stored_ids bigint[];
    stored_states text[];
    stored_roots bigint[];
BEGIN
    SELECT d.c, d.p INTO bad
      FROM unnest(p_children, p_parents) AS d (c, p)
     WHERE NOT EXISTS (SELECT 1 FROM pg_temp.task_stage s WHERE s.id = d.c)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'parents: task % is not a task of this add; only new tasks get '
            'parents here (`balsam-mpi dep` for stored tasks)', bad.c
            USING ERRCODE = 'insufficient_privilege';
    END IF;

    SELECT d.c, d.p INTO bad
      FROM unnest(p_children, p_parents) AS d (c, p)
     WHERE d.p >= d.c
       AND EXISTS (SELECT 1 FROM public.task_id_blocks b
                    WHERE b.xact = pg_current_xact_id()
                      AND d.p BETWEEN b.first AND b.first + b.n - 1)
     LIMIT 1;
    IF FOUND THEN
        PERFORM tasks_stage_refuse(bad.c, format('parents: task %s of this add must come '
            'before its child in id order (new tasks get ids parents first); a '
            'dependency on a later or the same task can close a cycle', bad.p),
            'invalid_parameter_value');
    END IF;

    SELECT array_agg(t.id), array_agg(t.state::text), array_agg(coalesce(t.failed_by, t.id))
      INTO stored_ids, stored_states, stored_roots
      FROM (SELECT x.id, x.state, x.failed_by FROM public.tasks x
             WHERE x.id = ANY (p_parents) ORDER BY x.id FOR SHARE) t;

    WITH parent AS (
        SELECT s.id, s.state, s.id AS root FROM pg_temp.task_stage s
        UNION ALL
        SELECT u.id, u.state, u.root FROM unnest(stored_ids, stored_states, stored_roots)
            AS u (id, state, root)
    ), edge AS (
        SELECT d.c, d.p, p.state, p.root
          FROM unnest(p_children, p_parents) AS d (c, p) LEFT JOIN parent p ON p.id = d.p
    ), per_child AS (
        SELECT e.c,
               count(*) FILTER (WHERE e.state IS NULL) AS missing,
               min(e.p) FILTER (WHERE e.state IS NULL) AS missing_id,
               count(*) FILTER (WHERE e.state NOT IN ('JOB_FINISHED', 'FAILED',
                                                      'USER_KILLED')) AS pend,
               array_agg(e.p) FILTER (WHERE e.state IN ('FAILED', 'USER_KILLED'))
                   || array_agg(e.root) FILTER (WHERE e.state IN ('FAILED', 'USER_KILLED'))
                   AS roots
          FROM edge e GROUP BY e.c
    ), expect AS (
        SELECT s.id, s.state, s.pending_parents, s.failed_by, k.missing, k.missing_id,
               coalesce(k.pend, 0) AS pend,
               s.fail_with_parents AND k.roots IS NOT NULL AS fails, k.roots
          FROM pg_temp.task_stage s LEFT JOIN per_child k ON k.c = s.id
    )
    SELECT * INTO bad FROM expect x
     WHERE x.missing > 0
        OR x.pending_parents IS DISTINCT FROM x.pend
        OR (x.fails AND NOT (x.state = 'FAILED' AND x.failed_by = ANY (x.roots)))
        OR (NOT x.fails AND (x.failed_by IS NOT NULL OR x.state IS DISTINCT FROM
            CASE WHEN x.pend > 0 THEN 'AWAITING_PARENTS' ELSE 'READY' END))
     ORDER BY x.id LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF bad.missing > 0 THEN
        PERFORM tasks_stage_refuse(bad.id, format('parents: no task with id %s',
            bad.missing_id), 'foreign_key_violation');
    END IF;
    PERFORM tasks_stage_refuse(bad.id, format('state: its parents make it %s with %s '
        'parents pending, not %s with %s%s', CASE WHEN bad.fails THEN 'FAILED'
        WHEN bad.pend > 0 THEN 'AWAITING_PARENTS' ELSE 'READY' END, bad.pend, bad.state,
        bad.pending_parents, CASE WHEN bad.failed_by IS NULL THEN ''
        ELSE format(' (failed by %s)', bad.failed_by) END), 'check_violation');
END $$;

GRANT EXECUTE ON FUNCTION tasks_stage_open(), tasks_add_staged(bigint[], bigint[])
    TO balsam_member;

-- ==== 0013_notify_plan.sql ====
-- 0013_notify_plan: the waiters' notification (0009) plans its join for any size.
--
-- tasks_notify_final joins its two transition tables. PL/pgSQL keeps the plan of the
-- first statement of a session; after a one-row UPDATE that plan is a nested loop, and
-- the 9,999 descendants a kill fails in one statement made it rows² — killing the root
-- of a 10,000-deep chain took 6.6 s (5.5 s of server CPU) against 0.22 s with a hash
-- join, which costs nothing at one row. 0007 did the same for the event trigger;
-- tests/db/test_trigger_plans.py keeps every trigger that joins old and new rows so.
ALTER FUNCTION tasks_notify_final() SET enable_nestloop = off;

-- ==== 0014_run_steps_truncate.sql ====
-- 0014_run_steps_truncate: a TRUNCATE of the history takes its run steps (0010) with it.
--
-- run_steps sums the run events of each batch job. Row deletes of tasks, events and batch
-- jobs mark or remove their steps (0010's triggers), but TRUNCATE fires no row trigger:
-- after `TRUNCATE task_events, tasks, batch_jobs RESTART IDENTITY` (the owner's way to
-- start a project's history over, and the benchmarks' between rounds) the next batch
-- job 1 inherited the old job 1's steps, and a report said 1.4–1.9 for a run that kept
-- its nodes 0.86 busy. A statement trigger on each of the three tables empties run_steps
-- as well (TRUNCATE … CASCADE fires the triggers of every table it empties).
CREATE FUNCTION run_steps_on_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    TRUNCATE public.run_steps;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION run_steps_on_truncate() FROM PUBLIC;
CREATE TRIGGER tasks_run_steps_truncate AFTER TRUNCATE ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION run_steps_on_truncate();
CREATE TRIGGER task_events_run_steps_truncate AFTER TRUNCATE ON task_events
    FOR EACH STATEMENT EXECUTE FUNCTION run_steps_on_truncate();
CREATE TRIGGER batch_jobs_run_steps_truncate AFTER TRUNCATE ON batch_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION run_steps_on_truncate();

-- ==== 0015_hand_back.sql ====
-- 0015_hand_back: a launcher that holds queued tasks it cannot start yet gives them back
-- to the database when another live launcher has free slots and nothing to claim.
--
-- Within one launcher the leader moves queued tasks from busy nodes to idle ones (the
-- recall, launcher/dispatch.py). Between launchers only the database can: each claims
-- what its nodes can start soon plus a margin, so near the end of the work one launcher
-- may hold a node's worth of tasks queued behind long ones while another launcher, whose
-- claims find nothing, idles. With tasks of 600 s on 5 launchers that costs a whole extra
-- wave to the ones holding (the model in benchmarks/, "launchers hand back").
--
-- Two calls, both on the launcher's own batch job only (launcher_check_user):
--   launcher_hunger(job, epoch, hungry, holding): records whether this launcher is hungry
--     (its last claim came back short and it has free slots) and answers whether another
--     live launcher is hungry for a task this one holds claimed but not started — or,
--     when this one holds none, whether another is hungry at all: then it claims no
--     margins, or it would take back at once what it has just released;
--   launcher_give_back(job, epoch, ids): releases those of ids that this job (at this
--     epoch) holds claimed and never started, and that a hungry launcher's filters take.
-- Hunger is a timestamp renewed while it lasts: a launcher that died hungry stops counting
-- after HUNGER_FRESH (3 s, six of the leaders' half-second beats). Nothing is counted
-- against a released task (no retry, no event: its state does not change), exactly as
-- when a closing launcher releases its unstarted claims.
ALTER TABLE batch_jobs ADD COLUMN hungry_at timestamptz;

-- Would a launcher with filters f (ClaimFilter.as_json: workflows, tags, owners; an empty
-- list takes all) claim a task with this workflow, tags and owner?
CREATE FUNCTION launcher_filter_takes(f jsonb, p_workflow text, p_tags jsonb, p_owner text)
RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, public AS $$
    SELECT (coalesce(jsonb_array_length(f -> 'workflows'), 0) = 0
            OR (f -> 'workflows') ? p_workflow)
       AND p_tags @> coalesce(f -> 'tags', '{}'::jsonb)
       AND (coalesce(jsonb_array_length(f -> 'owners'), 0) = 0
            OR (f -> 'owners') ? p_owner)
$$;

CREATE FUNCTION launcher_hunger(p_job bigint, p_epoch bigint, p_hungry boolean,
                                p_holding boolean)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    UPDATE public.batch_jobs b SET hungry_at = CASE WHEN p_hungry THEN now() END
     WHERE b.id = p_job AND b.lease_epoch = p_epoch AND b.state = 'RUNNING'
       AND (p_hungry OR b.hungry_at IS NOT NULL);
    IF NOT p_holding THEN
        RETURN EXISTS (
            SELECT 1 FROM public.batch_jobs h
             WHERE h.state = 'RUNNING' AND h.id <> p_job
               AND h.hungry_at > now() - interval '3 seconds');
    END IF;
    -- The few hungry jobs first; for each, does this job hold an unstarted task its
    -- filters take (this job's rows through tasks_batch_job, stopping at the first)?
    RETURN EXISTS (
        SELECT 1 FROM public.batch_jobs h
         WHERE h.state = 'RUNNING' AND h.id <> p_job
           AND h.hungry_at > now() - interval '3 seconds'
           AND EXISTS (
               SELECT 1 FROM public.tasks t
                WHERE t.batch_job_id = p_job AND t.lease_epoch = p_epoch
                  AND t.state IN ('READY', 'RESTART_READY') AND t.num_nodes = 1
                  AND launcher_filter_takes(h.filters, t.workflow, t.tags, t.owner)));
END $$;

CREATE FUNCTION launcher_give_back(p_job bigint, p_epoch bigint, p_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    RETURN QUERY
    UPDATE public.tasks t SET batch_job_id = NULL, claimed_at = NULL
     WHERE t.id = ANY (p_ids) AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
       AND t.state IN ('READY', 'RESTART_READY') AND t.num_nodes = 1
       AND EXISTS (
           SELECT 1 FROM public.batch_jobs h
            WHERE h.state = 'RUNNING' AND h.id <> p_job
              AND h.hungry_at > now() - interval '3 seconds'
              AND launcher_filter_takes(h.filters, t.workflow, t.tags, t.owner))
    RETURNING t.id;
END $$;

REVOKE ALL ON FUNCTION launcher_hunger(bigint, bigint, boolean, boolean),
                       launcher_give_back(bigint, bigint, bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION launcher_hunger(bigint, bigint, boolean, boolean),
                          launcher_give_back(bigint, bigint, bigint[]) TO balsam_member;

-- ==== 0016_finished_rows_leave_indexes.sql ====
-- 0016_finished_rows_leave_indexes: less database time per task (benchmarks/README.md,
-- "The database path per task … 0016"; docs/design-notes.md, 18):
--   * a task's last write (→ JOB_FINISHED, the end of every successful task) adds an
--     entry to two indexes fewer;
--   * one statement trigger after an UPDATE of tasks instead of four;
--   * the claim and the reports run one plan per session instead of one per call.
--
-- An UPDATE that changes an indexed column (the end changes `state`) writes a new entry
-- into every index of the table whose predicate the new row version meets; with the
-- claim, that was 4 + 4 index entries per task, each about 1–1.5 µs here. Two of them
-- served nobody once the task was over:
--
-- * tasks_batch_job (0001) held every task a batch job ever claimed, finished ones
--   included. Its readers look for what a job *holds*: the close and the lease expiry
--   (READY, RESTART_READY claims; RUNNING runs), `held_elsewhere` (READY … RUNNING, which
--   walked past every finished task of the job to find one), `jobs list` (PREPROCESSED,
--   RUNNING). They now read an index of the held rows only. What a job ran is history
--   (task_events.batch_job_id, run_steps); the few readers of a job's finished tasks
--   (`balsam-dbctl prune`, a deleted job's release below, the demo's and benchmarks'
--   run summary) scan, as they run once per prune or run.
-- * tasks_state_id (0003) held finished tasks, the bulk of a project's table, which
--   nobody asks for by state alone: lists by state go through tasks_workflow_state_id or
--   a scan of all rows, counts by state read every row. The index now leaves out
--   JOB_FINISHED, so it stays the size of the live work.
--
-- Each predicate is a list of states, so a reader's `state = 'RUNNING'` or
-- `state IN ('READY', 'RESTART_READY')` is implied by it and the planner keeps the index
-- (tests/db/test_index_writes.py reads the plans).

DROP INDEX tasks_batch_job;
CREATE INDEX tasks_batch_job ON tasks (batch_job_id)
    WHERE batch_job_id IS NOT NULL
      AND state IN ('READY', 'RESTART_READY', 'PREPROCESSED', 'RUNNING', 'RUN_DONE',
                    'RUN_ERROR', 'RUN_TIMEOUT', 'POSTPROCESSED');

DROP INDEX tasks_state_id;
CREATE INDEX tasks_state_id ON tasks (state, id) WHERE state <> 'JOB_FINISHED';

-- 0011's release of a deleted job's tasks, which now finds the finished ones by a scan:
-- one hash join over the table for the whole DELETE statement, never a scan per job.
CREATE OR REPLACE FUNCTION batch_jobs_release_tasks() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_nestloop = off AS $$
BEGIN
    UPDATE public.tasks t SET batch_job_id = NULL
      FROM old_rows o WHERE t.batch_job_id = o.id;
    RETURN NULL;
END $$;

-- ---- one statement trigger after an UPDATE of tasks -------------------------------------
-- Four statement triggers ran after every UPDATE of tasks (the transition check of 0007,
-- the events and run steps of 0010/0011, the waiters' notification of 0009, the DAG of
-- 0003/0011), and each joined the statement's old and new rows again: about 1.8 µs per
-- task of a flush, and four trigger calls per statement. One trigger now joins them once:
-- the statement that writes the events and run steps also returns what the other three
-- need (the first illegal move, the ids to notify, the parents that finished or stopped).
-- The order is kept: the check (a refused move undoes the whole statement, its events
-- with it), the history, the notification, then the DAG, whose own UPDATEs come back
-- through this trigger. What each part does is unchanged; docs/security.md's rule, a
-- state change only along task_transitions (or 0011's one combined write), holds for
-- every writer, the superuser included.
DROP TRIGGER tasks_events_update ON tasks;
DROP TRIGGER tasks_check_transitions ON tasks;
DROP TRIGGER tasks_notify_final ON tasks;
DROP TRIGGER tasks_propagate ON tasks;
DROP FUNCTION tasks_events_on_update();
DROP FUNCTION tasks_check_transitions();
DROP FUNCTION tasks_notify_final();

-- 0011's DAG step, from the ids the trigger found instead of its own join. Its walk
-- looks children up one parent at a time (index probes): it plans with nested loops
-- whatever its caller runs with.
CREATE OR REPLACE FUNCTION tasks_propagate_ids(done bigint[], stopped bigint[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_nestloop = on AS $$
BEGIN
    -- Parents that just finished: one decrement per (child, finished parents) pair; a
    -- child whose count reaches 0 while it waits becomes READY.
    IF done IS NOT NULL AND EXISTS (
        SELECT 1 FROM unnest(done) AS p (id) JOIN public.task_deps d ON d.parent_id = p.id
    ) THEN
        WITH counts AS (
            SELECT d.child_id, count(*)::integer AS k
              FROM unnest(done) AS p (id) JOIN public.task_deps d ON d.parent_id = p.id
             GROUP BY d.child_id
        )
        UPDATE public.tasks c
           SET pending_parents = greatest(c.pending_parents - counts.k, 0),
               state = CASE WHEN c.state = 'AWAITING_PARENTS' AND c.pending_parents <= counts.k
                            THEN 'READY'::task_state ELSE c.state END,
               state_message = CASE WHEN c.state = 'AWAITING_PARENTS'
                                     AND c.pending_parents <= counts.k
                                    THEN 'parents finished' ELSE c.state_message END
          FROM counts
         WHERE c.id = counts.child_id;
    END IF;
    IF stopped IS NULL THEN
        RETURN;
    END IF;

    -- Parents that just stopped (FAILED or USER_KILLED): every waiting descendant reached
    -- through children that fail with their parents is FAILED, naming the ancestor.
    -- Rows stopped by this same statement are already stopped here, so a bulk kill of a
    -- whole workflow does not walk its graph again.
    WITH RECURSIVE down (id, root) AS (
        SELECT d.child_id, s.id FROM unnest(stopped) AS s (id)
          JOIN public.task_deps d ON d.parent_id = s.id
          JOIN public.tasks c ON c.id = d.child_id
         WHERE c.fail_with_parents AND c.state IN ('CREATED', 'AWAITING_PARENTS')
        UNION
        SELECT x.child_id, down.root FROM down CROSS JOIN LATERAL (
            SELECT d.child_id FROM public.task_deps d
              JOIN public.tasks c ON c.id = d.child_id
             WHERE d.parent_id = down.id AND c.fail_with_parents
               AND c.state IN ('CREATED', 'AWAITING_PARENTS')
            OFFSET 0) x
    ), first_root AS (
        SELECT DISTINCT ON (down.id) down.id, down.root FROM down ORDER BY down.id, down.root
    )
    UPDATE public.tasks c
       SET state = 'FAILED',
           failed_by = f.root,
           state_message = format('upstream task %s is %s', f.root, r.state)
      FROM first_root f JOIN public.tasks r ON r.id = f.root
     WHERE c.id = f.id;

    -- Children that opt out (fail_with_parents = false) count a stopped parent as done.
    WITH counts AS (
        SELECT d.child_id, count(*)::integer AS k
          FROM unnest(stopped) AS s (id) JOIN public.task_deps d ON d.parent_id = s.id
          JOIN public.tasks c ON c.id = d.child_id
         WHERE NOT c.fail_with_parents AND c.state IN ('CREATED', 'AWAITING_PARENTS')
         GROUP BY d.child_id
    )
    UPDATE public.tasks c
       SET pending_parents = greatest(c.pending_parents - counts.k, 0),
           state = CASE WHEN c.state = 'AWAITING_PARENTS' AND c.pending_parents <= counts.k
                        THEN 'READY'::task_state ELSE c.state END,
           state_message = CASE WHEN c.state = 'AWAITING_PARENTS'
                                 AND c.pending_parents <= counts.k
                                THEN 'parents done (some did not finish)'
                                ELSE c.state_message END
      FROM counts
     WHERE c.id = counts.child_id;
END $$;
DROP FUNCTION tasks_propagate();

-- The one trigger. `changed` is 0011's step list (a combined write's row gives the three
-- events of its two-step path), with each row's old and new state and whether its move
-- is one task_transitions lists (or 0011's combined write, which may skip from a
-- startable state to JOB_FINISHED only when it records a new start and a new end).
-- Its join to (1), (2), (3) is a nested loop whatever the settings (jit = off: 0011).
CREATE FUNCTION tasks_on_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_nestloop = off SET enable_sort = off SET jit = off AS $$
DECLARE
    reshaped bigint[];
    done bigint[];
    stopped bigint[];
    ended bigint[];
    bad_id bigint;
    bad_from text;
    bad_to text;
    chunk text;
BEGIN
    WITH changed AS MATERIALIZED (
        SELECT x.id, x.from_state, x.to_state,
               CASE
                 WHEN x.to_state = 'RUNNING' AND x.started_at IS DISTINCT FROM x.old_started
                      AND x.started_at IS NOT NULL THEN x.started_at
                 WHEN x.to_state IN ('RUN_DONE', 'RUN_ERROR', 'RUN_TIMEOUT')
                      AND x.ended_at IS DISTINCT FROM x.old_ended
                      AND x.ended_at IS NOT NULL THEN x.ended_at
                 ELSE clock_timestamp()
               END AS at,
               x.job_id, x.state_message,
               CASE WHEN x.moved THEN nextval('task_events_id_seq'::regclass) END AS event_id,
               x.workflow, x.owner, x.w, x.moved, x.reshaped, x.step, x.old_state,
               x.new_state, x.illegal
          FROM (SELECT n.id, n.started_at, o.started_at AS old_started, n.ended_at,
                       o.ended_at AS old_ended,
                       coalesce(n.batch_job_id, o.batch_job_id) AS job_id, n.state_message,
                       n.workflow, n.owner, n.num_nodes::float8 / n.node_packing_count AS w,
                       n.state IS DISTINCT FROM o.state AS moved,
                       k.step = 1 AND (n.workflow, n.num_nodes, n.node_packing_count)
                         IS DISTINCT FROM (o.workflow, o.num_nodes, o.node_packing_count)
                         AS reshaped,
                       k.step, o.state AS old_state, n.state AS new_state,
                       k.step = 1 AND n.state <> o.state AND listed.from_state IS NULL
                         AND NOT (c.combined AND startable.from_state IS NOT NULL
                                  AND n.started_at IS NOT NULL
                                  AND n.started_at IS DISTINCT FROM o.started_at
                                  AND n.ended_at IS NOT NULL
                                  AND n.ended_at IS DISTINCT FROM o.ended_at) AS illegal,
                       CASE WHEN NOT c.combined OR k.step = 1 THEN o.state
                            WHEN k.step = 2 THEN 'RUNNING'::task_state
                            ELSE 'RUN_DONE'::task_state END AS from_state,
                       CASE WHEN NOT c.combined THEN n.state
                            WHEN k.step = 1 THEN 'RUNNING'::task_state
                            WHEN k.step = 2 THEN 'RUN_DONE'::task_state
                            ELSE n.state END AS to_state
                  FROM new_rows n JOIN old_rows o ON o.id = n.id
                  LEFT JOIN public.task_transitions listed
                         ON listed.from_state = o.state AND listed.to_state = n.state
                  LEFT JOIN public.task_transitions startable
                         ON startable.from_state = o.state AND startable.to_state = 'RUNNING'
                 CROSS JOIN LATERAL (
                       SELECT n.state = 'JOB_FINISHED'
                              AND o.state IN ('READY', 'RESTART_READY', 'PREPROCESSED')
                              AS combined) c
                 CROSS JOIN (VALUES (1), (2), (3)) AS k (step)
                 WHERE (n.state IS DISTINCT FROM o.state
                        OR (n.workflow, n.num_nodes, n.node_packing_count)
                             IS DISTINCT FROM (o.workflow, o.num_nodes, o.node_packing_count))
                   AND (k.step = 1 OR c.combined)) x
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
    SELECT array_agg(c.id) FILTER (WHERE c.reshaped),
           array_agg(c.id) FILTER (WHERE c.step = 1 AND c.new_state = 'JOB_FINISHED'
                                     AND c.old_state <> 'JOB_FINISHED'),
           array_agg(c.id) FILTER (WHERE c.step = 1
                                     AND c.new_state IN ('FAILED', 'USER_KILLED')
                                     AND c.old_state NOT IN ('FAILED', 'USER_KILLED')),
           array_agg(c.id) FILTER (WHERE c.step = 1 AND c.moved
                                     AND c.new_state IN ('JOB_FINISHED', 'FAILED',
                                                         'USER_KILLED')),
           (array_agg(c.id) FILTER (WHERE c.illegal))[1],
           (array_agg(c.old_state::text) FILTER (WHERE c.illegal))[1],
           (array_agg(c.new_state::text) FILTER (WHERE c.illegal))[1]
      INTO reshaped, done, stopped, ended, bad_id, bad_from, bad_to
      FROM changed c;
    IF bad_id IS NOT NULL THEN
        RAISE EXCEPTION 'task %: % -> % is not a state change balsam allows', bad_id,
            bad_from, bad_to USING ERRCODE = 'check_violation';
    END IF;
    IF reshaped IS NOT NULL THEN
        PERFORM run_steps_mark_dirty(reshaped);
    END IF;
    -- The waiters (0009): the ids that reached a final state, 350 to a notification.
    IF ended IS NOT NULL THEN
        FOR chunk IN
            SELECT string_agg(e.id::text, ',')
              FROM (SELECT e.id, (row_number() OVER ()) / 350 AS k
                      FROM unnest(ended) AS e (id)) e
             GROUP BY e.k
        LOOP
            PERFORM pg_notify('balsam_task_final', chunk);
        END LOOP;
    END IF;
    IF done IS NOT NULL OR stopped IS NOT NULL THEN
        PERFORM tasks_propagate_ids(done, stopped);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_on_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_on_update();

-- ---- plans made once per session ----------------------------------------------------------
-- PL/pgSQL plans a statement with parameters for each call's values (a custom plan) until
-- a generic plan looks no dearer; the claim's statement never qualified, so every claim
-- was planned again: about 0.3 ms of a 16-row claim's 1 ms here, and the reports'
-- statements over their arrays likewise (benchmarks/README.md). The claim's plan is
-- pinned by its settings (0008, 0011: the runnable index in (priority, id) order, no sort,
-- no bitmap, no sequential scan) and the reports' statements match rows by id (an index
-- probe per array element, whatever the array's length), so one plan per session serves
-- every call (tests/db/test_index_writes.py reads it).
ALTER FUNCTION launcher_claim(bigint, bigint, integer, double precision, double precision,
                              text[], jsonb, text[], double precision, integer)
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION launcher_apply_reports(bigint, bigint, bigint[], double precision[], bigint[],
                                      smallint[], integer[], double precision[],
                                      double precision[], text[], integer)
    SET plan_cache_mode = force_generic_plan;

-- ==== 0017_journal_results.sql ====
-- 0017_journal_results: a Python task's return value is written from its leader's
-- journal too (docs/python-tasks.md, docs/reliability.md).
--
-- A leader cut off from the database keeps its nodes' reports in its journal (0008), the
-- return values of Python calls included (the protocol's Finished carries them as an
-- eighth element since 0009). The replay wrote the ends but not the values, so a task
-- whose function had returned a value could be JOB_FINISHED with no result, and a
-- workflow waiting on it read None. The replay now writes them, under the rules of a live
-- flush (launcher_results, 0009): a success only, fenced by the job and its epoch, never
-- over a value already written, the same cap, and text that is not JSON refused alone
-- with a state message. A task the dead job's end had requeued and the replay finished
-- (0008's "finished_after_requeue") no longer names the job; the replay passes those ids.
--
-- launcher_results and the replay share one writer. It is nobody's to call (functions are
-- not executable by PUBLIC here, 0002): launcher_results checks its caller is the job's
-- user first; the replay has checked every line's MAC.

CREATE FUNCTION launcher_write_results(p_job bigint, p_epoch bigint, p_ids bigint[],
                                       p_results text[], p_also bigint[])
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    n bigint := 0;
    m bigint;
    one record;
BEGIN
    BEGIN
        UPDATE public.tasks t
           SET result = CASE WHEN octet_length(r.doc) <= 262144 THEN r.doc::json END,
               state_message = CASE WHEN octet_length(r.doc) <= 262144 THEN t.state_message
                   ELSE format('the result was not stored: %s bytes of JSON, over the cap '
                               'of 262144', octet_length(r.doc)) END
          FROM unnest(p_ids, p_results) AS r(id, doc)
         WHERE t.id = r.id AND (t.batch_job_id = p_job OR t.id = ANY (p_also))
           AND t.lease_epoch = p_epoch
           AND t.state = 'JOB_FINISHED' AND t.result IS NULL;
        GET DIAGNOSTICS n = ROW_COUNT;
    EXCEPTION WHEN invalid_text_representation OR untranslatable_character
                   OR character_not_in_repertoire THEN
        n := 0;
        FOR one IN SELECT r.id, r.doc FROM unnest(p_ids, p_results) AS r(id, doc) LOOP
            BEGIN
                UPDATE public.tasks t
                   SET result = CASE WHEN octet_length(one.doc) <= 262144
                                     THEN one.doc::json END,
                       state_message = CASE WHEN octet_length(one.doc) <= 262144
                           THEN t.state_message
                           ELSE format('the result was not stored: %s bytes of JSON, over '
                                       'the cap of 262144', octet_length(one.doc)) END
                 WHERE t.id = one.id AND (t.batch_job_id = p_job OR t.id = ANY (p_also))
                   AND t.lease_epoch = p_epoch AND t.state = 'JOB_FINISHED'
                   AND t.result IS NULL;
                GET DIAGNOSTICS m = ROW_COUNT;
                n := n + m;
            EXCEPTION WHEN invalid_text_representation OR untranslatable_character
                           OR character_not_in_repertoire THEN
                UPDATE public.tasks t
                   SET state_message = 'the result was not stored: not valid JSON'
                 WHERE t.id = one.id AND (t.batch_job_id = p_job OR t.id = ANY (p_also))
                   AND t.lease_epoch = p_epoch AND t.state = 'JOB_FINISHED';
            END;
        END LOOP;
    END;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION launcher_results(p_job bigint, p_epoch bigint, p_ids bigint[],
                                            p_results text[])
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    RETURN launcher_write_results(p_job, p_epoch, p_ids, p_results, '{}');
END $$;


-- ---- the replay, as in 0008, and then the values ---------------------------------------
-- Finished is (id, epoch, kind, rc, started, ended, tail, result): result is the JSON
-- text a call returned, or null; journals written before 0009 have seven elements.
CREATE OR REPLACE FUNCTION launcher_replay(p_job bigint, p_epoch bigint, p_lines text[],
                                p_macs text[])
RETURNS TABLE (step text, changed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    j public.launcher_journals%ROWTYPE;
    job public.batch_jobs%ROWTYPE;
    ikey bytea;
    okey bytea;
    k bytea;
    doc jsonb;
    grp jsonb;
    groups jsonb := '[]';
    seq bigint;
    through bigint;
    i integer;
    applied integer := 0;
    finished boolean := false;
    s_ids bigint[];
    s_at float8[];
    f_ids bigint[];
    f_kind smallint[];
    f_rc integer[];
    f_started float8[];
    f_ended float8[];
    f_tail text[];
    all_f_ids bigint[] := '{}';
    all_f_kind smallint[] := '{}';
    all_f_rc integer[] := '{}';
    all_f_started float8[] := '{}';
    all_f_ended float8[] := '{}';
    r record;
    n bigint;
    ok_ids bigint[];
    post_ids bigint[];
    v_ids bigint[];
    v_docs text[];
BEGIN
    SELECT * INTO j FROM public.launcher_journals x
     WHERE x.job_id = p_job AND x.lease_epoch = p_epoch FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch job % (epoch %) has no journal', p_job, p_epoch
            USING ERRCODE = 'no_data_found';
    END IF;
    SELECT * INTO job FROM public.batch_jobs b WHERE b.id = p_job;
    IF job.state = 'RUNNING' AND job.lease_epoch = p_epoch
       AND coalesce(job.heartbeat_at, job.started_at)
           >= now() - make_interval(secs => job.lease_sec) THEN
        RAISE EXCEPTION 'batch job % still holds its lease: its own leader writes its reports',
            p_job USING ERRCODE = 'lock_not_available';
    END IF;
    -- HMAC-SHA256 (RFC 2104) from the built-in sha256(): the 32-byte key padded to the
    -- 64-byte block, XORed with the inner and outer pads once per call.
    k := j.mac_key || decode(repeat('00', 64 - length(j.mac_key)), 'hex');
    ikey := k;
    okey := k;
    FOR i IN 0..63 LOOP
        ikey := set_byte(ikey, i, get_byte(k, i) # 54);
        okey := set_byte(okey, i, get_byte(k, i) # 92);
    END LOOP;
    seq := j.replayed_seq;
    through := j.applied_through;
    FOR i IN 1..coalesce(cardinality(p_lines), 0) LOOP
        EXIT WHEN p_macs[i] IS NULL OR lower(p_macs[i]) <> encode(
            sha256(okey || sha256(ikey || convert_to(p_lines[i], 'UTF8'))), 'hex');
        doc := p_lines[i]::jsonb;
        EXIT WHEN (doc->>'job')::bigint IS DISTINCT FROM p_job
               OR (doc->>'epoch')::bigint IS DISTINCT FROM p_epoch;
        CONTINUE WHEN (doc->>'seq')::bigint <= seq;  -- taken by an earlier replay
        EXIT WHEN (doc->>'seq')::bigint <> seq + 1;  -- a gap: stop where it is known good
        seq := seq + 1;
        applied := applied + 1;
        finished := finished OR coalesce((doc->>'end')::boolean, false);
        FOR grp IN SELECT g.value FROM jsonb_array_elements(coalesce(doc->'g', '[]')) g LOOP
            CONTINUE WHEN (grp->>0)::bigint <= through;  -- written by the live leader
            through := (grp->>0)::bigint;
            groups := groups || jsonb_build_array(grp);
        END LOOP;
    END LOOP;
    step := 'lines'; changed := applied; RETURN NEXT;
    IF applied = 0 THEN
        RETURN;
    END IF;

    -- Everything in one call when each task appears once; else group by group, in order
    -- (a task reported twice ran twice under this claim, after a retry).
    SELECT coalesce(array_agg((e->>0)::bigint), '{}'), coalesce(array_agg((e->>2)::float8), '{}')
      INTO s_ids, s_at
      FROM jsonb_array_elements(groups) g, jsonb_array_elements(g.value->1) e;
    SELECT coalesce(array_agg((e->>0)::bigint), '{}'),
           coalesce(array_agg((e->>2)::smallint), '{}'),
           coalesce(array_agg((e->>3)::integer), '{}'),
           coalesce(array_agg((e->>4)::float8), '{}'),
           coalesce(array_agg((e->>5)::float8), '{}'),
           coalesce(array_agg(e->>6), '{}')
      INTO f_ids, f_kind, f_rc, f_started, f_ended, f_tail
      FROM jsonb_array_elements(groups) g, jsonb_array_elements(g.value->2) e;
    all_f_ids := f_ids; all_f_kind := f_kind; all_f_rc := f_rc;
    all_f_started := f_started; all_f_ended := f_ended;
    IF (SELECT count(*) = count(DISTINCT x) FROM unnest(s_ids) x)
       AND (SELECT count(*) = count(DISTINCT x) FROM unnest(f_ids) x) THEN
        FOR r IN SELECT * FROM launcher_apply_reports(p_job, p_epoch, s_ids, s_at, f_ids,
                                                      f_kind, f_rc, f_started, f_ended,
                                                      f_tail) LOOP
            step := r.step; changed := r.changed; RETURN NEXT;
        END LOOP;
    ELSE
        FOR grp IN SELECT g.value FROM jsonb_array_elements(groups) g LOOP
            SELECT coalesce(array_agg((e->>0)::bigint), '{}'),
                   coalesce(array_agg((e->>2)::float8), '{}')
              INTO s_ids, s_at FROM jsonb_array_elements(grp->1) e;
            SELECT coalesce(array_agg((e->>0)::bigint), '{}'),
                   coalesce(array_agg((e->>2)::smallint), '{}'),
                   coalesce(array_agg((e->>3)::integer), '{}'),
                   coalesce(array_agg((e->>4)::float8), '{}'),
                   coalesce(array_agg((e->>5)::float8), '{}'),
                   coalesce(array_agg(e->>6), '{}')
              INTO f_ids, f_kind, f_rc, f_started, f_ended, f_tail
              FROM jsonb_array_elements(grp->2) e;
            PERFORM launcher_apply_reports(p_job, p_epoch, s_ids, s_at, f_ids, f_kind,
                                           f_rc, f_started, f_ended, f_tail);
        END LOOP;
    END IF;

    -- Successes of tasks this job's end requeued (lost lease, failed close) and nobody
    -- claimed since: the last event is that requeue, by this job.
    WITH ok AS (
        SELECT f.id, f.kind, f.rc, f.started, f.ended
          FROM unnest(all_f_ids, all_f_kind, all_f_rc, all_f_started, all_f_ended)
               AS f(id, kind, rc, started, ended)
         WHERE f.kind IN (0, 5, 7, 10)
    ), hit AS (
        UPDATE public.tasks t
           SET state = CASE ok.kind WHEN 7 THEN 'RUN_ERROR'::public.task_state
                                    WHEN 10 THEN 'RUN_TIMEOUT'::public.task_state
                                    ELSE 'RUN_DONE'::public.task_state END,
               started_at = to_timestamp(ok.started), ended_at = to_timestamp(ok.ended),
               exit_code = ok.rc, output_tail = '',
               lost_retries = greatest(0, t.lost_retries
                                          - (last.message LIKE 'lost:%')::integer),
               state_message = format('finished while batch job %s was cut off; '
                                      'written from its journal', p_job)
          FROM ok, LATERAL (SELECT e.from_state, e.to_state, e.batch_job_id, e.message
                              FROM public.task_events e WHERE e.task_id = ok.id
                             ORDER BY e.id DESC LIMIT 1) last
         WHERE t.id = ok.id AND t.state = 'RESTART_READY' AND t.batch_job_id IS NULL
           AND t.lease_epoch = p_epoch AND last.from_state = 'RUNNING'
           AND last.to_state = 'RESTART_READY' AND last.batch_job_id = p_job
        RETURNING t.id, ok.kind
    )
    SELECT array_agg(h.id), array_agg(h.id) FILTER (WHERE h.kind <> 0)
      INTO ok_ids, post_ids FROM hit h;
    IF ok_ids IS NOT NULL THEN
        IF post_ids IS NOT NULL THEN
            UPDATE public.tasks t SET state = 'POSTPROCESSED' WHERE t.id = ANY (post_ids);
        END IF;
        UPDATE public.tasks t SET state = 'JOB_FINISHED'
         WHERE t.id = ANY (ok_ids) AND t.state IN ('RUN_DONE', 'POSTPROCESSED');
        GET DIAGNOSTICS n = ROW_COUNT;
        step := 'finished_after_requeue'; changed := n; RETURN NEXT;
    END IF;

    -- The return values of the successes (the node sent them with the ends, 0017): held
    -- to the rules of a live flush, and to tasks this replay may speak for: still this
    -- job's, or just finished above after this job's requeue.
    SELECT array_agg((e->>0)::bigint), array_agg(e->>7)
      INTO v_ids, v_docs
      FROM jsonb_array_elements(groups) g, jsonb_array_elements(g.value->2) e
     WHERE (e->>2)::smallint = 0 AND e->>7 IS NOT NULL;
    IF v_ids IS NOT NULL THEN
        step := 'results';
        changed := launcher_write_results(p_job, p_epoch, v_ids, v_docs,
                                          coalesce(ok_ids, '{}'));
        RETURN NEXT;
    END IF;

    UPDATE public.launcher_journals x
       SET replayed_seq = seq, applied_through = through, done = x.done OR finished
     WHERE x.job_id = p_job AND x.lease_epoch = p_epoch;
END $$;

-- ==== 0018_held_rows_by_state.sql ====
-- 0018_held_rows_by_state: the held-rows index is keyed by the job *and* the state.
--
-- launcher_held_elsewhere (launcher.sql) asks, for each batch job holding work an idle
-- launcher could run, whether some of it is queued and unstarted (0015's hand-back). With
-- tasks_batch_job keyed by the job alone (0016), that probe read every row the holder
-- held until it met a READY or RESTART_READY one: at the end of a big run, when holders
-- have tens of thousands of RUNNING tasks and nothing queued, every row of every holder,
-- from each idle launcher, every claim_idle_s (a test counted 3,000 rows read and
-- dropped for one holder of 3,000 runs; tests/db/test_index_writes.py). Keyed by
-- (job, state), the probe goes straight to the queued rows; the readers that want all
-- of a job's held rows (close, lease expiry, jobs list, the first probe) use the leading
-- column as before.
--
-- No write adds an entry it did not add before: a task's state is in the predicate
-- already, so every change of state wrote a new entry anyway. An entry grows from 16 to
-- 24 bytes.
DROP INDEX tasks_batch_job;
CREATE INDEX tasks_batch_job ON tasks (batch_job_id, state)
    WHERE batch_job_id IS NOT NULL
      AND state IN ('READY', 'RESTART_READY', 'PREPROCESSED', 'RUNNING', 'RUN_DONE',
                    'RUN_ERROR', 'RUN_TIMEOUT', 'POSTPROCESSED');

-- ==== 0019_filter_shape.sql ====
-- 0019_filter_shape: a batch job's filters have the shape every reader assumes.
--
-- launcher_open_job and batch_job_submit store the caller's filters as given. A member
-- calling them directly could store {"workflows": "x"} or {"workflows": [{"a": 1}]}; the
-- readers of other launchers' filters (launcher_filter_takes, launcher_hunger, the
-- division's read in launcher_claim_peers) then failed for every launcher on the
-- project, or handed a leader values its division could not use. The database now
-- refuses such a row: an object whose "workflows" and "owners", when present, are
-- arrays of strings and whose "tags", when present, is an object (ClaimFilter.as_json).
-- Rows written before are not re-checked (NOT VALID): the launcher wrote only that shape.
CREATE FUNCTION launcher_filters_ok(f jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, public AS $$
    SELECT jsonb_typeof(f) = 'object'
       AND (NOT f ? 'workflows' OR (jsonb_typeof(f -> 'workflows') = 'array'
            AND NOT jsonb_path_exists(f -> 'workflows', '$[*] ? (@.type() != "string")')))
       AND (NOT f ? 'owners' OR (jsonb_typeof(f -> 'owners') = 'array'
            AND NOT jsonb_path_exists(f -> 'owners', '$[*] ? (@.type() != "string")')))
       AND (NOT f ? 'tags' OR jsonb_typeof(f -> 'tags') = 'object')
$$;

ALTER TABLE batch_jobs ADD CONSTRAINT batch_jobs_filters_shape
    CHECK (launcher_filters_ok(filters)) NOT VALID;

-- ==== 0020_python_calls_without_dirs.sql ====
-- 0020_python_calls_without_dirs: a Python app may run its calls without a directory
-- and output files of their own (docs/python-tasks.md, *Calls without directories*).
-- A call then runs in its workflow's directory and its output stays in memory: the tail
-- of a failure is kept in the task's record as for any task. Making a directory and two
-- files for every call is most of a short call's cost on a busy or remote file system.
-- Only for Python apps: a process is started in its own directory, and its outputs are
-- what child processes write to.
ALTER TABLE apps ADD COLUMN task_dirs boolean NOT NULL DEFAULT true;
ALTER TABLE apps ADD CONSTRAINT apps_task_dirs_python
    CHECK (task_dirs OR python IS NOT NULL);

-- ==== 0021_superseded_runs.sql ====
-- 0021_superseded_runs: the tasks of a batch job's earlier run, when the scheduler starts
-- the same job again (docs/reliability.md, docs/schedulers.md).
--
-- Slurm requeues a job whose node failed, that was preempted, or that `scontrol requeue`
-- named, and PBS reruns one (`qrerun`): the same scheduler job id starts again, and its
-- launcher adopts the same batch-job row under a new lease epoch. If the earlier run died
-- without closing the row (SIGKILL, a node lost) and its lease was still fresh, its RUNNING
-- tasks and unstarted claims kept the row's id with the old epoch: the new run's claims
-- skip rows that have a batch job, its close touches only its own epoch, and the lease
-- sweep looks only at rows whose heartbeat stopped. They stayed RUNNING for ever.
--
-- The earlier run's leader, if it still lives, stops them as any leader stops its tasks:
-- its heartbeat now fails (the epoch moved on) and it cuts them at once, or it cannot
-- reach the database and cuts them at half its lease. So at adoption the row records when
-- the superseded run has surely stopped: its last heartbeat plus its lease, the bound the
-- lease sweep (0005) uses for a whole job. After that instant, whoever sweeps (every
-- leader's loop, `balsam-dbctl recover`) requeues them as that sweep would: RUNNING ->
-- RESTART_READY with the lost counter +1 (FAILED at its limit) and a state message,
-- unstarted claims released. The adopting leader waits for them before it counts itself
-- idle (sql/launcher.sql, launcher_held_elsewhere).

ALTER TABLE batch_jobs ADD COLUMN superseded_until timestamptz;

CREATE OR REPLACE FUNCTION launcher_open_job(
    p_job_id bigint, p_scheduler text, p_scheduler_job_id text, p_host text,
    p_nodes integer, p_ranks integer, p_filters jsonb, p_wall_time_min double precision,
    p_lease_sec double precision)
RETURNS TABLE (job_id bigint, lease_epoch bigint, adopted boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    found_id bigint;
    found_user text;
BEGIN
    IF p_lease_sec IS NULL OR NOT (p_lease_sec > 0 AND p_lease_sec <= 86400) THEN
        RAISE EXCEPTION 'lease_sec: must be more than 0 and at most 86400 seconds, got %',
            p_lease_sec USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_job_id IS NOT NULL THEN
        SELECT b.id, b."user" INTO found_id, found_user
          FROM public.batch_jobs b WHERE b.id = p_job_id FOR UPDATE;
        IF found_id IS NULL THEN
            RAISE EXCEPTION 'batch job % does not exist', p_job_id
                USING ERRCODE = 'no_data_found';
        END IF;
        IF found_user <> session_user THEN
            RAISE EXCEPTION 'batch job % belongs to %: only its own launcher can use it '
                '(a launcher adopts only batch jobs its own user submitted; check '
                'BALSAM_BATCH_JOB_ID)', p_job_id, found_user
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    ELSIF p_scheduler_job_id IS NOT NULL THEN
        SELECT b.id INTO found_id FROM public.batch_jobs b
         WHERE b.scheduler = p_scheduler AND b.scheduler_job_id = p_scheduler_job_id
           AND b."user" = session_user
           FOR UPDATE;
    END IF;
    IF found_id IS NOT NULL THEN
        RETURN QUERY
        UPDATE public.batch_jobs b
           SET state = 'RUNNING', host = p_host, nodes = p_nodes, ranks = p_ranks,
               filters = p_filters,
               wall_time_min = coalesce(p_wall_time_min, b.wall_time_min),
               lease_sec = p_lease_sec, lease_epoch = b.lease_epoch + 1,
               started_at = coalesce(b.started_at, now()), heartbeat_at = now(),
               ended_at = NULL, end_reason = NULL,
               -- Tasks an earlier run still holds: stopped for sure once that run's
               -- lease (from its last heartbeat) has run out. A later adoption never
               -- brings the instant forward.
               superseded_until = CASE
                   WHEN EXISTS (SELECT 1 FROM public.tasks t WHERE t.batch_job_id = b.id)
                   THEN greatest(b.superseded_until,
                                 coalesce(b.heartbeat_at, b.started_at, now())
                                 + make_interval(secs => b.lease_sec))
                   ELSE b.superseded_until END
         WHERE b.id = found_id
        RETURNING b.id, b.lease_epoch, true;
    ELSE
        RETURN QUERY
        INSERT INTO public.batch_jobs (scheduler, scheduler_job_id, host, nodes, ranks,
                                       filters, wall_time_min, state, lease_epoch,
                                       lease_sec, started_at, heartbeat_at)
        VALUES (p_scheduler, p_scheduler_job_id, p_host, p_nodes, p_ranks, p_filters,
                p_wall_time_min, 'RUNNING', 1, p_lease_sec, now(), now())
        RETURNING batch_jobs.id, batch_jobs.lease_epoch, false;
    END IF;
END $$;

-- The sweep of superseded runs (all rows that have one due, or only p_job): the tasks of
-- a row's earlier epochs requeued as 0005's sweep requeues a lost job's, one row per
-- batch job swept. Rows are taken with SKIP LOCKED, like 0005's; the tasks are re-checked
-- under their lock, so a report that committed first wins (a superseded run's reports
-- are refused anyway: they carry its epoch).
CREATE FUNCTION launcher_sweep_superseded(p_job bigint DEFAULT NULL)
RETURNS TABLE (job_id bigint, job_user text, requeued bigint, failed bigint,
               released bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    jobs bigint[];
    users text[];
    epochs bigint[];
    lost_jobs bigint[];
    lost_states public.task_state[];
    freed_jobs bigint[];
BEGIN
    WITH due AS (
        SELECT b.id FROM public.batch_jobs b
         WHERE b.superseded_until IS NOT NULL AND b.superseded_until < now()
           AND (p_job IS NULL OR b.id = p_job)
           FOR UPDATE SKIP LOCKED
    ), cleared AS (
        UPDATE public.batch_jobs b SET superseded_until = NULL
          FROM due d WHERE b.id = d.id
        RETURNING b.id, b."user", b.lease_epoch
    )
    SELECT array_agg(c.id), array_agg(c."user"), array_agg(c.lease_epoch)
      INTO jobs, users, epochs
      FROM cleared c;
    IF jobs IS NULL THEN
        RETURN;
    END IF;

    WITH hit AS (
        UPDATE public.tasks t
           SET state = CASE WHEN t.lost_retries >= t.lost_retry_limit
                            THEN 'FAILED'::public.task_state
                            ELSE 'RESTART_READY'::public.task_state END,
               lost_retries = t.lost_retries
                              + (t.lost_retries < t.lost_retry_limit)::integer,
               batch_job_id = NULL, claimed_at = NULL,
               state_message = format('lost: the run of batch job %s at epoch %s ended '
                                      'without closing it, and the job was started again '
                                      '(a scheduler''s requeue)', j.id, t.lease_epoch)
          FROM unnest(jobs, epochs) AS j(id, epoch)
         WHERE t.batch_job_id = j.id AND t.lease_epoch < j.epoch AND t.state = 'RUNNING'
        RETURNING j.id AS job, t.state
    )
    SELECT array_agg(h.job), array_agg(h.state) INTO lost_jobs, lost_states FROM hit h;

    WITH freed AS (
        UPDATE public.tasks t SET batch_job_id = NULL, claimed_at = NULL
          FROM unnest(jobs, epochs) AS j(id, epoch)
         WHERE t.batch_job_id = j.id AND t.lease_epoch < j.epoch
           AND t.state IN ('READY', 'RESTART_READY')
        RETURNING j.id AS job
    )
    SELECT array_agg(f.job) INTO freed_jobs FROM freed f;

    RETURN QUERY
    SELECT u.id, u.who,
           (SELECT count(*) FROM unnest(lost_jobs, lost_states) AS x(job, st)
             WHERE x.job = u.id AND x.st <> 'FAILED'),
           (SELECT count(*) FROM unnest(lost_jobs, lost_states) AS x(job, st)
             WHERE x.job = u.id AND x.st = 'FAILED'),
           (SELECT count(*) FROM unnest(freed_jobs) AS x(job) WHERE x.job = u.id)
      FROM unnest(jobs, users) AS u(id, who)
     ORDER BY u.id;
END $$;

GRANT EXECUTE ON FUNCTION launcher_sweep_superseded(bigint) TO balsam_member;

-- ==== 0022_claim_not_tags.sql ====
-- 0022_claim_not_tags: a planned claim can leave rows with other launchers' tags alone
-- (docs/launcher.md, *Which work first*).
--
-- The division between live launchers (launcher/division.py) counts rows per workflow,
-- owner and tag signature while a live launcher filters by tags: which of the live
-- launchers' distinct tag filters a row matches. A launcher then claims its share of one
-- signature: the rows that have the tags of the filters it matches and those of none of
-- the others. The last half needs a filter the claim did not have: p_not_tags, tag
-- filters no claimed row may match (each `tags @> filter` false). It comes last with a
-- default, so every call with the ten arguments of 0008 means what it meant; the old
-- function goes, or such calls would be ambiguous. The body is 0011's, with that one
-- condition in each branch; the plan stays pinned as 0016 pinned it.

DROP FUNCTION launcher_claim(bigint, bigint, integer, double precision, double precision,
                             text[], jsonb, text[], double precision, integer);

CREATE FUNCTION launcher_claim(
    p_job bigint, p_epoch bigint, p_limit integer, p_capacity double precision,
    p_max_need double precision, p_workflows text[], p_tags jsonb, p_owners text[],
    p_remaining_min double precision, p_max_nodes integer,
    p_not_tags jsonb[] DEFAULT NULL)
RETURNS TABLE (id bigint, workflow text, name text, state task_state, app text,
               command text, shell boolean, env_script text, params jsonb, args text[],
               env jsonb, num_nodes integer, ranks_per_node integer,
               threads_per_rank integer, gpus_per_rank integer,
               node_packing_count integer, wall_time_min double precision,
               priority integer, input_files text[], parents jsonb)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off SET jit = off
AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    -- FOR KEY SHARE: the job cannot be deleted before this claim commits (what the
    -- foreign key's check did for every row).
    PERFORM 1 FROM public.batch_jobs b
      WHERE b.id = p_job AND b.lease_epoch = p_epoch AND b.state = 'RUNNING'
        FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch job % (epoch %) no longer holds its lease', p_job, p_epoch
            USING ERRCODE = 'lock_not_available';
    END IF;
    IF p_workflows IS NULL THEN
        RETURN QUERY
        WITH locked AS (
            SELECT t.id, t.priority, 1.0::float8 / t.node_packing_count AS need
              FROM public.tasks t
             WHERE t.state IN ('READY', 'RESTART_READY') AND t.batch_job_id IS NULL
               AND t.num_nodes <= p_max_nodes
               AND 1.0::float8 / t.node_packing_count <= p_max_need + 1e-9
               AND (p_remaining_min IS NULL OR t.wall_time_min <= p_remaining_min)
               AND (p_tags IS NULL OR t.tags @> p_tags)
               AND (p_owners IS NULL OR t.owner = ANY (p_owners))
               AND (p_not_tags IS NULL OR NOT (t.tags @> ANY (p_not_tags)))
             ORDER BY t.priority DESC, t.id
             LIMIT p_limit
               FOR UPDATE OF t SKIP LOCKED
        ), fitting AS (
            SELECT s.id FROM (
                SELECT l.id, sum(l.need) OVER (ORDER BY l.priority DESC, l.id) AS used
                  FROM locked l) s
             WHERE s.used <= p_capacity + 1e-9
        )
        UPDATE public.tasks t
           SET batch_job_id = p_job, lease_epoch = p_epoch, claimed_at = now()
          FROM fitting f, public.apps a
         WHERE t.id = f.id AND a.id = t.app_id
        RETURNING t.id, t.workflow, t.name, t.state, a.name, a.command, a.shell,
                  a.env_script, t.params, t.args, t.env, t.num_nodes, t.ranks_per_node,
                  t.threads_per_rank, t.gpus_per_rank, t.node_packing_count,
                  t.wall_time_min, t.priority, t.input_files,
                  CASE WHEN cardinality(t.input_files) > 0 THEN
                      (SELECT jsonb_agg(jsonb_build_array(p.workflow, p.id, p.name)
                                        ORDER BY p.id)
                         FROM public.task_deps d JOIN public.tasks p ON p.id = d.parent_id
                        WHERE d.child_id = t.id) END;
    ELSE
        RETURN QUERY
        WITH locked AS (
            SELECT c.id, c.priority, c.need
              FROM unnest(p_workflows) AS w(name)
             CROSS JOIN LATERAL (
                SELECT t.id, t.priority, 1.0::float8 / t.node_packing_count AS need
                  FROM public.tasks t
                 -- A range, not `=` (0004 says why: it keeps tasks_runnable_workflow).
                 WHERE t.workflow >= w.name AND t.workflow <= w.name
                   AND t.state IN ('READY', 'RESTART_READY') AND t.batch_job_id IS NULL
                   AND t.num_nodes <= p_max_nodes
                   AND 1.0::float8 / t.node_packing_count <= p_max_need + 1e-9
                   AND (p_remaining_min IS NULL OR t.wall_time_min <= p_remaining_min)
                   AND (p_tags IS NULL OR t.tags @> p_tags)
                   AND (p_owners IS NULL OR t.owner = ANY (p_owners))
                   AND (p_not_tags IS NULL OR NOT (t.tags @> ANY (p_not_tags)))
                 ORDER BY t.workflow, t.priority DESC, t.id
                 LIMIT p_limit
                   FOR UPDATE OF t SKIP LOCKED) c
        ), fitting AS (
            SELECT s.id FROM (
                SELECT l.id, sum(l.need) OVER (ORDER BY l.priority DESC, l.id) AS used,
                       row_number() OVER (ORDER BY l.priority DESC, l.id) AS n
                  FROM locked l) s
             WHERE s.used <= p_capacity + 1e-9 AND s.n <= p_limit
        )
        UPDATE public.tasks t
           SET batch_job_id = p_job, lease_epoch = p_epoch, claimed_at = now()
          FROM fitting f, public.apps a
         WHERE t.id = f.id AND a.id = t.app_id
        RETURNING t.id, t.workflow, t.name, t.state, a.name, a.command, a.shell,
                  a.env_script, t.params, t.args, t.env, t.num_nodes, t.ranks_per_node,
                  t.threads_per_rank, t.gpus_per_rank, t.node_packing_count,
                  t.wall_time_min, t.priority, t.input_files,
                  CASE WHEN cardinality(t.input_files) > 0 THEN
                      (SELECT jsonb_agg(jsonb_build_array(p.workflow, p.id, p.name)
                                        ORDER BY p.id)
                         FROM public.task_deps d JOIN public.tasks p ON p.id = d.parent_id
                        WHERE d.child_id = t.id) END;
    END IF;
END $$;

ALTER FUNCTION launcher_claim(bigint, bigint, integer, double precision, double precision,
                              text[], jsonb, text[], double precision, integer, jsonb[])
    SET plan_cache_mode = force_generic_plan;

GRANT EXECUTE ON FUNCTION
    launcher_claim(bigint, bigint, integer, double precision, double precision, text[],
                   jsonb, text[], double precision, integer, jsonb[])
TO balsam_member;

-- The division now reads the live launchers' tag filters and keys its planned claims by
-- them, so a value there must be text, as the launcher writes it (a leader cannot hash a
-- JSON object or array, and a number is no tag a task could carry from the client):
-- 0019's shape check, with string values for "tags". Rows written before are not
-- re-checked; the division's read skips any live job whose filters fail it.
CREATE OR REPLACE FUNCTION launcher_filters_ok(f jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, public AS $$
    SELECT jsonb_typeof(f) = 'object'
       AND (NOT f ? 'workflows' OR (jsonb_typeof(f -> 'workflows') = 'array'
            AND NOT jsonb_path_exists(f -> 'workflows', '$[*] ? (@.type() != "string")')))
       AND (NOT f ? 'owners' OR (jsonb_typeof(f -> 'owners') = 'array'
            AND NOT jsonb_path_exists(f -> 'owners', '$[*] ? (@.type() != "string")')))
       AND (NOT f ? 'tags' OR (jsonb_typeof(f -> 'tags') = 'object'
            AND NOT jsonb_path_exists(f -> 'tags', '$.* ? (@.type() != "string")')))
$$;
-- The division's read is a plain query of the launcher's own role: it calls the check
-- too (a pure function of its argument).
GRANT EXECUTE ON FUNCTION launcher_filters_ok(jsonb) TO balsam_member;

-- ==== 0023_plain_labels.sql ====
-- 0023_plain_labels: a task's workflow, name and tags are labels people read, so a new or
-- changed one may not hold control characters or bidirectional marks (docs/security.md,
-- *What the CLIs print*).
--
-- The client refuses them first, with one line naming the field (base/values.py, `plain`);
-- this is the last line, for a member who writes with psql. It is a pair of row triggers,
-- not CHECK constraints: a CHECK is evaluated on every new row version, so it would cost
-- every launcher's claim and report of every task, and it would jam a row stored before
-- this rule on its next state change. Here the INSERT trigger's WHEN reads three columns
-- (the function runs only for a refused row, or a row with tags), and the UPDATE trigger
-- fires only for a statement that sets workflow, name or tags, and checks only a value
-- that changed: an old row's label is still printed spelled out, and it keeps working.

-- The characters of base/values.py `_NOT_IN_LABELS`: C0 controls (tab and newline too),
-- DEL, C1 controls, and the bidirectional marks, embeddings, overrides and isolates. No
-- SET clause (as 0007's checks): the planner inlines it into the triggers' WHEN.
CREATE FUNCTION label_unsafe(p text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p ~ '[\x01-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]'
$$;

-- A top-level key or text value of a tags object that fails label_unsafe. Values that are
-- not text (numbers, lists, objects) are printed as JSON, which escapes what it holds.
CREATE FUNCTION tags_unsafe(p jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_typeof(p) = 'object' AND EXISTS (
        SELECT 1 FROM jsonb_each(p) e
         WHERE label_unsafe(e.key)
            OR (jsonb_typeof(e.value) = 'string' AND label_unsafe(e.value #>> '{}')))
$$;

-- What the INSERT trigger's WHEN asks of a row with tags, so that the function runs only for
-- a suspect one: jsonb's text escapes every C0 control with a backslash and leaves DEL, C1
-- and the bidirectional marks as they are. A backslash can also be an escaped quote or
-- backslash: such tags are merely checked in full. (Bulk adds of 50,000 tasks with two
-- tags, server CPU per task, medians of 3: 18.2 µs without the trigger, 27.4 when the
-- function ran for every tagged row, 17.4 with this test; untagged 12.0 and 11.8.)
CREATE FUNCTION tags_suspect(p jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p::text ~ '[\\\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]'
$$;

-- Members' WHEN clauses call these checks; the function itself runs as its owner.
GRANT EXECUTE ON FUNCTION label_unsafe(text), tags_suspect(jsonb), tags_unsafe(jsonb)
    TO balsam_member;

CREATE FUNCTION refuse_unsafe_label() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    field text;
BEGIN
    IF (TG_OP = 'INSERT' OR NEW.workflow IS DISTINCT FROM OLD.workflow)
       AND label_unsafe(NEW.workflow) THEN
        field := 'workflow';
    ELSIF (TG_OP = 'INSERT' OR NEW.name IS DISTINCT FROM OLD.name)
          AND label_unsafe(NEW.name) THEN
        field := 'name';
    ELSIF (TG_OP = 'INSERT' OR NEW.tags IS DISTINCT FROM OLD.tags)
          AND tags_unsafe(NEW.tags) THEN
        field := 'tags';
    ELSE
        RETURN NEW;  -- suspect tags that are fine (an escaped quote or backslash)
    END IF;
    -- "task <id>: " as tasks_stage_refuse words it, so the client can name the input line.
    RAISE EXCEPTION 'task %: %: contains a control character or a bidirectional mark '
        '(labels people read may not hold them)', NEW.id, field
        USING ERRCODE = 'check_violation';
END $$;

-- One regex for workflow and name together: a bulk add of 50,000 untagged tasks cost the
-- server 10.9 µs per task without the trigger, 11.8 with a regex each, 11.3 so (medians
-- of 4).
CREATE TRIGGER tasks_labels_insert BEFORE INSERT ON tasks
    FOR EACH ROW WHEN (label_unsafe(NEW.workflow || NEW.name)
                       OR (NEW.tags <> '{}'::jsonb AND tags_suspect(NEW.tags)))
    EXECUTE FUNCTION refuse_unsafe_label();
CREATE TRIGGER tasks_labels_update BEFORE UPDATE OF workflow, name, tags ON tasks
    FOR EACH ROW WHEN ((NEW.workflow IS DISTINCT FROM OLD.workflow
                        AND label_unsafe(NEW.workflow))
                       OR (NEW.name IS DISTINCT FROM OLD.name AND label_unsafe(NEW.name))
                       OR (NEW.tags IS DISTINCT FROM OLD.tags AND NEW.tags <> '{}'::jsonb
                           AND tags_suspect(NEW.tags)))
    EXECUTE FUNCTION refuse_unsafe_label();

-- ==== 0024_autoscale_lock.sql ====
-- 0024_autoscale_lock: one `balsam-mpi autoscale` look at a time per user and filters
-- (batch/elastic.py). Two autoscalers of one user with the same filters (two shells, a
-- loop and a cron line) would otherwise both see no job queued and both submit.
--
-- Members hold no EXECUTE on the advisory-lock functions (0002 revoked them with every
-- function), so this pair is the door: the key is the caller's own name and filters, so
-- no member can hold up another's looks, and a session holds at most one such lock at a
-- time (the function says no to a second), so nobody can fill the shared lock table with
-- made-up filters. The class key, 1650551923 ("bals" in ASCII), keeps these locks apart
-- from every other advisory lock of the database; a hash collision of two filters only
-- skips a look.

CREATE FUNCTION autoscale_try_lock(p_filters jsonb) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM pg_locks l
                      WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid()
                        AND l.classid = 1650551923 AND l.objsubid = 2)
        THEN false
        ELSE pg_try_advisory_lock(1650551923, hashtext(session_user || ' ' || p_filters::text))
    END
$$;

CREATE FUNCTION autoscale_unlock(p_filters jsonb) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT pg_advisory_unlock(1650551923, hashtext(session_user || ' ' || p_filters::text))
$$;

GRANT EXECUTE ON FUNCTION autoscale_try_lock(jsonb), autoscale_unlock(jsonb)
    TO balsam_member;

-- ==== 0025_reserve_lock_scope.sql ====
-- 0025_reserve_lock_scope: a cancelled id reservation no longer leaves its lock behind.
--
-- What went wrong. tasks_reserve_ids (0007) made nextval and setval one step under a
-- session-level advisory lock, taken with pg_advisory_lock and given back with
-- pg_advisory_unlock two statements later. A session-level lock is not released when the
-- transaction fails: if the statement is cancelled between the two (a cancel request, a
-- statement_timeout, Ctrl-C or a notebook's interrupt during Client.add_tasks) the
-- session keeps the lock, and every other reservation — every `task add`, every bulk add,
-- every member's — waits on it, and fails at its lock_timeout, for as long as that session
-- stays connected. A member does it on purpose in a few milliseconds: one session calls
-- tasks_reserve_ids(1) in a loop while a second of their own sends pg_cancel_backend to
-- it (allowed between sessions of one role); the lock stuck after 9 calls here
-- (tests/db/test_checked_writes.py::test_a_cancelled_reservation_leaves_no_lock_behind).
--
-- The fix. The lock is now a transaction-level one taken inside a block of its own, and
-- the block ends by raising an exception that its handler catches: that rolls back the
-- block's subtransaction, and with it goes every lock taken inside it. nextval and
-- setval are never rolled back (sequences are not transactional), and PL/pgSQL variables
-- keep their values, so the block still hands out the block of ids. Whatever interrupts
-- the block — a cancel anywhere inside it — also ends its subtransaction, so there is no
-- moment at which the lock can outlive it, and the lock is still held only for the two
-- sequence calls (an xact lock taken at the top level would serialize whole adds).

CREATE OR REPLACE FUNCTION tasks_reserve_ids(n integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    seq text := pg_get_serial_sequence('public.tasks', 'id');
    first bigint;
BEGIN
    IF n IS NULL OR n < 1 THEN
        RAISE EXCEPTION 'reserve at least one id, not %', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtext('balsam_mpi.tasks_reserve_ids'));
        first := nextval(seq);
        IF n > 1 THEN
            PERFORM setval(seq, first + n - 1);
        END IF;
        -- Ends the subtransaction, and the lock with it; `first` and the sequence stay.
        RAISE EXCEPTION USING ERRCODE = 'BR001';
    EXCEPTION WHEN SQLSTATE 'BR001' THEN
        NULL;
    END;
    -- Blocks of transactions that have ended are dead; SKIP LOCKED, so concurrent adds
    -- never wait on each other's clean-up.
    DELETE FROM public.task_id_blocks b WHERE b.ctid IN (
        SELECT x.ctid FROM public.task_id_blocks x
         WHERE x.xact < pg_snapshot_xmin(pg_current_snapshot())
           FOR UPDATE SKIP LOCKED);
    INSERT INTO public.task_id_blocks (xact, first, n) VALUES (pg_current_xact_id(), first, n);
    RETURN first;
END $$;

-- ==== 0026_filters_limit.sql ====
-- 0026_filters_limit: a batch job's filters are capped at 64 KiB of JSON text
-- (base/limits.py FILTERS_MAX_BYTES).
--
-- Every other cap of base/limits.py has had its CHECK since 0007, but a batch job's
-- filters had only the shape check of 0019/0022: launcher_open_job and batch_job_submit
-- stored any size. Filters are not the job's own business: every leader on the project
-- reads every live job's filters once a second (the division's read,
-- launcher_claim_peers, launcher/preference.py), and the hunger checks and hand-backs
-- test them against tasks. A member who opened one job with 20,000 workflow names
-- (4 MB, through psql) made each other leader's read take 1.2 s and carry 4 MB, every
-- second, for as long as the job's lease lived — the 60 MB parameter of issue 14.5 again.
-- 64 KiB is some 300 workflow names of the longest kind (256 characters), or thousands
-- of ordinary ones.
--
-- NOT VALID, as 0019: the migration does not fail on rows written before. A CHECK is
-- still evaluated on every new version of a row, so a live job stored with bigger
-- filters fails its next heartbeat and its lease runs out: that ends the reads it cost
-- everyone. The constraint's name ends in the field, as the others', so a refusal names
-- it. Per heartbeat it costs one jsonb-to-text of the row's (small) filters.
ALTER TABLE batch_jobs ADD CONSTRAINT batch_jobs_filters_limit
    CHECK (octet_length(filters::text) <= 65536) NOT VALID;

-- ==== 0027_autoscale_lock_per_user.sql ====
-- 0027_autoscale_lock_per_user: no member can hold another member's autoscale lock.
--
-- 0024 keyed the lock by (1650551923, hashtext(user || ' ' || filters)): the user was
-- inside a 32-bit hash. Filters are the caller's to choose, so a member can search for
-- filters of their own whose key equals another member's (the other's filters are in
-- their batch jobs' rows, readable by all): about 2**32 hashes for a given target, minutes
-- of CPU off the server. Holding that lock in an idle session, they made every look of the
-- other's autoscaler with those filters be skipped (autoscale_try_lock said false), so it
-- never submitted again; 0024's "a hash collision only skips a look" held for chance
-- collisions, not chosen ones. (tests/db/test_autoscale.py::
-- test_no_member_holds_up_anothers_autoscaler_with_a_colliding_key finds such a pair.)
--
-- Now the first key is the caller's role oid (its 32 bits as an int4), the second the
-- hash of the filters. Two users never share a first key, so a chosen collision can only
-- hold up the chooser's own looks. The two-key form stays apart from the database's other
-- advisory locks, which all take one bigint key (pg_locks.objsubid 1, these 2); the
-- one-lock-per-session rule now looks for a two-key advisory lock under the caller's oid.

CREATE FUNCTION autoscale_lock_class() RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT (r.oid::bigint - CASE WHEN r.oid::bigint > 2147483647 THEN 4294967296
                                 ELSE 0 END)::integer
      FROM pg_catalog.pg_roles r WHERE r.rolname = session_user
$$;

CREATE OR REPLACE FUNCTION autoscale_try_lock(p_filters jsonb) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM pg_locks l
                      WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid()
                        AND l.objsubid = 2
                        AND l.classid = (SELECT r.oid FROM pg_catalog.pg_roles r
                                          WHERE r.rolname = session_user))
        THEN false
        ELSE pg_try_advisory_lock(autoscale_lock_class(), hashtext(p_filters::text))
    END
$$;

CREATE OR REPLACE FUNCTION autoscale_unlock(p_filters jsonb) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT pg_advisory_unlock(autoscale_lock_class(), hashtext(p_filters::text))
$$;

-- ==== 0028_text_caps_on_reports.sql ====
-- 0028_text_caps_on_reports: a launcher cannot store more than OUTPUT_TAIL_MAX characters
-- (base/limits.py, 4,096) of output in a task, nor make a message of more from it.
--
-- A member's launcher reports the ends of the tasks it runs, other members' tasks
-- included. Its client cuts a tail to OUTPUT_TAIL_MAX (launcher/reports.py), but the
-- database took whatever launcher_report was given: through psql, alice wrote 10 MB into
-- bob's task's output_tail, and with an end of kind 15 (REFUSED: the tail is the message)
-- into its state_message and the history's event message, where `task show`, `task ls`
-- and every report read them. (tests/db/test_checked_writes.py::
-- test_a_launcher_cannot_store_a_long_tail_in_the_tasks_it_runs)
--
-- Cut, not refused: a refusal would fail the whole flush of a launcher whose tail is a
-- little over, and everything else in it with it. Where: every report reaches the rows
-- through launcher_apply_reports (launcher_report's two signatures and launcher_replay's
-- journal lines), so the body of 0016 becomes launcher_write_reports, unchanged, and
-- launcher_apply_reports a wrapper that cuts the tails first — a tail keeps its end (what
-- the task printed last), a REFUSED end's message its start, as the functions of 0007 cut
-- theirs. Its cost is one look at the length of each tail per flush (octet_length reads
-- the header only), not a row trigger on every claimed and reported row: measured on the
-- launcher's own calls, a BEFORE UPDATE OF output_tail trigger with a WHEN added about
-- 0.5 µs per task to a report (benchmarks/dbparts.py).

ALTER FUNCTION launcher_apply_reports(bigint, bigint, bigint[], double precision[], bigint[],
                                      smallint[], integer[], double precision[],
                                      double precision[], text[], integer)
    RENAME TO launcher_write_reports;

CREATE FUNCTION launcher_apply_reports(
    p_job bigint, p_epoch bigint,
    s_ids bigint[], s_at double precision[],
    f_ids bigint[], f_kind smallint[], f_rc integer[], f_started double precision[],
    f_ended double precision[], f_tail text[], p_paired integer)
RETURNS TABLE (step text, changed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    -- 4,096 characters are at most 16,384 bytes: a tail within that needs no look at
    -- its characters.
    IF EXISTS (SELECT 1 FROM unnest(f_tail) AS t (tail) WHERE octet_length(t.tail) > 4096)
    THEN
        -- By position, as the writer pairs them (whatever the arrays' bounds), and
        -- the tails' count kept whatever the kinds' count.
        f_tail := ARRAY(
            SELECT CASE WHEN char_length(t.tail) <= 4096 THEN t.tail
                        WHEN k.kind = 15 THEN left(t.tail, 4096)
                        ELSE right(t.tail, 4096) END
              FROM unnest(f_tail) WITH ORDINALITY AS t (tail, i)
              LEFT JOIN unnest(f_kind) WITH ORDINALITY AS k (kind, i) ON k.i = t.i
             ORDER BY t.i);
    END IF;
    RETURN QUERY SELECT * FROM public.launcher_write_reports(
        p_job, p_epoch, s_ids, s_at, f_ids, f_kind, f_rc, f_started, f_ended, f_tail,
        p_paired);
END $$;
REVOKE ALL ON FUNCTION launcher_apply_reports(bigint, bigint, bigint[], double precision[],
                                              bigint[], smallint[], integer[],
                                              double precision[], double precision[],
                                              text[], integer) FROM PUBLIC;

-- ==== 0029_arabic_letter_mark.sql ====
-- 0029_arabic_letter_mark: U+061C, the Arabic letter mark, joins the characters no label
-- may hold (0023). It is one of Unicode's bidirectional controls (the Bidi_Control
-- property: U+061C, U+200E/F, U+202A-E, U+2066-9), and like U+200F it reorders the text
-- around it on a terminal; 0023 named all the others. The client refuses it first
-- (base/termtext.py, which the CLIs also use to spell it out); this is the last line.
-- Rows stored before keep working, as with 0023: the triggers check only new values.

CREATE OR REPLACE FUNCTION label_unsafe(p text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p ~ '[\x01-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]'
$$;

CREATE OR REPLACE FUNCTION tags_suspect(p jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p::text ~ '[\\\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]'
$$;

-- ==== 0030_notify_when_room.sql ====
-- 0030_notify_when_room: ending a task no longer fails when the server's notification
-- queue is full; the waiters' notification is skipped instead, and waiters read their
-- tasks again every REREAD_S (tasks/waiting.py) whatever they hear.
--
-- LISTEN and NOTIFY carry no privilege in Postgres (0007 revoked only pg_notify), and the
-- queue (8 GB here) is cleared only up to its slowest listener. A viewer's session that
-- LISTENs and stays in a transaction (its idle timeout is its own to set to 0) holds the
-- queue; a second session of the viewer's filled it with 8 kB notifications in 114 s. From
-- then on, every transaction that notifies failed at commit, "too many notifications in
-- the NOTIFY queue": the waiters' notification is sent by the statement that ends a task,
-- so every launcher's flush of ended tasks and every `task kill` failed, and no task of
-- the project could end. (tests/db/test_waiting.py::
-- test_a_crowded_notification_queue_neither_stops_task_ends_nor_waits)
--
-- A notification is only a hint (waiters read the tasks it names), so it can be dropped:
-- while the queue is more than half full (pg_notification_queue_usage; the server log warns
-- from there on, naming the pid that holds it), the ids are not sent, the statement
-- commits, and the waiters find the ends at their next periodic read. What fills the
-- queue can still be ended only by the owner (docs/security.md, "The notification
-- queue"). The half leaves room for the transactions in flight: at the rate above the
-- other half lasts about a minute, and a check-to-commit takes milliseconds.

CREATE FUNCTION notify_queue_crowded() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT pg_notification_queue_usage() > 0.5
$$;

-- The ids that reached a final state, 350 to a notification (each stays under the
-- 8,000-byte limit: ids are at most 19 digits); nothing while the queue is crowded. Runs
-- as its caller: the definer triggers below, as balsam_objects, which may pg_notify.
CREATE FUNCTION notify_task_final(ids bigint[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
    chunk text;
BEGIN
    IF ids IS NULL OR cardinality(ids) = 0 OR notify_queue_crowded() THEN
        RETURN;
    END IF;
    FOR chunk IN
        SELECT string_agg(e.id::text, ',')
          FROM (SELECT e.id, (row_number() OVER ()) / 350 AS k
                  FROM unnest(ids) AS e (id)) e
         GROUP BY e.k
    LOOP
        PERFORM pg_notify('balsam_task_final', chunk);
    END LOOP;
END $$;
REVOKE EXECUTE ON FUNCTION notify_task_final(bigint[]) FROM PUBLIC;

-- 0016's trigger function, its notification loop now notify_task_final's (and its SET
-- clauses repeated: a replaced function keeps only those given).
CREATE OR REPLACE FUNCTION tasks_on_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
SET enable_nestloop = off SET enable_sort = off SET jit = off AS $$
DECLARE
    reshaped bigint[];
    done bigint[];
    stopped bigint[];
    ended bigint[];
    bad_id bigint;
    bad_from text;
    bad_to text;
BEGIN
    WITH changed AS MATERIALIZED (
        SELECT x.id, x.from_state, x.to_state,
               CASE
                 WHEN x.to_state = 'RUNNING' AND x.started_at IS DISTINCT FROM x.old_started
                      AND x.started_at IS NOT NULL THEN x.started_at
                 WHEN x.to_state IN ('RUN_DONE', 'RUN_ERROR', 'RUN_TIMEOUT')
                      AND x.ended_at IS DISTINCT FROM x.old_ended
                      AND x.ended_at IS NOT NULL THEN x.ended_at
                 ELSE clock_timestamp()
               END AS at,
               x.job_id, x.state_message,
               CASE WHEN x.moved THEN nextval('task_events_id_seq'::regclass) END AS event_id,
               x.workflow, x.owner, x.w, x.moved, x.reshaped, x.step, x.old_state,
               x.new_state, x.illegal
          FROM (SELECT n.id, n.started_at, o.started_at AS old_started, n.ended_at,
                       o.ended_at AS old_ended,
                       coalesce(n.batch_job_id, o.batch_job_id) AS job_id, n.state_message,
                       n.workflow, n.owner, n.num_nodes::float8 / n.node_packing_count AS w,
                       n.state IS DISTINCT FROM o.state AS moved,
                       k.step = 1 AND (n.workflow, n.num_nodes, n.node_packing_count)
                         IS DISTINCT FROM (o.workflow, o.num_nodes, o.node_packing_count)
                         AS reshaped,
                       k.step, o.state AS old_state, n.state AS new_state,
                       k.step = 1 AND n.state <> o.state AND listed.from_state IS NULL
                         AND NOT (c.combined AND startable.from_state IS NOT NULL
                                  AND n.started_at IS NOT NULL
                                  AND n.started_at IS DISTINCT FROM o.started_at
                                  AND n.ended_at IS NOT NULL
                                  AND n.ended_at IS DISTINCT FROM o.ended_at) AS illegal,
                       CASE WHEN NOT c.combined OR k.step = 1 THEN o.state
                            WHEN k.step = 2 THEN 'RUNNING'::task_state
                            ELSE 'RUN_DONE'::task_state END AS from_state,
                       CASE WHEN NOT c.combined THEN n.state
                            WHEN k.step = 1 THEN 'RUNNING'::task_state
                            WHEN k.step = 2 THEN 'RUN_DONE'::task_state
                            ELSE n.state END AS to_state
                  FROM new_rows n JOIN old_rows o ON o.id = n.id
                  LEFT JOIN public.task_transitions listed
                         ON listed.from_state = o.state AND listed.to_state = n.state
                  LEFT JOIN public.task_transitions startable
                         ON startable.from_state = o.state AND startable.to_state = 'RUNNING'
                 CROSS JOIN LATERAL (
                       SELECT n.state = 'JOB_FINISHED'
                              AND o.state IN ('READY', 'RESTART_READY', 'PREPROCESSED')
                              AS combined) c
                 CROSS JOIN (VALUES (1), (2), (3)) AS k (step)
                 WHERE (n.state IS DISTINCT FROM o.state
                        OR (n.workflow, n.num_nodes, n.node_packing_count)
                             IS DISTINCT FROM (o.workflow, o.num_nodes, o.node_packing_count))
                   AND (k.step = 1 OR c.combined)) x
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
    SELECT array_agg(c.id) FILTER (WHERE c.reshaped),
           array_agg(c.id) FILTER (WHERE c.step = 1 AND c.new_state = 'JOB_FINISHED'
                                     AND c.old_state <> 'JOB_FINISHED'),
           array_agg(c.id) FILTER (WHERE c.step = 1
                                     AND c.new_state IN ('FAILED', 'USER_KILLED')
                                     AND c.old_state NOT IN ('FAILED', 'USER_KILLED')),
           array_agg(c.id) FILTER (WHERE c.step = 1 AND c.moved
                                     AND c.new_state IN ('JOB_FINISHED', 'FAILED',
                                                         'USER_KILLED')),
           (array_agg(c.id) FILTER (WHERE c.illegal))[1],
           (array_agg(c.old_state::text) FILTER (WHERE c.illegal))[1],
           (array_agg(c.new_state::text) FILTER (WHERE c.illegal))[1]
      INTO reshaped, done, stopped, ended, bad_id, bad_from, bad_to
      FROM changed c;
    IF bad_id IS NOT NULL THEN
        RAISE EXCEPTION 'task %: % -> % is not a state change balsam allows', bad_id,
            bad_from, bad_to USING ERRCODE = 'check_violation';
    END IF;
    IF reshaped IS NOT NULL THEN
        PERFORM run_steps_mark_dirty(reshaped);
    END IF;
    -- The waiters (0009), unless the server's queue is crowded (above).
    IF ended IS NOT NULL THEN
        PERFORM notify_task_final(ended);
    END IF;
    IF done IS NOT NULL OR stopped IS NOT NULL THEN
        PERFORM tasks_propagate_ids(done, stopped);
    END IF;
    RETURN NULL;
END $$;

-- 0009's: a task deleted while someone waits for it will never end.
CREATE OR REPLACE FUNCTION tasks_notify_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM notify_task_final(ARRAY(
        SELECT o.id FROM old_rows o
         WHERE o.state NOT IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED')));
    RETURN NULL;
END $$;

-- ==== 0031_end_hogging_sessions.sql ====
-- 0031_end_hogging_sessions: a collaborator's session that fills one of the server's
-- shared structures, or holds a transaction open past the project's own timeouts, is ended
-- by the project itself, without the owner.
--
-- Two structures have no privilege in front of them (docs/security.md, "The server's
-- shared queues"):
-- * the lock table: every open subtransaction that has written holds a lock on its own
--   transaction id there. A member nesting savepoints, each with an INSERT, in one
--   transaction left open, filled the table (about 42,000 entries here, for a nominal
--   max_locks_per_transaction × connections = 25,600); until that session ended, every
--   other session that needed one more lock failed with "out of shared memory": other
--   members' updates, every launcher's flush.
-- * the notification queue: a session that LISTENs and stays in a transaction keeps it
--   from being cleared; 0030 keeps task ends committing while it is crowded, but waits are
--   then only as prompt as their periodic read.
-- And the row locks every correct add of a task takes, FOR SHARE on its parents
-- (tasks_lock_parents), are any member's to take on any task: held in a transaction left
-- open, they kept every launcher from claiming those tasks (claims skip locked rows) and
-- every report of them waiting. The session timeouts that would end such a transaction
-- (dbctl/rolelimits.py) are each session's own to lift.
--
-- end_hogging_sessions() ends (pg_terminate_backend) the collaborators' sessions that do
-- either, and returns who it ended and why. Any member or viewer may call it and every
-- running launcher does, with its sweep of expired leases (launcher/lease.py, every
-- expire_check_s): what it ends is fixed here, not by the caller, so calling it can hurt
-- only a session that hurts everyone. Never the superuser's or the owner's: the owner can
-- end any session anyway.
--
-- The rules, chosen so that no correct use of the project comes near them:
-- * locks: a login role whose sessions together hold more than a quarter of the table's
--   nominal size (max_locks_per_transaction × (max_connections + max_prepared_
--   transactions)), and of its sessions those holding more than max_locks_per_transaction
--   entries each (the share the server sizes the table for). Fast-path locks are not in
--   the table and are not counted. A launcher's or a CLI's session holds a few dozen (row
--   locks are kept in the rows, not in this table); a role's 64 connections kept under
--   max_locks_per_transaction each cannot reach a quarter of it.
-- * notifications: while the queue is more than half full (notify_queue_crowded(), 0030),
--   the sessions whose transaction has been open for more than two minutes. The holder
--   must have stayed in its transaction for as long as the queue took to fill (114 s for
--   half of it here, the fastest a viewer managed).
-- * idle transaction: idle in a transaction for more than two minutes, twice the longest
--   idle_in_transaction_session_timeout the project gives a collaborator (a member's 1
--   min): only a session that lifted its own timeout gets there.
-- * long transaction: a transaction open for more than an hour, four times the longest
--   statement_timeout the project gives (a member's 15 min). One transaction of many
--   short statements may rightly outlast that timeout: `task add --from-file` writes a
--   whole file in one (1M tasks took 79 s here, so an hour is some 45M), a kill or retry
--   of every task is one statement (1M: 37-55 s). The launcher lifts its
--   statement_timeout (launcher/store.py), but its longest work, a lease sweep or a
--   report over a large DAG, takes seconds. A session that holds share locks while it
--   runs statement after statement is caught only by this rule, so it bounds how long
--   claims of those tasks can be held up.
--
-- pg_signal_backend (to end a session) and pg_read_all_stats (to see when another role's
-- transaction began: pg_stat_get_activity hides it otherwise) are granted to
-- balsam_objects by `init` and `migrate` (dbctl/schema.py: roles are the cluster's, not a
-- migration's); a test checks that no other function of the schema signals a backend or
-- reads other sessions' activity. No superuser's backend can be signalled in any case.

-- The rules' times, in a function of their own so that a test's database can shorten
-- them (as tests replace notify_queue_crowded()).
CREATE FUNCTION session_time_limits(OUT idle_in_transaction interval,
                                    OUT open_transaction interval,
                                    OUT open_while_crowded interval)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT interval '2 minutes', interval '1 hour', interval '2 minutes'
$$;

CREATE FUNCTION end_hogging_sessions()
RETURNS TABLE (pid integer, username text, reason text, held bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    per_session constant bigint := current_setting('max_locks_per_transaction')::bigint;
    capacity constant bigint := per_session
        * (current_setting('max_connections')::bigint
           + current_setting('max_prepared_transactions')::bigint);
    crowded constant boolean := notify_queue_crowded();
    limits record;
    hog record;
BEGIN
    SELECT * INTO limits FROM session_time_limits();
    -- Functions only, no catalog table: once the lock table is full, a statement that
    -- must lock a shared catalog (pg_roles, the pg_locks and pg_stat_activity views' joins)
    -- fails too, and so does every new connection, the superuser's included. A session
    -- already open (a launcher's) can still run this and end the hog.
    FOR hog IN
        WITH lockers AS (
            SELECT l.pid, count(*) AS n
              FROM pg_lock_status() l
             WHERE NOT l.fastpath AND l.pid IS NOT NULL
             GROUP BY l.pid
        ), sessions AS (
            SELECT a.pid, a.usesysid, coalesce(h.n, 0) AS n,
                   sum(coalesce(h.n, 0)) OVER (PARTITION BY a.usesysid) AS role_total,
                   a.xact_start, a.state, a.state_change
              FROM pg_stat_get_activity(NULL) a
              LEFT JOIN lockers h ON h.pid = a.pid
             WHERE a.pid <> pg_backend_pid()
               AND a.usesysid IS NOT NULL
               -- Collaborators only: a superuser counts as a member of every role, so
               -- the owner's test excludes superusers too.
               AND (pg_has_role(a.usesysid, 'balsam_member', 'MEMBER')
                    OR pg_has_role(a.usesysid, 'balsam_viewer', 'MEMBER'))
               AND NOT pg_has_role(a.usesysid, 'balsam_owner', 'MEMBER')
        )
        , judged AS (
            SELECT s.pid, s.usesysid, s.n,
                   CASE WHEN s.role_total > capacity / 4 AND s.n > per_session
                        THEN 'locks'
                        WHEN crowded
                             AND s.xact_start < now() - limits.open_while_crowded
                        THEN 'notifications'
                        WHEN s.state LIKE 'idle in transaction%'
                             AND s.state_change < now() - limits.idle_in_transaction
                        THEN 'idle transaction'
                        WHEN s.xact_start < now() - limits.open_transaction
                        THEN 'long transaction'
                   END AS reason
              FROM sessions s
        )
        SELECT j.pid, pg_get_userbyid(j.usesysid)::text AS username, j.n, j.reason
          FROM judged j
         WHERE j.reason IS NOT NULL
    LOOP
        -- One at a time, after the selection: a qual is not where a side effect belongs
        -- (the planner may evaluate quals in any order).
        IF pg_terminate_backend(hog.pid) THEN
            pid := hog.pid;
            username := hog.username;
            reason := hog.reason;
            held := hog.n;
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION end_hogging_sessions() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION end_hogging_sessions() TO balsam_member, balsam_viewer;

-- ==== 0032_batch_job_cluster_and_uncertain.sql ====
-- 0032_batch_job_cluster_and_uncertain: a batch job records the scheduler cluster it was
-- submitted to, and a submission whose outcome is unknown is held, not closed.
--
-- 1. `job sync` closes a QUEUED row whose job the scheduler no longer lists, but a
--    project's database may serve several machines whose job ids mean nothing to one
--    another, so it did that only on the host the row was submitted from. An autoscaler
--    restarted on another login node of the same cluster then left such rows QUEUED for
--    ever (and counted them as queued jobs). Now `submit` records the scheduler cluster's
--    identity (batch/clusterid.py: Slurm's ClusterName and controller, PBS's server) in
--    sched_cluster, and any host whose scheduler has the same identity may close the row;
--    a row without one (older rows, an identity that could not be read) keeps the host rule.
--
-- 2. When sbatch did not answer (its timeout, a signal), the job may be queued or not.
--    The row was closed FAILED; a queued job then started under a closed row while the
--    next autoscaler look, seeing no job queued, submitted a second one. Now the
--    submission carries `--comment=balsam:<row id>:<submit_token>` (a random token: ids
--    repeat in a restored or copied database), the row stays QUEUED without a scheduler id
--    and with uncertain_at set, so that it still counts as a queued job, and `job sync`
--    looks for a job of the caller carrying that comment: found, its id is recorded;
--    still unknown once no submission could still appear, the row is closed.

ALTER TABLE batch_jobs
    ADD COLUMN sched_cluster text,
    ADD COLUMN submit_token text,
    ADD COLUMN uncertain_at timestamptz,
    -- Both reach a command line's comparison only, never a shell; the shapes keep them
    -- what batch/clusterid.py and batch/submit.py write.
    ADD CONSTRAINT batch_jobs_sched_cluster_shape CHECK (
        sched_cluster IS NULL OR (sched_cluster ~ '^[A-Za-z0-9_.:@-]+$'
                                  AND char_length(sched_cluster) <= 256)),
    ADD CONSTRAINT batch_jobs_submit_token_shape CHECK (
        submit_token IS NULL OR submit_token ~ '^[0-9a-f]{16,64}$');

CREATE FUNCTION batch_job_submit(p_scheduler text, p_host text, p_nodes integer,
                                 p_filters jsonb, p_wall_time_min double precision,
                                 p_sched_cluster text, p_submit_token text)
RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    INSERT INTO public.batch_jobs (scheduler, host, nodes, ranks, filters, wall_time_min,
                                   state, submitted_at, sched_cluster, submit_token)
    VALUES (p_scheduler, p_host, p_nodes, p_nodes, p_filters, p_wall_time_min, 'QUEUED',
            now(), p_sched_cluster, p_submit_token)
    RETURNING id
$$;

-- The scheduler's answer was lost: the caller's QUEUED row without a scheduler id stays
-- QUEUED, marked, until `job sync` finds its job by comment or knows there is none.
CREATE FUNCTION batch_job_submit_uncertain(p_job bigint) RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    UPDATE public.batch_jobs b SET uncertain_at = coalesce(b.uncertain_at, now())
     WHERE b.id = p_job AND b."user" = session_user AND b.state = 'QUEUED'
       AND b.scheduler_job_id IS NULL AND b.submit_token IS NOT NULL
    RETURNING b.id
$$;

GRANT EXECUTE ON FUNCTION
    batch_job_submit(text, text, integer, jsonb, double precision, text, text),
    batch_job_submit_uncertain(bigint)
    TO balsam_member;

-- ==== 0033_reports_skip_locked_rows.sql ====
-- 0033_reports_skip_locked_rows: a launcher's flush never waits on another session's
-- row locks; the reports of the rows it cannot lock wait in the launcher for its next
-- flush (launcher/reports.py, docs/reliability.md "A member's bulk kill or retry").
--
-- A member's `task kill` or `task retry` over a whole project is one statement (a filter
-- acts on every task it matches or on none: docs/tasks.md); over 1M tasks it held the
-- row lock of every task it changed for 37-55 s. A launcher running some of those tasks
-- wrote its starts and ends with launcher_report, whose UPDATEs waited on those locks for
-- the whole statement: its flushes, and every call queued behind them on the leader's
-- connection (the kills poll, the heartbeat), stalled with it.
-- (tests/db/test_report_locks.py::test_a_flush_never_waits_on_a_members_bulk_kill)
--
-- The leader now opens its flush with launcher_lock_reports, in the flush's own
-- transaction: it locks the rows the reports will write (this job's, at this epoch) and
-- the direct children of the tasks that ended (the DAG trigger writes their counts) FOR
-- NO KEY UPDATE SKIP LOCKED — the lock an UPDATE of tasks takes, so it meets the kill's,
-- the retry's and a delete's — and returns the reported tasks it could not lock. The
-- launcher leaves every report of those tasks out of the statement and keeps them, in
-- order, for the next flush; the journal's mark (launcher_report's p_through) then stops
-- before the first report left out, so a replay after a crash still has them. Rows the
-- lock does not cover (deeper descendants) are bounded by the flush's short lock_timeout
-- (launcher.sql, launcher_report_lock_timeout): the flush fails and is retried, as it is
-- when the server is away.
--
-- Rights: only the job's own user, only rows that job holds at that epoch and their
-- children, held for one flush's transaction — what launcher_report's UPDATEs lock anyway.

CREATE FUNCTION launcher_lock_reports(p_job bigint, p_epoch bigint, p_ids bigint[],
                                      p_ended bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM launcher_check_user(p_job);
    RETURN QUERY
    WITH mine AS MATERIALIZED (
        -- The statement's snapshot: a row another session is changing still shows its
        -- version from before that change, so a task the report would write is here.
        SELECT t.id FROM public.tasks t
         WHERE t.id = ANY (p_ids) AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
    ), locked AS MATERIALIZED (
        SELECT t.id FROM public.tasks t
         WHERE t.id = ANY (p_ids) AND t.batch_job_id = p_job AND t.lease_epoch = p_epoch
           FOR NO KEY UPDATE SKIP LOCKED
    ), children AS MATERIALIZED (
        SELECT d.parent_id, d.child_id FROM public.task_deps d
         WHERE d.parent_id = ANY (p_ended)
    ), children_locked AS MATERIALIZED (
        SELECT t.id FROM public.tasks t
         WHERE t.id IN (SELECT c.child_id FROM children c)
           FOR NO KEY UPDATE SKIP LOCKED
    )
    SELECT m.id FROM mine m WHERE NOT EXISTS (SELECT 1 FROM locked l WHERE l.id = m.id)
    UNION
    SELECT c.parent_id FROM children c
     WHERE EXISTS (SELECT 1 FROM mine m WHERE m.id = c.parent_id)
       AND NOT EXISTS (SELECT 1 FROM children_locked l WHERE l.id = c.child_id);
END $$;

REVOKE ALL ON FUNCTION launcher_lock_reports(bigint, bigint, bigint[], bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION launcher_lock_reports(bigint, bigint, bigint[], bigint[])
    TO balsam_member;

-- ==== 0034_value_checks_on_their_columns.sql ====
-- 0034_value_checks_on_their_columns: the value caps of a task's documents and lists are
-- checked when those columns are written, not on every write of the row.
--
-- Postgres evaluates every CHECK constraint of a table on every UPDATE of a row, whatever
-- the UPDATE changes. Six of 0007's caps call functions over a whole document or list
-- (tasks_params_limit, tasks_tags_limit, tasks_data_limit, tasks_env_limit,
-- tasks_args_limit, tasks_input_files_limit): json_within casts the document to text,
-- env_names_ok and keys_within run a query over its keys. A launcher writes each task
-- twice (its claim and its report, 0011) and never writes these columns, yet paid for all
-- six on both writes: measured here, 20,000 rows with a 3-key params, a 2-variable env and
-- 2 tags, an UPDATE of the claim's three columns took 1.3-1.5 s with the constraints and
-- 0.6-0.7 s without (≈ 35 µs a row of a loaded 2-core machine, twice per task; the
-- benchmarks' tasks, with empty documents, take the constraints' cheap first branch and
-- showed little).
--
-- The six caps are now row triggers, BEFORE INSERT and BEFORE UPDATE OF their own column,
-- each with the constraint's own expression in its WHEN clause: the function behind them
-- runs only for a refused row, and raises what the constraint raised (check_violation,
-- the constraint's name in the error's constraint field, the same message), so
-- balsam_mpi/tasks/refusals.py and every client see the same refusal. `UPDATE OF` fires
-- whenever the column is named in the statement's SET list, whatever its value; the WHEN
-- clause then skips an unchanged value (it was checked when it was written). No UPDATE
-- changes a column it does not name; the BEFORE triggers of tasks that run after these
-- (alphabetical order) only refuse rows, and change nothing.
-- (tests/db/test_limits.py drives every cap through INSERT and UPDATE;
-- tests/db/test_value_checks.py: an UPDATE naming another column no longer evaluates them,
-- and a refused UPDATE still names the constraint.)

CREATE FUNCTION refuse_task_value() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
BEGIN
    -- Only reached when the trigger's WHEN clause found the value outside its cap.
    RAISE EXCEPTION 'new row for relation "tasks" violates check constraint "%"',
        TG_ARGV[0]
        USING ERRCODE = 'check_violation', CONSTRAINT = TG_ARGV[0], TABLE = 'tasks',
              SCHEMA = 'public';
END $$;

ALTER TABLE tasks
    DROP CONSTRAINT tasks_params_limit, DROP CONSTRAINT tasks_tags_limit,
    DROP CONSTRAINT tasks_data_limit, DROP CONSTRAINT tasks_env_limit,
    DROP CONSTRAINT tasks_args_limit, DROP CONSTRAINT tasks_input_files_limit;

-- The expressions are 0007's, unchanged; `IS FALSE` because a CHECK passes a NULL (the
-- columns are NOT NULL: it cannot arise).
CREATE TRIGGER tasks_params_limit_insert BEFORE INSERT ON tasks FOR EACH ROW
    WHEN ((NEW.params = '{}' OR json_within(NEW.params, 262144)) IS FALSE)
    EXECUTE FUNCTION refuse_task_value('tasks_params_limit');
CREATE TRIGGER tasks_params_limit_update BEFORE UPDATE OF params ON tasks FOR EACH ROW
    WHEN (NEW.params IS DISTINCT FROM OLD.params
          AND (NEW.params = '{}' OR json_within(NEW.params, 262144)) IS FALSE)
    EXECUTE FUNCTION refuse_task_value('tasks_params_limit');

CREATE TRIGGER tasks_tags_limit_insert BEFORE INSERT ON tasks FOR EACH ROW
    WHEN ((NEW.tags = '{}' OR (json_within(NEW.tags, 16384)
                              AND keys_within(NEW.tags, 256))) IS FALSE)
    EXECUTE FUNCTION refuse_task_value('tasks_tags_limit');
CREATE TRIGGER tasks_tags_limit_update BEFORE UPDATE OF tags ON tasks FOR EACH ROW
    WHEN (NEW.tags IS DISTINCT FROM OLD.tags
          AND (NEW.tags = '{}' OR (json_within(NEW.tags, 16384)
                                   AND keys_within(NEW.tags, 256))) IS FALSE)
    EXECUTE FUNCTION refuse_task_value('tasks_tags_limit');

CREATE TRIGGER tasks_data_limit_insert BEFORE INSERT ON tasks FOR EACH ROW
    WHEN ((NEW.data = '{}' OR json_within(NEW.data, 262144)) IS FALSE)
    EXECUTE FUNCTION refuse_task_value('tasks_data_limit');
CREATE TRIGGER tasks_data_limit_update BEFORE UPDATE OF data ON tasks FOR EACH ROW
    WHEN (NEW.data IS DISTINCT FROM OLD.data
          AND (NEW.data = '{}' OR json_within(NEW.data, 262144)) IS FALSE)
    EXECUTE FUNCTION refuse_task_value('tasks_data_limit');

CREATE TRIGGER tasks_env_limit_insert BEFORE INSERT ON tasks FOR EACH ROW
    WHEN ((NEW.env = '{}' OR (octet_length(NEW.env::text) <= 131072
                             AND env_names_ok(NEW.env))) IS FALSE)
    EXECUTE FUNCTION refuse_task_value('tasks_env_limit');
CREATE TRIGGER tasks_env_limit_update BEFORE UPDATE OF env ON tasks FOR EACH ROW
    WHEN (NEW.env IS DISTINCT FROM OLD.env
          AND (NEW.env = '{}' OR (octet_length(NEW.env::text) <= 131072
                                  AND env_names_ok(NEW.env))) IS FALSE)
    EXECUTE FUNCTION refuse_task_value('tasks_env_limit');

CREATE TRIGGER tasks_args_limit_insert BEFORE INSERT ON tasks FOR EACH ROW
    WHEN ((cardinality(NEW.args) = 0
           OR (cardinality(NEW.args) <= 4096 AND array_position(NEW.args, NULL) IS NULL
               AND (char_length(array_to_string(NEW.args, '')) <= 65536
                    OR items_within(NEW.args, 65536)))) IS FALSE)
    EXECUTE FUNCTION refuse_task_value('tasks_args_limit');
CREATE TRIGGER tasks_args_limit_update BEFORE UPDATE OF args ON tasks FOR EACH ROW
    WHEN (NEW.args IS DISTINCT FROM OLD.args
          AND (cardinality(NEW.args) = 0
               OR (cardinality(NEW.args) <= 4096 AND array_position(NEW.args, NULL) IS NULL
                   AND (char_length(array_to_string(NEW.args, '')) <= 65536
                        OR items_within(NEW.args, 65536)))) IS FALSE)
    EXECUTE FUNCTION refuse_task_value('tasks_args_limit');

CREATE TRIGGER tasks_input_files_limit_insert BEFORE INSERT ON tasks FOR EACH ROW
    WHEN ((cardinality(NEW.input_files) = 0
           OR (cardinality(NEW.input_files) <= 256
               AND array_position(NEW.input_files, NULL) IS NULL
               AND patterns_ok(NEW.input_files))) IS FALSE)
    EXECUTE FUNCTION refuse_task_value('tasks_input_files_limit');
CREATE TRIGGER tasks_input_files_limit_update BEFORE UPDATE OF input_files ON tasks
    FOR EACH ROW
    WHEN (NEW.input_files IS DISTINCT FROM OLD.input_files
          AND (cardinality(NEW.input_files) = 0
               OR (cardinality(NEW.input_files) <= 256
                   AND array_position(NEW.input_files, NULL) IS NULL
                   AND patterns_ok(NEW.input_files))) IS FALSE)
    EXECUTE FUNCTION refuse_task_value('tasks_input_files_limit');
