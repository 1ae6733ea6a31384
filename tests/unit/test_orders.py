"""Claimed rows → orders (no database): one row that cannot run fails its own task and
nothing else, and input_files travel with the order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from balsam_mpi.base.limits import COMMAND_MAX
from balsam_mpi.base.project import Project
from balsam_mpi.launcher.orders import OrderBuilder
from balsam_mpi.launcher.storeport import Claimed

pytestmark = pytest.mark.timeout(60)


def row(i: int, **kw: object) -> Claimed:
    base: dict[str, object] = dict(
        id=i, workflow="w", name="t", state="READY", app="a", command="echo {x}",
        shell=False, env_script="", params='{"x": 1}', args=[], env="{}", num_nodes=1,
        ranks_per_node=1, threads_per_rank=1, gpus_per_rank=0, node_packing_count=1,
        wall_time_min=0.0)
    base.update(kw)
    return Claimed(**base)  # type: ignore[arg-type]


def test_poison_rows_fail_alone_with_one_line_each(tmp_path: Path) -> None:
    """14.7 and 15.12: a raw INSERT with env {"A=B": "x"} crashed every launcher that
    claimed it; a 2 MB command froze the leader's loop for 50 s in shlex.split."""
    b = OrderBuilder(Project(tmp_path), 1)
    rows = [row(1), row(2, env='{"A=B": "x"}'), row(3, command="x" * (2 * 1024 * 1024)),
            row(4, params='{"y": 1}'), row(5, env='["not", "an", "object"]'),
            row(6, args=["a" * 65536] * 40), row(7, env='{"K": 5}')]
    orders, bad = b.build_all(rows)
    assert [s.id for s in orders] == [1, 7]
    assert orders[1].env == (("K", "5"),)
    why = dict(bad)
    assert sorted(why) == [2, 3, 4, 5, 6]
    assert "env" in why[2] and "'A=B'" in why[2]
    assert "command" in why[3] and str(COMMAND_MAX) in why[3]
    assert "{x}" in why[4]
    assert "env" in why[5]
    assert "args" in why[6]
    assert all("\n" not in w and len(w) <= 500 for w in why.values())


def test_input_files_and_the_parents_directories_travel_with_the_order(tmp_path: Path
                                                                      ) -> None:
    project = Project(tmp_path)
    b = OrderBuilder(project, 1)
    [s], bad = b.build_all([row(9, input_files=["*.txt"],
                                parents=json.dumps([["up", 3, "p"], ["up", 1500, ""]]))])
    assert not bad
    assert s.inputs == ("*.txt",)
    assert s.parent_dirs == (str(project.task_dir("up", 3, "p")),
                             str(project.task_dir("up", 1500, "")))
    [plain], _ = b.build_all([row(10)])
    assert plain.inputs == () and plain.parent_dirs == ()
