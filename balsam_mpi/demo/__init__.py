"""``balsam-mpi demo``: a fresh project, a small mixed workload, one launcher run.

See docs/architecture.md §2."""
