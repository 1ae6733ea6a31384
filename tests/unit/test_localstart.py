"""Starting the launcher on one host (the demo, `submit --scheduler local`): the start
each MPI needs there, and the rendered local.sh run for real with fake MPI programs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from balsam_mpi.base.project import Project
from balsam_mpi.batch import jobscript, localstart
from balsam_mpi.batch.jobscript import JobRequest
from balsam_mpi.node.mpidetect import MpiInfo, classify
from balsam_mpi.node.mpienv import START_VARS
from tests.unit.fakeproject import fake_project

PY = "/v/bin/python"
HYDRA = "HYDRA build details:\n    Version:    5.0.2\n"
OMPI = "mpiexec (OpenRTE) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/\n"


def _plan(banner: str, files: set[str], environ: Mapping[str, str] | None = None
          ) -> localstart.LocalStart:
    def probe(program: str, _env: Mapping[str, str]) -> MpiInfo:
        return classify(banner, program)

    return localstart.plan(3, ["--idle-timeout", "1"], environ or {"PATH": "/bin"},
                           python=PY, mpiexec="/v/bin/mpiexec", probe=probe,
                           exists=files.__contains__)


def test_mpich_starts_with_the_fork_starter_and_no_port() -> None:
    start = _plan(HYDRA, {"/v/bin/mpiexec.gforker"}, {"PATH": "/bin", "MPIEXEC_USE_PORT": "1"})
    assert start.argv == ["/v/bin/mpiexec.gforker", "-n", "3", PY, "-P", "-m",
                          "balsam_mpi.batch.localstart", "--rank", "--", "--idle-timeout", "1"]
    assert start.forks and "no TCP port" in start.how
    assert "MPIEXEC_USE_PORT" not in start.env  # it would make gforker listen after all


def test_mpich_without_fork_starter_is_hydra_and_says_so() -> None:
    start = _plan(HYDRA, set())
    assert start.argv == ["/v/bin/mpiexec", "-n", "3", PY, "-P", "-m", "balsam_mpi",
                          "--idle-timeout", "1"]
    assert not start.forks and "control port" in start.how


def test_open_mpi_is_oversubscribed_and_unbound() -> None:
    """Without --oversubscribe, mpirun refused 4 ranks on this 2-core machine; with its
    default binding every rank (and so every task it starts) shares one core."""
    start = _plan(OMPI, {"/v/bin/mpiexec.gforker"}, {"PATH": "/bin",
                                                     "OMPI_MCA_hwloc_base_binding_policy": "x"})
    assert start.argv == ["/v/bin/mpiexec", "--oversubscribe", "--bind-to", "none", "-n",
                          "3", PY, "-P", "-m", "balsam_mpi", "--idle-timeout", "1"]
    # What mpirun sets in the ranks because of those options goes on the scrub list —
    # but not the binding policy, which the user had set before.
    assert start.env[START_VARS] == "OMPI_MCA_rmaps_base_oversubscribe"
    assert localstart.mpiexec_options("openmpi") == ["--oversubscribe", "--bind-to", "none"]
    assert localstart.mpiexec_options("mpich") == []


def test_bad_rank_count() -> None:
    with pytest.raises(Exception, match="-n must be at least 1"):
        localstart.plan(0, [], {}, mpiexec="/v/bin/mpiexec",
                        probe=lambda p, e: classify("", p))


# -- local.sh, rendered and run with fakes ------------------------------------------------
FAKE = """#!/bin/bash
if [ "$1" = --version ]; then printf '%s' "$BANNER"; exit 0; fi
printf '%s\\n' "$0" "$@" > "$OUT/argv"
env > "$OUT/env"
echo $$ > "$OUT/pid"
trap 'echo TERM > "$OUT/signal"; exit 42' TERM
trap 'echo USR1 > "$OUT/signal"; exit 43' USR1
[ -n "$STAY" ] || exit 3
touch "$OUT/started"
while :; do sleep 0.05; done
"""


@pytest.fixture()
def fake(tmp_path: Path) -> tuple[Project, Path]:
    root = tmp_path / "proj"
    fake_project(root)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "balsamactivate").write_text('echo "$1" > "$OUT/activated"\n')
    # The venv's python is this one (the module must import); its MPI programs are fakes.
    (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    for name in ("python", "mpiexec", "mpiexec.gforker"):
        if name != "python":
            (venv / "bin" / name).write_text(FAKE)
        (venv / "bin" / name).chmod(0o755)
    (tmp_path / "out").mkdir()
    return Project(root), venv


def _run_local(project: Project, venv: Path, tmp_path: Path, banner: str, stay: bool
               ) -> subprocess.Popen[bytes]:
    template = jobscript.find_template("local", project, tmp_path / "nohome")
    text = jobscript.render(template, jobscript.values_for(
        JobRequest("local", 3, workflows=("w 1",)), project, batch_job_id=5, venv=str(venv),
        environ={}))
    (tmp_path / "job.sh").write_text(text)
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"), "BANNER": banner,
           "STAY": "1" if stay else ""}
    return subprocess.Popen(["bash", str(tmp_path / "job.sh")], env=env,
                            stderr=subprocess.PIPE, preexec_fn=lambda: os.umask(0o077))


@pytest.mark.timeout(60)
def test_local_script_starts_the_fork_starter_and_returns_its_status(
        fake: tuple[Project, Path], tmp_path: Path) -> None:
    project, venv = fake
    proc = _run_local(project, venv, tmp_path, HYDRA, stay=False)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    argv = (tmp_path / "out" / "argv").read_text().splitlines()
    assert argv == [str(venv / "bin" / "mpiexec.gforker"), "-n", "3", sys.executable, "-P", "-m",
                    "balsam_mpi.batch.localstart", "--rank", "--", "--workflow=w 1"]
    assert b"MPICH's fork starter" in err  # the choice is in the job's log
    env = dict(line.split("=", 1) for line in
               (tmp_path / "out" / "env").read_text().splitlines() if "=" in line)
    # localstart became gforker (exec): the ranks are told that pid is their starter.
    assert env["BALSAM_STARTER_PID"] == (tmp_path / "out" / "pid").read_text().strip()
    assert (tmp_path / "out" / "activated").read_text() == f"{project.root}\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("banner", "forwarded", "status"), [(HYDRA, "TERM", 42),
                                                            (OMPI, "USR1", 43)])
def test_local_script_forwards_the_drain_signal(fake: tuple[Project, Path], tmp_path: Path,
                                                banner: str, forwarded: str, status: int
                                                ) -> None:
    """TERM to the job reaches the ranks as the signal their starter passes on for a
    drain: gforker and hydra pass TERM on; Open MPI's mpirun kills its ranks a second
    after TERM and passes USR1 on, so localstart turns TERM into USR1."""
    project, venv = fake
    proc = _run_local(project, venv, tmp_path, banner, stay=True)
    out = tmp_path / "out"
    deadline = time.monotonic() + 30
    while not (out / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == status  # the starter's own status
    assert (out / "signal").read_text() == f"{forwarded}\n"
    argv = (out / "argv").read_text().splitlines()
    if banner == OMPI:
        assert argv == [str(venv / "bin" / "mpiexec"), "--oversubscribe", "--bind-to", "none",
                        "-n", "3", sys.executable, "-P", "-m", "balsam_mpi", "--workflow=w 1"]
    else:
        assert argv[:3] == [str(venv / "bin" / "mpiexec.gforker"), "-n", "3"]


def test_the_starter_gets_no_mpi_job_identity() -> None:
    """A process that initialised MPI as a singleton (Open MPI then writes PMIX_*/OMPI_*
    into its own environment) or a task that submits: the launcher is a fresh job."""
    start = _plan(OMPI, set(), {"PATH": "/bin", "PMIX_RANK": "0", "PMIX_SERVER_URI4": "x",
                                "OMPI_MCA_orte_hnp_uri": "y", "OMPI_MCA_btl": "self,vader",
                                "PMI_FD": "9"})
    assert {k: v for k, v in start.env.items() if k != START_VARS} == {
        "PATH": "/bin", "OMPI_MCA_btl": "self,vader"}
