#!/usr/bin/env bash
# The Open MPI tier: the demo, the MPI-task tests and the reliability tests (frozen ranks,
# a frozen leader, dead workers) with Debian's Open MPI as the site MPI.
#
#   bash tests/openmpi/run.sh [JUNIT_XML_PREFIX]      (tests/run_all.sh runs it)
#
# As root it installs openmpi-bin and libopenmpi-dev, builds mpi4py against them (with that
# MPI's mpicc; the wheel is kept in ~/.cache/balsam_mpi, per MPI package and Python
# version), runs setup_env.sh for a venv of its own (the checkout's .venv keeps the mpich
# wheel), runs the tests with that venv and that mpiexec, and removes exactly the
# packages it added — on failure and on interruption too (a trap; a run killed with
# SIGKILL is cleaned up by the next one). Anyone else on the machine sees the system MPI
# only for that window.
# Skipped, with the reason, when not root, without apt-get, or with
# BALSAM_OPENMPI_TIER=skip. Reports go to PREFIX.xml (tests) and PREFIX-mpi.xml (tests/mpi).
# By hand, BALSAM_SYSMPI=mpich runs the same with Debian's MPICH (mpich, libmpich-dev).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$here"
prefix="${1:-}"

junit_skip() {  # a report the summary counts as one skipped test, with the reason
    [ -n "$prefix" ] || return 0
    local reason="${1//&/and}"
    reason="${reason//</(}"; reason="${reason//>/)}"; reason="${reason//\"/\'}"
    printf '<testsuite name="openmpi" tests="1" skipped="1" failures="0" errors="0">'`
          `'<testcase classname="tests.openmpi" name="tier"><skipped message="%s"/>'`
          `'</testcase></testsuite>\n' "$reason" > "$prefix.xml"
    printf '<testsuite name="openmpi-mpi" tests="0"/>\n' > "$prefix-mpi.xml"
}
skip() { echo "Open MPI tier: skipped: $*"; junit_skip "$*"; exit 0; }

[ "${BALSAM_OPENMPI_TIER:-}" = skip ] && skip "BALSAM_OPENMPI_TIER=skip"
[ "$(id -u)" -eq 0 ] || skip "installing Debian's Open MPI needs root (CI runs as root)"
command -v apt-get >/dev/null 2>&1 || skip "no apt-get: the tier installs Debian's openmpi-bin"

# shellcheck source=tests/openmpi/sysmpi.sh
source "$here/tests/openmpi/sysmpi.sh"
work="$(mktemp -d /tmp/balsam-openmpi-XXXXXX)"
chmod 0755 "$work"
cleanup() {
    local rc=$?
    PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
    sysmpi_remove || rc=1
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

flavour="${BALSAM_SYSMPI:-openmpi}"
case "$flavour" in
    openmpi) packages=(openmpi-bin libopenmpi-dev) ;;
    mpich) packages=(mpich libmpich-dev) ;;
    *) echo "BALSAM_SYSMPI=$flavour: use openmpi or mpich" >&2; exit 2 ;;
esac
sysmpi_clean_stale
echo "Open MPI tier: installing ${packages[*]}"
t0=$SECONDS
if ! sysmpi_install "${packages[@]}"; then
    echo "Open MPI tier: FAILED: could not install ${packages[*]}" >&2
    exit 1
fi
for tool in mpicc mpiexec mpirun; do
    [ -x "/usr/bin/$tool.$flavour" ] || { echo "no /usr/bin/$tool.$flavour" >&2; exit 1; }
done

# This MPI and no other: its programs under their plain names first on PATH (Debian's
# alternatives may point elsewhere), and no directory that holds another mpiexec.
mkdir -p "$work/bin"
for tool in mpicc mpiexec mpirun; do ln -s "/usr/bin/$tool.$flavour" "$work/bin/$tool"; done
# hydra looks for its proxy beside the mpiexec it was started as.
for tool in hydra_pmi_proxy mpiexec.hydra; do
    [ "$flavour" = mpich ] && [ -e "/usr/bin/$tool" ] && ln -s "/usr/bin/$tool" "$work/bin/$tool"
done
ours="$(readlink -f "/usr/bin/mpiexec.$flavour")"
clean_path=""
IFS=: read -r -a dirs <<< "$PATH"
for dir in "${dirs[@]}"; do
    [ -n "$dir" ] || continue
    if [ -e "$dir/mpiexec" ] && [ "$(readlink -f "$dir/mpiexec")" != "$ours" ]; then
        echo "Open MPI tier: leaving $dir off PATH (another mpiexec)"
        continue
    fi
    clean_path="${clean_path:+$clean_path:}$dir"
done
venv="$work/venv"
export PATH="$venv/bin:$work/bin:$clean_path"
unset BALSAM_USE_MPICH_WHEEL BALSAM_MPI_LAUNCHER
# Open MPI refuses to run as root unless told; CI runs as root. These are the user's
# settings: the launcher passes them on to its tasks' own mpirun.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# Its own session directory: a job killed with SIGKILL leaves its directory behind (8 MiB;
# a later mpirun at the same pid reuses it, measured: docs/mpi-tasks.md), and the tier's
# leftovers go with $work instead of collecting in /tmp.
export OMPI_MCA_orte_tmpdir_base="$work/ompi"
mkdir -p "$OMPI_MCA_orte_tmpdir_base"

python="${PYTHON:-}"  # as setup_env.sh picks it
for candidate in python3.13 python3.12 python3.11 python3; do
    [ -z "$python" ] || break
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python="$candidate"
    fi
done
"$python" -m venv "$venv" || exit 1
key="$flavour-$(dpkg-query -W -f='${Version}' "${packages[1]}")"
key="$key-py$("$venv/bin/python" -c 'import sys; print("%d%d" % sys.version_info[:2])')"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/balsam_mpi/mpi4py-$key"
if ! ls "$cache"/mpi4py-*.whl >/dev/null 2>&1; then
    echo "Open MPI tier: building mpi4py against $(command -v mpicc) (kept in $cache)"
    mkdir -p "$cache"
    if ! MPICC="$work/bin/mpicc" "$venv/bin/python" -m pip --quiet wheel --no-deps \
            --no-binary=mpi4py --no-cache-dir -w "$cache" mpi4py > "$work/build.log" 2>&1; then
        tail -n 20 "$work/build.log" >&2
        rm -rf "$cache"
        echo "Open MPI tier: FAILED: building mpi4py" >&2
        exit 1
    fi
fi
"$venv/bin/python" -m pip --quiet install --no-deps "$cache"/mpi4py-*.whl 2>/dev/null
echo "Open MPI tier: setup_env.sh in $venv"
if ! BALSAM_VENV="$venv" bash "$here/setup_env.sh" > "$work/setup.log" 2>&1; then
    grep -v "WARNING: Location" "$work/setup.log" | tail -n 20 >&2
    echo "Open MPI tier: FAILED: setup_env.sh" >&2
    exit 1
fi
grep -E "^(mpi4py|mpiexec):" "$work/setup.log"
echo "Open MPI tier: ready after $((SECONDS - t0)) s"

status=0
xml=()
[ -n "$prefix" ] && xml=(--junitxml="$prefix.xml")
"$venv/bin/python" -m pytest -p no:cacheprovider "${xml[@]}" tests/openmpi \
    tests/e2e/test_demo.py tests/e2e/test_mpi_tasks.py tests/e2e/test_nested_mpi.py \
    tests/e2e/test_task_api.py tests/e2e/test_local_start.py tests/e2e/test_local_ports.py \
    tests/e2e/test_submit_local.py tests/e2e/test_reliability.py || status=$?

# The MPI tier too: the launcher's own messages over Open MPI (3 ranks, rank 0 reports).
read -r -a mpirun < <("$venv/bin/python" -c \
    'from tests.conftest import FOUND_MPI; print(" ".join(FOUND_MPI.run(1)))')
mpi_args=(-m pytest --with-mpi -p no:cacheprovider tests/mpi)
mpi_xml=()
[ -n "$prefix" ] && mpi_xml=(--junitxml="$prefix-mpi.xml")
mpi_status=0
timeout 300 "${mpirun[@]}" "$venv/bin/python" "${mpi_args[@]}" "${mpi_xml[@]}" \
    : -n 2 "$venv/bin/python" "${mpi_args[@]}" || mpi_status=$?
echo "Open MPI tier: pytest exit $status, MPI tier exit $mpi_status, $((SECONDS - t0)) s in all"
[ "$status" -eq 0 ] && [ "$mpi_status" -eq 0 ]
