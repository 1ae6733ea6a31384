"""input_files: parents' matching files are linked into the child's directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from balsam_mpi.stagein import link_inputs
from balsam_mpi.taskspec import TaskSpecError


def test_links_matching_files_first_parent_wins(tmp_path: Path) -> None:
    a, b, child = tmp_path / "a", tmp_path / "b", tmp_path / "child"
    a.mkdir()
    b.mkdir()
    (a / "out.dat").write_text("from a")
    (a / "log.txt").write_text("log")
    (b / "out.dat").write_text("from b")
    (b / "more.dat").write_text("more")
    made = link_inputs(child, [a, b, tmp_path / "missing"], ["*.dat"])
    assert sorted(p.name for p in made) == ["more.dat", "out.dat"]
    assert (child / "out.dat").read_text() == "from a"
    assert not (child / "log.txt").exists()
    assert link_inputs(child, [a], ["*.dat"]) == []  # nothing overwritten


@pytest.mark.parametrize("pattern", ["/etc/*", "../*", "a/../../x", ""])
def test_patterns_stay_inside_the_parent(tmp_path: Path, pattern: str) -> None:
    with pytest.raises(TaskSpecError, match="input_files"):
        link_inputs(tmp_path / "c", [tmp_path], [pattern])
