"""The Foundation's multi-user acceptance: an unprivileged owner's project, a group member
not yet authorized, and an outsider."""

from __future__ import annotations

import grp
import json

from balsam_mpi.base.project import Project
from balsam_mpi.dbctl import layout

from .conftest import GROUP, MEMBER, OUTSIDER, OWNER, Runner, one_line, port_of


def test_init_as_unprivileged_owner_gives_the_modes_of_the_design(mu: Runner) -> None:
    assert mu.project is not None
    info = json.loads((mu.project / "server-info.json").read_text())
    assert info["owner_name"] == OWNER and info["server_name"] == OWNER
    problems = layout.mode_problems(Project(mu.project), info["owner_uid"],
                                    grp.getgrnam(GROUP).gr_gid)
    assert problems == []
    status = json.loads(mu.dbctl(MEMBER, "status", "--json").stdout)
    assert status["owner"] == OWNER and status["port"] == port_of(mu) and status["running"]


def test_activation_gives_the_group_rwx(mu: Runner) -> None:
    proc = mu.bash(OWNER, f"umask 077; source balsamactivate {mu.project} >/dev/null 2>&1; umask")
    assert proc.stdout.strip() == "0007", proc.stderr


def test_owner_psql_over_the_socket_is_their_everyday_role(mu: Runner) -> None:
    assert mu.project is not None
    proc = mu.psql(OWNER, "-h", str(mu.project / "run"), "-p", str(port_of(mu)), "balsam",
                   "-c", "SELECT session_user, pg_has_role('balsam_owner', 'MEMBER'), "
                   "(SELECT rolsuper FROM pg_roles WHERE rolname = session_user)")
    assert proc.stdout.strip() == f"{OWNER}|t|f", proc.stderr


def test_unauthorized_member_cannot_stop_the_server_or_connect(mu: Runner) -> None:
    line = one_line(mu.dbctl(MEMBER, "stop"))
    assert f"only the project owner, {OWNER}" in line
    assert mu.project is not None
    proc = mu.psql(MEMBER, "-h", str(mu.project / "run"), "-p", str(port_of(mu)), "balsam",
                   "-c", "SELECT 1")
    assert proc.returncode != 0 and "pg_hba.conf rejects" in proc.stderr


def test_outsider_cannot_reach_the_socket_nor_log_in_over_tcp(mu: Runner) -> None:
    assert mu.project is not None
    line = one_line(mu.dbctl(OUTSIDER, "status"))
    assert "not in the project's group" in line or "does not exist" in line
    proc = mu.psql(OUTSIDER, "-h", str(mu.project / "run"), "-p", str(port_of(mu)), "balsam",
                   "-c", "SELECT 1")
    assert proc.returncode != 0 and ("Permission denied" in proc.stderr
                                     or "No such file" in proc.stderr)
    for role in (OWNER, "balsam_superuser"):
        tcp = mu.psql(OUTSIDER, "-h", "127.0.0.1", "-p", str(port_of(mu)), "-U", role,
                      "-w", "balsam", "-c", "SELECT 1", env={"PGPASSWORD": "guess"})
        assert tcp.returncode != 0
        assert ("password authentication failed" in tcp.stderr
                or "pg_hba.conf rejects" in tcp.stderr), tcp.stderr
