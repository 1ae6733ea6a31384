#!/bin/bash
# balsam_mpi launcher on this machine (no batch scheduler), rendered and started in the
# background by `balsam-mpi submit --scheduler local`; its output goes to a .log beside it.
# Its double-brace placeholders are filled in, validated and quoted by submit (README.md).
# Ranks are virtual nodes of this host. Stop it with `kill -TERM <pid>`: it drains.

# Everything the launcher and its tasks create must be writable by the project group, or
# collaborators get "Permission denied" (balsamactivate sets it too; this holds from here on).
umask g=rwx

# --- environment -----------------------------------------------------------------------
BALSAM_VENV={{ venv }}
export PATH="$BALSAM_VENV/bin:$PATH"
{{ exports }}
source "$BALSAM_VENV/bin/balsamactivate" {{ project }} || exit 1

# --- launch: the venv's mpiexec (the MPI mpi4py was built with), else the one on PATH, ------
# started the way that MPI needs on one shared host (no TCP control port with MPICH,
# oversubscribed and unbound with Open MPI); the choice is written to this job's log.
# localstart replaces itself with the MPI starter, so $launcher is the starter's pid.
mpiexec="$BALSAM_VENV/bin/mpiexec"
[ -x "$mpiexec" ] || mpiexec="$(command -v mpiexec || echo mpiexec)"
"$BALSAM_VENV/bin/python" -P -m balsam_mpi.batch.localstart --mpiexec "$mpiexec" -n {{ nodes }} -- {{ launcher_args }} &
launcher=$!
trap 'kill -TERM "$launcher" 2>/dev/null' TERM USR1 INT
while kill -0 "$launcher" 2>/dev/null; do wait "$launcher"; done
wait "$launcher"
