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
{{ end_of_job }}

# Everything the launcher and its tasks create must be writable by the project group, or
# collaborators get "Permission denied" (balsamactivate sets it too; this holds from here on).
# First the submitter's own umask: `submit` ran the submit command under 027, which Slurm
# keeps for the job, so that its output file is not the group's to write.
[ -z "${BALSAM_SUBMIT_UMASK:-}" ] || umask "$BALSAM_SUBMIT_UMASK"
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
    "$BALSAM_VENV/bin/python" -P -m balsam_mpi {{ launcher_args }} &
launcher=$!

# --- the end of the job -------------------------------------------------------------------
# qdel and the wall time: PBS itself sends TERM to every process of the job on every node,
# the launcher's ranks included (they drain: tasks requeued uncounted, the batch job
# closed), and KILL after the queue's kill_delay (`qstat -Qf QUEUE`); qsig too signals
# every process of the job. So nothing is passed on from here: a second signal could only
# reach mpiexec, not the ranks. This shell only keeps waiting and returns the launcher's
# status.
trap ':' TERM USR1 INT
while kill -0 "$launcher" 2>/dev/null; do wait "$launcher"; done
wait "$launcher"
