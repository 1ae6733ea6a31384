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
from typing import Any

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


def test_async_generator_and_too_deep_return_values_say_what_they_were(
        node: Node, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    out = run(node, call(tmp_path, 1, "coroutine"), call(tmp_path, 2, "generator"),
              call(tmp_path, 3, "nested", depth=100_000))
    assert failed(out[1]).endswith(
        "TypeError: the return value is not JSON: a coroutine: the function is async, and "
        "its calls are not awaited; call it with asyncio.run() from a plain function")
    assert failed(out[2]).endswith("TypeError: the return value is not JSON: a generator: "
                                   "the function yields; return a list instead")
    assert failed(out[3]).endswith(
        "TypeError: the return value is not JSON: a list nested too deeply to encode")
    assert ok(run(node, call(tmp_path, 4, "add", a=1, b=1))[4]) == 2
    # The coroutine was closed in its call: no "never awaited" warning in the node's log.
    assert "never awaited" not in capfd.readouterr().err


def test_dict_keys_that_json_writes_as_one_string_fail_instead_of_losing_a_value(
        node: Node, tmp_path: Path) -> None:
    out = run(node, call(tmp_path, 1, "keys", kind="apart"), call(tmp_path, 2, "keys",
                                                                  kind="int"),
              call(tmp_path, 3, "keys", kind="none"))
    assert ok(out[1]) == [{"7": "a", "2.5": "b", "true": "c", "null": "d", "x": "e"}]
    assert failed(out[2]).endswith(
        'TypeError: the return value is not JSON: a dict has two keys, int and str, both '
        '"1" in JSON: one value would be lost')
    assert failed(out[3]).endswith('two keys, NoneType and str, both "null" in JSON: one '
                                   "value would be lost")


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



def test_a_hang_watchdog_a_call_leaves_does_not_kill_the_next(node: Node,
                                                               tmp_path: Path) -> None:
    """faulthandler's watchdog is an alarm too: left armed, it ended the interpreter
    (exit code 1) in the middle of a later task's call, which was blamed for it."""
    pid = ok(run(node, call(tmp_path, 1, "leave_watchdog", s=0.5, need=1.0))[1])
    assert ok(run(node, call(tmp_path, 2, "sleep", s=1.5, need=1.0))[2]) == 1.5
    assert ok(run(node, call(tmp_path, 3, "count", need=1.0))[3])["pid"] == pid


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


def test_what_the_targets_import_does_to_the_environment_stays_with_the_module(
        node: Node, tmp_path: Path) -> None:
    """The module stays imported in a warm interpreter: what its import set or removed
    in the environment is there for every call of it, not the first alone."""
    def read(i: int) -> Any:
        order = call(tmp_path, i, "noop", need=1.0)._replace(
            python=("tests.pyenvmod:read", "{}"))
        return ok(run(node, order)[i])

    first, second = read(1), read(2)
    assert first == second == {"set": "yes", "foo": None, "pid": first["pid"]}


def test_a_call_that_closes_sys_stdout_and_stderr_does_not_break_the_next(
        node: Node, tmp_path: Path) -> None:
    """Closing the interpreter's own sys.stdout and sys.stderr (a script's tidy end) left
    the next call on that interpreter failing before its function ran."""
    pid = ok(run(node, call(tmp_path, 1, "close_streams", need=1.0))[1])
    assert (tmp_path / "t1/task.out").read_text() == "closing\n"
    assert ok(run(node, call(tmp_path, 2, "say", text="again", need=1.0))[2]) == 5
    assert (tmp_path / "t2/task.out").read_text() == "again\nchild: again\n"
    assert (tmp_path / "t2/task.err").read_text() == "err: again\n"
    assert ok(run(node, call(tmp_path, 3, "count", need=1.0))[3])["pid"] == pid
    # The idiom that wraps stdout anew detaches the interpreter's: as unusable.
    assert ok(run(node, call(tmp_path, 4, "rewrap_stdout", need=1.0))[4]) == pid
    assert (tmp_path / "t4/task.out").read_bytes() == b"caf\xe9\n"
    assert ok(run(node, call(tmp_path, 5, "say", text="later", need=1.0))[5]) == 5
    assert (tmp_path / "t5/task.out").read_text() == "later\nchild: later\n"


def test_blocked_signals_and_resource_limits_a_call_leaves_do_not_reach_the_next(
        node: Node, tmp_path: Path) -> None:
    """A signal a call blocks would not reach the next call (SIGTERM: no clean stop); a
    CPU-time limit it lowers would kill a later call with SIGXCPU, a file-size limit
    fail its writes, a descriptor limit fail every later call before it starts."""
    before = ok(run(node, call(tmp_path, 1, "process_state", need=1.0))[1])
    assert ok(run(node, call(tmp_path, 2, "block_and_limit", need=1.0))[2]) == before["pid"]
    after = ok(run(node, call(tmp_path, 3, "process_state", need=1.0))[3])
    assert after == before  # same interpreter, as it was before
    assert ok(run(node, call(tmp_path, 4, "say", text="longer than ten bytes", need=1.0))[4]) == 21
    assert (tmp_path / "t4/task.out").read_text().startswith("longer than ten bytes\n")


def test_a_recursion_limit_a_call_sets_does_not_reach_the_next(node: Node,
                                                                tmp_path: Path) -> None:
    """Lowered, it failed a later call's imports with RecursionError; raised, it would
    let a later call's runaway recursion crash the interpreter instead of raising."""
    before = ok(run(node, call(tmp_path, 1, "recursion_limit", set_to=120, need=1.0))[1])
    after = ok(run(node, call(tmp_path, 2, "recursion_limit", set_to=10**6, need=1.0))[2])
    again = ok(run(node, call(tmp_path, 3, "recursion_limit", need=1.0))[3])
    assert before == after == again  # same interpreter, the same limit each time


def test_an_interpreter_whose_hard_limit_a_call_lowered_is_replaced(
        node: Node, tmp_path: Path) -> None:
    """A hard limit cannot be raised back: the next call gets a fresh interpreter, with
    the limits every interpreter starts with."""
    before = ok(run(node, call(tmp_path, 1, "process_state", need=1.0))[1])
    assert ok(run(node, call(tmp_path, 2, "lower_hard_limit", need=1.0))[2]) == before["pid"]
    after = ok(run(node, call(tmp_path, 3, "process_state", need=1.0))[3])
    assert after["pid"] != before["pid"]
    assert {**after, "pid": 0} == {**before, "pid": 0}


def test_scheduling_a_call_changes_does_not_reach_the_next(node: Node,
                                                          tmp_path: Path) -> None:
    """A call pinned to one CPU, on the batch policy or a lower priority would leave every
    later call of its interpreter so; one that clears its parent-death signal would leave
    a later call running on, orphaned, after its node died. It cannot leave the session
    and process group the node's kill reaches (the interpreter leads them)."""
    before = ok(run(node, call(tmp_path, 1, "sched_state", need=1.0))[1])
    assert before["deathsig"] == signal.SIGKILL and before["pgid"] == before["pid"]
    did = ok(run(node, call(tmp_path, 2, "meddle_sched", need=1.0))[2])
    assert did["pid"] == before["pid"] and did["deathsig"] == 0
    assert did["policy"] != before["policy"]
    if len(before["cpus"]) > 1:
        assert did["cpus"] != before["cpus"]
    after = ok(run(node, call(tmp_path, 3, "sched_state", need=1.0))[3])
    assert after == before  # same interpreter, scheduled as it was


def test_an_interpreter_whose_priority_a_call_lowered_for_good_is_replaced(
        node: Node, tmp_path: Path) -> None:
    """A nice value raised, or the idle policy taken, cannot be undone without privilege:
    the next call gets a fresh interpreter, scheduled as every interpreter starts."""
    before = ok(run(node, call(tmp_path, 1, "sched_state", need=1.0))[1])
    assert ok(run(node, call(tmp_path, 2, "lower_priority_for_good", need=1.0))[2]
              ) == before["pid"]
    after = ok(run(node, call(tmp_path, 3, "sched_state", need=1.0))[3])
    assert after["pid"] != before["pid"]
    assert {**after, "pid": 0, "pgid": 0, "sid": 0} == {**before, "pid": 0, "pgid": 0,
                                                        "sid": 0}


def test_an_interpreter_that_cannot_take_a_call_says_why_and_is_replaced(
        node: Node, tmp_path: Path) -> None:
    """A call that leaves its interpreter without free descriptors: the next call cannot
    receive its directory and outputs. That call fails with a line saying why, and the
    interpreter is replaced rather than failing every call after it."""
    pid = ok(run(node, call(tmp_path, 1, "leak_descriptors", need=1.0))[1])
    out = run(node, call(tmp_path, 2, "noop", need=1.0))
    assert out[2].rc == 126
    assert failed(out[2]).startswith("balsam_mpi: the Python interpreter could not take "
                                     "this call: a call with 0 descriptors, not 3")
    again = ok(run(node, call(tmp_path, 3, "count", need=1.0))[3])
    assert again["pid"] != pid


def test_sys_exit_with_an_unprintable_code_is_exit_code_1(node: Node,
                                                          tmp_path: Path) -> None:
    """As for a script: ``sys.exit(x)`` whose ``str(x)`` raises exits with 1, nothing
    said, and the interpreter goes on (it crashed on that ``str``: the call was said to
    have died before returning, a traceback of pycall's went to the launcher's stderr)."""
    pid = ok(run(node, call(tmp_path, 1, "count", need=1.0))[1])["pid"]
    out = run(node, call(tmp_path, 2, "exit_unprintable", need=1.0))
    assert out[2].rc == 1 and failed(out[2]) == ""
    assert ok(run(node, call(tmp_path, 3, "count", need=1.0))[3])["pid"] == pid


def test_a_call_that_closes_the_interpreters_socket_is_reported_as_such(
        node: Node, tmp_path: Path) -> None:
    """Not as killed by another process or out of memory: the node killed it, since it
    can no longer answer; the next call gets a fresh interpreter."""
    pid = ok(run(node, call(tmp_path, 1, "count", need=1.0))[1])["pid"]
    out = run(node, call(tmp_path, 2, "close_inherited", then_s=30, need=1.0))
    assert out[2].kind == EndKind.ERROR and out[2].rc == -signal.SIGKILL
    assert failed(out[2]) == f"balsam_mpi: {pypool.HUNG_UP}"
    assert "killed by another process" not in pypool.HUNG_UP
    assert ok(run(node, call(tmp_path, 3, "count", need=1.0))[3])["pid"] != pid


def test_a_forked_child_back_from_the_function_ends_quietly(
        node: Node, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The child of a fork that returns from the function (no os._exit) has no socket
    to answer on: it ends, without a traceback in the launcher's stderr."""
    child = ok(run(node, call(tmp_path, 1, "fork_and_return", need=1.0))[1])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists():  # exited: a zombie of its interpreter
        if Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0] == "Z":
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert ok(run(node, call(tmp_path, 2, "add", a=1, b=2, need=1.0))[2]) == 3
    assert "Traceback" not in capfd.readouterr().err


def test_an_answer_that_arrives_in_parts_is_read_whole_and_its_interpreter_kept(
        node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A result near the cap is more than the socket holds: the node may find only part
    of it when it looks, the rest still to read. That rest was taken for the socket's
    end and the interpreter — alive, answering — killed (its warm state lost; had it
    more left to send, the call failed as killed by SIGKILL)."""
    first = ok(run(node, call(tmp_path, 1, "count", need=1.0))[1])
    real = pypool.read_answer
    looked: list[int] = []

    def part_first(interp: Any) -> Any:
        if not looked:  # the first look finds a part of the answer, as a big one can
            interp.buf += interp.sock.recv(4096)
            looked.append(len(interp.buf))
            return None
        return real(interp)

    monkeypatch.setattr(pypool, "read_answer", part_first)
    size = limits.RESULT_MAX_BYTES - 2
    assert len(ok(run(node, call(tmp_path, 2, "big", n=size, need=1.0))[2])) == size
    assert len(looked) == 1 and 0 < looked[0] < size  # the node did see a part first
    again = ok(run(node, call(tmp_path, 3, "count", need=1.0))[3])
    assert again == {"calls": first["calls"] + 1, "pid": first["pid"]}
