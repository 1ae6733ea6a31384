"""Reports from the task-event history: utilization and throughput over time, per batch
job, usage tables; their rendering as text, JSON, CSV and plots.

See docs/architecture.md §2."""
