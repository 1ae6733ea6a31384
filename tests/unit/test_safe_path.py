"""What the launcher's Pythons import is never looked up in their working directory.

``python -m`` puts the working directory first on ``sys.path``. A batch job starts in
``PROJECT/qsubmit/``, which every member of the project group may write (3770): a module
planted there under a name the launcher, the node's zygote or a task's call imports later
(``argparse``, ``balsam_mpi`` itself, the task's own package) ran as whoever's job started
next — the project owner's included. Every Python the launcher starts now runs with ``-P``,
and a launcher started by hand without it, in a directory others can write, refuses to run
(docs/security.md, "The launcher's working directory")."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from balsam_mpi.base import safepath
from balsam_mpi.node.node import Node
from balsam_mpi.protocol import RunOrder

from .pykit import REPO, call, failed, ok, python_node, run

PLANTS = ("balsam_mpi/__init__.py", "tests/__init__.py", "tests/pyfuncs.py", "argparse.py",
          "selectors.py")


def plant(where: Path, marks: Path) -> None:
    """Modules that leave a mark when imported, under names the launcher's Pythons use."""
    for rel in PLANTS:
        path = where / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        mark = marks / rel.replace("/", "_")
        path.write_text(f"open({str(mark)!r}, 'w').write('imported')\n"
                        "def add(a, b):\n    return 'planted'\n")


@pytest.fixture()
def planted_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    cwd, marks = tmp_path / "qsubmit", tmp_path / "marks"
    marks.mkdir()
    plant(cwd, marks)
    monkeypatch.chdir(cwd)
    yield marks


def test_a_python_call_never_imports_from_the_launchers_directory(planted_cwd: Path,
                                                                 tmp_path: Path) -> None:
    """The zygote was ``python -m balsam_mpi.node.pyzygote`` in the launcher's directory:
    the planted ``balsam_mpi`` and the call's own package (``tests``, on PYTHONPATH) came
    from there first."""
    node: Node = python_node()
    try:
        ended = run(node, call(tmp_path, 1, "add", a=1, b=2))
    finally:
        node.close()
    assert ok(ended[1]) == 3
    assert sorted(p.name for p in planted_cwd.iterdir()) == []


def test_the_local_starter_never_imports_from_its_directory(planted_cwd: Path) -> None:
    """``balsam_mpi.batch.localstart`` (the local scheduler's job script) and the launcher
    argv it builds run with ``-P``; ``--dry-run`` prints the command it would start."""
    proc = subprocess.run([sys.executable, "-P", "-m", "balsam_mpi.batch.localstart",
                           "--dry-run", "-n", "2", "--", "--help"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr
    argv = proc.stderr.strip().splitlines()[-1].split()
    assert argv[argv.index(sys.executable) + 1] == "-P", proc.stderr
    launched = subprocess.run(argv[argv.index(sys.executable):], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PYTHONPATH": REPO})
    assert launched.returncode == 0 and "usage:" in launched.stdout, launched.stderr
    assert sorted(p.name for p in planted_cwd.iterdir()) == []


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o2770])
def test_a_launcher_without_p_refuses_a_directory_others_can_write(tmp_path: Path,
                                                                  mode: int) -> None:
    """Started by hand as ``python -m balsam_mpi`` in a directory others can write: one line
    naming the directory and the fix, status 2, before it reads a project."""
    cwd = tmp_path / "shared"
    cwd.mkdir()
    cwd.chmod(mode)
    proc = subprocess.run([sys.executable, "-m", "balsam_mpi", "--project", str(tmp_path)],
                          cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(cwd) in lines[0] and "python -P" in lines[0], lines


def test_with_p_or_in_a_directory_of_ones_own_the_launcher_goes_on(tmp_path: Path) -> None:
    """The refusal is for the unsafe case only: ``-P`` anywhere, or a directory only this
    user can write, go on to the launcher's own checks (here: no project there)."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    own = tmp_path / "own"
    own.mkdir(mode=0o755)
    for flags, cwd in ((["-P"], shared), ([], own)):
        proc = subprocess.run([sys.executable, *flags, "-m", "balsam_mpi", "--project",
                               str(tmp_path / "none")], cwd=cwd, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PYTHONPATH": REPO})
        assert "python -P" not in proc.stderr, proc.stderr
        assert proc.returncode != 0  # no project at that path


def test_who_else_can_write_a_directory(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    for mode, others in ((0o700, False), (0o755, False), (0o775, True), (0o757, True),
                         (0o1777, True), (0o3770, True)):
        d.chmod(mode)
        assert (safepath.writable_by_others(os.stat(d)) is not None) is others, oct(mode)
    st = os.stat(d)
    d.chmod(0o755)
    if os.getuid() == 0:
        os.chown(d, 65534, -1)  # nobody's directory: nobody may plant there
        assert safepath.writable_by_others(os.stat(d)) is not None
    assert st is not None


@pytest.mark.parametrize("pythonpath", ["{repo}:", ":{repo}", "{repo}:.", "{repo}::/usr"])
def test_an_empty_pythonpath_entry_is_the_working_directory_too(tmp_path: Path,
                                                                pythonpath: str) -> None:
    """``export PYTHONPATH=$PWD:$PYTHONPATH`` with the variable unset leaves a trailing
    ``:``, which Python reads as the working directory, ``-P`` or not."""
    cwd = tmp_path / "shared"
    cwd.mkdir()
    cwd.chmod(0o2770)
    proc = subprocess.run([sys.executable, "-P", "-m", "balsam_mpi", "--project",
                           str(tmp_path)], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ,
                                           "PYTHONPATH": pythonpath.format(repo=REPO)})
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(cwd) in lines[0] and "PYTHONPATH" in lines[0], lines


def test_a_module_only_in_the_launchers_directory_is_not_found_and_says_where_to_put_it(
        planted_cwd: Path, tmp_path: Path) -> None:
    """What ``-P`` changes for a user whose module sat in the directory the launcher was
    started from: the call fails with the import error and one line of what to do."""
    Path("onlyhere.py").write_text("def fn():\n    return 1\n")
    order = RunOrder(1, 1, (), str(tmp_path / "t1"), (), need=0.25,
                     python=("onlyhere:fn", "{}"))
    node: Node = python_node()
    try:
        ended = run(node, order)
    finally:
        node.close()
    tail = failed(ended[1])
    assert "ModuleNotFoundError: No module named 'onlyhere'" in tail, tail
    assert "put its directory on PYTHONPATH" in tail, tail
