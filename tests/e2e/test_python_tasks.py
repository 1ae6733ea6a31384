"""Python tasks end to end: `mpiexec python -m balsam_mpi` calling functions in warm
interpreters, results read back with `Client.wait`, and the acceptance cases — a task that
raises, never returns, exhausts memory, is killed by its user, calls os._exit or kills its
own interpreter — each recorded as what it was while the node keeps serving."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from balsam_mpi import Client

from .test_launcher import finish, launcher, no_strays
from .test_lifecycle import kill_launcher_tree

pytestmark = pytest.mark.timeout(240)
REPO = str(Path(__file__).resolve().parents[2])


@pytest.fixture()
def client(dbname: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("PYTHONPATH", REPO)  # the interpreters import tests.pyfuncs
    with Client() as c:
        for name in ("add", "count", "boom", "forever", "hog", "exit_now", "kill_self",
                     "sleep", "spawn_child"):
            c.add_app(name, python=f"tests.pyfuncs:{name}")
        yield c


def _task(app: str, **fields: Any) -> dict[str, Any]:
    return {"app": app, "workflow": "py", **fields}


def test_functions_run_in_warm_interpreters_and_results_come_back(
        client: Client, conn: Any, dbname: str) -> None:
    adds = client.add_tasks([_task("add", params={"a": i, "b": 0.5}, node_packing_count=8)
                             for i in range(300)])
    counts = client.add_tasks([_task("count", node_packing_count=8) for _ in range(60)])
    proc = launcher(2)
    outcomes = client.wait(adds + counts, timeout=180)  # while the launcher runs them
    finish(proc)
    assert [o.result for o in outcomes[:300]] == [i + 0.5 for i in range(300)]
    assert all(o.state == "JOB_FINISHED" for o in outcomes)
    runs = dict(conn.execute("SELECT task_id, count(*) FROM task_events "
                             "WHERE to_state = 'RUNNING' GROUP BY 1").fetchall())
    assert set(runs.values()) == {1} and len(runs) == 360  # each ran exactly once
    # Warm: at most one interpreter per slot (2 nodes x 8), each called many times.
    pids = {o.result["pid"] for o in outcomes[300:]}
    assert len(pids) <= 16
    assert max(o.result["calls"] for o in outcomes[300:]) >= 2
    no_strays(dbname)


def test_every_way_a_call_can_fail_is_recorded_and_the_node_keeps_serving(
        client: Client, conn: Any, dbname: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALSAM_PYTHON_MEMORY_MB", "300")
    first = dict(node_packing_count=4, priority=10, timeout_retry_limit=0,
                 error_retry_limit=0)
    ids = dict(zip(
        ("boom", "forever", "hog", "killed", "exit_now", "kill_self"),
        client.add_tasks([
            _task("boom", params={"msg": "bad input 42"}, **first),
            _task("forever", wall_time_min=0.03, **first),
            _task("hog", **first),
            _task("forever", **first),  # killed by its user below
            _task("exit_now", params={"code": 3}, **first),
            _task("kill_self", **first),
        ]), strict=True))
    after = client.add_tasks([_task("add", params={"a": i, "b": 1}, node_packing_count=4)
                              for i in range(40)])
    proc = launcher(2, "--idle-timeout", "2")
    deadline = time.monotonic() + 60
    while client.get(ids["killed"])["state"] != "RUNNING":
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    client.kill([ids["killed"]])
    out = {o.id: o for o in client.wait(list(ids.values()) + after, timeout=180)}
    finish(proc)

    def row(name: str) -> tuple[str, int | None, str, str]:
        o = out[ids[name]]
        return o.state, o.exit_code, o.state_message, o.output_tail

    state, rc, msg, tail = row("boom")
    assert (state, rc, msg) == ("FAILED", 1, "exit code 1")
    assert "Traceback" in tail and tail.rstrip().endswith("ValueError: bad input 42")
    assert row("forever")[0] == "FAILED" and row("forever")[2] == "ran over its wall_time_min"
    state, rc, _, tail = row("hog")
    assert (state, rc) == ("FAILED", 1) and tail.rstrip().endswith("MemoryError")
    assert row("killed")[0] == "USER_KILLED"
    state, rc, _, tail = row("exit_now")
    assert (state, rc) == ("FAILED", 3)
    assert "interpreter running this call exited with code 3" in tail
    state, rc, _, tail = row("kill_self")
    assert (state, rc) == ("FAILED", -9) and "killed by SIGKILL" in tail
    # Every later task ran, on the same ranks, and the batch job ended normally.
    assert [out[i].result for i in after] == [i + 1 for i in range(40)]
    job = conn.execute("SELECT state::text, end_reason FROM batch_jobs").fetchall()
    assert job == [("FINISHED", "idle")]
    no_strays(dbname)


def _interpreters_and_ranks(dbname: str) -> tuple[list[int], list[int]]:
    """(launcher ranks, interpreters) of this test's launcher: the interpreters are the
    children of the ranks' zygotes (python -m balsam_mpi.node.pyzygote)."""
    marker = f"BALSAM_DB_NAME={dbname}".encode()
    ranks, zygotish = [], {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if marker not in env:
            continue
        if b"balsam_mpi.node.pyzygote" in cmd:
            zygotish[int(entry)] = ppid
        elif os.path.basename(cmd[0]).startswith(b"python") and b"balsam_mpi" in cmd:
            ranks.append(int(entry))
    interps = [pid for pid, ppid in zygotish.items() if ppid in zygotish]
    return ranks, interps


@pytest.mark.parametrize("interpreters_first", [True, False],
                         ids=["interpreters-first", "ranks-first"])
def test_the_end_of_the_job_cuts_calls_and_spends_no_retry(
        client: Client, conn: Any, dbname: str, interpreters_first: bool) -> None:
    client.add_tasks([_task("sleep", params={"s": 60}, node_packing_count=4)
                      for _ in range(20)])
    proc = launcher(2, "--idle-timeout", "30")
    deadline = time.monotonic() + 60
    while conn.execute("SELECT count(*) FROM tasks WHERE state = 'RUNNING'").fetchone()[0] < 8:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    ranks, interps = _interpreters_and_ranks(dbname)
    assert len(ranks) == 2 and len(interps) == 8, (ranks, interps)
    first, then = (interps, ranks) if interpreters_first else (ranks, interps)
    for group in (first, then):  # as a scheduler does: everything, in some order
        for pid in group:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    finish(proc)
    rows = conn.execute("SELECT state::text, batch_job_id, error_retries, timeout_retries, "
                        "lost_retries FROM tasks").fetchall()
    assert {r[0] for r in rows} <= {"READY", "RESTART_READY"}
    assert all(r[1:] == (None, 0, 0, 0) for r in rows), rows
    assert conn.execute("SELECT count(*) FROM task_events WHERE to_state = 'RUNNING'"
                        ).fetchone()[0] == 8  # nothing started after the signal
    job = conn.execute("SELECT state::text, end_reason FROM batch_jobs").fetchone()
    assert job == ("FINISHED", "SIGTERM")
    no_strays(dbname)


def test_a_call_adds_tasks_through_its_launcher(client: Client, conn: Any) -> None:
    parents = client.add_tasks([_task("spawn_child", params={"a": i}) for i in range(3)])
    proc = launcher(2)
    done = client.wait(parents, timeout=120)
    children = [o.result[0] for o in done]
    assert [client.result(c, timeout=120) for c in children] == [1, 2, 3]
    finish(proc)
    assert client.get(children[0])["parents"] == [parents[0]]


def test_kill_9_of_the_launcher_takes_its_interpreters_with_it(
        client: Client, conn: Any, dbname: str) -> None:
    # More than the 8 slots: a node may hold a few queued (docs/launcher.md, "Not yet").
    client.add_tasks([_task("forever", node_packing_count=4) for _ in range(20)])
    proc = launcher(2, "--idle-timeout", "30")
    deadline = time.monotonic() + 60
    while conn.execute("SELECT count(*) FROM tasks WHERE state = 'RUNNING'").fetchone()[0] < 8:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    assert len(_interpreters_and_ranks(dbname)[1]) == 8
    kill_launcher_tree(proc.pid)  # mpiexec, its proxy and the ranks; not the interpreters
    proc.communicate(timeout=30)
    no_strays(dbname)  # they died with their ranks (parent-death signal)


def test_calls_without_task_directories(client: Client, dbname: str) -> None:
    """An app added with task_dirs off: its calls run in the workflow's directory, results
    come back, a raise keeps its traceback's tail, and no task directory is made."""
    client.add_app("add_nodir", python="tests.pyfuncs:add", task_dirs=False)
    client.add_app("boom_nodir", python="tests.pyfuncs:boom", task_dirs=False)
    adds = client.add_tasks([{"app": "add_nodir", "workflow": "nodir",
                              "params": {"a": i, "b": 1}, "node_packing_count": 8}
                             for i in range(200)])
    [boom] = client.add_tasks([{"app": "boom_nodir", "workflow": "nodir",
                                "params": {"msg": "it went wrong"}}])
    proc = launcher(2)
    outcomes = client.wait([*adds, boom], timeout=180)
    finish(proc)
    assert [o.result for o in outcomes[:200]] == [i + 1 for i in range(200)]
    failed = outcomes[200]
    assert (failed.state, failed.exit_code) == ("FAILED", 1)
    assert failed.output_tail.rstrip().endswith("ValueError: it went wrong")
    wf = Path(os.environ["BALSAM_DB_PATH"]) / "data" / "nodir"
    assert wf.is_dir() and list(wf.iterdir()) == []  # no shard, no task directory
    no_strays(dbname)


PRELOADED = '''
import os
with open(os.environ["IMPORT_LOG"], "a") as fh:
    fh.write(f"{os.getpid()}\\n")

def where():
    return {"pid": os.getpid(), "ppid": os.getppid()}
'''


def test_python_preload_imports_a_module_once_per_node(
        client: Client, dbname: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``BALSAM_PYTHON_PRELOAD``: each node's zygote imports the module before it forks
    its interpreters, so none of them imports it again (without it: one import per
    interpreter, tests/unit/test_python_preload.py)."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "preloaded_mod.py").write_text(PRELOADED)
    log = tmp_path / "imports"
    monkeypatch.setenv("PYTHONPATH", f"{REPO}:{mods}")
    monkeypatch.setenv("IMPORT_LOG", str(log))
    monkeypatch.setenv("BALSAM_PYTHON_PRELOAD", "preloaded_mod")
    client.add_app("preloaded", python="preloaded_mod:where")
    ids = client.add_tasks([_task("preloaded", node_packing_count=8) for _ in range(64)])
    proc = launcher(2)
    outcomes = client.wait(ids, timeout=180)
    finish(proc)
    assert all(o.state == "JOB_FINISHED" for o in outcomes)
    interpreters = {o.result["pid"] for o in outcomes}
    zygotes = {o.result["ppid"] for o in outcomes}
    assert len(zygotes) == 2 and len(interpreters) > 2  # two nodes, several interpreters
    assert sorted(int(x) for x in log.read_text().split()) == sorted(zygotes)
    no_strays(dbname)
