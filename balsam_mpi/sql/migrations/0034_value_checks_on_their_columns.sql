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
