"""Rendered scripts run for real as batch jobs of a stand-in scheduler, with stand-in launch
tools that behave as the real ones do at the end of a job (fake_hpc.py): the scheduler's
end of job reaches every launcher rank, each rank finishes its drain before anything is
killed, the script never sends the launch tool a signal it turns into a kill, and the
script's status is the launcher's. Also: the umask holds, the launch line's argv is right.

The scheduler stand-in ends a job as each scheduler documents it: Slurm (scancel, the time
limit) sends CONT and TERM to every process of every step and of the batch script, and
KILL after KillWait (30 s by default); its --signal=B: warning goes to the batch shell
alone. PBS (qdel, the wall time) sends TERM to every process of the job and KILL after
kill_delay (10 s by default); qsig signals every process. Cobalt's delivery is not
documented where we looked: the stand-in signals the script alone, the weakest case.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from balsam_mpi.base.project import Project
from balsam_mpi.batch import jobscript
from balsam_mpi.batch.jobscript import JobRequest
from tests.procs import running
from tests.unit.fakeproject import fake_project

FAKE = Path(__file__).with_name("fake_hpc.py")
KILL_WAIT_S = 30.0  # Slurm's default KillWait
KILL_DELAY_S = 10.0  # PBS's default kill_delay
RANKS = 3


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Project, Path, Path]:
    root = tmp_path / "proj"
    fake_project(root)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "balsamactivate").write_text('echo "$1" > "$OUT/activated"\n')
    site = tmp_path / "site"  # the site's launch tools, first on PATH
    site.mkdir()
    source = f"#!{sys.executable}\n" + FAKE.read_text()
    for path in (site / "srun", site / "mpiexec", site / "aprun", venv / "bin" / "python"):
        path.write_text(source)
        path.chmod(0o755)
    (tmp_path / "out").mkdir()
    return Project(root), venv, site


class Job:
    """A rendered script run as a batch job of the stand-in scheduler."""

    def __init__(self, project: Project, venv: Path, site: Path, req: JobRequest,
                 tmp_path: Path) -> None:
        template = jobscript.find_template(req.scheduler, project, tmp_path / "nohome")
        text = jobscript.render(template, jobscript.values_for(
            req, project, batch_job_id=5, venv=str(venv), environ={}))
        script = tmp_path / "job.sh"
        script.write_text(text)
        self.out = tmp_path / "out"
        env = {"PATH": f"{site}:/usr/bin:/bin", "OUT": str(self.out)}
        self.proc = subprocess.Popen(["bash", str(script)], env=env, start_new_session=True,
                                     preexec_fn=_as_a_scheduler_starts_it)
        self.killed: list[int] = []

    def rank_log(self, rank: int) -> str:
        path = self.out / f"rank{rank}.log"
        return path.read_text() if path.exists() else ""

    def wait_ready(self) -> None:
        """Every rank started, and the script has set its traps (it starts the launch
        tool first and traps after: a signal in between would meet bash's defaults)."""
        deadline = time.monotonic() + 30
        while not (all("ready" in self.rank_log(r) for r in range(RANKS))
                   and catches(self.proc.pid, signal.SIGUSR1, signal.SIGTERM)):
            assert self.proc.poll() is None, "the job script ended before its ranks started"
            assert time.monotonic() < deadline, "the ranks never started"
            time.sleep(0.05)

    def step_pids(self) -> list[int]:
        path = self.out / "step.pids"
        return [int(x) for x in path.read_text().split()] if path.exists() else []

    def processes(self) -> list[int]:
        """Every live process of the job: the script's session and the step."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.proc.pid and fields[0] != "Z":
                found.append(int(entry))
        return found + [p for p in self.step_pids() if running(p)]

    def end(self, signals: list[signal.Signals], grace: float, whole_job: bool) -> int:
        """Send ``signals`` to every process of the job (or to the script alone), then KILL
        whatever is left after ``grace`` seconds; the script's exit status."""
        targets = self.processes() if whole_job else [self.proc.pid]
        for sig in signals:
            for pid in targets:
                _send(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (
                self.proc.poll() is None or any(running(p) for p in self.step_pids())):
            time.sleep(0.05)
        for pid in self.processes():
            self.killed.append(pid)
            _send(pid, signal.SIGKILL)
        return self.proc.wait(timeout=10)

    def signals_from_script(self, tool: str) -> list[str]:
        path = self.out / f"{tool}.signals"
        lines = path.read_text().splitlines() if path.exists() else []
        return [line for line in lines if line.endswith(f"from {self.proc.pid}")]

    def assert_every_rank_drained(self, stop: str) -> None:
        for rank in range(RANKS):
            log = self.rank_log(rank)
            assert f"stop {stop}" in log and "drained" in log, (rank, log)
        assert not self.killed, f"still running after the grace: {self.killed}"


def _as_a_scheduler_starts_it() -> None:
    """The job script's start: a umask, and every signal at its default. A signal
    ignored on entry cannot be trapped by bash, and this test's caller may ignore some:
    a test run started in the background by a shell ignores INT, and INT then never
    reached the ranks."""
    os.umask(0o077)
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def catches(pid: int, *sigs: signal.Signals) -> bool:
    """``pid`` has a handler for each of ``sigs`` (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next((int(line.split()[1], 16) for line in status.splitlines()
                 if line.startswith("SigCgt:")), 0)
    return all(mask >> (int(s) - 1) & 1 for s in sigs)


def _send(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _job(setup: tuple[Project, Path, Path], tmp_path: Path, scheduler: str) -> Job:
    project, venv, site = setup
    job = Job(project, venv, site, JobRequest(scheduler, RANKS, 60, workflows=("w 1",)),
              tmp_path)
    job.wait_ready()
    return job


# -- Slurm -----------------------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_slurm_scancel_or_time_limit(setup: tuple[Project, Path, Path],
                                     tmp_path: Path) -> None:
    job = _job(setup, tmp_path, "slurm")
    (job.out / "job-ending").touch()  # what srun learns from slurmctld when a job ends
    job.end([signal.SIGCONT, signal.SIGTERM], KILL_WAIT_S, whole_job=True)
    job.assert_every_rank_drained("SIGTERM")
    assert not [s for s in job.signals_from_script("srun") if s.startswith("TERM")]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGINT], ids=["warning", "int"])
def test_slurm_warning_reaches_the_ranks_through_srun(
        setup: tuple[Project, Path, Path], tmp_path: Path, sig: signal.Signals) -> None:
    """--signal=B:USR1@N (or scancel --batch) signals the batch shell alone."""
    job = _job(setup, tmp_path, "slurm")
    status = job.end([sig], KILL_WAIT_S, whole_job=False)
    job.assert_every_rank_drained("SIGUSR1")  # srun forwarded it to every rank
    assert status == 42  # the launcher's own status
    assert job.signals_from_script("srun") == [f"SIGUSR1 from {job.proc.pid}"]


def test_slurm_stand_in_kills_its_step_on_term(setup: tuple[Project, Path, Path],
                                               tmp_path: Path) -> None:
    """The stand-in does what real srun does in a live job when sent TERM (measured on
    Slurm 22.05: every rank gone at once, none drained) — what the old template did."""
    job = _job(setup, tmp_path, "slurm")
    srun = next(p for p in job.processes()
                if b"/site/srun\0" in Path(f"/proc/{p}/cmdline").read_bytes())
    os.kill(srun, signal.SIGTERM)
    job.proc.wait(timeout=30)
    assert all("drained" not in job.rank_log(r) for r in range(RANKS))


# -- PBS -------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["qdel", "qsig"])
def test_pbs_qdel_or_wall_time(setup: tuple[Project, Path, Path], tmp_path: Path,
                               sig: signal.Signals) -> None:
    job = _job(setup, tmp_path, "pbs")
    status = job.end([sig], KILL_DELAY_S, whole_job=True)
    job.assert_every_rank_drained(sig.name)
    assert status == 42
    assert job.signals_from_script("mpiexec") == []  # nothing passed on: PBS did it


# -- Cobalt ----------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_cobalt_qdel_or_wall_time(setup: tuple[Project, Path, Path], tmp_path: Path) -> None:
    job = _job(setup, tmp_path, "cobalt")
    status = job.end([signal.SIGTERM], KILL_DELAY_S, whole_job=False)
    job.assert_every_rank_drained("SIGTERM")  # through aprun, which forwards TERM
    assert status == 42


# -- the launch lines and the script's environment ---------------------------------------------
PREFIXES = {
    "pbs": ["mpiexec", "-n", "3", "--ppn", "1", "--cpu-bind", "none"],
    "slurm": ["srun", "-N", "3", "-n", "3", "--ntasks-per-node=1", "--cpus-per-task=1",
              "--cpu-bind=none"],
    "cobalt": ["aprun", "-n", "3", "-N", "1", "-cc", "none"],
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheduler", sorted(PREFIXES))
def test_launch_line_umask_and_activation(setup: tuple[Project, Path, Path], tmp_path: Path,
                                          scheduler: str) -> None:
    project, venv, _site = setup
    job = _job(setup, tmp_path, scheduler)
    job.end([signal.SIGTERM], KILL_DELAY_S, whole_job=True)
    prefix = PREFIXES[scheduler]
    argv = (job.out / f"{prefix[0]}.argv").read_text().splitlines()
    assert [Path(argv[0]).name, *argv[1:]] == [*prefix, str(venv / "bin" / "python"), "-P",
                                               "-m", "balsam_mpi", "--workflow=w 1",
                                               "--time-limit-min", "57"]
    assert (job.out / "argv").read_text().splitlines() == [
        "-P", "-m", "balsam_mpi", "--workflow=w 1", "--time-limit-min", "57"]
    assert (job.out / "umask").read_text() == "0007\n"  # 077 from the caller → group rwx
    assert (job.out / "activated").read_text() == f"{project.root}\n"
