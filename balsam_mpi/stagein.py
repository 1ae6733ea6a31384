"""A child's ``input_files``: glob patterns linked from its parents' working directories.

As in Balsam, before a task runs, every file in a parent's directory that matches one of
the child's patterns is symlinked into the child's directory under the same name. Pure
filesystem work, no database: the launcher's runner calls :func:`link_inputs` with the
directories of the task's parents (``Project.task_dir`` of each; Client.get / the
``tasks_parents`` query give their workflow, id and name).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from .taskspec import check_pattern


def link_inputs(task_dir: Path, parent_dirs: Iterable[Path],
                patterns: Sequence[str]) -> list[Path]:
    """Symlink matching files of each parent directory into ``task_dir``; returns the links
    made. A name already present (a file, or a link from an earlier parent) is kept: the
    first parent listed wins, and nothing the task wrote is overwritten."""
    for pattern in patterns:
        check_pattern(pattern)
    made: list[Path] = []
    if not patterns:
        return made
    task_dir.mkdir(parents=True, exist_ok=True)
    for parent in parent_dirs:
        if not parent.is_dir():
            continue
        for pattern in patterns:
            for source in sorted(parent.glob(pattern)):
                target = task_dir / source.name
                if target.exists() or target.is_symlink():
                    continue
                os.symlink(source.resolve(), target)
                made.append(target)
    return made
