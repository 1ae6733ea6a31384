"""A node alone: /bin/true tasks through the launcher's own node code, without MPI, a leader
or a database — the per-task cost a node pays on this host (the task's directory and
output files, the trampoline, the pidfd, the reap, the report's bookkeeping), which the
bare spawn ceiling leaves out.

``node_parallel(procs, where)`` runs ``procs`` such nodes side by side, as many as a
launcher run has ranks, each in a process of its own packing 16 and kept full; the sum
of their finished tasks over ``seconds`` is the rate. Their task directories go in a
fresh directory in ``where`` — the benchmark project's ``data/`` — a thousand to a shard
as in a project: on this machine's ext4 the cost of making a directory or a file
depends on where it is (in one measurement 35 µs per task directory and two files under
one directory, 1.5–2.4 ms under another, the same minute) as much as on when.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[1])

_NODE = r"""
import sys, time
from balsam_mpi.node import runner
from balsam_mpi.node.node import Node
from balsam_mpi.protocol import Assign, RunOrder

data, seconds, packing = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
runner.configure(cgroups=sys.argv[4] == "1")
node = Node(environ={"PATH": "/usr/bin:/bin"})
made = done = seq = 0
t_end = time.monotonic() + seconds

def orders(k):
    global made
    out = []
    for _ in range(k):
        out.append(RunOrder(made, 1, ("/bin/true",),
                            f"{data}/bench/{made // 1000}/t_{made}", need=1 / packing))
        made += 1
    return tuple(out)

seq += 1
node.apply(Assign(seq, orders(2 * packing)))
counting = False
while True:
    now = time.monotonic()
    node.step()
    ended = len(node.changes.take()[1])
    if counting:
        done += ended
    if now >= t_end:
        break
    if len(node.queue) < packing:
        seq += 1
        node.apply(Assign(seq, orders(packing)))
    node.wait(0.001)
    if not counting and made >= 2 * packing:  # every slot busy once: count from here
        counting, t_end = True, time.monotonic() + seconds
node.close()
print(done)
"""


def node_parallel(procs: int, where: Path, seconds: float = 1.5, packing: int = 16,
                  cgroups: bool = True) -> float:
    """Tasks per second of ``procs`` nodes alone side by side (see the module)."""
    data = Path(tempfile.mkdtemp(prefix="nodealone-", dir=where))
    try:
        for i in range(procs):
            (data / f"n{i}").mkdir()  # each node's own data/ (owned as a project's is)
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO}
        children = [subprocess.Popen([sys.executable, "-c", _NODE, str(data / f"n{i}"),
                                      str(seconds), str(packing), str(int(cgroups))],
                                     stdout=subprocess.PIPE, text=True, env=env)
                    for i in range(procs)]
        total = sum(int(c.communicate()[0].strip() or 0) for c in children)
        return total / seconds
    finally:
        shutil.rmtree(data, ignore_errors=True)
