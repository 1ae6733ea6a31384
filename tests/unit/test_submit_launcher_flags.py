"""`balsam-mpi submit` hands the launcher's own selection and node flags to the job it
renders: --tag, --owner, --gpus-per-node, --idle-timeout, --persistent.

A batch job that runs only one member's tasks, only tasks with a tag, or GPU tasks with
the node's GPUs handed out, needs these flags on the launcher's command line; before,
`submit` passed --workflow alone and such a job could only be written by hand. The
rendered words are read back by the launcher's own parser and settings, so what the job
runs is what was asked; bad values are refused by the same checks, before anything is
written."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from balsam_mpi.base.errors import UsageError
from balsam_mpi.base.project import Project
from balsam_mpi.batch import jobscript
from balsam_mpi.batch.jobscript import JobRequest
from balsam_mpi.launcher.config import resolve
from balsam_mpi.launcher.launch import parser
from tests.unit.fakeproject import fake_project


@pytest.fixture()
def project(tmp_path: Path) -> Project:
    return fake_project(tmp_path / "proj")


def _launcher_words(project: Project, req: JobRequest) -> list[str]:
    jobscript.validate(req)
    values = jobscript.values_for(req, project, batch_job_id=5, venv="/v", environ={})
    return shlex.split(values["launcher_args"])


@pytest.mark.parametrize("scheduler, wall", [("slurm", 30), ("pbs", 30), ("local", None)])
def test_the_launcher_reads_back_what_submit_was_asked(project: Project, scheduler: str,
                                                       wall: int | None) -> None:
    req = JobRequest(scheduler, 2, wall, workflows=("fit",),
                     tags=("site=polaris", "-x=a=b"), owners=("alice", "bob"),
                     gpus_per_node=4, idle_timeout_s=120.0)
    settings = resolve(vars(parser().parse_args(_launcher_words(project, req))), {}, {})
    assert settings.workflows == ("fit",)
    assert settings.tag_filter == {"site": "polaris", "-x": "a=b"}
    assert settings.owners == ("alice", "bob")
    assert settings.gpus_per_node == 4
    assert settings.idle_timeout_s == 120.0
    assert not settings.persistent


def test_persistent_and_nothing_given(project: Project) -> None:
    words = _launcher_words(project, JobRequest("local", 1, persistent=True))
    assert words == ["--persistent"]
    assert resolve(vars(parser().parse_args(words)), {}, {}).persistent
    assert _launcher_words(project, JobRequest("local", 1)) == []


def test_the_batch_job_records_every_filter(project: Project) -> None:
    req = JobRequest("local", 1, workflows=("w",), tags=("k=v",), owners=("alice",))
    assert jobscript.filters_of(req) == {"workflows": ["w"], "tags": {"k": "v"},
                                         "owners": ["alice"]}
    assert jobscript.filters_of(JobRequest("local", 1)) == {}


@pytest.mark.parametrize("req, says", [
    (JobRequest("local", 1, tags=("novalue",)), "--tag"),
    (JobRequest("local", 1, tags=("=v",)), "--tag"),
    (JobRequest("local", 1, owners=("a\nb",)), "--owner"),
    (JobRequest("local", 1, gpus_per_node=-1), "--gpus-per-node"),
    (JobRequest("local", 1, gpus_per_node=10**6), "--gpus-per-node"),
    (JobRequest("local", 1, idle_timeout_s=float("nan")), "--idle-timeout"),
    (JobRequest("local", 1, idle_timeout_s=-1.0), "--idle-timeout"),
    (JobRequest("local", 1, idle_timeout_s=5.0, persistent=True), "--persistent"),
])
def test_bad_launcher_flags_are_one_line_naming_the_flag(req: JobRequest, says: str) -> None:
    with pytest.raises(UsageError) as err:
        jobscript.validate(req)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_hostile_values_stay_one_quoted_word_each(project: Project) -> None:
    hostile = "x'; touch /tmp/pwned-$$; echo '"
    req = JobRequest("slurm", 1, 10, tags=(f"k={hostile}",), owners=(hostile,))
    assert _launcher_words(project, req)[:2] == [f"--tag=k={hostile}", f"--owner={hostile}"]


def test_settings_toml_persistent_with_its_own_idle_timeout_is_refused_before_writing(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher refuses persistent = true beside idle_timeout_s in one layer
    (launcher/config.py): `submit` says so before a job is queued, not the job when it
    starts; the dry run too. In different layers the nearer one wins: the flag."""
    from balsam_mpi.batch import submit

    project.settings_path.write_text("[launcher]\npersistent = true\nidle_timeout_s = 5\n")
    os.chmod(project.settings_path, 0o640)

    def no_row(*_a: object) -> int:
        raise AssertionError("a batch job was recorded")

    monkeypatch.setattr(submit, "_insert", no_row)
    req = JobRequest("local", 1)
    for attempt in (submit.dry_run, submit.submit):
        with pytest.raises(UsageError) as err:
            attempt(project, req)
        said = str(err.value)
        assert "persistent (from settings.toml [launcher] persistent)" in said
        assert "idle_timeout_s (5, from settings.toml" in said and "\n" not in said
    assert not (project.root / "qsubmit").exists()
    # The --idle-timeout flag is nearer than settings.toml's persistent: it is taken.
    project.settings_path.write_text("[launcher]\npersistent = true\n")
    assert "--idle-timeout=5" in submit.dry_run(project, JobRequest("local", 1,
                                                                     idle_timeout_s=5.0))
