"""CPU per no-op Python call on one node, without MPI or a database.

``python -m benchmarks.nodecalls [N] [dirs]``: a ``Node`` packing 16 with 16 spare
interpreters runs 500 warm-up calls of ``tests.pyfuncs:noop``, then N more kept 16 in
flight; prints calls/s, the node's own CPU per call (this process) and its interpreters'
(its zygote and the interpreters forked from it, from ``/proc``). ``dirs``: each call
gets a task directory of its own (else the app has none: two in-memory outputs). CPU
time, not wall time, so it moves less with other work on the host than the launcher's
rates do; run the versions compared alternately all the same.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import balsam_mpi
from balsam_mpi.node.node import Node, pypool
from balsam_mpi.protocol import Assign, RunOrder

# The checkout of the package under test (PYTHONPATH), whose interpreters and
# tests.pyfuncs the calls use: another checkout's copy of this file can measure it.
REPO = str(Path(balsam_mpi.__file__).resolve().parents[1])
PACK = 16
WARM = 500


def _order(data: Path, i: int, own_dir: bool) -> RunOrder:
    return RunOrder(i, 1, (), f"{data}/wf/s{i // 1000}/t{i}", (), need=1 / PACK,
                    python=("tests.pyfuncs:noop", "{}"), own_dir=own_dir)


def _interpreters_cpu() -> float:
    """CPU seconds of this process's zygote and interpreters (their command line names
    this pid as their node's)."""
    tick = os.sysconf("SC_CLK_TCK")
    me = b"\0" + str(os.getpid()).encode() + b"\0"
    total = 0.0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmd = fh.read()
            if b"pyzygote" not in cmd or me not in cmd:
                continue
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _run(node: Node, data: Path, lo: int, hi: int, own_dir: bool) -> None:
    sent, done = lo, 0
    while done < hi - lo:
        room = PACK - len(node.running) - len(node.queue)
        if room > 0 and sent < hi:
            k = min(room, hi - sent)
            node.apply(Assign(node.acked + 1,
                              tuple(_order(data, i, own_dir) for i in range(sent, sent + k))))
            sent += k
        node.step()
        done += len(node.changes.take()[1])
        node.wait(0.05)


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 5000
    own_dir = len(argv) > 1 and argv[1] == "dirs"
    tmp = Path(tempfile.mkdtemp(prefix="nodecalls-"))
    data = tmp / "data"
    (data / "wf").mkdir(parents=True)
    node = Node(environ={"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO}, kill_grace_s=1.0,
                signal_hold_s=0.2)
    node.python = pypool.PoolConfig(max_calls=10**6, memory_mb=300, spares=PACK)
    try:
        node.prestart_python(spares_now=True)
        _run(node, data, 0, WARM, own_dir)
        cpu0, kids0, t0 = time.process_time(), _interpreters_cpu(), time.monotonic()
        _run(node, data, WARM, WARM + n, own_dir)
        cpu1, kids1, t1 = time.process_time(), _interpreters_cpu(), time.monotonic()
    finally:
        node.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{n / (t1 - t0):,.0f} calls/s; node {(cpu1 - cpu0) / n * 1e6:.1f} µs of CPU a "
          f"call, interpreters {(kids1 - kids0) / n * 1e6:.1f} "
          f"({'task directories' if own_dir else 'no task directories'})")


if __name__ == "__main__":
    main(sys.argv[1:])
