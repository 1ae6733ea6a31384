-- Queries of benchmarks/tasks_api.py (run as the database superuser).

-- name: tasks_api_vacuum
VACUUM ANALYZE tasks

-- name: tasks_api_analyze
ANALYZE tasks, task_deps

-- name: tasks_api_bare_table
-- The ceiling of a bulk add: a table with the columns, defaults, CHECK constraints and
-- indexes of tasks, but no trigger (no history, no DAG) and no row-level security; new
-- rows READY, as an add's are (the runnable indexes hold them).
CREATE TABLE bulk_bare (LIKE tasks INCLUDING ALL);
ALTER TABLE bulk_bare ALTER COLUMN state SET DEFAULT 'READY'

-- name: tasks_api_bare_plain
-- The same columns and defaults with nothing to check or index: Postgres' own COPY speed.
CREATE TABLE bulk_plain (LIKE tasks INCLUDING DEFAULTS)

-- name: tasks_api_bare_copy
COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)

-- name: tasks_api_bare_empty
TRUNCATE bulk_bare, bulk_plain

-- name: tasks_api_bare_drop
DROP TABLE bulk_bare, bulk_plain
