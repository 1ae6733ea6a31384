"""Python calls on one node, for the unit tests of the warm interpreters (test_pypool,
test_python_spares): orders of ``tests.pyfuncs`` functions, running them to their ends,
and reading what they returned."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from balsam_mpi.node.node import Node, pypool
from balsam_mpi.protocol import Assign, EndKind, Finished, RunOrder

REPO = str(Path(__file__).resolve().parents[2])
ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO}


def call(tmp_path: Path, i: int, fn: str, *, wall_s: float = 0.0, need: float = 0.25,
         env: tuple[tuple[str, str], ...] = (), gpus: int = 0, own_dir: bool = True,
         threads: int = 1, **kwargs: Any) -> RunOrder:
    return RunOrder(i, 1, (), str(tmp_path / f"t{i}"), env, need=need, wall_time_s=wall_s,
                    gpus=gpus, threads=threads, python=(f"tests.pyfuncs:{fn}", json.dumps(kwargs)),
                    own_dir=own_dir)


def run(node: Node, *orders: RunOrder, timeout: float = 30.0) -> dict[int, Finished]:
    node.apply(Assign(node.acked + 1, orders))
    return until_ended(node, {s.id for s in orders}, timeout)


def until_ended(node: Node, ids: set[int], timeout: float = 30.0) -> dict[int, Finished]:
    out: dict[int, Finished] = {}
    deadline = time.monotonic() + timeout
    while not ids <= out.keys():
        assert time.monotonic() < deadline, f"only {sorted(out)} of {len(ids)} ended"
        node.step()
        out.update((f.id, f) for f in node.changes.take()[1])
        node.wait(0.01)
    return out


def ok(fin: Finished) -> Any:
    assert (fin.kind, fin.rc) == (EndKind.DONE, 0), fin
    return None if fin.result is None else json.loads(fin.result)


def failed(fin: Finished, kind: EndKind = EndKind.ERROR) -> str:
    assert fin.kind == kind and fin.result is None, fin
    return fin.tail.rstrip()


def python_node() -> Node:
    """A node whose calls see ``FOO=node`` and the rank variable of an MPI launcher."""
    n = Node(environ={**ENV, "PMI_RANK": "3", "FOO": "node"}, kill_grace_s=1.0,
             signal_hold_s=0.2)
    n.python = pypool.PoolConfig(max_calls=1000, memory_mb=300)
    return n
