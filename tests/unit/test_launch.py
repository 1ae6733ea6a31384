"""The leader's dispatching and kill tracking (pure: a null node, no MPI, no database),
and the launcher's command line."""

from __future__ import annotations

import pytest

from balsam_mpi.launcher.config import resolve
from balsam_mpi.launcher.dispatch import Dispatcher
from balsam_mpi.launcher.kills import KillTracker
from balsam_mpi.launcher.launch import parser
from balsam_mpi.node.nullnode import NullNode
from balsam_mpi.protocol import LOCAL, Assign, Report, RunOrder


def order(i: int, need: float = 0.25) -> RunOrder:
    return RunOrder(i, 1, ("true",), f"/tmp/{i}", need=need)


def dispatcher() -> tuple[Dispatcher, list[tuple[int, Assign]]]:
    sent: list[tuple[int, Assign]] = []
    return Dispatcher(NullNode(die_with_parent=False), lambda r, m: sent.append((r, m)),
                      margin=0.5), sent


def test_a_report_is_answered_within_free_share_plus_margin() -> None:
    d, sent = dispatcher()
    d.pool.extend(order(i) for i in range(20))
    view = d.reported(1, Report(rank=1, acked=0, free=1.0, running=0, queued=0))
    d.assign_to(view, always=True)
    [(rank, msg)] = sent
    assert rank == 1 and len(msg.tasks) == 6  # 1.0 free + 0.5 margin, at 0.25 each
    d.assign_to(view, always=True)  # not acknowledged yet: counted as taken
    assert sent[-1][1].tasks == ()
    view = d.reported(1, Report(rank=1, acked=msg.seq, free=-0.5, running=4, queued=2))
    d.assign_to(view)
    assert len(sent) == 2  # still full: nothing unprompted
    assert d.demand() == pytest.approx(1.5 - sum(t.need for t in d.pool))


def test_the_local_node_is_fed_directly_and_kills_reach_every_rank() -> None:
    d, sent = dispatcher()
    d.pool.extend(order(i) for i in range(10))
    d.fill_local()  # queued on the leader's node, no message
    assert [o.id for o in d.local.queue] == [0, 1, 2, 3, 4, 5]
    d.local.step()  # as the leader's loop does; a null node ends its tasks at once
    local_ids = [s.id for s in d.local.changes.take()[0]]
    assert local_ids == [0, 1, 2, 3, 4, 5]
    view = d.reported(2, Report(rank=2, acked=0, free=1.0, running=0, queued=0))
    d.local_open = False  # (open, the leader's node would take them first: it has room)
    d.push()
    assert [t.id for t in sent[-1][1].tasks] == [6, 7, 8, 9] and sent[-1][0] == view.rank
    d.pool.append(order(10))
    assert d.kill([7, 10, 99]) == 1  # 7 is on rank 2; 10 was still in the pool
    assert sent[-1] == (2, Assign(sent[-1][1].seq, (), (7,)))
    assert not d.pool


def test_kill_tracker_sends_each_kill_once_and_forgets_ended_tasks() -> None:
    """A kill sent is forgotten at once: a queued task dropped by its node is never
    polled again."""
    k = KillTracker(interval_s=0.0)
    assert not k.due()  # nothing out
    k.placed([order(1), order(2)], 3)
    k.placed([order(4)], LOCAL)
    assert k.due() and sorted(k.candidates()) == [1, 2, 4]
    assert k.by_rank([2, 4]) == {3: [2], LOCAL: [4]}
    assert k.by_rank([2]) == {} and sorted(k.candidates()) == [1]
    k.ended([1, 2, 4])
    assert not k.where and not k.due()


def test_command_line_flags() -> None:
    args = vars(parser().parse_args(["--workflow", "a", "--workflow", "b", "--tag", "k=v",
                                     "--idle-timeout", "0", "--max-tasks", "5"]))
    s = resolve(args, {}, {})
    assert s.workflows == ("a", "b") and s.tag_filter == {"k": "v"}
    assert s.idle_timeout_s == 0.0 and s.max_tasks == 5 and not s.persistent
    from balsam_mpi.base.errors import UsageError

    with pytest.raises(UsageError, match="--idle-timeout"):  # one line, exit 2 (launch.main)
        parser().parse_args(["--idle-timeout", "soon"])


@pytest.mark.parametrize(("workflow", "name"), [
    ("demo", "t1"), ("a/b", "../x"), ("w", ""), ("w", ".."), ("wf.1", "name with spaces"),
    ("ünï", "ça=va+1"),
])
def test_spec_directories_are_exactly_project_task_dir(workflow: str, name: str) -> None:
    from balsam_mpi.base.project import Project
    from balsam_mpi.launcher.orders import OrderBuilder

    project = Project("/p")
    builder = OrderBuilder(project, epoch=1)
    for task_id in (1, 999, 1000, 123456):
        assert builder.cwd(workflow, task_id, name) == str(
            project.task_dir(workflow, task_id, name))


def test_specs_render_argv_without_a_shell() -> None:
    from balsam_mpi.launcher.orders import render

    assert render("echo {who}", {"who": "a b; rm -rf /"}, ["x y"], False) == (
        "echo", "a b; rm -rf /", "x y")
    assert render("/bin/true", {}, [], False) == ("/bin/true",)


class _World:
    def __init__(self, size: int, events: list[str]) -> None:
        self.size, self.events = size, events

    def Get_size(self) -> int:  # mpi4py's names
        return self.size

    def Abort(self, code: int) -> None:
        self.events.append(f"abort {code}")


@pytest.mark.parametrize("rank", [0, 2])
def test_a_start_refusal_leaves_rank_0_time_to_say_it(
        rank: int, capsys: pytest.CaptureFixture[str]) -> None:
    """Every rank refuses the same settings; a worker that aborted at once could end rank
    0 before its line was printed (no output at all). Workers wait first, and say it
    themselves if rank 0's abort has not ended them."""
    from balsam_mpi.base.errors import InputError
    from balsam_mpi.launcher.launch import REFUSAL_WAIT_S, refuse_start

    events: list[str] = []
    refuse_start(_World(3, events), rank, InputError("bad: setting"),
                 sleep=lambda s: events.append(f"sleep {s:g}"),
                 let_out=lambda: events.append("let out"))
    err = capsys.readouterr().err
    if rank == 0:
        # Its line must be read by the process manager before the abort, which could
        # otherwise end the forwarding first (exit 2 and no output, seen once in CI).
        assert events == ["let out", "abort 2"]
        assert err == "balsam_mpi launcher: error: bad: setting\n"
    else:
        assert events == [f"sleep {REFUSAL_WAIT_S:g}", "let out", "abort 2"]
        assert err == "balsam_mpi launcher (rank 2): error: bad: setting\n"


def test_a_single_rank_refusal_exits_with_its_status(
        capsys: pytest.CaptureFixture[str]) -> None:
    from balsam_mpi.base.errors import InputError
    from balsam_mpi.launcher.launch import refuse_start

    events: list[str] = []
    with pytest.raises(SystemExit) as ended:
        refuse_start(_World(1, events), 0, InputError("bad"))
    assert ended.value.code == 2 and events == []
    assert capsys.readouterr().err == "balsam_mpi launcher: error: bad\n"


def test_an_abort_flushes_and_lets_out_what_the_rank_said_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """MPI_Abort ends the process without Python flushing its streams, and the process
    manager may handle the abort before it reads the pipe: both are done first."""
    from balsam_mpi.launcher import launch, lineout

    events: list[str] = []

    class _Stream:
        def __init__(self, name: str) -> None:
            self.name = name

        def flush(self) -> None:
            events.append(f"flush {self.name}")

        def write(self, text: str) -> int:
            return len(text)

    monkeypatch.setattr(launch.sys, "stdout", _Stream("out"))
    monkeypatch.setattr(launch.sys, "stderr", _Stream("err"))
    monkeypatch.setattr(lineout, "let_out", lambda: events.append("let out"))
    launch._abort(_World(2, events), None, 0, "h", 1, "why")
    # (logging.shutdown may flush a handler on stderr before: the order after it counts)
    assert events[-4:] == ["flush out", "flush err", "let out", "abort 1"]
