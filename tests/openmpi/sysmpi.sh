# Sourced by tests/openmpi/run.sh (and usable by hand): install a system MPI from the
# distribution for one test tier, and take back out exactly what was put in.
#
#   source tests/openmpi/sysmpi.sh
#   sysmpi_install openmpi-bin libopenmpi-dev   # sets SYSMPI_ADDED
#   trap sysmpi_remove EXIT
#
# While a system MPI is installed, every other user of the machine sees it (mpicc and
# mpiexec on PATH, alternatives switched), so the window is kept short and a removal is
# recorded in a state file first: a run killed with SIGKILL leaves that file behind, and
# the next run removes its packages before anything else (sysmpi_clean_stale).

SYSMPI_STATE_DIR="${SYSMPI_STATE_DIR:-/var/tmp/balsam-sysmpi}"
_SYSMPI_PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # whatever PATH is
SYSMPI_ADDED=""
SYSMPI_STATE=""
_sysmpi_apt=(apt-get -y -q -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)

_sysmpi_installed() {
    local PATH="$_SYSMPI_PATH"
    dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' 2>/dev/null |
        awk '$1 == "ii" {print $2}' | sort -u
}

# Packages a run recorded but never removed (its shell was killed): remove them now.
sysmpi_clean_stale() {
    local PATH="$_SYSMPI_PATH"
    local file pid
    [ -d "$SYSMPI_STATE_DIR" ] || return 0
    for file in "$SYSMPI_STATE_DIR"/*.pkgs; do
        [ -e "$file" ] || continue
        pid="$(basename "$file" .pkgs)"
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then continue; fi  # still running
        echo "sysmpi: removing packages left by an interrupted run ($file)"
        # shellcheck disable=SC2046
        DEBIAN_FRONTEND=noninteractive "${_sysmpi_apt[@]}" purge $(cat "$file") >/dev/null || true
        rm -f "$file"
    done
}

# Install the packages; SYSMPI_ADDED lists what this call added (nothing already there).
sysmpi_install() {
    local PATH="$_SYSMPI_PATH"
    local before after
    mkdir -p "$SYSMPI_STATE_DIR" && chmod 0700 "$SYSMPI_STATE_DIR"
    SYSMPI_STATE="$SYSMPI_STATE_DIR/$$.pkgs"
    before="$(_sysmpi_installed)"
    # Recorded before the install, so that an install killed half-way is cleaned up too.
    apt-get -s install --no-install-recommends "$@" 2>/dev/null |
        awk '$1 == "Inst" && $3 !~ /^\[/ {print $2}' > "$SYSMPI_STATE"
    if ! DEBIAN_FRONTEND=noninteractive "${_sysmpi_apt[@]}" install --no-install-recommends \
            "$@" >/dev/null; then
        echo "sysmpi: apt-get install failed; updating the package lists and retrying"
        DEBIAN_FRONTEND=noninteractive "${_sysmpi_apt[@]}" update >/dev/null || true
        apt-get -s install --no-install-recommends "$@" 2>/dev/null |
            awk '$1 == "Inst" && $3 !~ /^\[/ {print $2}' >> "$SYSMPI_STATE"
        DEBIAN_FRONTEND=noninteractive "${_sysmpi_apt[@]}" install --no-install-recommends \
            "$@" >/dev/null || { sysmpi_remove; return 1; }
    fi
    after="$(_sysmpi_installed)"
    SYSMPI_ADDED="$(comm -13 <(echo "$before") <(echo "$after") | tr '\n' ' ')"
    echo "$SYSMPI_ADDED" | tr ' ' '\n' | sed '/^$/d' > "$SYSMPI_STATE"
    echo "sysmpi: installed $* ($(echo "$SYSMPI_ADDED" | wc -w) packages added)"
}

# Purge exactly what sysmpi_install added (idempotent: safe from a trap and by hand).
sysmpi_remove() {
    local PATH="$_SYSMPI_PATH"
    local pkgs=""
    [ -n "$SYSMPI_STATE" ] && [ -e "$SYSMPI_STATE" ] && pkgs="$(tr '\n' ' ' < "$SYSMPI_STATE")"
    [ -n "$pkgs" ] || pkgs="$SYSMPI_ADDED"
    if [ -n "${pkgs// /}" ]; then
        # shellcheck disable=SC2086
        if DEBIAN_FRONTEND=noninteractive "${_sysmpi_apt[@]}" purge $pkgs >/dev/null; then
            echo "sysmpi: removed $(echo "$pkgs" | wc -w) packages"
        else
            echo "sysmpi: removal FAILED; remove by hand: apt-get purge $pkgs" >&2
            return 1
        fi
    fi
    [ -n "$SYSMPI_STATE" ] && rm -f "$SYSMPI_STATE"
    SYSMPI_ADDED=""
    return 0
}
