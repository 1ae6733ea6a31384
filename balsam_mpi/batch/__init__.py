"""Batch jobs: job-script templates and their rendering, submission to a scheduler, and
starting the launcher on this machine.

See docs/architecture.md §2."""
