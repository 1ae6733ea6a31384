"""The leader's machinery: settings, the MPI comm, claims and run orders, dispatch to
nodes, kills, liveness, leases, the report buffer and its one database thread, journals,
the store behind its port, the end of a run; and the start of the ranks.

See docs/architecture.md §2."""
