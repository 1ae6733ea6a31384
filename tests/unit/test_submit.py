"""Reading job ids out of qsub / sbatch output (no scheduler, no database)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from balsam_mpi.batch import submit
from balsam_mpi.batch.submit import SubmitError, parse_job_id


@pytest.mark.parametrize(("scheduler", "output", "job_id"), [
    ("pbs", "1234.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov\n",
     "1234.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"),
    ("pbs", "9\n", "9"),
    ("pbs", "qsub: note: project usage is high\n77[].pbs01\n", "77[].pbs01"),
    ("slurm", "5678\n", "5678"),
    ("slurm", "5678;perlmutter\n", "5678;perlmutter"),  # on cluster perlmutter (-M)
    ("cobalt", "Job routed to queue \"debug-cache-quad\".\n443210\n", "443210"),
])
def test_job_ids(scheduler: str, output: str, job_id: str) -> None:
    assert parse_job_id(scheduler, output) == job_id


@pytest.mark.parametrize(("scheduler", "output"), [
    ("pbs", ""), ("pbs", "Submitted 12 ; rm\n"), ("slurm", "Submitted batch job 12\n"),
    ("cobalt", "12.server\n"),
])
def test_no_job_id_is_an_error(scheduler: str, output: str) -> None:
    with pytest.raises(SubmitError, match="cannot find a job id"):
        parse_job_id(scheduler, output)


def _sbatch(tmp_path: Path, body: str) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    tool = bindir / "sbatch"
    tool.write_text(f"#!/bin/bash\nprintf '%s\\n' \"$@\" > {bindir}/argv\n{body}\n")
    tool.chmod(0o755)
    return bindir


@pytest.mark.parametrize("body", [
    "exec sleep 30",             # timed out
    "kill -INT $$",              # a Ctrl-C reached it
    "echo 'Submitted batch job 12 (site wrapper)'",  # exit 0, an id in no known form
])
def test_a_lost_slurm_answer_is_uncertain_and_carries_the_comment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    """sbatch that did not answer may have queued the job: SubmitUncertain (the row is
    held, not closed), and the comment the job can be found by is on sbatch's argv."""
    bindir = _sbatch(tmp_path, body)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setattr(submit, "SUBMIT_TIMEOUT_SEC", 1)
    with pytest.raises(submit.SubmitUncertain, match="balsam:7:00ff"):
        submit._run_submit("slurm", tmp_path / "x.sh", tmp_path, "balsam:7:00ff")
    assert (bindir / "argv").read_text().splitlines() == [
        "--parsable", "--comment=balsam:7:00ff", str(tmp_path / "x.sh")]
    # Without a comment (PBS, Cobalt: no lookup) it is a plain failure, as before.
    with pytest.raises(SubmitError) as info:
        submit._run_submit("slurm", tmp_path / "x.sh", tmp_path)
    assert not isinstance(info.value, submit.SubmitUncertain)


def test_a_refusal_is_not_uncertain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = _sbatch(tmp_path, "echo 'sbatch: error: invalid account' >&2; exit 1")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    with pytest.raises(SubmitError, match="invalid account") as info:
        submit._run_submit("slurm", tmp_path / "x.sh", tmp_path, "balsam:7:00ff")
    assert not isinstance(info.value, submit.SubmitUncertain)
