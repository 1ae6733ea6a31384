"""Batch-script templates: find them, check what goes into them, render them.

Pure apart from reading template files: no database, no scheduler. ``batch/submit.py`` uses it
to write the script it hands to ``qsub`` / ``sbatch``; ``--dry-run`` prints its output.

A template is a bash script with ``{{ name }}`` placeholders (a fixed list, below; an
unknown one is an error naming it). Every value is validated or shell-quoted here, so a
queue name or a workflow cannot inject shell into the script. A header line (one starting
with ``#``) or a line holding only placeholders is left out when a value on it is empty,
so optional directives (no queue given, say) simply disappear.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import stat
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..base.errors import BadTemplate, ProjectError, UsageError
from ..base.platform import BATCH_JOB_ID_ENV, SCHEDULERS
from ..base.project import Project, check_control_file
from ..launcher.config import Settings, resolve

PLACEHOLDERS = frozenset({
    "job_name", "nodes", "walltime", "wall_time_min", "queue", "account", "filesystems",
    "directives", "venv", "exports", "project", "launcher_args",
    "exclusive", "warning_s", "end_of_job",
})
DIRECTIVE_PREFIX = {"pbs": "#PBS", "slurm": "#SBATCH", "cobalt": "#COBALT"}
# Environment a script carries over from the submitting shell: PBS and Slurm do not pass
# the environment on by default, and the test suite's databases are named by these.
FORWARDED_ENV = ("BALSAM_DB_NAME", "BALSAM_DB_HOST")
MAX_MARGIN_MIN = 10
DEFAULT_DRAIN_GRACE_S = Settings().drain_grace_s
# sbatch(1), --signal: "the signal may be sent up to 60 seconds earlier than specified",
# and sig_time is at most 65535.
SLURM_SIGNAL_EARLY_S = 60
SLURM_SIGNAL_MAX_S = 65535
# What each scheduler does at qdel/scancel and at the end of the wall time, for the
# comment every rendered script carries (docs/schedulers.md has the sources).
END_OF_JOB = {
    "slurm": "scancel or the time limit: Slurm sends TERM to every process of every step, "
             "the launcher's ranks included, and KILL after KillWait (30 s by default)",
    "pbs": "qdel or the wall time: PBS sends TERM to every process of the job, the "
           "launcher's ranks included, and KILL after the queue's kill_delay (10 s by "
           "default)",
    "cobalt": "qdel or the wall time: Cobalt sends TERM to this script, which passes it to "
              "aprun; aprun forwards it to the launcher's ranks",
}

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:+\-]*")  # queue, account: no spaces, no quotes
_FILESYSTEMS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_:,+\-]*")
_JOB_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,62}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class JobRequest:
    """What the user asked `balsam-mpi submit` for (validated by :func:`validate`)."""

    scheduler: str
    nodes: int
    wall_time_min: int | None = None
    queue: str | None = None
    account: str | None = None
    workflows: tuple[str, ...] = ()
    directives: tuple[str, ...] = ()
    filesystems: str | None = None
    job_name: str = "balsam"
    margin_min: float | None = None  # None: the default margin (see launcher_time_limit)
    whole_nodes: bool = True  # Slurm: #SBATCH --exclusive (--shared-nodes turns it off)
    # The launcher's own flags (launcher/launch.py), passed on as given: which tasks it
    # runs (tags as "KEY=VALUE", owners) and how it runs them.
    tags: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()
    gpus_per_node: int | None = None
    idle_timeout_s: float | None = None
    persistent: bool = False


@dataclass(frozen=True)
class Template:
    path: str  # where it was read from (for messages)
    origin: str  # 'project' | 'user' | 'shipped'
    text: str


# -- validation ------------------------------------------------------------------------------
def validate(req: JobRequest) -> None:
    """Refuse a bad request before anything is written (one line saying what to fix)."""
    if req.scheduler not in SCHEDULERS:
        raise UsageError(f"unknown scheduler {req.scheduler!r}; use one of "
                         f"{', '.join(SCHEDULERS)}")
    if req.nodes < 1:
        raise UsageError("-n/--nodes must be at least 1")
    if req.wall_time_min is None and req.scheduler != "local":
        raise UsageError(f"a {req.scheduler} job needs its wall time: pass -t MINUTES")
    if req.wall_time_min is not None and req.wall_time_min < 1:
        raise UsageError("-t must be at least 1 minute")
    if not _JOB_NAME.fullmatch(req.job_name):
        raise UsageError(f"job name {req.job_name!r}: use a letter, then letters, digits, "
                         "'_', '.' or '-' (at most 63)")
    if req.scheduler == "local":
        given = [flag for flag, value in (("-q", req.queue), ("-A", req.account),
                                          ("--filesystems", req.filesystems),
                                          ("--directive", req.directives)) if value]
        if given:
            raise UsageError(f"{', '.join(given)} mean nothing to a local run (there is no "
                             "scheduler); leave them out or pick --scheduler pbs|slurm|cobalt")
    for flag, value, pattern in (("-q/--queue", req.queue, _WORD),
                                 ("-A/--account", req.account, _WORD),
                                 ("--filesystems", req.filesystems, _FILESYSTEMS)):
        if value is not None and not pattern.fullmatch(value):
            raise UsageError(f"{flag} {value!r} is not a plain name (letters, digits and "
                             "_.@:+-, no spaces or quotes)")
    for workflow in req.workflows:
        if not workflow or _CONTROL.search(workflow):
            raise UsageError(f"--workflow {workflow!r}: give a non-empty name without "
                             "control characters")
    for flag, items in (("--tag", req.tags), ("--owner", req.owners)):
        for item in items:
            if not item or _CONTROL.search(item):
                raise UsageError(f"{flag} {item!r}: give a non-empty value without control "
                                 "characters")
    if req.persistent and req.idle_timeout_s is not None:
        raise UsageError("--persistent never exits for lack of work, --idle-timeout after "
                         "a while: give one of them")
    launcher_settings(req)  # the launcher's own checks of its flags, before anything runs
    for line in req.directives:
        directive_line(req.scheduler, line)  # raises on a bad one
    if not req.whole_nodes and req.scheduler != "slurm":
        raise UsageError(f"--shared-nodes is for Slurm jobs; a {req.scheduler} job's nodes "
                         "are the scheduler's to share or not (leave it out)")
    if req.margin_min is not None and req.margin_min < 0:
        raise UsageError("--margin-min cannot be negative")
    launcher_time_limit(req)  # raises when the margin eats the whole wall time


def launcher_flags(req: JobRequest) -> dict[str, Any]:
    """The launcher flags the request gives, as its parser would hand them to its settings
    (launcher/config.py ``resolve``: None or empty for a flag not given)."""
    return {"workflows": list(req.workflows), "tags": list(req.tags),
            "owners": list(req.owners), "gpus_per_node": req.gpus_per_node,
            "idle_timeout_s": req.idle_timeout_s, "persistent": req.persistent or None}


def launcher_settings(req: JobRequest) -> Settings:
    """The request's launcher flags checked as the launcher will check them (ranges, tag
    syntax, names): an error names the flag, before anything is written or submitted.
    Only the flags: the job's environment and the project's settings.toml are read by
    the launcher where it runs."""
    return resolve(launcher_flags(req), {}, {})


def directive_line(scheduler: str, line: str) -> str:
    """One extra header line for ``--directive``: prefixed (``#PBS``...) unless it is."""
    prefix = DIRECTIVE_PREFIX.get(scheduler)
    if prefix is None:
        raise UsageError("--directive needs --scheduler pbs, slurm or cobalt")
    text = line.strip()
    if not text or _CONTROL.search(line):
        raise UsageError(f"--directive {line!r}: give one non-empty line")
    if text.startswith("#"):
        if not (text.startswith(prefix + " ") or text == prefix):
            raise UsageError(f"--directive {line!r} is not a {prefix} line; give the "
                             f"option alone (e.g. '-l place=scatter') or start it with {prefix}")
        return text
    return f"{prefix} {text}"


# -- times -----------------------------------------------------------------------------------
def format_walltime(minutes: int) -> str:
    """HH:MM:SS for any number of minutes: 90 → 01:30:00, 1500 → 25:00:00."""
    if minutes < 0:
        raise UsageError("a wall time cannot be negative")
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def default_margin_min(wall_time_min: int) -> float:
    """5% of the wall time (rounded up), at least 1 and at most 10 minutes: room to drain and requeue."""
    return float(min(MAX_MARGIN_MIN, max(1, math.ceil(wall_time_min * 0.05))))


def launcher_time_limit(req: JobRequest) -> float | None:
    """The launcher's ``--time-limit-min``: the wall time minus the margin (None if local
    without -t). The default margin never takes more than half of a short job."""
    wall = req.wall_time_min
    if wall is None:
        return None
    if req.margin_min is None:
        return max(wall - default_margin_min(wall), wall / 2)
    limit = wall - req.margin_min
    if limit <= 0:
        raise UsageError(f"--margin-min {req.margin_min:g} leaves no time of the "
                         f"{wall}-minute job; use a smaller margin")
    return limit


def slurm_warning_s(req: JobRequest, drain_grace_s: float) -> int | None:
    """Seconds before the end for ``#SBATCH --signal=B:USR1@N``, or None for no warning.

    The warning backs up the launcher's own time limit (wall time − margin, from which it
    drains ``drain_grace_s`` early); it must never cut work that limit would have kept,
    yet leave a whole drain before Slurm's end. So it comes no earlier than the launcher's
    limit even when Slurm sends it 60 s early (N ≤ margin − 60 s), and no later than a
    drain needs (N ≥ drain_grace_s); when the margin leaves no such N, none is asked for.
    """
    limit = launcher_time_limit(req)
    if limit is None or req.wall_time_min is None:
        return None
    margin_s = (req.wall_time_min - limit) * 60.0
    lead = math.floor(margin_s - SLURM_SIGNAL_EARLY_S)
    if lead < math.ceil(drain_grace_s) or lead < 1:
        return None
    return min(lead, SLURM_SIGNAL_MAX_S)


def end_of_job(req: JobRequest, drain_grace_s: float) -> list[str]:
    """The comment lines a rendered script carries about how its job ends (what
    ``--dry-run`` shows): the launcher's own limit, the scheduler's warning if any, and
    what the scheduler does at the end."""
    limit = launcher_time_limit(req)
    items: list[str] = []
    if limit is not None and req.wall_time_min is not None:
        items.append(f"the launcher's own limit: {limit:g} of {req.wall_time_min} min (margin "
                     f"{req.wall_time_min - limit:g} min); it drains from {drain_grace_s:g} s "
                     "before that limit (drain_grace_s)")
    if req.scheduler == "slurm":
        lead = slurm_warning_s(req, drain_grace_s)
        if lead is None:
            items.append("no Slurm warning signal: the margin leaves no room for one (Slurm "
                         f"may send it {SLURM_SIGNAL_EARLY_S} s early, and a drain needs "
                         f"{drain_grace_s:g} s)")
        else:
            items.append(f"Slurm's warning: USR1 to this script {lead} s before the end (or up "
                         f"to {SLURM_SIGNAL_EARLY_S} s earlier), passed on to the launcher's "
                         "step through srun as USR1")
    if req.scheduler in END_OF_JOB:
        items.append(END_OF_JOB[req.scheduler])
    lines = ["# How this job ends (balsam-mpi submit):"]
    for item in items:
        lines += textwrap.wrap(item, width=90, initial_indent="#  - ",
                               subsequent_indent="#    ")
    return lines


# -- templates -------------------------------------------------------------------------------
def find_template(scheduler: str, project: Project, home: Path | None = None) -> Template:
    """``PROJECT/job-templates/``, then ``~/.balsam/job-templates/``, then the shipped one.

    A project template must be the owner's and not writable by the group (every member's
    jobs run it); a user template must be the user's own and not writable by others.
    """
    name = f"{scheduler}.sh"
    project_file = project.templates_dir / name
    if project_file.is_file():
        check_control_file(project_file, project.read_server_info(check_owner=True).owner_uid)
        return Template(str(project_file), "project", _read(project_file))
    user_file = (home if home is not None else Path.home()) / ".balsam" / "job-templates" / name
    if user_file.is_file():
        _check_user_file(user_file)
        return Template(str(user_file), "user", _read(user_file))
    shipped = resources.files("balsam_mpi").joinpath("templates").joinpath(name)
    if not shipped.is_file():
        raise ProjectError(f"the installed package has no {name} template; reinstall "
                           "balsam_mpi (or put one in ~/.balsam/job-templates/)")
    return Template(f"<shipped>/{name}", "shipped", shipped.read_text(encoding="utf-8"))


def _check_user_file(path: Path) -> None:
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise ProjectError(f"refusing {path}: it is owned by uid {st.st_uid}, not you; "
                           "copy it and own the copy")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ProjectError(f"refusing {path}: others may write it; `chmod go-w {path}`")


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProjectError(f"cannot read the template {path}: {exc}") from exc
    # An editor's byte-order mark would come before "#!" in the script and hide it.
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BadTemplate(f"{path}, line {line}: not valid UTF-8 (byte "
                          f"0x{data[exc.start]:02x}); save the template as UTF-8") from None


def check_placeholders(template: Template) -> None:
    """Every ``{{ name }}`` is one we fill; the error names the first that is not."""
    for number, line in enumerate(template.text.splitlines(), start=1):
        for match in _PLACEHOLDER.finditer(line):
            name = match.group(1).strip()
            if name not in PLACEHOLDERS:
                raise BadTemplate(
                    f"{template.path}, line {number}: unknown placeholder {{{{ {name} }}}}; "
                    f"known: {', '.join(sorted(PLACEHOLDERS))}")
        rest = _PLACEHOLDER.sub("", line)
        if "{{" in rest or "}}" in rest:
            raise BadTemplate(f"{template.path}, line {number}: unbalanced {{{{ }}}} "
                               "braces; write placeholders as {{ name }}")


def render(template: Template, values: Mapping[str, str]) -> str:
    """The script: placeholders replaced; header or placeholder-only lines with an empty
    value dropped (an absent queue loses its ``#PBS -q`` line)."""
    check_placeholders(template)
    out: list[str] = []
    for line in template.text.splitlines():
        names = [m.group(1).strip() for m in _PLACEHOLDER.finditer(line)]
        if names and any(not values[n] for n in names):
            bare = not _PLACEHOLDER.sub("", line).strip()
            if bare or line.lstrip().startswith("#"):
                continue
        out.append(_PLACEHOLDER.sub(lambda m: values[m.group(1).strip()], line))
    return "\n".join(out) + "\n"


def values_for(req: JobRequest, project: Project, *, batch_job_id: int | None,
               venv: str, environ: Mapping[str, str] = os.environ,
               drain_grace_s: float = DEFAULT_DRAIN_GRACE_S) -> dict[str, str]:
    """Every placeholder's text for a validated request, quoted where bash reads it.

    ``drain_grace_s`` is the launcher's (settings: flag > env > settings.toml), from which
    the Slurm warning time is derived."""
    if _CONTROL.search(str(project.root)) or _CONTROL.search(venv):
        raise UsageError("the project or venv path contains control characters; rename it")
    limit = launcher_time_limit(req)
    args: list[str] = []
    # One word per value, so a name starting with '-' cannot pass for an option.
    args += [f"--workflow={workflow}" for workflow in req.workflows]
    args += [f"--tag={tag}" for tag in req.tags]
    args += [f"--owner={owner}" for owner in req.owners]
    if req.gpus_per_node is not None:
        args.append(f"--gpus-per-node={req.gpus_per_node}")
    if req.idle_timeout_s is not None:
        args.append(f"--idle-timeout={req.idle_timeout_s:g}")
    if req.persistent:
        args.append("--persistent")
    if limit is not None:
        args += ["--time-limit-min", f"{limit:g}"]
    exports = [f"export {BATCH_JOB_ID_ENV}={batch_job_id}" if batch_job_id is not None
               else f"unset {BATCH_JOB_ID_ENV}  # dry run: no batch_jobs row yet"]
    exports += [f"export {name}={shlex.quote(environ[name])}"
                for name in FORWARDED_ENV if environ.get(name)]
    wall = req.wall_time_min
    lead = slurm_warning_s(req, drain_grace_s) if req.scheduler == "slurm" else None
    return {
        "job_name": req.job_name,
        "nodes": str(req.nodes),
        "walltime": format_walltime(wall) if wall is not None else "",
        "wall_time_min": str(wall) if wall is not None else "",
        "queue": req.queue or "",
        "account": req.account or "",
        "filesystems": req.filesystems or "",
        "directives": "\n".join(directive_line(req.scheduler, d) for d in req.directives),
        "venv": shlex.quote(venv),
        "exports": "\n".join(exports),
        "project": shlex.quote(str(project.root)),
        "launcher_args": " ".join(shlex.quote(a) for a in args),
        "exclusive": "--exclusive" if req.whole_nodes and req.scheduler == "slurm" else "",
        "warning_s": str(lead) if lead is not None else "",
        "end_of_job": "\n".join(end_of_job(req, drain_grace_s)) if req.scheduler != "local"
        else "",
    }


def filters_of(req: JobRequest) -> dict[str, Any]:
    """The ``batch_jobs.filters`` a submission records: the launcher's own filters, only
    those given. The launcher records all three keys when it adopts the row
    (``ClaimFilter.as_json``: ``"tags": {}``, ``"owners": []``), so whoever compares
    the two leaves empty parts out (``elastic.active_jobs``)."""
    settings = launcher_settings(req)
    out: dict[str, Any] = {}
    if settings.workflows:
        out["workflows"] = list(settings.workflows)
    if settings.tags:
        out["tags"] = settings.tag_filter
    if settings.owners:
        out["owners"] = list(settings.owners)
    return out
