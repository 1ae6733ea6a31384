"""What the scheduler says of jobs it was given: waiting, running, ended, or unknown to it.

`balsam-mpi job sync` and `balsam-mpi autoscale` (batch/elastic.py) ask this of QUEUED rows:
a job cancelled (`scancel`, `qdel`) or failed before its launcher started leaves its row
QUEUED, since no launcher ever adopts it, and a row that says QUEUED for ever misleads
`job ls` and keeps the autoscaler from submitting. One call per scheduler for all the
ids, argv lists (never a shell), a timeout; the parsers are pure functions of the output.

Slurm: ``squeue -h -t all -j ID,ID -o %i|%T`` lists the jobs it still holds, ended ones
for ``MinJobAge`` (300 s by default) and then none; an id it has forgotten is simply not
listed (when every id is forgotten, squeue fails with "Invalid job id specified"); a job
sbatch sent to another cluster (``ID;CLUSTER``) is asked about there (``--clusters``). PBS:
``qstat -x -f ID …`` (finished jobs too, with ``-x``), ``job_state`` per ``Job Id:``
block; ``Unknown Job Id`` for the forgotten ones. Torque's qstat takes the same words
and answers in XML (``-x``), its ended jobs in state ``C``.

A submission whose answer was lost is looked for by the mark it carried
(:func:`find_by_mark`), the caller's jobs only, matched on the whole mark. Slurm: its
``--comment``, ``squeue -h -t all -u USER -o %i|%T|%u|%k``. PBS: its job variable
``BALSAM_SUBMIT`` (``qsub -v``), in the ``Variable_List`` that ``qstat -f`` prints for
every job the caller may see (PBS Pro and Torque both print it, and both accept no
user filter with ``-f``); ``Job_Owner`` names the job's owner, set by the server.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
from collections.abc import Sequence
from typing import Literal
from xml.etree import ElementTree

from ..base.errors import BalsamError
from .marks import PBS_VARIABLE

Phase = Literal["waiting", "running", "ended", "unknown"]
QUERY_TIMEOUT_S = 60
SUPPORTED = ("slurm", "pbs")

# Slurm job states (squeue's %T) by phase; any other counts as waiting, which is the
# safe side: a row is closed only on a state that says the job is over.
_SLURM_ENDED = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED",
                          "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT",
                          "TIMEOUT"})
_SLURM_RUNNING = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING",
                            "STAGE_OUT", "SUSPENDED", "STOPPED", "RESIZING"})
# PBS job_state letters: F finished, X a finished subjob (PBS Pro), C completed
# (Torque); R running, E exiting, B an array begun; Q, H, W, T, S, M, U wait.
_PBS_ENDED = frozenset("FXC")
_PBS_RUNNING = frozenset("REB")


class SchedulerQueryError(BalsamError):
    """The scheduler could not be asked (not installed, down, timed out)."""


# What each scheduler's ids look like (as batch/submit.py reads them from qsub / sbatch):
# anything else is never put on a command line, where it could pass for an option.
# Slurm's ``ID;CLUSTER``: a job sbatch sent to another cluster (-M), asked about there.
_IDS = {"slurm": re.compile(r"\d{1,20}(?:;[A-Za-z0-9_.\-]{1,200})?"),
        "pbs": re.compile(r"\d{1,20}(?:\[\d*\])?(?:\.[A-Za-z0-9_.\-]{1,200})?")}
_ATTRIBUTE = re.compile(r"    [^\s=][^=]*? = ")  # "    name = value" of qstat -f
CHUNK = 500  # ids per call: a command line of a few kilobytes, however many rows wait


def is_job_id(scheduler: str, job_id: str) -> bool:
    pattern = _IDS.get(scheduler)
    return pattern is not None and pattern.fullmatch(job_id) is not None


def phases(scheduler: str, ids: Sequence[str]) -> dict[str, tuple[Phase, str]]:
    """(phase, the scheduler's own word for it) of each id; ``unknown`` for an id the
    scheduler does not list. Raises SchedulerQueryError when it cannot be asked, or when
    an id is not one of its own."""
    if scheduler not in SUPPORTED:
        raise SchedulerQueryError(f"cannot ask a {scheduler} scheduler about its jobs "
                                  f"(supported: {', '.join(SUPPORTED)})")
    bad = next((i for i in ids if not is_job_id(scheduler, i)), None)
    if bad is not None:
        raise SchedulerQueryError(f"{bad[:40]!r} is not a {scheduler} job id")
    out: dict[str, tuple[Phase, str]] = {}
    # A job's number names it on one Slurm cluster only: one squeue per cluster.
    clusters = sorted({_cluster(scheduler, i) for i in ids})
    for cluster in clusters:
        some = [i for i in ids if _cluster(scheduler, i) == cluster]
        for start in range(0, len(some), CHUNK):
            out.update(_phases(scheduler, some[start:start + CHUNK], cluster))
    return out


def _cluster(scheduler: str, job_id: str) -> str:
    """The Slurm cluster of an ``ID;CLUSTER`` id ("" for the default one)."""
    return job_id.partition(";")[2] if scheduler == "slurm" else ""


def _phases(scheduler: str, ids: Sequence[str],
            cluster: str = "") -> dict[str, tuple[Phase, str]]:
    if not ids:
        return {}
    if scheduler == "slurm":
        where = [f"--clusters={cluster}"] if cluster else []
        numbers = [i.partition(";")[0] for i in ids]
        out = _run(["squeue", "-h", "-t", "all", *where, "-j", ",".join(numbers),
                    "-o", "%i|%T"], forgotten="Invalid job id", env=_squeue_env())
        said = parse_squeue(out)  # --clusters heads its lines with "CLUSTER: name"
        listed = {i: said[i.partition(";")[0]] for i in ids if i.partition(";")[0] in said}
    elif scheduler == "pbs":
        # qsub may print "1234.server" and qstat "Job Id: 1234.server.domain.org": the
        # sequence number names the job on one server.
        said = parse_qstat(_run(["qstat", "-x", "-f", *ids], forgotten="Unknown Job Id"))
        by_number = {job.split(".", 1)[0]: state for job, state in said.items()}
        listed = {i: by_number[i.split(".", 1)[0]] for i in ids
                  if i.split(".", 1)[0] in by_number}
    return {i: listed.get(i, ("unknown", "not listed")) for i in ids}


def _squeue_env() -> dict[str, str]:
    """The environment without what would make squeue hide a job asked about by id:
    squeue ANDs ``-j`` with SQUEUE_PARTITION, SQUEUE_ACCOUNT, SQUEUE_USERS, … (a user's
    .bashrc sets them for a shorter listing), and SLURM_CLUSTERS points it at another
    cluster than the one sbatch used (a job sent elsewhere carries its cluster, -M)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("SQUEUE_") and k != "SLURM_CLUSTERS"}


def _run(argv: list[str], forgotten: str | None, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              timeout=QUERY_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL,
                              env=env)
    except FileNotFoundError:
        raise SchedulerQueryError(f"{argv[0]} is not on PATH") from None
    except OSError as exc:  # on PATH but not runnable: no x bit, no #! line
        raise SchedulerQueryError(f"{argv[0]} could not be run: {exc.strerror or exc}"
                                  ) from None
    except subprocess.TimeoutExpired:
        raise SchedulerQueryError(f"{argv[0]} did not answer in {QUERY_TIMEOUT_S} s") from None
    if done.returncode != 0:
        # Only forgotten ids may fail the command: any other complaint beside them (a
        # server lost midway) would make live jobs look forgotten.
        said = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        other = [line for line in said if forgotten is None or forgotten not in line]
        if other or not said:
            first = (other or done.stdout.strip().splitlines() or ["no output"])[0]
            raise SchedulerQueryError(f"{argv[0]} failed (exit {done.returncode}): "
                                      f"{first[:300]}")
    return done.stdout


def find_by_mark(scheduler: str,
                 marks: Sequence[str]) -> dict[str, tuple[str, Phase, str]]:
    """The caller's jobs of ``scheduler`` that carry one of ``marks``, as mark -> (job id,
    phase, state); a mark no job carries is left out. Raises SchedulerQueryError when
    the scheduler cannot be asked, or cannot be asked about marks (Cobalt)."""
    if scheduler == "slurm":
        return find_by_comment(marks)
    if scheduler == "pbs":
        return _find_pbs(marks)
    raise SchedulerQueryError(f"cannot look for a {scheduler} job by its mark")


def _caller() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        raise SchedulerQueryError(f"uid {os.geteuid()} has no user name to ask the "
                                  "scheduler about") from None


def find_by_comment(comments: Sequence[str]) -> dict[str, tuple[str, Phase, str]]:
    """The caller's Slurm jobs that carry one of ``comments`` (``--comment``), as
    comment -> (job id, phase, state); a comment no job carries is left out. Raises
    SchedulerQueryError when squeue cannot be asked."""
    if not comments:
        return {}
    user = _caller()
    out = _run(["squeue", "-h", "-t", "all", "-u", user, "-o", "%i|%T|%u|%k"],
               forgotten=None, env=_squeue_env())
    return parse_comments(out, user, comments)


def _find_pbs(marks: Sequence[str]) -> dict[str, tuple[str, Phase, str]]:
    """``qstat -f`` with no operand: every job the caller may see on the default server
    (no ``-x``: Torque reads it as XML output; an ended job not listed is a job that no
    longer waits, which the row's closing once stale says as well)."""
    if not marks:
        return {}
    user = _caller()
    return parse_qstat_marks(_run(["qstat", "-f"], forgotten=None), user, marks)


def parse_comments(text: str, user: str,
                   comments: Sequence[str]) -> dict[str, tuple[str, Phase, str]]:
    """``ID|STATE|USER|COMMENT`` lines (a comment may hold ``|``): the first job of
    ``user`` per wanted comment. The user is checked again: a job of someone else that
    copied the comment (rows, tokens included, are readable by the group) is not ours."""
    wanted = set(comments)
    out: dict[str, tuple[str, Phase, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) != 4:
            continue
        job, state, owner, comment = (p.strip() for p in parts)
        if owner != user or comment not in wanted or comment in out:
            continue
        job = re.split(r"[_+]", job, maxsplit=1)[0]
        if not is_job_id("slurm", job):
            continue
        state = state.split()[0] if state else ""
        out[comment] = (job, _slurm_phase(state), state)
    return out


def parse_squeue(text: str) -> dict[str, tuple[Phase, str]]:
    """``ID|STATE`` lines; an array's or a het job's ``ID_N`` / ``ID+N`` count for ID."""
    out: dict[str, tuple[Phase, str]] = {}
    for line in text.splitlines():
        job, sep, state = line.strip().partition("|")
        if not sep:
            continue
        job = re.split(r"[_+]", job, maxsplit=1)[0]
        state = state.strip().split()[0] if state.strip() else ""
        phase = _slurm_phase(state)
        if job in out and _rank(out[job][0]) >= _rank(phase):
            continue
        out[job] = (phase, state)
    return out


def parse_qstat(text: str) -> dict[str, tuple[Phase, str]]:
    """``Job Id: X`` blocks of ``qstat -f`` with their ``job_state = L`` lines; or the XML
    that Torque's qstat prints for ``-x``, where PBS Pro's reads it as "finished jobs
    too" (the answer's first character tells them apart)."""
    if text.lstrip().startswith("<"):
        return _parse_qstat_xml(text)
    out: dict[str, tuple[Phase, str]] = {}
    job = None
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            job = line.split(":", 1)[1].strip()
            continue
        key, sep, value = line.strip().partition(" = ")
        if job and sep and key == "job_state":
            letter = value.strip()[:1]
            out[job] = (_pbs_phase(letter), letter)
    return out


def _parse_qstat_xml(text: str) -> dict[str, tuple[Phase, str]]:
    """Torque's ``<Data><Job><Job_Id>X</Job_Id>…<job_state>L</job_state>…</Job></Data>``.
    XML that does not parse says nothing of the jobs: an error, so no row is closed on it
    (expat refuses entity blow-ups, and qstat escapes the values users chose)."""
    try:
        root = ElementTree.fromstring(text.strip())
    except ElementTree.ParseError as exc:
        raise SchedulerQueryError(f"qstat's XML could not be read: {exc}") from None
    out: dict[str, tuple[Phase, str]] = {}
    for job in root.iter("Job"):
        name = (job.findtext("Job_Id") or "").strip()
        letter = (job.findtext("job_state") or "").strip()[:1]
        if name:
            out[name] = (_pbs_phase(letter), letter)
    return out


def qstat_blocks(text: str) -> list[tuple[str, dict[str, str]]]:
    """``qstat -f`` as (job id, attributes). An attribute line is indented by four
    spaces; PBS Pro and Torque wrap a long value onto lines indented further (a tab,
    which some copies show as eight spaces), cut at any character: those are joined
    back without their indent."""
    blocks: list[tuple[str, dict[str, str]]] = []
    key = ""
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            blocks.append((line.split(":", 1)[1].strip(), {}))
            key = ""
        elif not blocks or not line.strip():
            continue
        elif _ATTRIBUTE.match(line):
            name, _sep, value = line.strip().partition(" = ")
            key = name
            blocks[-1][1][key] = value.strip()
        elif line[:1].isspace() and key:
            blocks[-1][1][key] += line.strip()
        else:
            key = ""
    return blocks


def parse_qstat_marks(text: str, user: str,
                      marks: Sequence[str]) -> dict[str, tuple[str, Phase, str]]:
    """The first job of ``user`` (``Job_Owner = user@host``) per wanted mark, whose
    ``Variable_List`` holds ``BALSAM_SUBMIT=<mark>`` as a whole entry (entries are split
    at commas PBS has not escaped with a backslash). A job of someone else that copied
    the mark (rows, tokens included, are readable by the group) is not ours."""
    wanted = set(marks)
    out: dict[str, tuple[str, Phase, str]] = {}
    for job, attrs in qstat_blocks(text):
        if attrs.get("Job_Owner", "").partition("@")[0] != user or not is_job_id("pbs", job):
            continue
        for entry in re.split(r"(?<!\\),", attrs.get("Variable_List", "")):
            name, sep, mark = entry.partition("=")
            if name.strip() != PBS_VARIABLE or mark not in wanted or mark in out:
                continue
            letter = attrs.get("job_state", "").strip()[:1]
            out[mark] = (job, _pbs_phase(letter), letter)
    return out


def _slurm_phase(state: str) -> Phase:
    """A squeue state's phase; an unknown state waits (a row closes only on an end)."""
    return ("ended" if state in _SLURM_ENDED else
            "running" if state in _SLURM_RUNNING else "waiting")


def _pbs_phase(letter: str) -> Phase:
    """A PBS ``job_state`` letter's phase; an unknown letter waits, as in Slurm's case."""
    return ("ended" if letter in _PBS_ENDED else
            "running" if letter in _PBS_RUNNING else "waiting")


def _rank(phase: Phase) -> int:
    """Of an array's elements the most alive counts: running, then waiting, then ended."""
    return {"running": 3, "waiting": 2, "ended": 1, "unknown": 0}[phase]
