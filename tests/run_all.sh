#!/usr/bin/env bash
# Every test tier: unit, db, e2e, multiuser under pytest, then the MPI tier under mpiexec,
# then the Open MPI tier (Debian's Open MPI as the site MPI) and the cross tier (the task
# trampoline's aarch64 and ppc64le halves under qemu); those two as root, else skipped.
# Usage: bash tests/run_all.sh [extra pytest args for the non-MPI tiers]
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
venv="${BALSAM_VENV:-$here/.venv}"
py="$venv/bin/python"
export PATH="$venv/bin:$PATH"

reports="$(mktemp -d)"
status=0
# --durations: the slowest tests in every log, to keep the suite within its budget.
# The db and unit tiers run in two processes (pytest-xdist), the db tier's each with its
# own Postgres cluster: in one process the db tier's ~1,200 tests left the second core
# mostly idle (load average about 1.2 here), and in two it took 8 min in CI instead of
# about 14; the unit tier, mostly waits on small processes, 77 s here instead of 129.
# The other tiers stay in one process: they start launchers, Slurm jobs and planted-file
# races whose timing a second process would disturb, and the Slurm tier has one
# throwaway cluster.
tier() {  # tier NAME PYTEST-ARGS...: one pytest run; "no tests collected" is no failure
    local name="$1" rc=0
    shift
    "$py" -m pytest -p no:cacheprovider --junitxml="$reports/$name.xml" "$@" || rc=$?
    [ "$rc" -eq 5 ] && rc=0
    [ "$rc" -ne 0 ] && status=$rc
    return 0
}
tier db -n 2 --durations=15 tests/db "$@"
tier unit -n 2 --durations=15 tests/unit "$@"
tier tiers --durations=30 tests/e2e tests/multiuser tests/slurm "$@"

# The MPI tier: 3 ranks, only rank 0 reports, a watchdog so a stuck rank cannot hang CI.
# The mpiexec is the one the set-up found (the wheel's, or the site's), as the demo finds it.
mpi_status=0
read -r -a mpirun < <("$py" -c 'from tests.conftest import FOUND_MPI
print(" ".join(FOUND_MPI.run(1)) if FOUND_MPI else "")')
if [ "${#mpirun[@]}" -eq 0 ]; then
    echo "MPI tier: no mpiexec beside $py or on PATH (bash setup_env.sh installs one)" >&2
    mpi_status=1
else
    # (MPMD form: only rank 0 writes the JUnit report.)
    mpi_args=(-m pytest --with-mpi -p no:cacheprovider tests/mpi)
    timeout 300 "${mpirun[@]}" "$py" "${mpi_args[@]}" --junitxml="$reports/mpi.xml" \
        : -n 2 "$py" "${mpi_args[@]}" || mpi_status=$?
    [ "$mpi_status" -eq 5 ] && mpi_status=0
fi

# The Open MPI tier: installs Debian's Open MPI for its own venv, removes it afterwards.
openmpi_status=0
bash tests/openmpi/run.sh "$reports/openmpi" || openmpi_status=$?

# The cross tier: installs the cross compilers and qemu, removes them afterwards.
cross_status=0
bash tests/cross/run.sh "$reports/cross.xml" || cross_status=$?

"$py" tests/summarize.py "$reports/db.xml" "$reports/unit.xml" "$reports/tiers.xml" \
    "$reports/mpi.xml" "$reports/openmpi.xml" "$reports/openmpi-mpi.xml" \
    "$reports/cross.xml"
rm -rf "$reports"
if [ "$status" -ne 0 ] || [ "$mpi_status" -ne 0 ] || [ "$openmpi_status" -ne 0 ] \
        || [ "$cross_status" -ne 0 ]; then
    echo "FAILED: pytest tiers exit $status, MPI tier exit $mpi_status," \
         "Open MPI tier exit $openmpi_status, cross tier exit $cross_status" >&2
    exit 1
fi
