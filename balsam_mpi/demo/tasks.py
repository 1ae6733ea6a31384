"""The demo's own task programs (`python -m balsam_mpi.demo.tasks hello|spawn`).

``hello``: an mpi4py hello, one line per rank (the demo runs it on 2 nodes).
``spawn``: a task that adds two children through ``task_api``; they wait for it.
"""

from __future__ import annotations

import socket
import sys


def hello() -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    # One write per rank: the launcher forwards output in chunks, so lines are built whole.
    sys.stdout.write(f"rank {comm.Get_rank()} of {comm.Get_size()} on "
                     f"{socket.gethostname()}\n")
    sys.stdout.flush()


def spawn() -> None:
    from .. import task_api

    me = task_api.task_id()
    ids = task_api.add_tasks([
        {"app": "say", "workflow": "dynamic", "name": f"child{i}",
         "params": {"text": f"child {i} of task {me}"}, "parents": [me]}
        for i in (1, 2)])
    print(f"task {me} added tasks {ids}")


def main(argv: list[str]) -> int:
    commands = {"hello": hello, "spawn": spawn}
    if len(argv) != 1 or argv[0] not in commands:
        print(f"usage: python -m balsam_mpi.demo.tasks {{{'|'.join(commands)}}}",
              file=sys.stderr)
        return 2
    commands[argv[0]]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
