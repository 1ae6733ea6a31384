"""Where a submission lives: ``PROJECT/qsubmit/`` and a directory of each submission's own.

``qsubmit/`` is group-writable (every member submits) and sticky (nobody renames or
replaces what another made). What a submission writes goes into a new directory in it,
``<scheduler>-<id>-<time>/``, that only the submitter can write: its ``job.sh``, a local
job's ``job.log``, and whatever the scheduler writes for the job — the submit command runs
there, so the job starts there and its output file lands there. The scheduler opens that
file as the submitter and follows links, under a name anyone can predict from the next job
id; in ``qsubmit/`` itself a member's link there made the owner's job truncate and write
the file it pointed to (docs/design-notes.md, 33).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..base import safefs
from ..base.errors import ProjectError
from ..base.project import Project

QSUBMIT = "qsubmit"
MODE_QSUBMIT = 0o3770
MODE_JOB_DIR = 0o2750  # the submitter writes; the group reads scripts and outputs
SCRIPT_NAME = "job.sh"
LOG_NAME = "job.log"
MODE_SCRIPT = 0o750  # Cobalt runs only executable scripts
MODE_SUBMIT_LOG = 0o640  # what a local job printed, beside its script
# The submit command's umask, which Slurm keeps for the job (SLURM_UMASK): its output file
# is made 0640 whatever the submitter's own umask, so no one else writes lines into it.
# The submitter's own goes along as UMASK_VAR, and the job script restores it before it
# opens group write for what the launcher and its tasks make (templates/*.sh).
SUBMIT_UMASK = 0o027
UMASK_VAR = "BALSAM_SUBMIT_UMASK"


def qsubmit_dir(project: Project) -> Path:
    """``PROJECT/qsubmit/`` (3770), made if missing — only the owner can, as the project
    root is not group-writable; anyone else is told to ask."""
    path = project.root / QSUBMIT
    if path.is_dir():
        return path
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return path
    except PermissionError:
        raise ProjectError(f"{path} does not exist and only the project owner can create it; "
                           f"ask them to submit once, or to run `mkdir -m 3770 {path}`"
                           ) from None
    os.chmod(path, MODE_QSUBMIT)  # explicit: mkdir's mode is cut by the umask
    return path


def write_script(qdir: Path, scheduler: str, job_id: int, text: str) -> tuple[Path, int]:
    """``qsubmit/<scheduler>-<id>-<time>/job.sh``: the directory new and the submitter's
    (a suffix when the name is taken — ids repeat in a restored or copied database, and
    others in the group can plant names in qsubmit/), the file created in its descriptor.
    Returns the script's path and the directory's descriptor (the caller's to close).
    Raises ``safefs.UnsafePath``."""
    stem = f"{scheduler}-{job_id}-{time.strftime('%Y%m%d-%H%M%S')}"
    dfd = safefs.open_project_dir(str(qdir.parent), qdir.name)
    try:
        jfd, name = safefs.create_dir(dfd, stem, MODE_JOB_DIR, str(qdir))
    finally:
        os.close(dfd)
    try:
        fd, _ = safefs.create_new(jfd, SCRIPT_NAME, 0o600, str(qdir / name))
    except BaseException:
        os.close(jfd)
        raise
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        os.fchmod(fh.fileno(), MODE_SCRIPT)
    return qdir / name / SCRIPT_NAME, jfd


def open_log(jfd: int, jdir: Path) -> tuple[int, Path]:
    """A local job's ``job.log`` in its directory (``jfd``): a new file, 0640."""
    fd, name = safefs.create_new(jfd, LOG_NAME, MODE_SUBMIT_LOG, str(jdir))
    return fd, jdir / name


def own_umask() -> str:
    """This process's umask, as the job script's ``umask`` takes it."""
    mask = os.umask(0o077)
    os.umask(mask)
    return f"{mask:04o}"
