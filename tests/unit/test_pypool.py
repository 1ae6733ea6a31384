"""Python tasks on one node (pypool, pycall): real interpreter processes, no MPI, no
database. Each call runs in a warm interpreter with the task's directory, environment and
output files; a raise, a wall-time overrun, memory exhaustion, a kill, os._exit and a
killed interpreter are each reported as what they were, and the node keeps serving."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from balsam_mpi.base import limits
from balsam_mpi.node import runner
from balsam_mpi.node.node import Node, pypool
from balsam_mpi.protocol import Assign, EndKind, Finished
from tests.unit.pykit import ENV, call, failed, ok, python_node, run

pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def node() -> Iterator[Node]:
    n = python_node()
    yield n
    n.close()


def test_a_call_returns_its_value_in_a_warm_interpreter(node: Node, tmp_path: Path) -> None:
    out = run(node, call(tmp_path, 1, "add", a=2, b=0.5), call(tmp_path, 2, "noop"))
    assert ok(out[1]) == 2.5 and ok(out[2]) is None
    first = ok(run(node, call(tmp_path, 3, "count"))[3])
    again = ok(run(node, call(tmp_path, 4, "count"))[4])
    assert again == {"calls": first["calls"] + 1, "pid": first["pid"]}  # warm: same one
    assert node.pool is not None and node.pool.calls == 4


def test_a_call_has_its_task_directory_environment_and_output_files(
        node: Node, tmp_path: Path) -> None:
    out = run(node, call(tmp_path, 1, "where", env=(("FOO", "task"),)),
              call(tmp_path, 2, "say", text="hello"), call(tmp_path, 3, "getenv",
                                                           name="PMI_RANK"))
    where = ok(out[1])
    assert where["cwd"] == str(tmp_path / "t1") and where["foo"] == "task"
    assert (where["task"], where["omp"]) == ("1", "1")
    assert ok(out[2]) == 5
    assert (tmp_path / "t2/task.out").read_text() == "hello\nchild: hello\n"
    assert (tmp_path / "t2/task.err").read_text() == "err: hello\n"
    assert ok(out[3]) is None  # started without the launcher's MPI variables
    assert oct(os.stat(tmp_path / "t1").st_mode & 0o7777) == "0o2770"


def test_what_a_call_changes_is_put_back_for_the_next(node: Node, tmp_path: Path) -> None:
    node.python = pypool.PoolConfig(max_calls=1000)
    out = run(node, call(tmp_path, 1, "setenv", value="one", need=1.0))
    assert ok(out[1]) is None
    out = run(node, call(tmp_path, 2, "setenv", value="two", need=1.0),)
    assert ok(out[2]) is None  # LEAK was not left behind
    out = run(node, call(tmp_path, 3, "say", text="back", need=1.0))
    assert (tmp_path / "t3/task.out").read_text() == "back\nchild: back\n"  # stdout too
    out = run(node, call(tmp_path, 4, "where", need=1.0))
    assert ok(out[4])["cwd"] == str(tmp_path / "t4")


def test_a_raise_is_a_failure_with_its_traceback(node: Node, tmp_path: Path) -> None:
    out = run(node, call(tmp_path, 1, "boom", msg="bad input 7"),
              call(tmp_path, 2, "missing_module"))
    tail = failed(out[1])
    assert out[1].rc == 1 and "Traceback (most recent call last)" in tail
    assert tail.endswith("ValueError: bad input 7")
    assert "ModuleNotFoundError: No module named 'no_such_module_anywhere'" in failed(out[2])
    assert ok(run(node, call(tmp_path, 3, "add", a=1, b=1))[3]) == 2


def test_return_values_that_cannot_be_stored_fail_with_one_clear_line(
        node: Node, tmp_path: Path) -> None:
    out = run(node, call(tmp_path, 1, "not_json"), call(tmp_path, 2, "nan"),
              call(tmp_path, 3, "big", n=limits.RESULT_MAX_BYTES),
              call(tmp_path, 4, "big", n=limits.RESULT_MAX_BYTES - 2))
    assert failed(out[1]).endswith("TypeError: the return value is not JSON: Object of "
                                   "type object is not JSON serializable")
    assert "Out of range float values are not JSON compliant" in failed(out[2])
    assert failed(out[3]).endswith(
        f"ValueError: the return value is {limits.RESULT_MAX_BYTES + 2} bytes of JSON; a "
        f"result may have at most {limits.RESULT_MAX_BYTES} (limits.RESULT_MAX_BYTES): "
        "return less, or write it to a file in the task's directory")
    assert len(ok(out[4])) == limits.RESULT_MAX_BYTES - 2  # exactly at the cap: kept


def test_sys_exit_is_an_exit_status_as_for_a_script(node: Node, tmp_path: Path) -> None:
    out = run(node, call(tmp_path, 1, "sys_exit", code=0), call(tmp_path, 2, "sys_exit",
                                                                code=4))
    assert ok(out[1]) is None
    assert out[2].kind == EndKind.ERROR and out[2].rc == 4


def test_a_call_that_never_returns_is_stopped_at_its_wall_time(
        node: Node, tmp_path: Path) -> None:
    out = run(node, call(tmp_path, 1, "forever", wall_s=0.5), call(tmp_path, 2, "noop"))
    assert out[1].kind == EndKind.TIMEOUT and out[1].rc == -signal.SIGTERM
    assert ok(run(node, call(tmp_path, 3, "add", a=1, b=2))[3]) == 3


def test_a_call_that_exhausts_memory_fails_and_its_interpreter_is_replaced(
        node: Node, tmp_path: Path) -> None:
    before = ok(run(node, call(tmp_path, 1, "count"))[1])["pid"]
    assert failed(run(node, call(tmp_path, 2, "hog"))[2]).endswith("MemoryError")
    after = ok(run(node, call(tmp_path, 3, "count"))[3])
    assert after["calls"] == 1 and after["pid"] != before


def test_a_killed_call_is_killed_and_the_node_goes_on(node: Node, tmp_path: Path) -> None:
    node.apply(Assign(1, (call(tmp_path, 1, "forever"),)))
    node.step()
    time.sleep(0.3)
    node.kill([1], EndKind.KILLED)
    out = run(node, call(tmp_path, 2, "noop"))
    deadline = time.monotonic() + 10
    while 1 not in out:
        assert time.monotonic() < deadline
        node.step()
        out.update((f.id, f) for f in node.changes.take()[1])
        node.wait(0.01)
    assert out[1].kind == EndKind.KILLED and ok(out[2]) is None


def test_os_exit_and_a_killed_interpreter_are_reported_as_such(
        node: Node, tmp_path: Path) -> None:
    out = run(node, call(tmp_path, 1, "exit_now", code=3),
              call(tmp_path, 2, "exit_now", code=0), call(tmp_path, 3, "kill_self"))
    assert out[1].rc == 3 and failed(out[1]).endswith(
        "balsam_mpi: the Python interpreter running this call exited with code 3 before "
        "the function returned (os._exit, or a crash)")
    assert out[2].rc == 0 and "exited with code 0" in failed(out[2])  # never returned
    assert out[3].rc == -signal.SIGKILL and "killed by SIGKILL" in failed(out[3])
    assert ok(run(node, call(tmp_path, 4, "add", a=2, b=2))[4]) == 4


def test_an_interpreter_that_died_idle_is_replaced_without_blame(
        node: Node, tmp_path: Path) -> None:
    pid = ok(run(node, call(tmp_path, 1, "count", need=1.0))[1])["pid"]
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    again = ok(run(node, call(tmp_path, 2, "count", need=1.0))[2])
    assert again["pid"] != pid


def test_interpreters_are_replaced_after_max_calls(node: Node, tmp_path: Path) -> None:
    node.python = pypool.PoolConfig(max_calls=2)
    pids = [ok(run(node, call(tmp_path, i, "count", need=1.0))[i])["pid"]
            for i in range(1, 6)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


def test_gpu_tasks_get_interpreters_that_see_only_their_devices(tmp_path: Path) -> None:
    node = Node(environ={**ENV, "BALSAM_GPU_VENDOR": "nvidia"}, gpus=2)
    try:
        out = run(node, call(tmp_path, 1, "where", gpus=1, need=0.5),
                  call(tmp_path, 2, "where", gpus=1, need=0.5))
        seen = {ok(out[1])["cuda"], ok(out[2])["cuda"]}
        assert seen == {"0", "1"}
        assert ok(out[1])["pid"] != ok(out[2])["pid"]
    finally:
        node.close()


def test_a_stopping_node_cuts_calls_and_starts_none(node: Node, tmp_path: Path) -> None:
    node.apply(Assign(1, (call(tmp_path, 1, "forever"), call(tmp_path, 2, "forever"))))
    node.step()
    time.sleep(0.3)
    node.begin_stop()
    node.cut_all()
    node.apply(Assign(2, (call(tmp_path, 3, "noop"),)))
    out: dict[int, Finished] = {}
    deadline = time.monotonic() + 10
    while len(out) < 2:
        assert time.monotonic() < deadline
        node.step()
        out.update((f.id, f) for f in node.changes.take()[1])
        node.wait(0.01)
    assert {f.kind for f in out.values()} == {EndKind.CUT} and set(out) == {1, 2}
    assert not (tmp_path / "t3").exists()


def test_closing_the_node_leaves_no_interpreter(tmp_path: Path) -> None:
    node = Node(environ=ENV)
    pids = {ok(f)["pid"] for f in run(node, *(call(tmp_path, i, "count")
                                              for i in range(4))).values()}
    node.apply(Assign(9, (call(tmp_path, 9, "forever"),)))
    node.step()
    node.close()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()


def test_the_address_cap_can_be_left_to_the_resident_check(node: Node,
                                                           tmp_path: Path) -> None:
    big = 600 << 20  # over the fixture's 300 MB cap, never touched
    out = run(node, call(tmp_path, 1, "reserve", mb=600))
    assert "MemoryError" in failed(out[1]) or "Cannot allocate" in failed(out[1])
    loose = Node(environ=ENV)
    loose.python = pypool.PoolConfig(memory_mb=300, address_cap=False)
    try:
        assert ok(run(loose, call(tmp_path, 2, "reserve", mb=600))[2]) == big
    finally:
        loose.close()
    gpu = Node(environ={**ENV, "BALSAM_GPU_VENDOR": "nvidia"}, gpus=1)
    gpu.python = pypool.PoolConfig(memory_mb=300)
    try:  # a GPU task's runtime reserves address space: no RLIMIT_AS for it
        assert ok(run(gpu, call(tmp_path, 3, "reserve", mb=600, gpus=1))[3]) == big
    finally:
        gpu.close()


def test_a_killed_zygote_is_replaced_and_the_node_goes_on(node: Node, tmp_path: Path) -> None:
    node.apply(Assign(1, (call(tmp_path, 1, "forever"),)))
    node.step()
    time.sleep(0.3)
    assert node.pool is not None
    old = node.pool.zygote.pid
    os.kill(old, signal.SIGKILL)  # its interpreters die with it (parent-death signal)
    out = run(node, call(tmp_path, 2, "add", a=1, b=2))
    deadline = time.monotonic() + 10
    while 1 not in out:
        assert time.monotonic() < deadline
        node.step()
        out.update((f.id, f) for f in node.changes.take()[1])
        node.wait(0.01)
    assert out[1].rc == -signal.SIGKILL and "killed by SIGKILL" in failed(out[1])
    assert ok(out[2]) == 3 and node.pool.zygote.pid != old


def test_interpreters_of_two_kinds_are_kept_while_both_are_needed(tmp_path: Path) -> None:
    node = Node(environ={**ENV, "BALSAM_GPU_VENDOR": "nvidia"}, gpus=2)
    try:
        first = run(node, call(tmp_path, 1, "count", gpus=1, need=0.5),
                    call(tmp_path, 2, "count", gpus=1, need=0.5))
        pids = {ok(f)["pid"] for f in first.values()}
        for i in range(3, 9):  # one at a time: device 0 each time, its interpreter again
            assert ok(run(node, call(tmp_path, i, "count", gpus=1, need=0.5))[i])["pid"] in pids
        assert node.pool is not None and node.pool.started == 2
    finally:
        node.close()


# -- the output cap (output_cap_mb), as for process tasks ---------------------------------
MIB = 1 << 20


@pytest.fixture()
def capped() -> Iterator[int]:
    runner.configure(output_cap_mb=2, cgroups=runner._config.cgroups)
    yield 2 * MIB
    runner.configure(cgroups=runner._config.cgroups)


def test_a_calls_output_over_the_cap_keeps_head_and_tail(node: Node, tmp_path: Path,
                                                         capped: int) -> None:
    """16 MiB printed by a call, at most the cap kept: the beginning, a line saying where
    the middle was cut, and the end; the failure tail still reads task.err."""
    fin = run(node, call(tmp_path, 1, "spew", chunks=16))[1]
    assert ok(fin) is None
    text = (tmp_path / "t1" / "task.out").read_bytes()
    assert len(text) <= capped, len(text)
    assert text.startswith(b"FIRST-LINE\n")
    assert text.endswith(b"LAST-LINE\n")
    assert b"the middle was cut" in text
    assert (tmp_path / "t1" / "task.err").read_bytes() == b"ERR-LAST\n"


def test_a_calls_output_is_capped_while_it_runs(node: Node, tmp_path: Path,
                                                capped: int) -> None:
    node.apply(Assign(node.acked + 1, (call(tmp_path, 2, "spew", chunks=40, size=MIB // 2,
                                            pause=0.1),)))
    out = tmp_path / "t2" / "task.out"
    biggest = 0
    ended: dict[int, Finished] = {}
    deadline = time.monotonic() + 60
    while 2 not in ended:
        assert time.monotonic() < deadline
        node.step()
        ended.update((f.id, f) for f in node.changes.take()[1])
        if out.exists():
            biggest = max(biggest, out.stat().st_size)
        node.wait(0.05)
    assert ok(ended[2]) is None
    # Checked once a second: at most about a second's output beyond the cap at any time.
    assert biggest <= capped + 8 * MIB, biggest
    assert out.stat().st_size <= capped
    assert out.read_bytes().endswith(b"LAST-LINE\n")


def test_no_cap_on_a_calls_output_when_disabled(node: Node, tmp_path: Path) -> None:
    runner.configure(output_cap_mb=0, cgroups=runner._config.cgroups)
    try:
        assert ok(run(node, call(tmp_path, 3, "spew", chunks=3))[3]) is None
    finally:
        runner.configure(cgroups=runner._config.cgroups)
    assert (tmp_path / "t3" / "task.out").stat().st_size == 3 * MIB + len(
        b"FIRST-LINE\n\nLAST-LINE\n")


def test_timers_handlers_and_umask_a_call_leaves_do_not_reach_the_next(
        node: Node, tmp_path: Path) -> None:
    """A call that leaves an alarm (or an interval timer) behind must not kill the next
    task's call in the same interpreter, nor leave its umask or signal handlers to it."""
    node.python = pypool.PoolConfig(max_calls=1000)
    old = os.umask(0o022)
    try:
        pid = ok(run(node, call(tmp_path, 1, "leave_timers", alarm_s=1, mask=0, need=1.0))[1])
        got = ok(run(node, call(tmp_path, 2, "after_timers", s=1.5, need=1.0))[2])
    finally:
        os.umask(old)
    assert got == {"pid": pid, "mode": 0o644, "usr1": True}



def test_variables_a_call_changes_adds_or_removes_do_not_reach_the_next(
        node: Node, tmp_path: Path) -> None:
    """The environment is put back after each call: a value changed, a variable added, a
    task's own variable removed; the next call (same interpreter) sees only its own."""
    names = ["PATH", "BALSAM_TEST_LEFT_BEHIND", "BALSAM_TEST_GIVEN"]
    before = ok(run(node, call(tmp_path, 1, "read_env", names=names))[1])
    assert before["PATH"] and before["BALSAM_TEST_LEFT_BEHIND"] is None
    meddle = call(tmp_path, 2, "meddle_env", name="PATH", env=(("BALSAM_TEST_GIVEN", "1"),))
    assert ok(run(node, meddle)[2]) == before["pid"]
    after = ok(run(node, call(tmp_path, 3, "read_env", names=names))[3])
    assert after == before  # same interpreter, none of the first call's changes
