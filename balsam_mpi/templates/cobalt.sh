#!/bin/bash
# balsam_mpi batch job for Cobalt with aprun (ALCF Theta) -- LEGACY: kept for old
# allocations and untested on a live system. Rendered by `balsam-mpi submit`.
# Its double-brace placeholders are filled in, validated and quoted by submit (README.md).
# A header line whose placeholder has no value (no queue given, say) is left out.
#COBALT --jobname {{ job_name }}
#COBALT -n {{ nodes }}
#COBALT -t {{ wall_time_min }}
#COBALT -q {{ queue }}
#COBALT -A {{ account }}
#COBALT --attrs filesystems={{ filesystems }}
{{ directives }}
{{ end_of_job }}

# Everything the launcher and its tasks create must be writable by the project group, or
# collaborators get "Permission denied" (balsamactivate sets it too; this holds from here on).
# First the submitter's own umask: `submit` ran the submit command under 027, which Slurm
# keeps for the job, so that its output file is not the group's to write.
[ -z "${BALSAM_SUBMIT_UMASK:-}" ] || umask "$BALSAM_SUBMIT_UMASK"
umask g=rwx

# --- environment -----------------------------------------------------------------------
# Site modules go here, e.g.:  module load miniconda-3
# The venv is appended to PATH, not prepended, so the site's tools stay first.
BALSAM_VENV={{ venv }}
export PATH="$PATH:$BALSAM_VENV/bin"
{{ exports }}
source "$BALSAM_VENV/bin/balsamactivate" {{ project }} || exit 1

# --- launch: one launcher rank per node; -cc none leaves it unbound so its tasks may use
# every core ------------------------------------------------------------------------------
aprun -n {{ nodes }} -N 1 -cc none \
    "$BALSAM_VENV/bin/python" -P -m balsam_mpi {{ launcher_args }} &
launcher=$!

# --- the end of the job -------------------------------------------------------------------
# Cobalt sends TERM to this script at the end of the wall time and on qdel; the ranks run
# on compute nodes, outside this script's reach. aprun forwards TERM, INT and USR1 to
# every rank (it kills them only on signals it does not forward), so TERM is passed to it
# and the launcher drains (tasks requeued uncounted, the batch job closed).
trap 'kill -TERM "$launcher" 2>/dev/null' TERM USR1 INT
while kill -0 "$launcher" 2>/dev/null; do wait "$launcher"; done
wait "$launcher"
