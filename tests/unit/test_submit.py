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


def _fake_submit(tmp_path: Path, name: str, body: str) -> Path:
    """A submit command ``name`` in a directory of its own: it records its argv, then
    runs ``body``; returns the directory."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    tool = bindir / name
    tool.write_text(f"#!/bin/bash\nprintf '%s\\n' \"$@\" > {bindir}/argv\n{body}\n")
    tool.chmod(0o755)
    return bindir


def _sbatch(tmp_path: Path, body: str) -> Path:
    return _fake_submit(tmp_path, "sbatch", body)


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
        submit._run_submit("slurm", tmp_path / "x.sh", "balsam:7:00ff")
    assert (bindir / "argv").read_text().splitlines() == [
        "--parsable", "--comment=balsam:7:00ff", str(tmp_path / "x.sh")]
    # Without a comment (PBS, Cobalt: no lookup) it is a plain failure, as before.
    with pytest.raises(SubmitError) as info:
        submit._run_submit("slurm", tmp_path / "x.sh")
    assert not isinstance(info.value, submit.SubmitUncertain)


def test_a_refusal_is_not_uncertain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = _sbatch(tmp_path, "echo 'sbatch: error: invalid account' >&2; exit 1")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    with pytest.raises(SubmitError, match="invalid account") as info:
        submit._run_submit("slurm", tmp_path / "x.sh", "balsam:7:00ff")
    assert not isinstance(info.value, submit.SubmitUncertain)


def _qsub(tmp_path: Path, body: str) -> Path:
    return _fake_submit(tmp_path, "qsub", body)


@pytest.mark.parametrize("body", [
    "exec sleep 30",                   # timed out
    "kill -INT $$",                    # a Ctrl-C reached it
    "echo 'job submitted (site wrapper)'",  # exit 0, no id of PBS's form
])
def test_a_lost_pbs_answer_is_uncertain_and_carries_the_mark(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    """qsub (PBS) that did not answer may have queued the job, as sbatch may: the row is
    held, and the job can be found by the variable qsub was given (-v), which `qstat -f`
    lists in the job's Variable_List."""
    bindir = _qsub(tmp_path, body)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setattr(submit, "SUBMIT_TIMEOUT_SEC", 1)
    with pytest.raises(submit.SubmitUncertain, match="BALSAM_SUBMIT=balsam:7:00ff"):
        submit._run_submit("pbs", tmp_path / "x.sh", "balsam:7:00ff")
    assert (bindir / "argv").read_text().splitlines() == [
        "-v", "BALSAM_SUBMIT=balsam:7:00ff", str(tmp_path / "x.sh")]


def test_a_pbs_refusal_is_not_uncertain(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = _qsub(tmp_path, "echo 'qsub: Unknown queue' >&2; exit 38")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    with pytest.raises(SubmitError, match="Unknown queue") as info:
        submit._run_submit("pbs", tmp_path / "x.sh", "balsam:7:00ff")
    assert not isinstance(info.value, submit.SubmitUncertain)


def test_cobalt_submissions_carry_no_mark() -> None:
    """Cobalt's jobs cannot be asked about (`job sync` has no Cobalt query), so a found
    job could never be followed: a lost Cobalt answer still closes the row."""
    from balsam_mpi.batch import marks

    assert "pbs" in marks.MARKED and "slurm" in marks.MARKED
    assert "cobalt" not in marks.MARKED


# `qstat -f` as PBS Pro and Torque print it: attribute lines indented, long values
# wrapped onto lines that start with a tab, cut anywhere (here inside the mark).
_QSTAT_F = """\
Job Id: 4243.pbs01
    Job_Name = copy
    Job_Owner = mallory@login1
    job_state = Q
    Variable_List = PBS_O_HOME=/home/mallory,BALSAM_SUBMIT=balsam:5:00ff00ff00ff00ff
Job Id: 4242.pbs01.example.org
    Job_Name = balsam
    Job_Owner = alice@login1.example.org
    job_state = R
    Variable_List = PBS_O_HOME=/home/alice,PBS_O_LANG=C,BALSAM_SUBMIT=balsam:5:00ff
\t00ff00ff00ff,PBS_O_WORKDIR=/p/qsubmit,NOTE=a\\,BALSAM_SUBMIT=balsam:6:aaaaaaaaaaaa
\taaaa
    euser = alice
Job Id: 4244.pbs01
    Job_Owner = alice@login2
    job_state = F
    Variable_List = BALSAM_SUBMIT=balsam:7:bbbbbbbbbbbbbbbb
"""


def test_pbs_jobs_are_found_by_their_mark_for_their_owner_only() -> None:
    from balsam_mpi.batch import schedq

    marks = ["balsam:5:00ff00ff00ff00ff", "balsam:6:aaaaaaaaaaaaaaaa",
             "balsam:7:bbbbbbbbbbbbbbbb", "balsam:8:cccccccccccccccc"]
    got = schedq.parse_qstat_marks(_QSTAT_F, "alice", marks)
    # mallory's copy of the mark is not alice's job; a value that only contains the
    # mark after an escaped comma is not the variable; 4244 ended.
    assert got == {"balsam:5:00ff00ff00ff00ff": ("4242.pbs01.example.org", "running", "R"),
                   "balsam:7:bbbbbbbbbbbbbbbb": ("4244.pbs01", "ended", "F")}
    assert schedq.parse_qstat_marks(_QSTAT_F, "mallory", marks) == {
        "balsam:5:00ff00ff00ff00ff": ("4243.pbs01", "waiting", "Q")}
    # The wrapped lines as some copies of PBS Pro's output show them: eight spaces.
    spaced = _QSTAT_F.replace("\n\t", "\n        ")
    assert schedq.parse_qstat_marks(spaced, "alice", marks) == got


def test_a_pbs_mark_keeps_the_variables_of_the_scripts_directives() -> None:
    """On the command line, qsub's -v replaces the script's #PBS -v list: the job lost
    the variables its template (or a --directive) passed."""
    from balsam_mpi.batch import marks

    script = ("#!/bin/bash\n#PBS -l select=2 -v FOO=1,BAR=two\n\n#PBS -vLANG=C  # x\n"
              "# a comment\n#PBS -N job\nexport A=1\n#PBS -v LATE=ignored\n")
    assert marks.pbs_variables(script) == ["FOO=1,BAR=two", "LANG=C"]
    assert marks.args("pbs", "balsam:7:00ff", script) == [
        "-v", "FOO=1,BAR=two,LANG=C,BALSAM_SUBMIT=balsam:7:00ff"]
    assert marks.args("pbs", "balsam:7:00ff", "#!/bin/sh\n#PBS -q debug\n") == [
        "-v", "BALSAM_SUBMIT=balsam:7:00ff"]
    assert marks.args("slurm", "balsam:7:00ff", script) == ["--comment=balsam:7:00ff"]
