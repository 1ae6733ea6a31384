"""Fake scheduler commands (qsub, sbatch, squeue …) for the database tier: each records
its argv and working directory beside itself, then runs a given shell body."""

from __future__ import annotations

from pathlib import Path


def fake(bindir: Path, name: str, body: str) -> Path:
    """A fake ``name`` in ``bindir`` (the ``fakebin`` fixture): it writes its working
    directory and arguments, one a line, to ``name.argv``, then runs ``body``."""
    path = bindir / name
    path.write_text("#!/bin/bash\n"
                    f"printf '%s\\n' \"$PWD\" \"$@\" > {bindir}/{name}.argv\n" + body + "\n")
    path.chmod(0o755)
    return path
