#!/bin/bash
# balsam_mpi batch job for Slurm (NERSC Perlmutter, ...), rendered by `balsam-mpi submit`.
# Its double-brace placeholders are filled in, validated and quoted by submit (README.md).
# A header line whose placeholder has no value (no queue given, say) is left out.
# -q is Slurm's QOS, as for sbatch; a partition or constraint goes in a --directive.
#SBATCH --job-name={{ job_name }}
#SBATCH --nodes={{ nodes }}
#SBATCH --time={{ walltime }}
#SBATCH --qos={{ queue }}
#SBATCH --account={{ account }}
#SBATCH --licenses={{ filesystems }}
#SBATCH --output={{ job_name }}-%j.out
#SBATCH --signal=B:USR1@120
{{ directives }}

# Everything the launcher and its tasks create must be writable by the project group, or
# collaborators get "Permission denied" (balsamactivate sets it too; this holds from here on).
umask g=rwx

# --- environment -----------------------------------------------------------------------
# Site modules go here, e.g.:  module load python
# The venv is appended to PATH, not prepended, so the site's MPI stays first.
BALSAM_VENV={{ venv }}
export PATH="$PATH:$BALSAM_VENV/bin"
{{ exports }}
source "$BALSAM_VENV/bin/balsamactivate" {{ project }} || exit 1

# --- launch: one launcher rank per node, holding all of the node's CPUs and unbound, so
# its tasks may use every core (a step gets one CPU per task unless told otherwise) -----
srun -N {{ nodes }} -n {{ nodes }} --ntasks-per-node=1 \
    --cpus-per-task="${SLURM_CPUS_ON_NODE:-1}" --cpu-bind=none \
    "$BALSAM_VENV/bin/python" -m balsam_mpi {{ launcher_args }} &
launcher=$!
# --signal=B:USR1@120 warns this shell two minutes before the end; scancel sends TERM.
# Pass either on so the launcher drains (requeues its tasks uncounted, closes its job).
trap 'kill -TERM "$launcher" 2>/dev/null' TERM USR1 INT
while kill -0 "$launcher" 2>/dev/null; do wait "$launcher"; done
wait "$launcher"
