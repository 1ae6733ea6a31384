"""Job templates: every shipped one renders to valid bash; overrides; placeholders; quoting."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from balsam_mpi.base.errors import BalsamError, ProjectError, UsageError
from balsam_mpi.base.project import Project
from balsam_mpi.batch import jobscript
from balsam_mpi.batch.jobscript import JobRequest, Template
from tests.unit.fakeproject import fake_project

REPO = Path(__file__).resolve().parents[2]
HOSTILE = "x'; touch /tmp/pwned-$$; echo '"


@pytest.fixture()
def project(tmp_path: Path) -> Project:
    return fake_project(tmp_path / "proj with space")


def _render(project: Project, req: JobRequest, home: Path, job_id: int | None = 7) -> str:
    jobscript.validate(req)
    template = jobscript.find_template(req.scheduler, project, home)
    return jobscript.render(template, jobscript.values_for(
        req, project, batch_job_id=job_id, venv="/opt/my venv", environ={}))


def _bash_n(text: str) -> None:
    done = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True,
                          check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("scheduler", ["pbs", "slurm", "cobalt", "local"])
def test_every_shipped_template_renders_to_valid_bash(project: Project, tmp_path: Path,
                                                      scheduler: str) -> None:
    full = JobRequest(scheduler, 4, 30 if scheduler != "local" else None,
                      queue=None if scheduler == "local" else "debug",
                      account=None if scheduler == "local" else "proj",
                      workflows=("wf1", HOSTILE),
                      directives=() if scheduler == "local" else ("-l x=y",))
    for req in (full, JobRequest(scheduler, 1, 5)):
        text = _render(project, req, tmp_path)
        _bash_n(text)
        assert "{{" not in text and "}}" not in text
        assert "\numask g=rwx\n" in text
        assert f"source \"$BALSAM_VENV/bin/balsamactivate\" {shlex.quote(str(project.root))}" \
            in text
        assert "export BALSAM_BATCH_JOB_ID=7" in text
        assert TRAPS[scheduler] in text
        if scheduler == "slurm":  # srun answers TERM by killing its step: never sent it
            assert "kill -TERM" not in text
        if scheduler != "local":
            assert "# How this job ends (balsam-mpi submit):" in text


TRAPS = {
    "slurm": "trap 'kill -USR1 \"$launcher\" 2>/dev/null' USR1 INT\ntrap ':' TERM\n",
    "pbs": "trap ':' TERM USR1 INT\n",
    "cobalt": "trap 'kill -TERM \"$launcher\" 2>/dev/null' TERM USR1 INT\n",
    "local": "trap 'kill -TERM \"$launcher\" 2>/dev/null' TERM USR1 INT\n",
}


def test_the_package_carries_one_real_template_per_scheduler(tmp_path: Path) -> None:
    # The package's copies are what submit reads and what a wheel ships: regular files,
    # never links (a link out of the package dangles once installed). job_templates/,
    # where a reader of the repository looks, only points at them.
    from balsam_mpi.base.platform import SCHEDULERS

    package = REPO / "balsam_mpi" / "templates"
    names = sorted(f"{s}.sh" for s in SCHEDULERS)
    assert sorted(p.name for p in package.glob("*.sh")) == names
    assert sorted(p.name for p in (REPO / "job_templates").glob("*.sh")) == names
    for name in names:
        shipped, pointer = package / name, REPO / "job_templates" / name
        assert shipped.is_file() and not shipped.is_symlink(), shipped
        assert pointer.is_symlink() and os.readlink(pointer) == f"../balsam_mpi/templates/{name}"
        # ... and they are the text submit renders when no override exists
        found = jobscript.find_template(name[:-3], Project(tmp_path), home=tmp_path)
        assert (found.origin, found.text) == ("shipped", shipped.read_text())


def test_pbs_acceptance_script(project: Project, tmp_path: Path) -> None:
    text = _render(project, JobRequest("pbs", 128, 90, queue="prod", account="myproj"),
                   tmp_path)
    assert "#PBS -l walltime=01:30:00\n" in text
    assert "#PBS -q prod\n" in text and "#PBS -A myproj\n" in text
    assert "mpiexec -n 128 --ppn 1" in text
    assert "--time-limit-min 85" in text  # 90 minus 5% (rounded up)
    assert "filesystems" not in text.split("umask")[0]  # no value: its header line is gone


def test_slurm_and_cobalt_launch_lines(project: Project, tmp_path: Path) -> None:
    slurm = _render(project, JobRequest("slurm", 3, 1500, queue="regular",
                                        directives=("-C gpu", "#SBATCH --exclusive")), tmp_path)
    assert "#SBATCH --time=25:00:00\n" in slurm and "#SBATCH --qos=regular\n" in slurm
    assert "#SBATCH -C gpu\n#SBATCH --exclusive\n" in slurm
    assert "srun -N 3 -n 3 --ntasks-per-node=1" in slurm
    cobalt = _render(project, JobRequest("cobalt", 2, 60), tmp_path)
    assert "#COBALT -t 60\n" in cobalt and "aprun -n 2 -N 1" in cobalt
    assert "LEGACY" in cobalt


def test_slurm_whole_nodes_unless_shared(project: Project, tmp_path: Path) -> None:
    assert "\n#SBATCH --exclusive\n" in _render(project, JobRequest("slurm", 2, 60), tmp_path)
    shared = _render(project, JobRequest("slurm", 2, 60, whole_nodes=False), tmp_path)
    assert "--exclusive" not in shared
    with pytest.raises(UsageError, match="--shared-nodes is for Slurm"):
        jobscript.validate(JobRequest("pbs", 2, 60, whole_nodes=False))


@pytest.mark.parametrize(("wall", "margin", "grace", "lead"), [
    (60, None, 30, 120),  # margin 3 min: 180 s − Slurm's 60 s early
    (30, None, 30, 60),  # margin 2 min
    (20, None, 30, None),  # margin 1 min: no room at all
    (2, None, 10, None),
    (240, None, 30, 540),  # margin 10 min (the cap)
    (60, 1.5, 30, 30),  # exactly one drain
    (60, 1.4, 30, None),  # 24 s: less than a drain
    (60, 5.0, 300, None),
    (3000, 1200.0, 30, 65535),  # sbatch's largest sig_time
])
def test_slurm_warning_time(wall: int, margin: float | None, grace: float,
                            lead: int | None) -> None:
    req = JobRequest("slurm", 1, wall, margin_min=margin)
    assert jobscript.slurm_warning_s(req, grace) == lead


def test_slurm_warning_never_before_the_launchers_limit_nor_too_late() -> None:
    for wall in range(1, 400):
        for margin in (None, 0.5, 1.0, 2.0, 5.0, wall / 3):
            if margin is not None and margin >= wall:
                continue  # refused by validate()
            req = JobRequest("slurm", 1, wall, margin_min=margin)
            limit = jobscript.launcher_time_limit(req)
            assert limit is not None
            for grace in (10.0, 30.0, 90.0):
                lead = jobscript.slurm_warning_s(req, grace)
                if lead is not None:
                    # Even sent 60 s early, it comes after the launcher's own limit ...
                    assert lead + 60 <= (wall - limit) * 60 + 1e-9
                    assert lead >= grace  # ... and leaves a whole drain


@pytest.mark.parametrize(("req", "grace", "has", "lacks"), [
    (JobRequest("slurm", 2, 60), 30.0, ["#SBATCH --signal=B:USR1@120\n",
                                        "USR1 to this script 120 s before the end"], []),
    (JobRequest("slurm", 2, 20), 30.0, ["no Slurm warning signal"], ["#SBATCH --signal"]),
    (JobRequest("slurm", 2, 60), 150.0, ["no Slurm warning signal"], ["#SBATCH --signal"]),
    (JobRequest("pbs", 2, 60), 30.0, ["KILL after the queue's kill_delay"], []),
    (JobRequest("cobalt", 2, 60), 30.0, ["passes it to aprun"], []),
])
def test_the_script_says_how_its_job_ends(project: Project, req: JobRequest, grace: float,
                                          has: list[str], lacks: list[str]) -> None:
    text = jobscript.render(jobscript.find_template(req.scheduler, project, Path("/nohome")),
                            jobscript.values_for(req, project, batch_job_id=1, venv="/v",
                                                 environ={}, drain_grace_s=grace))
    _bash_n(text)
    for part in has:
        assert part in " ".join(text.replace("\n#    ", " ").split(" ")), (part, text)
    for part in lacks:
        assert part not in text


def test_hostile_workflow_is_one_quoted_word(project: Project, tmp_path: Path) -> None:
    text = _render(project, JobRequest("local", 2, workflows=(HOSTILE,)), tmp_path)
    line = next(x for x in text.splitlines() if "-m balsam_mpi" in x)
    argv = shlex.split(line.rstrip("&"))
    assert f"--workflow={HOSTILE}" in argv


def test_forwarded_environment_is_quoted(project: Project) -> None:
    values = jobscript.values_for(JobRequest("local", 1), project, batch_job_id=3, venv="/v",
                                  environ={"BALSAM_DB_NAME": "t 1;x", "BALSAM_DB_HOST": ""})
    assert values["exports"] == "export BALSAM_BATCH_JOB_ID=3\nexport BALSAM_DB_NAME='t 1;x'"


@pytest.mark.parametrize(("minutes", "text"), [(0, "00:00:00"), (1, "00:01:00"),
                                               (90, "01:30:00"), (1500, "25:00:00"),
                                               (6000, "100:00:00")])
def test_format_walltime(minutes: int, text: str) -> None:
    assert jobscript.format_walltime(minutes) == text


@pytest.mark.parametrize(("wall", "margin", "limit"), [
    (1, None, 0.5), (2, None, 1.0), (30, None, 28.0), (90, None, 85.0), (600, None, 590.0),
    (60, 0.0, 60.0), (60, 15.0, 45.0), (None, None, None)])
def test_launcher_time_limit(wall: int | None, margin: float | None,
                             limit: float | None) -> None:
    req = JobRequest("pbs" if wall else "local", 1, wall, margin_min=margin)
    assert jobscript.launcher_time_limit(req) == limit


@pytest.mark.parametrize(("req", "says"), [
    (JobRequest("pbs", 4), "-t MINUTES"),
    (JobRequest("lsf", 4, 10), "unknown scheduler"),
    (JobRequest("pbs", 0, 10), "at least 1"),
    (JobRequest("pbs", 1, 10, queue="prod; rm -rf ~"), "-q/--queue"),
    (JobRequest("pbs", 1, 10, account="a b"), "-A/--account"),
    (JobRequest("pbs", 1, 10, filesystems="home:eagle'"), "--filesystems"),
    (JobRequest("pbs", 1, 10, workflows=("a\nb",)), "--workflow"),
    (JobRequest("pbs", 1, 10, workflows=("",)), "--workflow"),
    (JobRequest("pbs", 1, 10, directives=("-l a\n#PBS -l b",)), "one non-empty line"),
    (JobRequest("pbs", 1, 10, directives=("#SBATCH -C gpu",)), "not a #PBS line"),
    (JobRequest("local", 1, queue="debug"), "mean nothing to a local run"),
    (JobRequest("local", 1, directives=("-x",)), "mean nothing to a local run"),
    (JobRequest("pbs", 1, 10, job_name="my job"), "job name"),
    (JobRequest("pbs", 1, 10, margin_min=10), "leaves no time"),
    (JobRequest("pbs", 1, 10, margin_min=-1), "cannot be negative"),
])
def test_bad_requests_are_usage_errors(req: JobRequest, says: str) -> None:
    with pytest.raises(UsageError, match=says.replace("-", r"\-").replace("+", r"\+")):
        jobscript.validate(req)


def test_override_order_project_then_user_then_shipped(project: Project,
                                                       tmp_path: Path) -> None:
    home = tmp_path / "home"
    user_dir = home / ".balsam" / "job-templates"
    user_dir.mkdir(parents=True)
    (user_dir / "pbs.sh").write_text("#!/bin/bash\n# user {{ nodes }}\n")
    os.chmod(user_dir / "pbs.sh", 0o644)
    assert jobscript.find_template("slurm", project, home).origin == "shipped"
    found = jobscript.find_template("pbs", project, home)
    assert (found.origin, found.text) == ("user", "#!/bin/bash\n# user {{ nodes }}\n")
    project.templates_dir.mkdir()
    (project.templates_dir / "pbs.sh").write_text("#!/bin/bash\n# project\n")
    os.chmod(project.templates_dir / "pbs.sh", 0o640)
    assert jobscript.find_template("pbs", project, home).origin == "project"


def test_writable_templates_are_refused(project: Project, tmp_path: Path) -> None:
    home = tmp_path / "home"
    user_dir = home / ".balsam" / "job-templates"
    user_dir.mkdir(parents=True)
    (user_dir / "slurm.sh").write_text("#!/bin/bash\n")
    os.chmod(user_dir / "slurm.sh", 0o666)
    with pytest.raises(ProjectError, match="others may write it"):
        jobscript.find_template("slurm", project, home)
    project.templates_dir.mkdir()
    (project.templates_dir / "pbs.sh").write_text("#!/bin/bash\n")
    os.chmod(project.templates_dir / "pbs.sh", 0o660)
    with pytest.raises(ProjectError, match="writable by group"):
        jobscript.find_template("pbs", project, home)


def test_unknown_placeholder_is_named() -> None:
    template = Template("my.sh", "user", "#!/bin/bash\n#PBS -q {{ queue }}\necho {{ qeueu }}\n")
    with pytest.raises(ProjectError, match=r"my.sh, line 3: unknown placeholder \{\{ qeueu \}\}"):
        jobscript.check_placeholders(template)
    with pytest.raises(BalsamError, match="unbalanced"):
        jobscript.check_placeholders(Template("t.sh", "user", "echo {{ nodes }\n"))


def test_a_bad_template_file_is_bad_input_named_by_its_line(project: Project,
                                                          tmp_path: Path) -> None:
    """A template is a file the user wrote: a byte that is not UTF-8 was reported by its
    offset in the file and an unknown placeholder exited 1, like a broken project."""
    project.templates_dir.mkdir()
    path = project.templates_dir / "pbs.sh"
    path.write_bytes(b"#!/bin/bash\n#PBS -l select={{ nodes }}\necho caf\xe9\n")
    os.chmod(path, 0o640)
    with pytest.raises(UsageError, match=r"pbs.sh, line 3: not valid UTF-8 \(byte 0xe9"):
        jobscript.find_template("pbs", project, tmp_path / "home")
    path.write_bytes(b"#!/bin/bash\necho {{ qeueu }}\n")
    with pytest.raises(UsageError, match=r"pbs.sh, line 2: unknown placeholder") as raised:
        jobscript.check_placeholders(jobscript.find_template("pbs", project, tmp_path / "h"))
    assert raised.value.exit_code == 2


def test_a_byte_order_mark_does_not_hide_the_shebang(project: Project,
                                                     tmp_path: Path) -> None:
    # Kept, the mark came before "#!" in the rendered script, so neither the kernel nor a
    # scheduler saw an interpreter line (sbatch refuses a script that does not start "#!").
    project.templates_dir.mkdir()
    path = project.templates_dir / "local.sh"
    path.write_bytes(b"\xef\xbb\xbf#!/bin/bash\necho {{ nodes }}\n")
    os.chmod(path, 0o640)
    template = jobscript.find_template("local", project, tmp_path / "home")
    assert template.text.startswith("#!/bin/bash\n")


def test_empty_values_drop_header_and_bare_lines_only() -> None:
    template = Template("t.sh", "user",
                        "#PBS -q {{ queue }}\n{{ directives }}\necho q={{ queue }}\n")
    values = dict.fromkeys(jobscript.PLACEHOLDERS, "")
    assert jobscript.render(template, values) == "echo q=\n"
