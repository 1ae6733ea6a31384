"""Rendered scripts run for real with fake MPI launchers: the umask holds, the launch line's
argv is right, the scheduler's signal reaches the launcher, and its exit status is the
script's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from balsam_mpi import jobscript
from balsam_mpi.jobscript import JobRequest
from balsam_mpi.project import Project

FAKE_LAUNCHER = """#!/bin/bash
printf '%s\\n' "$0" "$@" > "$OUT/argv"
umask > "$OUT/umask"
trap 'echo TERM > "$OUT/signal"; exit 42' TERM
[ -n "$STAY" ] || exit 3
touch "$OUT/started"
while :; do sleep 0.05; done
"""


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Project, Path, Path]:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "server-info.json").write_text(json.dumps({
        "host": "h", "port": 1, "owner_uid": os.geteuid(), "owner_name": "me",
        "server_uid": os.geteuid(), "server_name": "me", "group": "g", "pg_major": 16,
        "pg_bindir": "/x", "superuser": "me"}))
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "balsamactivate").write_text('echo "$1" > "$OUT/activated"\n')
    site = tmp_path / "site"  # the site's MPI launchers, first on PATH
    site.mkdir()
    for name in ("mpiexec", "srun", "aprun"):
        (site / name).write_text(FAKE_LAUNCHER)
        (site / name).chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    return Project(root), venv, site


def _start(project: Project, venv: Path, site: Path, req: JobRequest, stay: bool,
           tmp_path: Path) -> subprocess.Popen[bytes]:
    template = jobscript.find_template(req.scheduler, project, tmp_path / "nohome")
    text = jobscript.render(template, jobscript.values_for(
        req, project, batch_job_id=5, venv=str(venv), environ={}))
    script = tmp_path / "job.sh"
    script.write_text(text)
    env = {"PATH": f"{site}:/usr/bin:/bin", "OUT": str(tmp_path / "out"),
           "STAY": "1" if stay else ""}
    return subprocess.Popen(["bash", str(script)], env=env, preexec_fn=lambda: os.umask(0o077))


REQUESTS = {
    "pbs": (JobRequest("pbs", 4, 60, workflows=("w 1",)),
            ["mpiexec", "-n", "4", "--ppn", "1", "--cpu-bind", "none"]),
    "slurm": (JobRequest("slurm", 4, 60, workflows=("w 1",)),
              ["srun", "-N", "4", "-n", "4", "--ntasks-per-node=1", "--cpus-per-task=1",
               "--cpu-bind=none"]),
    "cobalt": (JobRequest("cobalt", 4, 60, workflows=("w 1",)),
               ["aprun", "-n", "4", "-N", "1", "-cc", "none"]),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheduler", sorted(REQUESTS))
def test_signal_reaches_the_launcher(setup: tuple[Project, Path, Path], tmp_path: Path,
                                     scheduler: str) -> None:
    project, venv, site = setup
    req, prefix = REQUESTS[scheduler]
    proc = _start(project, venv, site, req, True, tmp_path)
    out = tmp_path / "out"
    deadline = time.monotonic() + 30
    while not (out / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "launcher never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1 if scheduler == "slurm" else signal.SIGTERM)
    assert proc.wait(timeout=30) == 42  # the launcher's own status, after draining
    assert (out / "signal").read_text() == "TERM\n"
    argv = (out / "argv").read_text().splitlines()
    assert [Path(argv[0]).name, *argv[1:len(prefix)]] == prefix
    assert argv[len(prefix):] == [str(venv / "bin" / "python"), "-m", "balsam_mpi",
                                  "--workflow=w 1", "--time-limit-min", "57"]
    assert (out / "umask").read_text() == "0007\n"  # 077 from the caller → group rwx
    assert (out / "activated").read_text() == f"{project.root}\n"
