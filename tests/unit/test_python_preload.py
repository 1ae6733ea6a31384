"""``python_preload``: a node's zygote imports the named modules before it forks any
interpreter, so a heavy module is imported once per node instead of once per interpreter
(the first wave's interpreters each reading the same files side by side). Calls wait
while the zygote imports (a fork would block the node behind it); a module that fails,
hangs or kills the zygote at import is reported and left out, and calls run on."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from balsam_mpi.base.errors import InputError
from balsam_mpi.launcher.config import resolve
from balsam_mpi.node import pyzygote, zygoteproc
from balsam_mpi.node.node import Node, pypool
from balsam_mpi.protocol import EndKind, RunOrder
from tests.unit.pykit import ENV, ok, run

pytestmark = pytest.mark.timeout(90)

# A module that records each import of itself (the pid that imported it), and can be
# told to be slow, to fail or to end its process at import.
MODULE = '''
import os, time
with open(os.environ["IMPORT_LOG"], "a") as fh:
    fh.write(f"{os.getpid()}\\n")
time.sleep(float(os.environ.get("IMPORT_SLEEP", "0")))
if os.environ.get("IMPORT_FAIL"):
    raise RuntimeError("no licence server")
if os.environ.get("IMPORT_EXIT"):
    os._exit(3)

def where():
    return {"pid": os.getpid()}
'''


def node_with(tmp_path: Path, preload: tuple[str, ...], **env: str) -> Node:
    mods = tmp_path / "mods"
    mods.mkdir(exist_ok=True)
    (mods / "heavy.py").write_text(MODULE)
    environ = {**ENV, "PYTHONPATH": f"{ENV['PYTHONPATH']}:{mods}",
               "IMPORT_LOG": str(tmp_path / "imports"), **env}
    node = Node(environ=environ, kill_grace_s=1.0, signal_hold_s=0.2)
    node.python = pypool.PoolConfig(memory_mb=300, preload=preload)
    return node


def heavy(tmp_path: Path, i: int, fn: str = "heavy:where") -> RunOrder:
    return RunOrder(i, 1, (), str(tmp_path / f"t{i}"), (), need=0.25, python=(fn, "{}"))


def imports(tmp_path: Path) -> list[int]:
    path = tmp_path / "imports"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_a_preloaded_module_is_imported_once_by_the_zygote_not_by_each_interpreter(
        tmp_path: Path) -> None:
    node = node_with(tmp_path, ("heavy",))
    try:
        out = run(node, *(heavy(tmp_path, i) for i in (1, 2, 3)))
        pids = {ok(f)["pid"] for f in out.values()}
        assert len(pids) == 3  # three interpreters, side by side
        assert node.pool is not None
        assert imports(tmp_path) == [node.pool.zygote.pid]  # before: one per interpreter
    finally:
        node.close()


def test_without_preload_each_interpreter_imports_it(tmp_path: Path) -> None:
    node = node_with(tmp_path, ())
    try:
        out = run(node, *(heavy(tmp_path, i) for i in (1, 2, 3)))
        assert sorted(imports(tmp_path)) == sorted(ok(f)["pid"] for f in out.values())
    finally:
        node.close()


def test_calls_wait_for_a_slow_preload_instead_of_failing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, a call's fork waited for the zygote's answer START_TIMEOUT_S and failed
    ("did not answer") while the zygote was still importing."""
    monkeypatch.setattr(pyzygote, "START_TIMEOUT_S", 0.5)
    node = node_with(tmp_path, ("heavy",), IMPORT_SLEEP="1.5")
    try:
        t0 = time.monotonic()
        out = run(node, heavy(tmp_path, 1), heavy(tmp_path, 2))
        assert {ok(f)["pid"] for f in out.values()}
        assert time.monotonic() - t0 >= 1.4
        assert len(imports(tmp_path)) == 1
    finally:
        node.close()


def test_a_module_that_fails_at_import_is_said_once_and_its_calls_fail_alone(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="balsam_mpi.node.pyzygote")
    node = node_with(tmp_path, ("heavy", "tests.pyfuncs"), IMPORT_FAIL="1")
    try:
        out = run(node, heavy(tmp_path, 1), heavy(tmp_path, 2, "tests.pyfuncs:where"))
        assert out[1].kind == EndKind.ERROR and "no licence server" in out[1].tail
        ok(out[2])
        said = [r.getMessage() for r in caplog.records if "cannot import" in r.getMessage()]
        assert said == ["python_preload: the zygote cannot import heavy (RuntimeError: no "
                        "licence server); calls import it themselves"]
        assert any("imported tests.pyfuncs in" in r.getMessage() for r in caplog.records)
    finally:
        node.close()


@pytest.mark.parametrize("how", ["hangs", "exits"])
def test_a_zygote_that_hangs_or_dies_at_import_is_replaced_by_one_without_preload(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        how: str) -> None:
    monkeypatch.setattr(pyzygote, "PRELOAD_PATIENCE_S", 1.0)
    env = {"IMPORT_SLEEP": "60"} if how == "hangs" else {"IMPORT_EXIT": "1"}
    node = node_with(tmp_path, ("heavy",), **env)
    try:
        out = run(node, heavy(tmp_path, 1, "tests.pyfuncs:where"), timeout=20)
        ok(out[1])
        assert node.pool is not None and node.pool.zygote.preload == ()
        why = "did not finish importing them in 1 s" if how == "hangs" else \
            "died while importing them"
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
            f"the Python interpreters' zygote {why} (python_preload: heavy): its "
            "interpreters start without them"]
    finally:
        node.close()


def test_the_zygote_names_threads_a_preloaded_module_left_running(tmp_path: Path) -> None:
    (tmp_path / "threaded.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        msg = zygoteproc.preload(["threaded", "no_such_module_here", "os;rm"])
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("threaded", None)
    assert msg["threads"] >= 1
    assert msg["failed"] == {
        "no_such_module_here": "ModuleNotFoundError: No module named 'no_such_module_here'",
        "os;rm": "not a module name"}
    json.dumps(msg)  # it travels as JSON


@pytest.mark.parametrize(("value", "want"), [
    ("numpy, pkg.sub,numpy", ("numpy", "pkg.sub")),
    ("", ()),
])
def test_python_preload_is_a_list_of_module_names(value: str, want: tuple[str, ...]) -> None:
    assert resolve({}, {"BALSAM_PYTHON_PRELOAD": value}).python_preload == want


@pytest.mark.parametrize(("value", "error"), [
    ("os;rm", "BALSAM_PYTHON_PRELOAD: python_preload: 'os;rm' is not a module name "
              "(dotted identifiers, as package.module)"),
    ("pkg:fn", "BALSAM_PYTHON_PRELOAD: python_preload: 'pkg:fn' is not a module name "
               "(dotted identifiers, as package.module)"),
    (",".join(f"m{i}" for i in range(65)),
     "BALSAM_PYTHON_PRELOAD: python_preload: at most 64 modules, got 65"),
])
def test_a_bad_module_name_is_one_line_naming_the_setting(value: str, error: str) -> None:
    with pytest.raises(InputError) as exc:
        resolve({}, {"BALSAM_PYTHON_PRELOAD": value})
    assert str(exc.value) == error
