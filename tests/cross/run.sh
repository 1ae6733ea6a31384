#!/usr/bin/env bash
# The cross tier: the task trampoline's aarch64 and ppc64le halves (node/trampoline.py),
# built with Debian's cross compilers and run under qemu's user-mode emulation
# (tests/unit/test_trampoline_cross.py, which the unit tier skips where they are not
# installed). ARM nodes (Grace Hopper and its kind) and POWER nodes run tasks through
# those halves; this tier keeps them built and run on every change, not only where
# someone installed the tools by hand.
#
#   bash tests/cross/run.sh [JUNIT_XML]               (tests/run_all.sh runs it)
#
# As root it installs gcc-aarch64-linux-gnu, gcc-powerpc64le-linux-gnu and qemu-user,
# runs the tests with the checkout's venv, and removes exactly the packages it added — on
# failure and on interruption too (tests/openmpi/sysmpi.sh's install and removal, whose
# state file also lets the next run clean up after one killed with SIGKILL). Skipped, with the reason,
# when not root, without apt-get, or with BALSAM_CROSS_TIER=skip.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$here"
xml="${1:-}"
py="${BALSAM_VENV:-$here/.venv}/bin/python"

skip() {
    echo "cross tier: skipped: $*"
    [ -z "$xml" ] || printf '<testsuite name="cross" tests="1" skipped="1" failures="0" '`
        `'errors="0"><testcase classname="tests.cross" name="tier"><skipped message="%s"/>'`
        `'</testcase></testsuite>\n' "$*" > "$xml"
    exit 0
}
[ "${BALSAM_CROSS_TIER:-}" = skip ] && skip "BALSAM_CROSS_TIER=skip"
[ "$(id -u)" -eq 0 ] || skip "installing the cross compiler and qemu needs root (CI runs as root)"
command -v apt-get >/dev/null 2>&1 || skip "no apt-get: the tier installs Debian's packages"

# shellcheck source=tests/openmpi/sysmpi.sh
source "$here/tests/openmpi/sysmpi.sh"
cleanup() {
    local rc=$?
    sysmpi_remove || rc=1
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

packages=(gcc-aarch64-linux-gnu gcc-powerpc64le-linux-gnu qemu-user)
sysmpi_clean_stale
t0=$SECONDS
if ! sysmpi_install "${packages[@]}"; then
    echo "cross tier: FAILED: could not install ${packages[*]}" >&2
    exit 1
fi
for tool in aarch64-linux-gnu-gcc powerpc64le-linux-gnu-gcc qemu-aarch64 qemu-ppc64le; do
    # Installed and yet absent, the tests would skip themselves: a tier that tested nothing.
    command -v "$tool" >/dev/null || { echo "cross tier: FAILED: no $tool" >&2; exit 1; }
done
echo "cross tier: ready after $((SECONDS - t0)) s"
args=(-m pytest -p no:cacheprovider -rs tests/unit/test_trampoline_cross.py)
[ -n "$xml" ] && args+=(--junitxml="$xml")
"$py" "${args[@]}"
