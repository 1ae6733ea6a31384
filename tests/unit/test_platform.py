"""platform.detect() with fake scheduler environments: no scheduler needed."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from balsam_mpi.base import platform
from balsam_mpi.base.errors import BalsamError
from balsam_mpi.base.platform import SchedulerEnv, detect, expand_hostlist, time_limit_min


def test_local_when_no_scheduler() -> None:
    env = detect({"HOME": "/home/x", "SLURM_CPUS_ON_NODE": "4"})  # stray var, no job id
    assert env == SchedulerEnv("local", None, [socket.gethostname()], None, None)


def test_pbs(tmp_path: Path) -> None:
    nodefile = tmp_path / "nodes"
    nodefile.write_text("x3001\nx3001\nx3002\n\nx3003\nx3002\n")
    env = detect({"PBS_JOBID": "123.polaris-pbs-01", "PBS_NODEFILE": str(nodefile),
                  "PBS_WALLTIME": "5400"})
    assert env.scheduler == "pbs"
    assert env.job_id == "123.polaris-pbs-01"
    assert env.nodes == ["x3001", "x3002", "x3003"]
    assert env.wall_time_min == 90.0
    assert env.end_time is None


def test_pbs_walltime_clock_form_and_missing_nodefile(tmp_path: Path) -> None:
    env = detect({"PBS_JOBID": "7", "PBS_NODEFILE": str(tmp_path / "gone"),
                  "PBS_WALLTIME": "01:30:00"})
    assert env.wall_time_min == 90.0
    assert env.nodes == []


def test_pbs_bad_walltime_is_our_error() -> None:
    with pytest.raises(BalsamError, match="PBS_WALLTIME"):
        detect({"PBS_JOBID": "7", "PBS_WALLTIME": "soon"})


def test_slurm() -> None:
    env = detect({"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "nid[0001-0004,0007]",
                  "SLURM_JOB_START_TIME": "1700000000", "SLURM_JOB_END_TIME": "1700003600"})
    assert env.scheduler == "slurm"
    assert env.job_id == "4242"
    assert env.nodes == ["nid0001", "nid0002", "nid0003", "nid0004", "nid0007"]
    assert env.wall_time_min == 60.0
    assert env.end_time == 1700003600.0


def test_slurm_old_names_and_no_times() -> None:
    env = detect({"SLURM_JOBID": "9", "SLURM_NODELIST": "login1"})
    assert (env.job_id, env.nodes, env.wall_time_min, env.end_time) == ("9", ["login1"],
                                                                        None, None)


@pytest.mark.parametrize(("text", "hosts"), [
    ("", []),
    ("a1", ["a1"]),
    ("a1,b2", ["a1", "b2"]),
    ("nid[8-11]", ["nid8", "nid9", "nid10", "nid11"]),
    ("nid[098-101]", ["nid098", "nid099", "nid100", "nid101"]),
    ("c[1,3]-ib,login", ["c1-ib", "c3-ib", "login"]),
    ("r[1-2]n[01-02]", ["r1n01", "r1n02", "r2n01", "r2n02"]),
    ("x[1-2],y[5]", ["x1", "x2", "y5"]),
])
def test_expand_hostlist(text: str, hosts: list[str]) -> None:
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("text", ["nid[1-", "nid]1[", "nid[a-b]", "nid[5-2]", "n[1-2"])
def test_expand_hostlist_refuses_malformed(text: str) -> None:
    with pytest.raises(BalsamError, match="host list"):
        expand_hostlist(text)


def test_cobalt_theta_partname() -> None:
    env = detect({"COBALT_JOBID": "555", "COBALT_PARTNAME": "3825-3827,3830",
                  "COBALT_STARTTIME": "1600000000", "COBALT_ENDTIME": "1600001800"})
    assert env.scheduler == "cobalt"
    assert env.job_id == "555"
    assert env.nodes == ["nid03825", "nid03826", "nid03827", "nid03830"]
    assert env.wall_time_min == 30.0
    assert env.end_time == 1600001800.0


def test_cobalt_nodefile_wins_and_named_partition_gives_no_hosts(tmp_path: Path) -> None:
    nodefile = tmp_path / "cobalt_nodes"
    nodefile.write_text("cc001\ncc002\n")
    env = detect({"COBALT_JOBID": "1", "COBALT_NODEFILE": str(nodefile),
                  "COBALT_PARTNAME": "3825"})
    assert env.nodes == ["cc001", "cc002"]
    assert detect({"COBALT_JOBID": "1", "COBALT_PARTNAME": "MIR-04000"}).nodes == []


def test_time_limit_prefers_end_time() -> None:
    env = SchedulerEnv("slurm", "1", [], wall_time_min=60.0, end_time=10_000.0)
    assert time_limit_min(env, margin_min=2.0, now=10_000.0 - 30 * 60) == 28.0
    assert time_limit_min(env, now=20_000.0) == 0.0  # already past the end: never negative


def test_time_limit_from_wall_time_or_none() -> None:
    assert time_limit_min(SchedulerEnv("pbs", "1", [], 90.0, None), margin_min=5) == 85.0
    assert time_limit_min(SchedulerEnv("local")) is None


def test_batch_job_id() -> None:
    assert platform.batch_job_id({}) is None
    assert platform.batch_job_id({"BALSAM_BATCH_JOB_ID": " 17 "}) == 17
    with pytest.raises(BalsamError, match="BALSAM_BATCH_JOB_ID"):
        platform.batch_job_id({"BALSAM_BATCH_JOB_ID": "17; rm -rf"})


# -- node names as the scheduler knows them ---------------------------------------------------
def test_node_name_under_slurm_is_the_slurmd_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "vm.example.org")
    assert platform.node_name({"SLURM_JOB_ID": "5", "SLURMD_NODENAME": "n2"}) == "n2"
    assert platform.node_name({"SLURM_JOB_ID": "5"}) == "vm.example.org"  # batch shell
    assert platform.node_name({"SLURMD_NODENAME": "n2"}) == "vm.example.org"  # no job


def test_node_name_under_pbs_is_this_hosts_nodefile_entry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nodefile = tmp_path / "nodes"
    nodefile.write_text("x3001c0s1b0n0.hsn.cm.example\nx3001c0s2b0n0.hsn.cm.example\n")
    env = {"PBS_JOBID": "1.pbs", "PBS_NODEFILE": str(nodefile)}
    monkeypatch.setattr(socket, "gethostname", lambda: "x3001c0s2b0n0")
    assert platform.node_name(env) == "x3001c0s2b0n0.hsn.cm.example"
    monkeypatch.setattr(socket, "gethostname", lambda: "elsewhere")
    assert platform.node_name(env) == "elsewhere"  # not in the file: the host name
    assert platform.node_name({}) == "elsewhere"


def test_a_node_names_itself_as_the_scheduler_does() -> None:
    from balsam_mpi.node.node import Node

    node = Node(environ={"SLURM_JOB_ID": "5", "SLURMD_NODENAME": "n3", "PATH": "/bin"})
    try:
        assert node.host == "n3"
    finally:
        node.close()


# -- the end time, asked of the scheduler -----------------------------------------------------
class FakeRun:
    def __init__(self, stdout: str = "", returncode: int = 0, raises: BaseException | None = None
                 ) -> None:
        self.stdout, self.returncode, self.raises = stdout, returncode, raises
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        self.calls.append((argv, dict(kw["env"])))  # type: ignore[call-overload]
        if self.raises is not None:
            raise self.raises
        return subprocess.CompletedProcess(argv, self.returncode, self.stdout, "denied\n")


def test_slurm_end_time_from_squeue() -> None:
    run = FakeRun("2030-01-02T03:04:05\n")
    env = platform.with_end_time(SchedulerEnv("slurm", "42"), {"PATH": "/bin"}, run)
    assert env.end_time == time.mktime((2030, 1, 2, 3, 4, 5, 0, 0, -1))
    argv, child_env = run.calls[0]
    assert argv == ["squeue", "-h", "-j", "42", "-o", "%e"]
    assert child_env["SLURM_TIME_FORMAT"] == "standard"  # not the user's format


PBS_QSTAT = """Job Id: 123.polaris-pbs-01
    Job_Name = balsam
    resources_used.walltime = 00:10:00
    Resource_List.walltime = 01:00:00
    Resource_List.select = 2:system=polaris
    stime = Thu Jan  3 04:05:06 2030
    Variable_List = PBS_O_HOME=/home/me,PBS_O_PATH=/usr/bin:/bin,
\tPBS_O_WORKDIR=/home/me
"""


def test_pbs_end_time_from_qstat() -> None:
    run = FakeRun(PBS_QSTAT)
    env = platform.with_end_time(SchedulerEnv("pbs", "123.polaris-pbs-01"), {}, run)
    assert env.end_time == time.mktime((2030, 1, 3, 4, 5, 6, 0, 0, -1)) + 3600
    assert run.calls[0][0] == ["qstat", "-f", "123.polaris-pbs-01"]
    no_stime = PBS_QSTAT.replace("    stime = Thu Jan  3 04:05:06 2030\n", "")
    env = platform.with_end_time(SchedulerEnv("pbs", "123"), {}, FakeRun(no_stime),
                                 now=1000.0)
    assert env.end_time == 1000.0 + 3600 - 600  # what is left of the wall time


@pytest.mark.parametrize("run", [
    FakeRun(raises=FileNotFoundError("squeue")),
    FakeRun(raises=subprocess.TimeoutExpired(["squeue"], 10)),
    FakeRun(returncode=1),
    FakeRun("N/A\n"),
    FakeRun("Unknown\n"),
], ids=["missing", "timeout", "refused", "no-limit", "unknown"])
def test_end_time_query_failures_leave_env_and_say_why(
        run: FakeRun, caplog: pytest.LogCaptureFixture) -> None:
    before = SchedulerEnv("slurm", "42", ["n1"], None, None)
    with caplog.at_level("WARNING", logger="balsam_mpi.base.platform"):
        assert platform.with_end_time(before, {}, run) == before
    assert len(caplog.records) == 1
    assert "could not learn when this job ends (squeue -h -j 42 -o %e" in caplog.text


def test_end_time_is_asked_only_when_missing() -> None:
    run = FakeRun("2030-01-02T03:04:05\n")
    known = SchedulerEnv("slurm", "42", [], 60.0, 5.0)
    assert platform.with_end_time(known, {}, run) is known
    assert platform.with_end_time(SchedulerEnv("local"), {}, run) == SchedulerEnv("local")
    assert platform.with_end_time(SchedulerEnv("cobalt", "9"), {}, run).end_time is None
    assert platform.with_end_time(SchedulerEnv("slurm", "-x"), {}, run).end_time is None
    assert run.calls == []
