"""The trampoline's other halves (their system call numbers, calling conventions and
entry), aarch64 and ppc64le, built with Debian's cross compilers and run under qemu's
user-mode emulation: the self-test's exit codes, a program that cannot be executed, a
task killed by a signal, and a task that gets only its own descriptors with
``close_range`` and without it. The task itself is this host's program (qemu hands
``execve`` to the kernel). Each runs where its ``*-linux-gnu-gcc`` and ``qemu-*`` are
installed (``apt-get install gcc-aarch64-linux-gnu gcc-powerpc64le-linux-gnu qemu-user``;
the cross tier, ``tests/cross/run.sh``, installs them for its length in every run of
``tests/run_all.sh`` as root); never on such hardware here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from balsam_mpi.node import trampoline
from tests import nosys
from tests.unit.pykit import REPO

pytestmark = pytest.mark.timeout(120)

# machine -> (cross compiler, qemu user-mode emulator)
TOOLS = {"aarch64": ("aarch64-linux-gnu-gcc", "qemu-aarch64"),
         "ppc64le": ("powerpc64le-linux-gnu-gcc", "qemu-ppc64le")}


def _have(machine: str) -> bool:
    return all(shutil.which(tool) for tool in TOOLS[machine])


MACHINES = [pytest.param(m, marks=pytest.mark.skipif(
    not _have(m), reason=f"no {TOOLS[m][0]} or {TOOLS[m][1]} here")) for m in TOOLS]


@pytest.fixture(scope="module", params=MACHINES)
def binary(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(qemu, the trampoline built for that machine)."""
    machine: str = request.param
    compiler, qemu = TOOLS[machine]
    where = tmp_path_factory.mktemp(machine)
    src, out = where / "pdeath.c", where / f"pdeath-{machine}"
    src.write_text(trampoline.SOURCE)
    subprocess.run([compiler, *trampoline._FLAGS, "-o", str(out), str(src)],
                   check=True, capture_output=True, timeout=60)
    found = shutil.which(qemu)
    assert found
    return found, str(out)


def through(binary: tuple[str, str], *argv: str, refused: tuple[str, ...] = (),
            out: Path | None = None) -> int:
    """Run ``argv`` through the trampoline under qemu, as the runner would (the task's
    directory on fd 3, its parent's pid to die with), with a descriptor of the parent's
    left inheritable at 200; its exit code (negative: the signal it died of)."""
    qemu, tramp = binary
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
        "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n")
    done = subprocess.run([sys.executable, "-c", code, qemu, tramp,
                           str(trampoline.FLAG_PDEATH), "0", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done
    return int(done.stdout)


def test_the_self_test_passes(binary: tuple[str, str]) -> None:
    assert [through(binary, "/bin/true"), through(binary, "/bin/false")] == [0, 1]


def test_a_program_that_cannot_run_is_127_and_a_killed_task_dies_of_its_signal(
        binary: tuple[str, str]) -> None:
    """A failed call's error, as each machine's convention returns it (ppc64le: a flag
    and a positive errno), reaches the code that checks it; the task's death by SIGTERM
    is passed on as the trampoline's own (a negative return code here)."""
    assert through(binary, "/nonexistent/program") == 127
    assert through(binary, "/bin/sh", "-c", "kill -TERM $$") == -15


@pytest.mark.skipif(not nosys.supported(), reason="seccomp numbers for x86-64/aarch64")
@pytest.mark.parametrize("refused", [(), ("close_range",)], ids=["close_range", "proc-fd"])
def test_the_task_gets_only_its_own_descriptors(binary: tuple[str, str], tmp_path: Path,
                                                refused: tuple[str, ...]) -> None:
    listing = tmp_path / "fds"
    assert through(binary, "/bin/ls", "/proc/self/fd", refused=refused, out=listing) == 0
    assert {int(x) for x in listing.read_text().split()} == {0, 1, 2, 3}
