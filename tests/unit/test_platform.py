"""platform.detect() with fake scheduler environments: no scheduler needed."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from balsam_mpi import platform
from balsam_mpi.errors import BalsamError
from balsam_mpi.platform import SchedulerEnv, detect, expand_hostlist, time_limit_min


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
