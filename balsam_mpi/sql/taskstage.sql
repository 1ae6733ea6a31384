-- taskstage.sql: a bulk add through binary COPY (taskadd.TaskWriter; migrations/0012).
-- `{columns}` is composed with psycopg.sql (identifiers only).

-- name: tasks_stage_begin
-- One round trip: the ids of the add, and the session's staging table (made once).
SELECT tasks_reserve_ids(%(n)s), tasks_stage_open()

-- name: tasks_stage_copy
-- The rows of one chunk, in binary: no text form to write or parse, no per-value
-- adaptation beyond psycopg's C dumpers. Columns a chunk does not give take the staging
-- table's defaults (tasks' own).
COPY pg_temp.task_stage ({columns}) FROM STDIN (FORMAT BINARY)

-- name: tasks_stage_move
-- Everything staged into tasks, then the dependencies, with every check (0012).
SELECT tasks_add_staged(%(children)s::bigint[], %(parents)s::bigint[])
