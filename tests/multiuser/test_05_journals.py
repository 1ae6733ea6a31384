"""Launcher journals across real UNIX users: a member's genuine journal is replayed by
another member's recovery; a member who forges one for someone else's batch job gets
nothing written — the database, not the replaying client, refuses it."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from .conftest import MEMBER, MEMBER2, OWNER, VIEWER, Runner

pytestmark = pytest.mark.timeout(300)
Steps = dict[str, Any]
T0 = 1_900_000_000.0

# Run as MEMBER2: its "leader" journals a success, through the package's own code.
GENUINE = """
import sys
from balsam_mpi.base import db
from balsam_mpi.launcher.journal import Journal
from balsam_mpi.base.project import Project
from balsam_mpi.protocol import Finished
from balsam_mpi.launcher.store import Store
from balsam_mpi.launcher.storeport import Lease
job, epoch, task = map(int, sys.argv[1:4])
project = Project.from_env()
store = Store(db.connect(project, autocommit=True))
lease = Lease(job, epoch, True)
journal = Journal(project.log_dir, job, epoch, store.journal_key(lease))
journal.add(1, [], [Finished(task, epoch, 0, 0, 1.9e9, 1.9e9 + 1)])
journal.close(complete=True)
print(journal.path)
"""


def _rows(result: dict[str, Any], i: int = 0) -> list[Any]:
    entry = result["results"][i]
    assert entry["ok"], entry
    rows: list[Any] = entry["rows"]
    return rows


def test_a_journal_is_replayed_by_anyone_and_forged_by_no_one(mu: Runner,
                                                             enrolled: Steps) -> None:
    assert mu.project is not None
    _rows(mu.probe(OWNER, ["INSERT INTO apps (name, command) VALUES ('jrn', 'true') "
                           "ON CONFLICT (name) DO NOTHING"]))
    made = mu.probe(MEMBER2, [
        "INSERT INTO tasks (workflow, app_id, state) SELECT 'jw', id, 'READY' "
        "FROM apps, generate_series(1, 2) WHERE name = 'jrn' RETURNING id",
        "SELECT job_id, lease_epoch FROM launcher_open_job(NULL, 'local', NULL, 'h', 1, 1, "
        "'{}', NULL, 3)"])
    real, forged = sorted(r[0] for r in _rows(made, 0))
    [[job, epoch]] = _rows(made, 1)
    _rows(mu.probe(MEMBER2, [
        ("SELECT id FROM launcher_claim(%s, %s, 10, 10, 1, ARRAY['jw'], NULL, NULL, NULL, 1)",
         [job, epoch]),
        ("SELECT * FROM launcher_report(%s, %s, %s::bigint[], %s::float8[], '{}', '{}', "
         "'{}', '{}', '{}', '{}')", [job, epoch, [real, forged], [T0, T0]])]))
    written = mu.run(MEMBER2, [str(mu.venv / "bin" / "python"), "-c", GENUINE,
                               str(job), str(epoch), str(real)])
    assert written.returncode == 0, written.stderr

    # The attacker: the key is not theirs, and the table cannot be read.
    refused = mu.probe(MEMBER, [("SELECT launcher_journal_key(%s, %s)", [job, epoch]),
                                "SELECT mac_key FROM launcher_journals"])
    assert [e["sqlstate"] for e in refused["results"]] == ["42501", "42501"], refused
    time.sleep(4)  # MEMBER2's "leader" is gone: its 3 s lease runs out
    text = json.dumps({"job": job, "epoch": epoch, "seq": 1, "g": [
        [1, [], [[forged, epoch, 0, 0, T0, T0 + 1, ""]]]]}, separators=(",", ":"))
    mac = hmac.new(b"\0" * 32, text.encode(), hashlib.sha256).hexdigest()
    direct = mu.probe(MEMBER, [("SELECT step, changed FROM launcher_replay(%s, %s, "
                                "%s::text[], %s::text[])", [job, epoch, [text], [mac]])])
    assert _rows(direct) == [["lines", 0]]  # the database refuses the forged line
    planted = mu.run(MEMBER, [str(mu.venv / "bin" / "python"), "-c",
                              "import sys; open(sys.argv[1], 'x').write(sys.argv[2])",
                              str(mu.project / "log" / f"journal_{job}_{epoch}_00.jsonl"),
                              f"{mac} {text}\n"])
    assert planted.returncode == 0, planted.stderr

    # MEMBER's recovery replays MEMBER2's genuine journal, then marks the job LOST.
    recovered = mu.dbctl(MEMBER, "recover")
    assert recovered.returncode == 0, recovered.stderr
    assert "1 task(s) finished" in recovered.stdout and "marked LOST" in recovered.stdout
    got = dict((r[0], r[1:]) for r in _rows(mu.probe(VIEWER, [(
        "SELECT id, state::text, lost_retries FROM tasks WHERE id = ANY(%s)",
        [[real, forged]])])))
    assert got[real] == ["JOB_FINISHED", 0]  # finished: not lost, not to be run again
    assert got[forged] == ["RESTART_READY", 1]  # the forged success changed nothing
