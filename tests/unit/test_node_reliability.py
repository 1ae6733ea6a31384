"""One node keeps its promises (real processes, no MPI): a task that exited before the
stop came keeps its own outcome, a task whose data cannot start fails alone, and a task's
input_files are linked before it starts."""

from __future__ import annotations

import select
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from balsam_mpi.node.node import Node
from balsam_mpi.protocol import Assign, EndKind
from tests.unit.test_node import order, run_until

pytestmark = pytest.mark.timeout(60)


def test_a_task_that_exited_0_before_the_cut_is_done_not_cut(tmp_path: Path) -> None:
    """15.6: while a worker was frozen its tasks exited 0; when it woke, the drain's cut
    marked them CUT (requeued, run again) although they had finished."""
    node = Node(environ={"PATH": "/usr/bin:/bin"}, kill_grace_s=1.0)
    node.apply(Assign(1, (order(tmp_path, 1, ("true",), need=0.5),
                          order(tmp_path, 2, ("sleep", "30"), need=0.5))))
    node.step()
    proc = node.running[1]
    # Wait until it has exited, without reaping it (what a frozen rank never did).
    assert select.select([proc.pidfd], [], [], 10)[0]
    node.cut_all()
    ended = {f.id: f for f in run_until(node, 2)}
    assert ended[1].kind == EndKind.DONE and ended[1].rc == 0
    assert ended[2].kind == EndKind.CUT
    node.close()


def test_a_task_that_cannot_start_fails_alone(tmp_path: Path) -> None:
    """14.7: an env name with '=' (a raw INSERT the client would have refused) crashed
    the rank; the task stayed READY for the next launcher to crash on."""
    node = Node(environ={"PATH": "/usr/bin:/bin"})
    bad = order(tmp_path, 1, ("true",), need=0.5)._replace(env=(("A=B", "x"),))
    node.apply(Assign(1, (bad, order(tmp_path, 2, ("true",), need=0.5))))
    ended = {f.id: f for f in run_until(node, 2)}
    assert ended[1].kind == EndKind.REFUSED and "cannot start the task" in ended[1].tail
    assert "\n" not in ended[1].tail
    assert ended[2].kind == EndKind.DONE
    assert not node.running and node.res.free == pytest.approx(1.0)
    node.close()


def test_input_files_are_linked_before_the_task_starts(tmp_path: Path) -> None:
    """15.10: input_files were never linked (stagein.link_inputs had no caller)."""
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "result.txt").write_text("from the parent\n")
    (parent / "other.dat").write_text("not wanted\n")
    child = order(tmp_path, 7, ("cat", "result.txt"))._replace(
        inputs=("*.txt",), parent_dirs=(str(parent),))
    node = Node(environ={"PATH": "/usr/bin:/bin"})
    node.apply(Assign(1, (child,)))
    [f] = run_until(node, 1)
    assert f.kind == EndKind.DONE, f.tail
    task_dir = Path(child.cwd)
    assert (task_dir / "task.out").read_text() == "from the parent\n"
    assert (task_dir / "result.txt").is_symlink() and not (task_dir / "other.dat").exists()
    node.close()


@pytest.fixture()
def full_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs of its own (root only), unmounted after."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def test_a_task_that_failed_on_a_full_disk_says_so(tmp_path: Path, full_fs: Path) -> None:
    """A task filling its directory's file system could not write its own error message
    either: its record said "exit code 1" with nothing else."""
    node = Node(environ={"PATH": "/usr/bin:/bin"})
    script = "yes x | head -c 200000 || { echo cannot write >&2; exit 1; }"
    node.apply(Assign(1, (order(full_fs, 1, ("sh", "-c", script), need=0.5),
                          order(tmp_path, 2, ("sh", "-c", "echo bad >&2; exit 3"),
                                need=0.5))))
    ended = {f.id: f for f in run_until(node, 2)}
    assert ended[1].kind == EndKind.ERROR and ended[1].rc == 1
    assert ended[1].tail.endswith("had no space left when the task ended: what it wrote "
                                  "last, such as its own error message, may be missing]"), \
        ended[1].tail[-300:]
    assert ended[2].kind == EndKind.ERROR and ended[2].tail == "bad\n"  # room: no note
    node.close()


def test_a_task_killed_by_a_signal_says_which(tmp_path: Path) -> None:
    """`scancel --signal=HUP`, the kernel's OOM killer, another user's kill: the record
    said "exit code -1" or "-9" and nothing more; the tail now names the signal."""
    node = Node(environ={"PATH": "/usr/bin:/bin"}, signal_hold_s=0.0)
    node.apply(Assign(1, (order(tmp_path, 1, ("sh", "-c", "echo started; kill -HUP $$"),
                                need=0.5),
                          order(tmp_path, 2, ("sh", "-c", "kill -KILL $$"), need=0.5))))
    ended = {f.id: f for f in run_until(node, 2)}
    assert (ended[1].kind, ended[1].rc) == (EndKind.ERROR, -1)
    assert ended[1].tail.startswith("started\n") and ended[1].tail.endswith(
        "[balsam-mpi: the task was ended by signal 1 (SIGHUP), which this launcher did "
        "not send]"), ended[1].tail
    assert ended[2].tail == ("[balsam-mpi: the task was ended by signal 9 (SIGKILL), which "
                             "this launcher did not send: the kernel's out-of-memory killer "
                             "sends it, as does kill -9]"), ended[2].tail
    node.close()
