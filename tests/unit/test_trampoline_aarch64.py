"""The trampoline's aarch64 half (its system call numbers and entry), built with Debian's
cross compiler and run under qemu's user-mode emulation: its self-test's exit codes, and
a task that gets only its own descriptors with ``close_range`` and without it. The task
itself is this host's program (qemu hands ``execve`` to the kernel). Runs where
``aarch64-linux-gnu-gcc`` and ``qemu-aarch64`` are installed
(``apt-get install gcc-aarch64-linux-gnu qemu-user``; the aarch64 tier,
``tests/cross/run.sh``, installs both for its length in every run of
``tests/run_all.sh`` as root); never on aarch64 hardware here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from balsam_mpi.node import trampoline
from tests import nosys
from tests.unit.pykit import REPO

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not (shutil.which("aarch64-linux-gnu-gcc")
                            and shutil.which("qemu-aarch64")),
                       reason="no aarch64 cross compiler or qemu-aarch64 here"),
]


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> str:
    where = tmp_path_factory.mktemp("aarch64")
    src, out = where / "pdeath.c", where / "pdeath-aarch64"
    src.write_text(trampoline.SOURCE)
    subprocess.run(["aarch64-linux-gnu-gcc", *trampoline._FLAGS, "-o", str(out), str(src)],
                   check=True, capture_output=True, timeout=60)
    return str(out)


def through(binary: str, *argv: str, refused: tuple[str, ...] = (),
            out: Path | None = None) -> int:
    """Run ``argv`` through the aarch64 trampoline under qemu, as the runner would (the
    task's directory on fd 3, its parent's pid to die with), with a descriptor of the
    parent's left inheritable at 200; its exit status."""
    code = (
        "import os, sys\n"
        "from tests import nosys\n"
        f"if {refused!r}: nosys.refuse(*{refused!r})\n"
        "os.dup2(os.open('/dev/null', os.O_RDONLY), 200, inheritable=True)\n"
        "root = os.open('/', os.O_RDONLY | os.O_DIRECTORY)\n"
        "acts = [(os.POSIX_SPAWN_DUP2, root, 3)]\n"
        f"if {str(out) if out else ''!r}:\n"
        f"    fd = os.open({str(out)!r}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)\n"
        "    acts.append((os.POSIX_SPAWN_DUP2, fd, 1))\n"
        "argv = [sys.argv[1], sys.argv[2], str(os.getpid()), *sys.argv[3:]]\n"
        "pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=acts)\n"
        "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n")
    qemu = shutil.which("qemu-aarch64")
    assert qemu
    done = subprocess.run([sys.executable, "-c", code, qemu, binary,
                           str(trampoline.FLAG_PDEATH), "0", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    return done.returncode


def test_the_self_test_passes(binary: str) -> None:
    assert [through(binary, "/bin/true"), through(binary, "/bin/false")] == [0, 1]


@pytest.mark.skipif(not nosys.supported(), reason="seccomp numbers for x86-64/aarch64")
@pytest.mark.parametrize("refused", [(), ("close_range",)], ids=["close_range", "proc-fd"])
def test_the_task_gets_only_its_own_descriptors(binary: str, tmp_path: Path,
                                                refused: tuple[str, ...]) -> None:
    listing = tmp_path / "fds"
    assert through(binary, "/bin/ls", "/proc/self/fd", refused=refused, out=listing) == 0
    assert {int(x) for x in listing.read_text().split()} == {0, 1, 2, 3}
