"""Workers a send can no longer reach (launcher/comm.py records them in ``Comm.gone``): one
that said BYE first had drained on its own and left; one that did not has died. Either
way the leader goes on (tests/unit/leaderkit.py has the fakes; the real MPI case is
tests/e2e/test_reliability.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from balsam_mpi.launcher import departures
from balsam_mpi.launcher.comm import mpi_reason
from balsam_mpi.protocol import Assign, Bye, Report
from tests.unit.leaderkit import make

pytestmark = pytest.mark.timeout(60)


def test_a_worker_that_left_before_the_answer_to_its_report_costs_nothing(
        tmp_path: Path) -> None:
    kit = make(tmp_path, 8, workers=2)
    kit.leader.dispatch.local_open = False
    one = kit.workers[0]
    one.finish = False  # its task runs until it leaves
    kit.turns(lambda: bool(one.running))
    cut = set(one.running)
    one.leave()
    assert kit.run() == "idle"  # no error: the leader went on without rank 1
    assert kit.comm is not None and set(kit.comm.gone) == {1}
    failed = [m for _r, m in kit.comm.failed if isinstance(m, Assign)]
    assert failed, "the leader answered rank 1's last REPORT after it had gone"
    undelivered = {o.id for m in failed for o in m.tasks}
    assert {t.state for t in kit.store.tasks.values()} == {"JOB_FINISHED"}, kit.states()
    assert all(t.lost_retries == 0 for t in kit.store.tasks.values())
    # It left: not dead (a dead rank makes the launcher end with an MPI abort).
    assert kit.leader.departures.left == {1} and kit.leader.dead == set()
    # The cut task and any that never reached rank 1 ran again, on rank 2, once each.
    assert cut | undelivered <= set(kit.store.tasks)


def test_a_worker_gone_without_bye_is_declared_dead_after_the_grace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(departures, "GONE_GRACE_S", 0.2)
    kit = make(tmp_path, workers=1, finish=False)  # the default worker timeout: minutes
    ids = kit.store.add_tasks([{"app": "a", "node_packing_count": 4} for _ in range(2)])
    kit.leader.dispatch.local_open = False
    kit.turns(lambda: all(kit.store.tasks[i].state == "RUNNING" for i in ids))
    worker = kit.workers[0]
    worker.silent = True  # died: no REPORT, no BYE
    assert kit.comm is not None
    kit.comm.left.add(1)
    kit.store.kill(ids[1])  # the kill the leader passes on is the send that fails
    kit.turns(lambda: bool(kit.comm.gone))
    assert kit.leader.dead == set()  # its last messages may still be unread: not yet
    kit.turns(lambda: kit.leader.dead == {1} and not kit.leader.buffer.pending)
    task = kit.store.tasks[ids[0]]
    assert (task.state, task.lost_retries) == ("RESTART_READY", 1)  # lost, and counted
    assert "cannot be reached" in task.state_message
    assert "tinjectdata" in task.state_message
    assert kit.store.tasks[ids[1]].state == "USER_KILLED"  # the kill stands


def test_the_reason_is_the_line_of_mpichs_error_stack_that_says_something() -> None:
    stack = ("Other MPI error, error stack:\n"
             "internal_Isend_c(330)..........: MPI_Isend_c(buf=0x55, count=61) failed\n"
             "MPID_Isend(61).................: \n"
             "MPIDI_OFI_send_lightweight(108): OFI call tinjectdata failed (default "
             "nic=eth0: No such file or directory)\n")
    assert mpi_reason(RuntimeError(stack)) == ("OFI call tinjectdata failed (default "
                                               "nic=eth0: No such file or directory)")
    assert mpi_reason(RuntimeError("MPI_ERR_OTHER: known error")) == (
        "MPI_ERR_OTHER: known error")
    assert mpi_reason(RuntimeError("")) == "RuntimeError"


def test_a_worker_whose_leader_is_gone_stops_with_one_line() -> None:
    from balsam_mpi.node.nullnode import NullNode
    from balsam_mpi.worker import LeaderGone, Worker
    from tests.unit.test_worker_polls import ScriptedComm

    comm = ScriptedComm()
    comm.gone[0] = "OFI call tinjectdata failed"  # its HELLO could not be sent
    with pytest.raises(LeaderGone, match=r"leader \(rank 0\) cannot be reached: OFI call"):
        Worker(comm, NullNode(die_with_parent=False)).run()  # type: ignore[arg-type]


def test_a_worker_that_left_on_its_own_gives_back_what_it_never_started(
        tmp_path: Path) -> None:
    """A worker that cut its tasks and said BYE while the leader went on (the leader
    silent for a few seconds: `scontrol suspend` then `resume` of the whole job, a short
    stall) had been sent tasks it dropped unstarted. No later send fails (nothing more
    goes to a rank that said BYE), so only the BYE can hand them back: they ran on the
    other ranks, not left claimed until the run ended 'idle' with them never run."""
    kit = make(tmp_path, 6, workers=2)
    kit.leader.dispatch.local_open = False
    one = kit.workers[0]
    one.silent = True  # takes its ASSIGN and starts nothing, then leaves
    assert kit.comm is not None
    kit.turns(lambda: any(a.tasks for a in kit.comm.to(1, Assign)))
    sent = {o.id for a in kit.comm.to(1, Assign) for o in a.tasks}
    kit.comm.inbox.append((1, Bye(1, Report(rank=1, acked=0, free=1.0, running=0,
                                            queued=0, started=(), finished=()))))
    one.gone = True
    assert kit.run() == "idle"
    assert kit.states() == {i: "JOB_FINISHED" for i in kit.store.tasks}, (sent, kit.states())
    assert all(t.lost_retries == 0 for t in kit.store.tasks.values())
    assert kit.leader.dead == set()
