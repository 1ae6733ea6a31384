#!/usr/bin/env bash
# Every test tier: unit, db, e2e, multiuser under pytest, then the MPI tier under mpiexec.
# Usage: bash tests/run_all.sh [extra pytest args for the non-MPI tiers]
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
venv="${BALSAM_VENV:-$here/.venv}"
py="$venv/bin/python"
export PATH="$venv/bin:$PATH"

reports="$(mktemp -d)"
status=0
"$py" -m pytest -p no:cacheprovider --junitxml="$reports/tiers.xml" \
    tests/unit tests/db tests/e2e tests/multiuser tests/slurm "$@" || status=$?
[ "$status" -eq 5 ] && status=0   # a tier with no tests collected is not a failure

# The MPI tier: 3 ranks, only rank 0 reports, a watchdog so a stuck rank cannot hang CI.
mpi_status=0
# (MPMD form: only rank 0 writes the JUnit report.)
mpi_args=(-m pytest --with-mpi -p no:cacheprovider tests/mpi)
timeout 300 "$venv/bin/mpiexec" -n 1 "$py" "${mpi_args[@]}" --junitxml="$reports/mpi.xml" \
    : -n 2 "$py" "${mpi_args[@]}" || mpi_status=$?
[ "$mpi_status" -eq 5 ] && mpi_status=0
"$py" tests/summarize.py "$reports/tiers.xml" "$reports/mpi.xml"
rm -rf "$reports"
if [ "$status" -ne 0 ] || [ "$mpi_status" -ne 0 ]; then
    echo "FAILED: pytest tiers exit $status, MPI tier exit $mpi_status" >&2
    exit 1
fi
