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
