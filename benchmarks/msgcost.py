"""The leader's CPU cost of one REPORT and its ASSIGN answer, with the launcher's own
messages and :class:`balsam_mpi.launcher.comm.Comm` (run under ``mpiexec -n 2``).

Rank 1 plays a worker: bursts of REPORTs carrying ``items`` finished tasks each; rank 0
plays the leader's messaging: receive each, answer with an empty ASSIGN. Rank 0 prints
JSON: its CPU seconds per message (process time: what the message costs the leader,
which the scale model charges per report) for each size.

    mpiexec -n 2 python -m benchmarks.msgcost
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    from mpi4py import MPI

    from balsam_mpi.base.pacing import Backoff
    from balsam_mpi.launcher.comm import Comm
    from balsam_mpi.protocol import Assign, EndKind, Finished, Report

    comm = Comm(MPI.COMM_WORLD)
    n_msgs = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    burst = 50
    out: dict[str, float] = {}
    for items in (0, 1, 16, 64):
        fin = tuple(Finished(i, 1, int(EndKind.DONE), 0, 1.0, 2.0) for i in range(items))
        report = Report(1, 0, 0.5, 8, 0, (), fin)
        backoff = Backoff(0.0001, 0.001)
        MPI.COMM_WORLD.Barrier()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if comm.rank == 1:
            for _ in range(n_msgs // burst):
                for _ in range(burst):
                    comm.send(0, report)
                answered = 0
                while answered < burst:
                    if comm.poll(0) is None:
                        comm.progress()
                        backoff.sleep()
                    else:
                        answered += 1
                        backoff.reset()
            comm.flush_sends()
        else:
            seq = 0
            while seq < (n_msgs // burst) * burst:
                got = comm.poll()
                if got is None:
                    comm.progress()
                    backoff.sleep()
                    continue
                backoff.reset()
                seq += 1
                comm.send(got[0], Assign(seq))
            comm.flush_sends()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        if comm.rank == 0:
            n = (n_msgs // burst) * burst
            out[f"cpu_s_per_msg_items_{items}"] = cpu / n
            out[f"wall_s_per_msg_items_{items}"] = wall / n
        MPI.COMM_WORLD.Barrier()
    if comm.rank == 0:
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
