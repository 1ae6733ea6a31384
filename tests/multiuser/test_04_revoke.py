"""drop-user: revoked, live session ended, next connection refused, tasks kept."""

from __future__ import annotations

import json
import subprocess

from .conftest import LEAVER, OWNER, PREFIX, Runner, one_line

HOLD = """
import sys
from balsam_mpi.base import db
from balsam_mpi.base.project import Project
conn = db.connect(Project.from_env(), route=sys.argv[1], autocommit=True)
print("ready", flush=True)
sys.stdin.readline()
try:
    conn.execute("SELECT 1")
    print("still connected", flush=True)
except Exception as exc:
    print("lost: " + str(exc).strip().splitlines()[0], flush=True)
"""


def test_drop_user_ends_live_sessions_and_keeps_their_tasks(
        mu: Runner, enrolled: dict[str, subprocess.CompletedProcess[str]]) -> None:
    assert mu.project is not None
    (mu.project / "access" / f"{LEAVER}.json").unlink(missing_ok=True)
    assert mu.dbctl(OWNER, "add-user", LEAVER).returncode == 0
    enroll = mu.dbctl(LEAVER, "request-access")
    assert f"enrolled {LEAVER}" in enroll.stderr, enroll.stderr
    mu.probe(OWNER, ["INSERT INTO apps (name, command) VALUES ('hello', 'echo') "
                     "ON CONFLICT (name) DO NOTHING"])
    made = mu.probe(LEAVER, [
        "INSERT INTO apps (name, command) VALUES ('x', 'y')",  # not an app admin
        "INSERT INTO tasks (workflow, app_id) SELECT 'leaving', id FROM apps LIMIT 1 "
        "RETURNING id"])
    assert not made["results"][0]["ok"] and made["results"][1]["rows"]
    holders = [mu.popen(LEAVER, [str(mu.venv / "bin" / "python"), "-c", HOLD, route])
               for route in ("socket", "tcp")]
    try:
        for holder in holders:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        sessions = json.loads(mu.dbctl(OWNER, "connections", "--json").stdout)
        mine = [s for s in sessions if s["user"] == LEAVER]
        assert {s["client"] == "local" for s in mine} == {True, False}

        dropped = mu.dbctl(OWNER, "drop-user", LEAVER)
        assert dropped.returncode == 0 and "2 live session(s) ended" in dropped.stdout
        for holder in holders:
            out, _ = holder.communicate("go\n", timeout=30)
            assert out.startswith("lost:"), out
    finally:
        for holder in holders:
            holder.kill()
    for route in ("socket", "tcp"):
        after = mu.probe(LEAVER, ["SELECT 1"], route=route)
        assert "not authorized" in after["connect_error"], after
    kept = mu.probe(OWNER, ["SELECT owner FROM tasks WHERE workflow = 'leaving'"])
    assert kept["results"][0]["rows"] == [[LEAVER]]
    users = {u["role"] for u in json.loads(mu.dbctl(OWNER, "users", "--json").stdout)}
    assert LEAVER not in users
    assert "has no role" in one_line(mu.dbctl(OWNER, "drop-user", f"{PREFIX}_nobody_x"))
