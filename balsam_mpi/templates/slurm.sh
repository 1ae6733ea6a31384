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
#SBATCH {{ exclusive }}
#SBATCH --signal=B:USR1@{{ warning_s }}
{{ directives }}
{{ end_of_job }}

# Everything the launcher and its tasks create must be writable by the project group, or
# collaborators get "Permission denied" (balsamactivate sets it too; this holds from here on).
# First the submitter's own umask: `submit` ran the submit command under 027, which Slurm
# keeps for the job, so that its output file is not the group's to write.
[ -z "${BALSAM_SUBMIT_UMASK:-}" ] || umask "$BALSAM_SUBMIT_UMASK"
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
    "$BALSAM_VENV/bin/python" -P -m balsam_mpi {{ launcher_args }} &
launcher=$!

# --- the end of the job -------------------------------------------------------------------
# scancel and the time limit: Slurm itself sends TERM to every process of every step, the
# launcher's ranks included (they drain: tasks requeued uncounted, the batch job closed),
# and KILL after KillWait. This shell only keeps waiting. It never sends TERM to srun:
# srun answers TERM (or HUP, QUIT) by killing its whole step at once.
# USR1 (the --signal warning above, `scancel --batch --signal=USR1`) and INT reach this
# shell alone: they go on as USR1, which srun forwards to every process of its step.
trap 'kill -USR1 "$launcher" 2>/dev/null' USR1 INT
trap ':' TERM
while kill -0 "$launcher" 2>/dev/null; do wait "$launcher"; done
wait "$launcher"
