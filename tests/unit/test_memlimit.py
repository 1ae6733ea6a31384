"""A Python call's default memory cap is its share of what the node's tasks may use
(node/memlimit.py): the physical memory, or the job's cgroup limit where the batch system
sets a lower one. Before, it was a share of the physical memory alone: a job given 1 GiB
let a call of a node packing 4 reach a quarter of the whole node."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from balsam_mpi.node import cgroupfs, memlimit
from tests.unit.pykit import REPO

pytestmark = pytest.mark.timeout(60)
GIB = 1 << 30
PHYSICAL = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def limits(tree: Path, files: dict[str, str], name: str) -> None:
    for rel, text in files.items():
        (tree / rel).mkdir(parents=True, exist_ok=True)
        (tree / rel / name).write_text(text + "\n")


def test_the_lowest_limit_from_the_cgroup_up_to_the_mount(tmp_path: Path) -> None:
    limits(tmp_path, {"": "100", "job": str(3 * GIB), "job/step": "max"}, "memory.max")
    assert memlimit.lowest_limit(str(tmp_path / "job/step"), str(tmp_path / "job"),
                                 "memory.max") == 3 * GIB  # the mount's parent not read
    assert memlimit.lowest_limit(str(tmp_path / "job/step"), str(tmp_path),
                                 "memory.max") == 100
    limits(tmp_path, {"free/step": "max", "free": "max"}, "memory.max")
    assert memlimit.lowest_limit(str(tmp_path / "free/step"), str(tmp_path / "free"),
                                 "memory.max") is None


def fake_proc(tmp_path: Path, cgroup: str, mountinfo: str) -> str:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo)
    return str(proc)


def test_a_slurm_job_under_cgroup_v2(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    limits(root, {"system.slice/slurmstepd.scope/job_7": str(2 * GIB),
                  "system.slice/slurmstepd.scope/job_7/step_0/user/task_0": "max"},
           "memory.max")
    proc = fake_proc(
        tmp_path, "0::/system.slice/slurmstepd.scope/job_7/step_0/user/task_0\n",
        f"30 24 0:26 / {root} rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n")
    assert memlimit.usable_bytes(proc) == min(PHYSICAL, 2 * GIB)


def test_a_job_under_cgroup_v1_seen_from_a_container(tmp_path: Path) -> None:
    """A container sees its own sub-tree at the mount point (mountinfo's root field)."""
    point = tmp_path / "memory"
    limits(point, {"": str(GIB // 2), "step": str(8 * GIB)}, "memory.limit_in_bytes")
    proc = fake_proc(
        tmp_path, "5:cpuset:/\n4:memory:/slurm/uid_0/job_9/step\n0::/\n",
        f"40 31 0:35 /slurm/uid_0/job_9 {point} rw shared:9 - cgroup cgroup rw,memory\n")
    assert memlimit.usable_bytes(proc) == min(PHYSICAL, GIB // 2)


def test_no_cgroup_files_is_the_physical_memory(tmp_path: Path) -> None:
    assert memlimit.usable_bytes(str(tmp_path / "nowhere")) == PHYSICAL


def _v1_memory_dir() -> Path | None:
    """Where this process's v1 memory cgroup is, if root may make one below it."""
    placed = cgroupfs.own_cgroups().get("memory")
    if placed is not None and os.geteuid() == 0 and os.access(placed.path, os.W_OK):
        return Path(placed.path)
    return None


@pytest.mark.skipif(_v1_memory_dir() is None, reason="no v1 memory cgroup to make here")
def test_a_python_calls_cap_is_its_share_of_the_jobs_limit(tmp_path: Path) -> None:
    """A real cgroup of 1 GiB (as a batch system sets one): a call of a node packing 4
    gets a quarter of it, not a quarter of the node."""
    parent = _v1_memory_dir()
    assert parent is not None
    group = parent / f"balsam-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(GIB))
        code = ("import os\n"
                f"open({str(group / 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
                "from balsam_mpi.node import pypool\n"
                "from balsam_mpi.protocol import RunOrder\n"
                "pool = pypool.PyPool({}, pypool.PoolConfig())\n"
                "order = RunOrder(1, 1, (), '/x', need=0.25, python=('m:f', '{}'))\n"
                "print(pool._call(order, {})[0][2])\n")
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                             text=True, timeout=30)
        assert out.stdout.strip() == str(GIB // 4), out
    finally:
        group.rmdir()
