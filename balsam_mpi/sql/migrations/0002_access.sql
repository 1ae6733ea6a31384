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
