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
