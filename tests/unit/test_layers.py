"""The package's rooms import one way (docs/architecture.md §2): each room may import its
own modules and rooms of lower layers, never a room above it; the node and the tasks side
stand beside each other and import neither each other nor the launcher."""

from __future__ import annotations

import pytest

from tests.unit.test_import_graph import import_graph

# The layer of each room: a module may import rooms of its own layer or lower ones.
LAYERS: dict[str, int] = {
    "base": 0, "sql": 0, "protocol": 0, "task_api": 0,
    "tasks": 1, "node": 1,
    "launcher": 2, "leader": 2, "worker": 2,
    "batch": 3, "reports": 3,
    "cli": 4, "dbctl": 4, "demo": 4, "__main__": 4, "": 4,
}
# Rooms of one layer that must not import each other all the same.
APART = {frozenset({"tasks", "node"})}


def room(module: str) -> str:
    """``balsam_mpi.node.runner`` → ``node``; ``balsam_mpi.leader`` → ``leader``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for src, targets in sorted(graph.items()):
        a = room(src)
        for dst in sorted(targets):
            b = room(dst)
            if a == b:
                continue
            if LAYERS[b] > LAYERS[a] or frozenset({a, b}) in APART:
                out.append(f"{src} -> {dst}")
    return out


def test_every_room_has_a_layer() -> None:
    rooms = {room(m) for m in import_graph()}
    assert rooms <= LAYERS.keys(), f"rooms without a layer: {sorted(rooms - LAYERS.keys())}"


def test_no_import_goes_up_the_layers() -> None:
    bad = wrong_way(import_graph())
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("graph, expected", [
    ({"balsam_mpi.base.db": {"balsam_mpi.tasks.client"}},
     ["balsam_mpi.base.db -> balsam_mpi.tasks.client"]),
    ({"balsam_mpi.node.stagein": {"balsam_mpi.tasks.validate"}},
     ["balsam_mpi.node.stagein -> balsam_mpi.tasks.validate"]),
    ({"balsam_mpi.launcher.store": {"balsam_mpi.tasks.writer", "balsam_mpi.base.db"},
      "balsam_mpi.cli.tasks": {"balsam_mpi.launcher.config"}}, []),
])
def test_the_check_finds_an_upward_import(graph: dict[str, set[str]],
                                          expected: list[str]) -> None:
    assert wrong_way(graph) == expected
