"""A node on a system without pidfds, for tests/unit/test_pidfds.py: ``python -m
tests.unit.nopidfds_probe ERRNO DIR`` refuses ``pidfd_open`` with ERRNO in this process
(tests/nosys.py: as a kernel before Linux 5.3 answers, or a container's seccomp profile)
before anything else, then runs process tasks and Python calls of every ending on one
node and prints, as JSON, how each ended and how long after its end the node noticed."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from tests import nosys


def main(code: int, base: Path) -> dict[str, object]:
    if code:
        nosys.refuse("pidfd_open", code=code)
    from balsam_mpi.node import pidfds
    from balsam_mpi.node.node import Node, pypool
    from balsam_mpi.protocol import Assign, EndKind, Finished, RunOrder
    from tests.unit.pykit import ENV, call

    def run(node: Node, *orders: RunOrder, kill: int = 0) -> dict[int, Finished]:
        node.apply(Assign(node.acked + 1, orders))
        out: dict[int, Finished] = {}
        deadline = time.monotonic() + 30
        while len(out) < len(orders) and time.monotonic() < deadline:
            node.step()
            out.update((f.id, f) for f in node.changes.take()[1])
            if kill and time.monotonic() > deadline - 29:
                node.kill([kill], EndKind.KILLED)
                kill = 0
            node.wait(0.01)
        return out

    def proc(i: int, *argv: str, wall_s: float = 0.0) -> RunOrder:
        return RunOrder(i, 1, argv, str(base / str(i)), need=0.25, wall_time_s=wall_s)

    node = Node(environ=dict(ENV), kill_grace_s=1.0, signal_hold_s=0.2)
    node.python = pypool.PoolConfig(memory_mb=300)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.time()
    ended = run(node, proc(1, "true"), proc(2, "sh", "-c", "exit 3"), proc(3, "sleep", "1"),
                proc(4, "sleep", "30", wall_s=1.0), proc(5, "sleep", "30"), kill=5)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    ended.update(run(node, call(base, 11, "where"), call(base, 12, "exit_now", code=5),
                     call(base, 13, "kill_self"), call(base, 14, "forever", wall_s=1.0)))
    ended.update(run(node, call(base, 15, "where"), call(base, 16, "sleep", s=0.5)))
    node.close()
    return {
        "available": pidfds.available(), "note": pidfds.check(),
        "ended": {i: [EndKind(f.kind).name,
                      f.rc, round(f.ended_at - f.started_at, 3)] for i, f in ended.items()},
        "first_wall_s": round(time.time() - t0, 3),
        "node_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 3),
        "stand_ins_left": pidfds.stand_ins_left(),
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), Path(sys.argv[2]))))
