"""`balsam-mpi submit`: render a batch script, hand it to the scheduler, record the job.

The order keeps the database honest: validate everything (nothing written on bad input);
insert the ``batch_jobs`` row (QUEUED) so the script can carry its id; write the script
into a directory of the submission's own in ``PROJECT/qsubmit/``; run ``qsub`` /
``sbatch`` there (argv lists, never a shell) and
record the scheduler's job id — or, if submission fails, close the row as FAILED with the
reason. A ``local`` run starts the script detached in the background instead.

The row records the identity of the scheduler cluster (batch/clusterid.py), so that any
host of that cluster may close it once the scheduler forgets the job. A Slurm or PBS
submission carries a mark, ``balsam:<row id>:<token>``: Slurm's as its ``--comment``,
PBS's as the job variable ``BALSAM_SUBMIT`` (``qsub -v``, listed in the job's
``Variable_List`` by ``qstat -f``). When the scheduler's answer is lost (it timed out, a
signal ended it, it exited 0 without an id) the job may be queued or not, so the row
stays QUEUED, marked uncertain, and `job sync` looks for the job by its mark
(batch/uncertain.py) instead of a FAILED row and a second job. Cobalt's submissions carry
none: `job sync` cannot ask Cobalt about a job, so one found could never be followed.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import sql
from ..base import db, safefs
from ..base.errors import BalsamError, UsageError
from ..base.project import Project, this_host
from ..launcher import config
from ..node import trampoline
from ..tasks import owners
from . import clusterid, jobdir, jobscript, marks
from .jobscript import JobRequest

log = logging.getLogger(__name__)

SUBMIT_TIMEOUT_SEC = 120
SUBMIT_ARGV = {
    "pbs": ["qsub"],
    "slurm": ["sbatch", "--parsable"],
    "cobalt": ["qsub"],
}
# What each scheduler prints for a good submission (the last such line counts, because
# some sites print notices first): PBS "1234.server.domain" (or an array "1234[].server"),
# Slurm --parsable "1234" or "1234;cluster" (sent to another cluster with -M: the id is
# kept whole, as the job is known by its number on that cluster only), Cobalt a bare number.
_JOB_ID = {
    "pbs": re.compile(r"^(\d+(?:\[\d*\])?(?:\.[A-Za-z0-9_.\-]+)?)$"),
    "slurm": re.compile(r"^(\d+(?:;[A-Za-z0-9_.\-]+)?)$"),
    "cobalt": re.compile(r"^(\d+)$"),
}


class SubmitError(BalsamError):
    """The scheduler refused the job, or could not be run."""


class SubmitUncertain(SubmitError):
    """The scheduler's answer was lost: the job may be queued or not."""


@dataclass(frozen=True)
class Submission:
    batch_job_id: int
    scheduler: str
    scheduler_job_id: str | None
    script: Path
    log: Path | None = None  # local runs: where the launcher's output goes
    pid: int | None = None  # local runs: the script's process (kill -TERM drains it)

    def as_dict(self) -> dict[str, Any]:
        return {"batch_job_id": self.batch_job_id, "scheduler": self.scheduler,
                "scheduler_job_id": self.scheduler_job_id, "script": str(self.script),
                "log": str(self.log) if self.log else None, "pid": self.pid}


def venv_prefix() -> str:
    """The environment scripts activate: this interpreter's venv (its bin/ holds python,
    balsamactivate, balsam-dbctl and, for local runs, mpiexec)."""
    return sys.prefix


def drain_grace_s(project: Project, req: JobRequest | None = None) -> float:
    """The launcher's drain grace as its job will see it (``BALSAM_DRAIN_GRACE_S``, then
    ``settings.toml [launcher]``, then the default): the Slurm warning time is derived
    from it. sbatch hands the submitting environment on to the job, so the two agree.

    With ``req``, its launcher flags are resolved over the same layers, so what the
    launcher would refuse when the job starts (``persistent = true`` in settings.toml
    beside ``--idle-timeout``) is refused here, before anything is queued."""
    flags = {} if req is None else jobscript.launcher_flags(req)
    grace = config.resolve(flags, os.environ, project.read_settings()).drain_grace_s
    if not math.isfinite(grace) or grace < 0:
        raise UsageError(f"drain_grace_s = {grace!r} (BALSAM_DRAIN_GRACE_S, or settings.toml "
                         "[launcher]): give a number of seconds, 0 or more")
    return grace


def dry_run(project: Project, req: JobRequest, home: Path | None = None) -> str:
    """The script a submission would write, with no batch job id; nothing is written."""
    jobscript.validate(req)
    template = jobscript.find_template(req.scheduler, project, home)
    _check_owners_if_reachable(project, req)
    return jobscript.render(template, jobscript.values_for(
        req, project, batch_job_id=None, venv=venv_prefix(),
        drain_grace_s=drain_grace_s(project, req)))


def submit(project: Project, req: JobRequest, home: Path | None = None) -> Submission:
    jobscript.validate(req)
    template = jobscript.find_template(req.scheduler, project, home)
    venv = venv_prefix()
    grace = drain_grace_s(project, req)
    # Render once before touching anything: a bad template or value fails here, unwritten.
    jobscript.render(template, jobscript.values_for(req, project, batch_job_id=0, venv=venv,
                                                    drain_grace_s=grace))
    if req.scheduler != "local":
        _require_tool(SUBMIT_ARGV[req.scheduler][0])
        # The task trampoline, built here if not yet: batch nodes often have no compiler
        # on PATH, or a home they cannot write, and would start every task without it.
        # It is static, one per kind of machine (node/trampoline.py): the nodes of this
        # one's kind find it in the same cache.
        trampoline.trampoline()
    qdir = jobdir.qsubmit_dir(project)
    token = secrets.token_hex(8) if req.scheduler in marks.MARKED else None
    cluster = clusterid.identity(req.scheduler)
    job_id = _insert(project, req, cluster, token)
    try:
        text = jobscript.render(template, jobscript.values_for(
            req, project, batch_job_id=job_id, venv=venv, drain_grace_s=grace))
        try:
            script, jfd = jobdir.write_script(qdir, req.scheduler, job_id, text)
        except safefs.UnsafePath as exc:
            raise SubmitError(str(exc)) from None
        try:
            if req.scheduler == "local":
                return _start_local(script, jfd, job_id)
        finally:
            os.close(jfd)
        mark = marks.mark_of(job_id, token) if token else None
        scheduler_id = _run_submit(req.scheduler, script, mark)
    except SubmitUncertain as exc:
        _hold(project, job_id, exc)
        raise
    except BaseException as exc:
        _fail(project, job_id, _reason(exc))
        raise
    _set_scheduler_id(project, job_id, scheduler_id)
    return Submission(job_id, req.scheduler, scheduler_id, script)


# -- scheduler submission --------------------------------------------------------------------
def _require_tool(name: str) -> None:
    import shutil

    if shutil.which(name) is None:
        raise SubmitError(f"`{name}` is not on PATH: submit from a login node of a machine "
                          "with that scheduler (or use --dry-run to see the script)")


def _script_text(script: Path) -> str:
    """The script just written (its directives); unreadable: none."""
    try:
        return script.read_text(errors="replace")
    except OSError:
        return ""


def _run_submit(scheduler: str, script: Path, mark: str | None = None) -> str:
    """Run the scheduler's submit command in the script's directory (so the job starts
    there and its output files land there) and return the job id it printed. With a
    ``mark`` (Slurm, PBS), an answer that was lost raises SubmitUncertain: the job can be
    found by that mark later."""
    tagged = marks.args(scheduler, mark, _script_text(script)) if mark else []
    argv = [*SUBMIT_ARGV[scheduler], *tagged, str(script)]
    lost = SubmitUncertain if mark else SubmitError
    try:
        done = subprocess.run(argv, cwd=script.parent, capture_output=True, text=True,
                              timeout=SUBMIT_TIMEOUT_SEC, stdin=subprocess.DEVNULL, check=False,
                              umask=jobdir.SUBMIT_UMASK,
                              env={**os.environ, jobdir.UMASK_VAR: jobdir.own_umask()})
    except FileNotFoundError:
        raise SubmitError(f"`{argv[0]}` is not on PATH") from None
    except OSError as exc:  # on PATH but not runnable (a wrapper without a #! line)
        raise SubmitError(f"`{argv[0]}` could not be run: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise lost(f"`{argv[0]}` did not answer in {SUBMIT_TIMEOUT_SEC} s; "
                   + _uncertain_tail(scheduler, mark)) from None
    if done.returncode < 0 and mark:
        # Ended by a signal (a Ctrl-C reaches the whole foreground group): it may have
        # been answered or not.
        raise SubmitUncertain(f"`{argv[0]}` was ended by signal {-done.returncode} before "
                              "it answered; " + _uncertain_tail(scheduler, mark))
    if done.returncode != 0:
        said = _first_line(done.stderr) or _first_line(done.stdout) or "no message"
        raise SubmitError(f"{argv[0]} refused the job (exit {done.returncode}): {said}")
    try:
        return parse_job_id(scheduler, done.stdout)
    except SubmitError as exc:
        if mark:  # exit 0: most likely queued, under an id in a form not understood
            raise SubmitUncertain(f"{exc}; " + _uncertain_tail(scheduler, mark)) from None
        raise


def _uncertain_tail(scheduler: str, mark: str | None) -> str:
    if not mark:
        return "check the scheduler and whether the job was queued"
    return (f"the job may be queued or not: its batch job stays QUEUED, and `balsam-mpi "
            f"job sync` (every autoscale look runs it) looks for a job with "
            f"{marks.named(scheduler, mark)} and records it, or closes the row once none "
            "can appear")


def parse_job_id(scheduler: str, output: str) -> str:
    """The job id in a submit command's output (the last line that is one)."""
    pattern = _JOB_ID[scheduler]
    for line in reversed(output.splitlines()):
        match = pattern.match(line.strip())
        if match:
            return match.group(1)
    raise SubmitError(f"cannot find a job id in the {scheduler} submit output "
                      f"{_first_line(output)!r}; check the queue with the scheduler")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:200] if lines else ""


# -- local runs ------------------------------------------------------------------------------
def _start_local(script: Path, jfd: int, job_id: int) -> Submission:
    """Start the script detached: own session (a closed terminal does not kill it), stdin
    from /dev/null, output appended to a log beside the script (``jfd``: its directory)."""
    jdir = script.parent
    try:
        fd, log_path = jobdir.open_log(jfd, jdir)
    except safefs.UnsafePath as exc:
        raise SubmitError(str(exc)) from None
    try:
        proc = subprocess.Popen(["bash", str(script)], cwd=jdir, stdin=subprocess.DEVNULL,
                                stdout=fd, stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True)
    finally:
        os.close(fd)
    log.info("started local batch job %s: pid %s, log %s", job_id, proc.pid, log_path)
    return Submission(job_id, "local", None, script, log_path, proc.pid)


# -- the --owner roles -----------------------------------------------------------------------
def _check_owners_if_reachable(project: Project, req: JobRequest) -> None:
    """A dry run checks ``--owner`` when the server answers, and skips the check when it
    does not: a dry run writes nothing and otherwise works without the server (a script
    read before the server is started, or on a host that cannot reach it). A real
    submission always checks, on the connection that records the job (``_insert``),
    and the launcher checks again when it starts."""
    if not req.owners:
        return
    try:
        with db.translated():
            conn = db.connect(project, application_name="balsam_mpi submit --dry-run")
    except BalsamError:
        return
    with conn:
        owners.check_owners(conn, req.owners)


# -- the batch_jobs row ----------------------------------------------------------------------
def _insert(project: Project, req: JobRequest, sched_cluster: str | None = None,
            submit_token: str | None = None) -> int:
    from psycopg.types.json import Jsonb

    params = {"scheduler": req.scheduler, "host": this_host(), "nodes": req.nodes,
              "filters": Jsonb(jobscript.filters_of(req)),
              "wall_time_min": req.wall_time_min,
              "sched_cluster": clusterid.checked(sched_cluster), "submit_token": submit_token}
    with db.translated(), db.connect(project, application_name="balsam_mpi submit") as conn:
        # Before the row: a role no task can have would queue a job that claims nothing.
        owners.check_owners(conn, req.owners)
        row = conn.execute(sql.query("submit_insert"), params).fetchone()
        conn.commit()
    assert row is not None  # INSERT … RETURNING always returns the row
    return int(row[0])


def _set_scheduler_id(project: Project, job_id: int, scheduler_id: str) -> None:
    try:
        with db.translated(), db.connect(project, application_name="balsam_mpi submit") as c:
            c.execute(sql.query("submit_set_scheduler_id"),
                      {"id": job_id, "scheduler_job_id": scheduler_id})
            c.commit()
    except BalsamError as exc:
        # The job is queued with the scheduler whatever happens here; say so, and the
        # launcher still adopts the row through BALSAM_BATCH_JOB_ID.
        raise SubmitError(f"job {scheduler_id} was submitted but recording its id on batch "
                          f"job {job_id} failed ({exc}); its launcher will still adopt the "
                          "row") from exc


def _hold(project: Project, job_id: int, exc: SubmitUncertain) -> None:
    """Mark a row whose submission's outcome is unknown; if even that fails, it is still
    QUEUED with its token, and `job sync` looks for its job once it is old enough."""
    try:
        with db.translated(), db.connect(project, application_name="balsam_mpi submit") as c:
            c.execute(sql.query("submit_uncertain"), {"id": job_id})
            c.commit()
    except BalsamError as err:
        log.warning("could not mark batch job %s uncertain (%s): %s", job_id, exc, err)


def _fail(project: Project, job_id: int, reason: str) -> None:
    """Close a row whose submission failed; never let this hide the original error."""
    try:
        with db.translated(), db.connect(project, application_name="balsam_mpi submit") as c:
            c.execute(sql.query("submit_fail"), {"id": job_id, "reason": reason[:500]})
            c.commit()
    except BalsamError as exc:
        log.warning("could not mark batch job %s failed: %s", job_id, exc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "submission interrupted"
    return f"submission failed: {exc}" if str(exc) else f"submission failed: {type(exc).__name__}"


def get(project: Project, job_id: int) -> dict[str, Any] | None:
    """The recorded row of a submission (for `submit`'s output and tests)."""
    with db.translated(), db.connect(project, application_name="balsam_mpi submit") as conn:
        cur = conn.execute(sql.query("submit_get"), {"id": job_id})
        row = cur.fetchone()
        names = [d.name for d in cur.description or ()]
    return dict(zip(names, row, strict=True)) if row is not None else None
