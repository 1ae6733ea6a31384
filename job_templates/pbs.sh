#!/bin/bash
# balsam_mpi batch job for PBS Pro (ALCF Polaris, Aurora, ...), rendered by `balsam-mpi submit`.
# Its double-brace placeholders are filled in, validated and quoted by submit (README.md).
# A header line whose placeholder has no value (no queue given, say) is left out.
#PBS -N {{ job_name }}
#PBS -l select={{ nodes }}
#PBS -l place=scatter
#PBS -l walltime={{ walltime }}
#PBS -l filesystems={{ filesystems }}
#PBS -q {{ queue }}
#PBS -A {{ account }}
#PBS -j oe
{{ directives }}

# Everything the launcher and its tasks create must be writable by the project group, or
# collaborators get "Permission denied" (balsamactivate sets it too; this holds from here on).
umask g=rwx

# --- environment -----------------------------------------------------------------------
# Site modules go here, e.g.:  module use /soft/modulefiles; module load conda
# The venv is appended to PATH, not prepended, so `mpiexec` below stays the site's (PALS),
# never the fallback wheel's.
BALSAM_VENV={{ venv }}
export PATH="$PATH:$BALSAM_VENV/bin"
{{ exports }}
source "$BALSAM_VENV/bin/balsamactivate" {{ project }} || exit 1

# --- launch: one launcher rank per node, unbound so its tasks may use every core --------
mpiexec -n {{ nodes }} --ppn 1 --cpu-bind none \
    "$BALSAM_VENV/bin/python" -m balsam_mpi {{ launcher_args }} &
launcher=$!
# PBS sends SIGTERM at the end of the wall time and on qdel: pass it on so the launcher
# drains (requeues its tasks uncounted, closes its batch job) instead of dying mid-write.
trap 'kill -TERM "$launcher" 2>/dev/null' TERM USR1 INT
while kill -0 "$launcher" 2>/dev/null; do wait "$launcher"; done
wait "$launcher"
