"""Pythons that never import from their working directory.

``python -m mod`` (and ``-c``) puts the working directory first on ``sys.path``, ahead of
the standard library and the installed packages. Batch jobs used to start in
``PROJECT/qsubmit/``, which every member of the project group may write; a module planted
there under a name the launcher imports later (``argparse``, ``selectors``, the package
``balsam_mpi`` itself, a task's own package) ran as whoever's launcher started next. So
every Python the launcher starts runs with ``-P`` (Python 3.11: no unsafe path first), and
a launcher started without it refuses a working directory another user could write
(docs/security.md, "The launcher's working directory"). A job now also starts in its
submission's own directory (batch/submit.py), but a launcher may be started anywhere.

By the time ``check_start`` runs, ``-m`` has already imported ``runpy`` and the package
from that directory: the check cannot undo a plant, it stops a launcher from running where
one could be planted next time, and says how to start it safely.
"""

from __future__ import annotations

import os
import stat
import sys

# The interpreter option, for every argv of a Python the launcher starts.
FLAG = "-P"


def module_argv(python: str, module: str, *args: str) -> list[str]:
    """``python -P -m module args``: the argv of one of the package's own Pythons."""
    return [python, FLAG, "-m", module, *args]


def writable_by_others(st: os.stat_result, uid: int | None = None) -> str | None:
    """Who else may create a file in a directory with this ``stat``, or ``None``.

    The group or everyone by the mode (sticky or not: the sticky bit only keeps others
    from replacing what exists, and a plant is a new name), or the directory's owner when
    that is another user (root excepted: it can write anything anyway)."""
    me = os.getuid() if uid is None else uid
    if st.st_mode & stat.S_IWOTH:
        return "every user"
    if st.st_mode & stat.S_IWGRP:
        return f"group {st.st_gid}"
    if st.st_uid not in (me, 0):
        return f"its owner, uid {st.st_uid}"
    return None


def exit_if_unsafe(prog: str) -> None:
    """The start of a package entry point: ``check_start``'s line and status 2, or on."""
    refusal = check_start(prog)
    if refusal is not None:
        print(refusal, file=sys.stderr)
        sys.exit(2)


def check_start(prog: str) -> str | None:
    """Why this process must not go on (one line), or ``None``.

    The working directory is on ``sys.path`` when Python was started without ``-P``
    (``-m`` puts it first as the absolute path, ``-c`` as ``''``), or when ``PYTHONPATH``
    holds an empty or ``.`` entry — what ``export PYTHONPATH=$PWD:$PYTHONPATH`` leaves
    when the variable was unset: Python reads the empty entry as the working directory."""
    try:
        cwd = os.getcwd()
        where = {os.path.abspath(p) if p else cwd for p in sys.path}
        who = writable_by_others(os.stat(cwd)) if cwd in where else None
    except OSError:
        return None
    if who is None:
        return None
    if not sys.flags.safe_path:
        fix = f"start it as `python -P -m {prog}`"
    else:
        fix = "PYTHONPATH names it (an empty or `.` entry): remove that entry"
    return (f"{prog}: refusing to run in {cwd}, which {who} may write: Python would import "
            f"modules from there first; {fix} (or start it from a directory only you "
            "can write)")
