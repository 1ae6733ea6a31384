"""Leader and workers in one MPI world (3 ranks): the protocol over real MPI, and a whole
run of the launcher's loops inside pytest."""

from __future__ import annotations

import time
from typing import Any

import pytest

pytestmark = [pytest.mark.mpi(min_size=3), pytest.mark.timeout(120)]


def test_typed_messages_large_and_small_round_trip() -> None:
    from mpi4py import MPI

    from balsam_mpi.base.pacing import Backoff
    from balsam_mpi.launcher.comm import Comm
    from balsam_mpi.protocol import Assign, Report, RunOrder

    comm = Comm(MPI.COMM_WORLD)
    big = tuple(RunOrder(i, 1, ("/bin/true", "x" * 50), f"/tmp/d/{i}") for i in range(20000))
    if comm.rank == 0:
        for dest in range(1, comm.size):
            comm.send(dest, Assign(seq=1, tasks=big))  # megabytes: improbe + Message.recv
        got: dict[int, Report] = {}
        backoff = Backoff(0.0002, 0.01)
        deadline = time.monotonic() + 60
        while len(got) < comm.size - 1:
            assert time.monotonic() < deadline
            msg = comm.poll()
            if msg is None:
                backoff.sleep()
                continue
            source, report = msg
            assert isinstance(report, Report)
            got[source] = report
        assert all(r.acked == 1 and r.queued == len(big) for r in got.values())
        assert comm.flush_sends()
    else:
        backoff = Backoff(0.0002, 0.01)
        deadline = time.monotonic() + 60
        while (msg := comm.poll(0)) is None:
            assert time.monotonic() < deadline
            backoff.sleep()
        assign = msg[1]
        assert isinstance(assign, Assign) and assign.tasks == big
        comm.send(0, Report(rank=comm.rank, acked=assign.seq, free=0.0, running=0,
                            queued=len(assign.tasks)))
        assert comm.flush_sends()
    MPI.COMM_WORLD.Barrier()


def test_leader_and_workers_run_a_workload(mpi_db: tuple[Any, str, Any]) -> None:
    from mpi4py import MPI

    from balsam_mpi.launcher.comm import Comm
    from balsam_mpi.launcher.config import resolve
    from balsam_mpi.launcher.session import LeaderSession, WorkerSession

    project, _name, conn = mpi_db
    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    if rank == 0:
        app = conn.execute("INSERT INTO apps (name, command) VALUES ('t', 'true') "
                           "RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO tasks (workflow, name, app_id, state, node_packing_count) "
                     "SELECT 'mpi', 'n', %s, 'READY', 4 FROM generate_series(1, 300)", (app,))
    world.Barrier()
    settings = resolve({"idle_timeout_s": 0.0, "flush_interval_s": 0.05}, {}, {})
    comm = Comm(world)
    if rank == 0:
        session: Any = LeaderSession(settings, comm, project, time.time())
    else:
        session = WorkerSession(settings, comm, project)
    session.run()
    started = world.gather(session.node.started_total, root=0)
    if rank == 0:
        assert started is not None and sum(started) == 300
        assert all(n > 0 for n in started[1:])  # the workers got work, not just the leader
        rows = conn.execute("SELECT state::text, count(*) FROM tasks GROUP BY 1").fetchall()
        assert rows == [("JOB_FINISHED", 300)]
        once = conn.execute("SELECT count(*), count(DISTINCT task_id) FROM task_events "
                            "WHERE to_state = 'RUNNING'").fetchone()
        assert once == (300, 300)
        job = conn.execute("SELECT state::text, ranks FROM batch_jobs").fetchone()
        assert job == ("FINISHED", 3)
