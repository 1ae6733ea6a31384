"""input_files: parents' matching files are linked into the child's directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from balsam_mpi.base.errors import InputError
from balsam_mpi.node.stagein import link_inputs


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
    with pytest.raises(InputError, match="input_files"):
        link_inputs(tmp_path / "c", [tmp_path], [pattern])


# -- planted paths: nothing outside the parents' directories is ever linked in ----------
def _layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """data/wf/0/{parent_1, child_2} and a home directory with a secret."""
    data = tmp_path / "p" / "data"
    parent = data / "wf" / "0" / "parent_1"
    parent.mkdir(parents=True)
    home = tmp_path / "home"
    home.mkdir()
    (home / "id_rsa").write_text("secret key\n")
    return data, parent, data / "wf" / "0" / "child_2"


def test_a_planted_symlink_in_a_parent_is_not_passed_on(tmp_path: Path) -> None:
    data, parent, child = _layout(tmp_path)
    (parent / "result.dat").write_text("real\n")
    (parent / "stolen.dat").symlink_to(tmp_path / "home" / "id_rsa")
    made = link_inputs(child, [parent], ["*.dat"])
    assert [p.name for p in made] == ["result.dat"]
    assert not (child / "stolen.dat").exists() and not (child / "stolen.dat").is_symlink()


def test_a_parents_own_stagein_link_is_passed_on(tmp_path: Path) -> None:
    """A chain: the parent got in.dat from its own parent; the grandchild may link it."""
    data, parent, child = _layout(tmp_path)
    grand = data / "wf" / "0" / "grand_0"
    grand.mkdir()
    (grand / "in.dat").write_text("from the grandparent\n")
    assert link_inputs(parent, [grand], ["in.dat"]) == [parent / "in.dat"]
    assert link_inputs(child, [parent], ["in.dat"]) == [child / "in.dat"]
    assert (child / "in.dat").read_text() == "from the grandparent\n"


@pytest.mark.parametrize("where", ["parent", "subdir"])
def test_a_symlinked_directory_is_never_entered(tmp_path: Path, where: str) -> None:
    data, parent, child = _layout(tmp_path)
    if where == "parent":
        fake = data / "wf" / "0" / "parent_9"
        fake.symlink_to(tmp_path / "home")
        made = link_inputs(child, [fake], ["*"])
    else:
        (parent / "out").symlink_to(tmp_path / "home")
        made = link_inputs(child, [parent], ["out/*"])
    assert made == []


def test_special_files_and_outsiders_files_are_not_linked(tmp_path: Path) -> None:
    import pwd

    data, parent, child = _layout(tmp_path)
    os.mkfifo(parent / "pipe.dat")
    (parent / "theirs.dat").write_text("planted by an outsider\n")
    os.chown(parent / "theirs.dat", pwd.getpwnam("nobody").pw_uid, -1)
    assert link_inputs(child, [parent], ["*.dat"]) == []


def test_the_childs_directory_must_be_safe_too(tmp_path: Path) -> None:
    from balsam_mpi.base.safefs import UnsafePath

    data, parent, child = _layout(tmp_path)
    (parent / "a.dat").write_text("x")
    child.symlink_to(tmp_path / "home")
    with pytest.raises(UnsafePath, match="symbolic link"):
        link_inputs(child, [parent], ["*.dat"])
    assert not (tmp_path / "home" / "a.dat").exists()
