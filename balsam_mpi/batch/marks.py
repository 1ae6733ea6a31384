"""A submission's mark: ``balsam:<row id>:<token>``, by which `job sync` finds a job whose
submit answer was lost (batch/uncertain.py).

Slurm keeps it as the job's ``--comment``; PBS as the job variable ``BALSAM_SUBMIT``
(``qsub -v``), which ``qstat -f`` lists in the job's ``Variable_List``. Cobalt's jobs
carry none: `job sync` cannot ask Cobalt about a job, so one found could never be
followed.

Given on the command line, an option overrides the script's directive of the same
letter: a ``qsub -v`` would drop the variables a ``#PBS -v`` line of the template (or a
``--directive``) passes. So PBS's ``-v`` carries those too, with the mark last.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator

# Schedulers whose jobs can be found by the mark their submission carried.
MARKED = frozenset({"slurm", "pbs"})
PREFIX = "balsam:"
PBS_VARIABLE = "BALSAM_SUBMIT"


def mark_of(batch_job_id: int, token: str) -> str:
    """A submission's mark, and what `job sync` looks for."""
    return f"{PREFIX}{batch_job_id}:{token}"


def args(scheduler: str, mark: str, script: str = "") -> list[str]:
    """The submit command's arguments that attach ``mark`` to the job; for PBS, with the
    variables the script's own ``#PBS -v`` lines pass (``script``: its text)."""
    if scheduler == "slurm":
        return [f"--comment={mark}"]
    if scheduler == "pbs":
        return ["-v", ",".join([*pbs_variables(script), f"{PBS_VARIABLE}={mark}"])]
    raise ValueError(f"{scheduler} submissions carry no mark")


def named(scheduler: str, mark: str, article: str = "the") -> str:
    """How the mark is named in what the commands print ("the comment balsam:…")."""
    if scheduler == "pbs":
        return f"{article} variable {PBS_VARIABLE}={mark}"
    return f"{article} comment {mark}"


def pbs_variables(script: str) -> list[str]:
    """The ``-v`` lists of a PBS script's directives (``#PBS`` lines before its first
    command), in order, as written."""
    out: list[str] = []
    for words in _directives(script):
        for i, word in enumerate(words):
            if word == "-v" and i + 1 < len(words):
                out.append(words[i + 1])
            elif word.startswith("-v") and len(word) > 2:
                out.append(word[2:])
    return [v for v in out if v]


def _directives(script: str) -> Iterator[list[str]]:
    for line in script.splitlines()[1:] if script.startswith("#!") else script.splitlines():
        text = line.strip()
        if not text:
            continue
        if not text.startswith("#"):
            return  # qsub reads directives up to the first command
        if text.startswith("#PBS"):
            body = text[len("#PBS"):]
            try:
                yield shlex.split(body, comments=True)
            except ValueError:  # an unbalanced quote: as qsub would, word by word
                yield body.split()
