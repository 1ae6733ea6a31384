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
