#!/usr/bin/env bash
# One-command set-up, idempotent, no sudo: a .venv with balsam_mpi (editable) and its
# dependencies, MPI (the site's through mpi4py built against its mpicc, else the mpich
# wheel), and the PostgreSQL server binaries found and recorded.
#   bash setup_env.sh            # then: source .venv/bin/activate
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${BALSAM_VENV:-$here/.venv}"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
           "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            python="$candidate"; break
        fi
    done
fi
[ -n "$python" ] || { echo "setup_env.sh: need Python >= 3.11 (module load python?)" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv with $("$python" --version 2>&1)"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)

# --- MPI: the site's MPI if there is one, else the mpich wheel --------------------------
# `import mpi4py` succeeds even when the MPI library it was built against is gone (a module
# unloaded, a package removed); only loading mpi4py.MPI opens that library.
mpi_check() { "$venv/bin/python" -c 'from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0])' 2>&1; }
site_mpicc="$(PATH="${PATH//$venv\/bin:/}" command -v mpicc 2>/dev/null || true)"
if mpi_line="$(mpi_check)"; then
    echo "mpi4py: already installed, using ${mpi_line}"
else
    if "$venv/bin/python" -c 'import mpi4py' 2>/dev/null; then
        echo "mpi4py: installed, but 'from mpi4py import MPI' fails:"
        echo "  $(printf '%s\n' "$mpi_line" | grep -v '^ ' | tail -n 1)"
        echo "  (the MPI it was built against is gone or changed); reinstalling it"
        "${pip[@]}" uninstall --yes mpi4py >/dev/null
    fi
    if [ -n "$site_mpicc" ] && [ -z "${BALSAM_USE_MPICH_WHEEL:-}" ]; then
        echo "mpi4py: building against the site's MPI ($site_mpicc)"
        MPICC="$site_mpicc" "${pip[@]}" install --no-binary=mpi4py --no-cache-dir mpi4py
    else
        echo "mpi4py: no site MPI found (no mpicc on PATH); installing the mpich wheel"
        # --force-reinstall: the wheel's own library may be the part that went missing.
        "${pip[@]}" install --force-reinstall --no-cache-dir mpi4py mpich
    fi
    if ! mpi_line="$(mpi_check)"; then
        echo "setup_env.sh: mpi4py still cannot load its MPI library:" >&2
        printf '%s\n' "$mpi_line" | tail -n 3 >&2
        exit 1
    fi
    echo "mpi4py: ${mpi_line}"
fi

echo "installing balsam_mpi (editable) with its test and plot extras"
"${pip[@]}" install -e "$here[test,plot]"

# --- PostgreSQL server binaries -----------------------------------------------------------
pg_bin=""
has_server() { [ -x "$1/initdb" ] && [ -x "$1/pg_ctl" ] && [ -x "$1/postgres" ]; }
if [ -n "${BALSAM_PG_BIN:-}" ] && has_server "$BALSAM_PG_BIN"; then
    pg_bin="$BALSAM_PG_BIN"
elif command -v pg_config >/dev/null 2>&1 && has_server "$(pg_config --bindir)"; then
    pg_bin="$(pg_config --bindir)"
else
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
        if has_server "$dir"; then pg_bin="$dir"; break; fi
    done
fi
if [ -n "$pg_bin" ]; then
    echo "$pg_bin" > "$venv/balsam-pg-bin"
    echo "postgres: $("$pg_bin/postgres" --version) in $pg_bin (recorded in $venv/balsam-pg-bin)"
else
    echo "postgres: NO server binaries found. Get them with one of:" >&2
    echo "  Debian/Ubuntu:  apt-get install postgresql   (as root)" >&2
    echo "  HPC systems:    module load postgresql" >&2
    echo "then re-run setup_env.sh, or set BALSAM_PG_BIN to the directory holding initdb." >&2
fi
mpiexec_path="$(PATH="$venv/bin:$PATH" command -v mpiexec || echo 'not found')"
echo "mpiexec: $mpiexec_path"
echo
echo "next: source $venv/bin/activate && balsam-mpi demo"
