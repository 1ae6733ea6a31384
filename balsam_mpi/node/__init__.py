"""One node's tasks, with no MPI and no database: the queue and its processes, the
trampoline that contains each task, pre/postprocessing, GPUs, MPI launch prefixes, the
task channel, stage-in, warm Python interpreters.

See docs/architecture.md §2."""
