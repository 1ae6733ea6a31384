"""Every attack of the Collaborators issue, as the real UNIX users; each fails with one
clear line (a one-line CLI error, or the server's one-line refusal)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import LEAVER, MEMBER, MEMBER2, OWNER, VIEWER, Runner, one_line, port_of

Steps = dict[str, subprocess.CompletedProcess[str]]


def _ok(result: dict[str, Any], i: int = 0) -> list[Any]:
    entry = result["results"][i]
    assert entry["ok"], entry
    rows: list[Any] = entry["rows"]
    return rows


def _refused(result: dict[str, Any]) -> list[str]:
    """Each statement refused with SQLSTATE 42501 (insufficient privilege); their lines."""
    assert "connect_error" not in result, result
    lines = []
    for entry in result["results"]:
        assert not entry["ok"] and entry["sqlstate"] == "42501", entry
        lines.append(entry["error"])
    return lines


@pytest.fixture(scope="module")
def tasks(mu: Runner, enrolled: Steps) -> dict[str, int]:
    """An app (by the owner), a task of MEMBER2 and a running batch job of theirs (opened
    as their launcher opens it: members write batch jobs only through functions)."""
    _ok(mu.probe(OWNER, ["INSERT INTO apps (name, command) VALUES ('hello', 'echo') "
                         "ON CONFLICT (name) DO NOTHING"]))
    made = mu.probe(MEMBER2, [
        "INSERT INTO tasks (workflow, app_id, state) SELECT 'w', id, 'READY' FROM apps "
        "WHERE name = 'hello' RETURNING id",
        "SELECT job_id FROM launcher_open_job(NULL, 'local', NULL, 'h', 1, 1, '{}', NULL, "
        "3600)"])
    return {"task": _ok(made, 0)[0][0], "job": _ok(made, 1)[0][0]}


def test_nobody_impersonates_the_owner_or_another_member(mu: Runner, enrolled: Steps) -> None:
    assert mu.project is not None
    sock = ["-h", str(mu.project / "run"), "-p", str(port_of(mu))]
    for target in (OWNER, MEMBER2, "balsam_superuser"):
        proc = mu.psql(MEMBER, *sock, "-U", target, "balsam", "-c", "SELECT 1")
        assert proc.returncode != 0 and "Peer authentication failed" in proc.stderr
        proc = mu.psql(MEMBER, *sock, "balsam", "-c", "SELECT 1", env={"PGUSER": target})
        assert proc.returncode != 0 and "Peer authentication failed" in proc.stderr
    # Over TCP with the member's own password (it is in their ~/.pgpass): still refused.
    password = Path(mu.accounts[MEMBER].pw_dir, ".pgpass").read_text().split(":")[-1].strip()
    for target in (OWNER, MEMBER2):
        proc = mu.psql(MEMBER, "-h", "127.0.0.1", "-p", str(port_of(mu)), "-U", target, "-w",
                       "balsam", "-c", "SELECT 1", env={"PGPASSWORD": password})
        assert proc.returncode != 0 and "password authentication failed" in proc.stderr
    # Our own client logs in as the caller whatever PGUSER says.
    who = mu.probe(MEMBER, ["SELECT session_user::text"], env={"PGUSER": OWNER})
    assert _ok(who) == [[MEMBER]]


def test_member_cannot_stop_the_server(mu: Runner, enrolled: Steps) -> None:
    assert f"only the project owner, {OWNER}, can stop" in one_line(mu.dbctl(MEMBER, "stop"))
    assert "only the project owner" in one_line(mu.dbctl(MEMBER, "add-user", MEMBER2))
    assert "only the project owner" in one_line(mu.dbctl(MEMBER, "drop-user", MEMBER2))


def test_member_cannot_run_ddl_grant_themselves_or_run_programs(mu: Runner,
                                                                 enrolled: Steps) -> None:
    lines = _refused(mu.probe(MEMBER, [
        "CREATE TABLE mine (x int)",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "DROP TABLE task_events",
        "ALTER TABLE tasks DISABLE ROW LEVEL SECURITY",
        f"GRANT balsam_owner TO {MEMBER}",
        f"GRANT balsam_app_admin TO {MEMBER}",
        f"ALTER ROLE {MEMBER} SUPERUSER",
        f"ALTER ROLE {MEMBER2} PASSWORD NULL",
        "SET ROLE balsam_objects",
        f"SET SESSION AUTHORIZATION {OWNER}",
        "COPY (SELECT 1) TO PROGRAM 'touch /tmp/balsam-pwned'",
        "SELECT pg_read_file('/etc/shadow')",
        "INSERT INTO apps (name, command) VALUES ('evil', 'rm -rf ~')",
    ], route="tcp"))
    assert all(len(line.splitlines()) == 1 for line in lines)
    assert not os.path.exists("/tmp/balsam-pwned")


def test_member_cannot_touch_another_members_task(mu: Runner, tasks: dict[str, int]) -> None:
    task = tasks["task"]
    # No table-level UPDATE or DELETE on tasks (migrations/0007): refused outright.
    _refused(mu.probe(MEMBER, [
        ("UPDATE tasks SET state = 'USER_KILLED' WHERE id = %s", [task]),
        ("UPDATE tasks SET args = '{rm,-rf}' WHERE id = %s", [task]),
        ("DELETE FROM tasks WHERE id = %s", [task]),
    ]))
    result = mu.probe(MEMBER, [
        ("UPDATE tasks SET priority = 3 WHERE id = %s", [task]),  # a plain column: not theirs
        ("SELECT outcome FROM tasks_kill(%s::bigint[])", [[task]]),
        ("SELECT state::text, args FROM tasks WHERE id = %s", [task]),
    ])
    assert result["results"][0]["rowcount"] == 0  # "UPDATE 0"
    assert _ok(result, 1) == [[f"not yours (owner {MEMBER2})"]]
    assert _ok(result, 2) == [["READY", []]]  # readable, untouched
    assert _refused(mu.probe(MEMBER2, [("UPDATE tasks SET owner = %s WHERE id = %s",
                                        [MEMBER, task])]))
    # The owner may change any task: plain columns directly, the rest through functions.
    assert mu.probe(OWNER, [("UPDATE tasks SET priority = 7 WHERE id = %s", [task])]
                    )["results"][0]["rowcount"] == 1
    assert _ok(mu.probe(OWNER, [("SELECT outcome FROM tasks_modify(%s::bigint[], "
                                 "'{\"args\": [\"-v\"]}')", [[task]])])) == [["modified"]]


def test_member_cannot_forge_another_launchers_heartbeat(mu: Runner,
                                                         tasks: dict[str, int]) -> None:
    job = tasks["job"]
    [line] = _refused(mu.probe(MEMBER, [("SELECT batch_job_heartbeat(%s)", [job])]))
    assert f"belongs to {MEMBER2}" in line
    _refused(mu.probe(MEMBER, [("UPDATE batch_jobs SET heartbeat_at = now() WHERE id = %s",
                                [job])]))
    assert _ok(mu.probe(MEMBER2, [("SELECT batch_job_heartbeat(%s)", [job])]))
    # The launcher's own functions (0004) follow the same rule.
    before = _ok(mu.probe(VIEWER, [("SELECT heartbeat_at::text, lease_epoch FROM batch_jobs "
                                    "WHERE id = %s", [job])]))[0]
    forged = mu.probe(MEMBER, [("SELECT launcher_heartbeat(%s, %s)", [job, before[1]])])
    entry = forged["results"][0]
    assert (not entry["ok"] and entry["sqlstate"] == "42501") or entry["rows"] == [[False]]
    after = _ok(mu.probe(VIEWER, [("SELECT heartbeat_at::text, lease_epoch FROM batch_jobs "
                                   "WHERE id = %s", [job])]))[0]
    assert after == before


def test_member_cannot_rewrite_history(mu: Runner, tasks: dict[str, int]) -> None:
    _refused(mu.probe(MEMBER, [
        "UPDATE task_events SET message = 'forged'",
        "DELETE FROM task_events",
        "TRUNCATE task_events",
        "INSERT INTO task_events (task_id, to_state) VALUES (1, 'JOB_FINISHED')",
    ]))
    count = mu.probe(VIEWER, [("SELECT count(*) FROM task_events WHERE task_id = %s",
                               [tasks["task"]])])
    assert _ok(count) == [[1]]


def test_viewer_reads_and_cannot_write(mu: Runner, tasks: dict[str, int]) -> None:
    assert _ok(mu.probe(VIEWER, ["SELECT count(*) >= 1 FROM tasks"], route="tcp")) == [[True]]
    _refused(mu.probe(VIEWER, [
        "INSERT INTO tasks (workflow, app_id) SELECT 'w', id FROM apps LIMIT 1",
        ("UPDATE tasks SET priority = 1 WHERE id = %s", [tasks["task"]]),
        "INSERT INTO batch_jobs DEFAULT VALUES",
        ("SELECT batch_job_heartbeat(%s)", [tasks["job"]]),
    ], route="tcp"))


@pytest.mark.parametrize("plant", [
    "umask 027; printf '%s' '{{}}' > {target}",  # a file
    "ln -s /home/{member2}/x {target}",  # a symlink
    "mkfifo -m 0640 {target}",  # a FIFO (it must not hang the owner)
    "mkdir {target}",  # a directory
], ids=["file", "symlink", "fifo", "directory"])
def test_a_request_planted_under_another_users_name_is_reported_and_cleared(
        mu: Runner, enrolled: Steps, plant: str) -> None:
    """A member's access/<user>.json blocked that user's own request until the owner
    deleted it by hand: the owner is told who planted it, and add-user removes it."""
    assert mu.project is not None
    target = mu.project / "access" / f"{LEAVER}.json"
    mu.dbctl(OWNER, "drop-user", LEAVER)  # not authorized: their request goes by file
    made = mu.bash(MEMBER2, plant.format(target=target, member2=MEMBER2))
    assert made.returncode == 0, made.stderr
    blocked = one_line(mu.dbctl(LEAVER, "request-access"))
    assert "already exists and belongs to uid" in blocked
    assert f"`balsam-dbctl add-user {LEAVER}`, which removes it" in blocked
    users = {u["role"]: u for u in json.loads(mu.dbctl(OWNER, "users", "--json").stdout)}
    assert "planted by uid" in users[LEAVER]["state"]
    added = mu.dbctl(OWNER, "add-user", LEAVER)
    assert added.returncode == 0, added.stderr
    assert f"it was made by {MEMBER2} (uid" in added.stdout and f"not {LEAVER}" in added.stdout
    assert not os.path.lexists(target)
    again = mu.dbctl(LEAVER, "request-access")  # on the server's host: over the socket
    assert again.returncode == 0 and f"enrolled {LEAVER}" in again.stderr, again.stderr


def test_member_cannot_rename_or_replace_control_files(mu: Runner, enrolled: Steps) -> None:
    assert mu.project is not None
    p = mu.project
    for script in (f"mv {p}/run {p}/run.old", f"mv {p}/server-info.json {p}/x.json",
                   f"mv {p}/settings.toml {p}/x.toml", f"echo port=1 > {p}/settings.toml",
                   f"echo {{}} > {p}/server-info.json",
                   f"rm -f {p}/run/.s.PGSQL.{port_of(mu)}",
                   f"ln -s /tmp {p}/run/evil"):
        proc = mu.bash(MEMBER, script)
        assert proc.returncode != 0 and "Permission denied" in proc.stderr, script
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_members_files_under_data_are_the_groups(mu: Runner, enrolled: Steps) -> None:
    assert mu.project is not None
    work = mu.project / "data" / "wf" / "0" / "t_1"
    made = mu.bash(MEMBER, f"source balsamactivate {mu.project} 2>/dev/null && "
                           f"mkdir -p {work} && echo out > {work}/out.txt")
    assert made.returncode == 0, made.stderr
    changed = mu.bash(OWNER, f"echo more >> {work}/out.txt && mkdir {work}/sub && "
                             f"rm -rf {mu.project / 'data' / 'wf'}")
    assert changed.returncode == 0, changed.stderr
