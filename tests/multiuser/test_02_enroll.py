"""The README's multi-user flow, both orders, and what it leaves behind."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

from .conftest import LEAVER, MEMBER, OUTSIDER, OWNER, VIEWER, Runner, one_line


def test_owner_first_then_activation_enrolls_over_the_socket(
        mu: Runner, enrolled: dict[str, subprocess.CompletedProcess[str]]) -> None:
    added = enrolled["add_member"].stdout.strip().splitlines()
    assert len(added) == 1 and f"authorized as a member; next, {MEMBER} runs" in added[0]
    activation = enrolled["activate_member"]
    assert f"enrolled {MEMBER}" in activation.stderr
    assert int(activation.stdout.strip(), 8) & 0o070 == 0  # umask: the group gets rwx
    pgpass = Path(mu.accounts[MEMBER].pw_dir, ".pgpass")
    assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600
    assert pgpass.stat().st_uid == mu.accounts[MEMBER].pw_uid
    assert pgpass.read_text().count(f":*:*:{MEMBER}:") == 1


def test_collaborator_first_leaves_only_a_verifier_for_the_owner(
        mu: Runner, enrolled: dict[str, subprocess.CompletedProcess[str]]) -> None:
    request = enrolled["request_viewer"].stderr.strip().splitlines()
    assert len(request) == 1 and f"add-user {VIEWER}`" in request[0]
    assert "no password in it" in request[0]
    assert "enrolled as a viewer" in enrolled["add_viewer"].stdout
    assert mu.project is not None
    assert not (mu.project / "access" / f"{VIEWER}.json").exists()  # applied, then deleted
    assert enrolled["activate_viewer"].stderr.strip() == (
        f"connected to the balsam project at {mu.project}")


def test_request_file_holds_a_verifier_and_never_the_password(mu: Runner) -> None:
    assert mu.project is not None
    # A fresh request by someone not yet authorized: inspect it before the owner acts.
    proc = mu.dbctl(LEAVER, "request-access")
    assert proc.returncode == 0, proc.stderr
    path = mu.project / "access" / f"{LEAVER}.json"
    try:
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_uid == mu.accounts[
            LEAVER].pw_uid
        body = json.loads(path.read_text())
        assert body["verifier"].startswith("SCRAM-SHA-256$4096:")
        password = Path(mu.accounts[LEAVER].pw_dir, ".pgpass").read_text().split(":")[-1]
        assert password.strip() and password.strip() not in path.read_text()
    finally:
        path.unlink(missing_ok=True)


def test_members_connect_over_the_socket_and_over_tcp(
        mu: Runner, enrolled: dict[str, subprocess.CompletedProcess[str]]) -> None:
    query = "SELECT session_user::text, inet_client_addr() IS NOT NULL"
    for user in (MEMBER, VIEWER, OWNER):
        socket = mu.probe(user, [query], route="socket")
        tcp = mu.probe(user, [query], route="tcp")
        assert socket["results"][0]["rows"] == [[user, False]], socket
        assert tcp["results"][0]["rows"] == [[user, True]], tcp


def test_users_and_who_may_ask(mu: Runner,
                               enrolled: dict[str, subprocess.CompletedProcess[str]]) -> None:
    rows = {u["role"]: u for u in json.loads(mu.dbctl(OWNER, "users", "--json").stdout)}
    assert rows[OWNER]["kind"] == "owner" and rows[OWNER]["state"] == "enrolled"
    assert rows[MEMBER]["kind"] == "member" and rows[MEMBER]["state"] == "enrolled"
    assert rows[VIEWER]["kind"] == "viewer" and rows[VIEWER]["state"] == "enrolled"
    assert f"only the project owner, {OWNER}, can list users" in one_line(
        mu.dbctl(MEMBER, "users"))
    assert "outsiders get nothing" in one_line(mu.dbctl(OWNER, "add-user", OUTSIDER))
    again = mu.dbctl(OWNER, "add-user", MEMBER)  # harmless to repeat
    assert again.returncode == 0 and "already" not in again.stderr


def test_nothing_secret_in_the_server_log(
        mu: Runner, enrolled: dict[str, subprocess.CompletedProcess[str]]) -> None:
    assert mu.project is not None
    secrets = []
    for user in (MEMBER, VIEWER, OWNER):
        line = Path(mu.accounts[user].pw_dir, ".pgpass").read_text().splitlines()[0]
        secrets.append(line.rsplit(":", 1)[1])
    logs = "".join(p.read_text(errors="replace")
                   for p in (mu.project / "log" / "server").glob("*"))
    assert not any(s in logs for s in secrets)
    leaks = [ln for ln in logs.splitlines() if "SCRAM-SHA-256$" in ln or "ALTER ROLE" in ln]
    assert leaks == []
