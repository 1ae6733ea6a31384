-- Queries of benchmarks/tasks_api.py (run as the database superuser).

-- name: tasks_api_vacuum
VACUUM ANALYZE tasks

-- name: tasks_api_analyze
ANALYZE tasks, task_deps
