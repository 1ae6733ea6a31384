"""A project directory with a server-info.json and no server: enough for the code that
renders and starts job scripts, which reads the project's record but no database."""

from __future__ import annotations

import json
import os
from pathlib import Path

from balsam_mpi.base.project import Project


def fake_project(root: Path) -> Project:
    """Make ``root`` a project owned by this user (server-info.json, 0640)."""
    root.mkdir(parents=True)
    info = root / "server-info.json"
    info.write_text(json.dumps({
        "host": "h", "port": 1, "owner_uid": os.geteuid(), "owner_name": "me",
        "server_uid": os.geteuid(), "server_name": "me", "group": "g", "pg_major": 16,
        "pg_bindir": "/x", "superuser": "me"}))
    os.chmod(info, 0o640)
    return Project(root)
