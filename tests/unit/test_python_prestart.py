"""A node starts its interpreters' zygote when the launcher starts (python_prestart, on by
default), not at its first Python call: the first wave of calls then waits only for the
forks. The benchmark that moved: 0.1 s Python tasks on 4 × 16, utilization 0.909 → 0.927
(medians of 4 alternating runs, `docs/python-tasks.md`, Performance)."""

from __future__ import annotations

from pathlib import Path

import pytest

from balsam_mpi.launcher.config import Settings
from balsam_mpi.launcher.session import make_node
from balsam_mpi.node.node import Node

pytestmark = pytest.mark.timeout(60)


def _node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: object) -> Node:
    monkeypatch.setenv("BALSAM_DB_PATH", str(tmp_path))
    return make_node(Settings(**settings), None)  # type: ignore[arg-type]


def test_the_zygote_is_up_before_any_call(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    node = _node(tmp_path, monkeypatch)
    try:
        assert node.pool is not None and node.pool.zygote.alive()
        assert node.pool.started == 0  # no interpreter yet: spares follow in idle waits
    finally:
        node.close()
    assert node.pool.zygote.pid == -1  # closed with the node


@pytest.mark.parametrize("settings", [{"python_prestart": False}, {"null_runner": True}])
def test_no_zygote_when_not_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      settings: dict[str, object]) -> None:
    node = _node(tmp_path, monkeypatch, **settings)
    try:
        assert node.pool is None
    finally:
        node.close()


def test_a_zygote_that_cannot_start_leaves_the_node_serving(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing interpreter is the first call's error, as before; the node starts."""
    import dataclasses

    from balsam_mpi.launcher import session

    real = session.PoolConfig.from_settings
    monkeypatch.setattr(session.PoolConfig, "from_settings", classmethod(
        lambda cls, s: dataclasses.replace(real(s), python=str(tmp_path / "no-python"))))
    node = _node(tmp_path, monkeypatch)
    try:
        assert node.pool is not None and not node.pool.zygote.alive()
    finally:
        node.close()
