"""Enrollment pieces without Postgres: SCRAM verifiers, ~/.pgpass, request-file checks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import pytest

from balsam_mpi.base.errors import ProjectError, UsageError
from balsam_mpi.base.project import Project
from balsam_mpi.dbctl import credentials, enroll


def test_verifier_follows_rfc_5802_and_7677() -> None:
    salt = b"0123456789abcdef"
    verifier = credentials.scram_verifier("pencil", salt=salt, iterations=4096)
    head, keys = verifier.split("$", 1)[1].split("$")
    iterations, salt_b64 = head.split(":")
    stored_b64, server_b64 = keys.split(":")
    assert int(iterations) == 4096 and base64.b64decode(salt_b64) == salt
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    assert base64.b64decode(stored_b64) == hashlib.sha256(client_key).digest()
    assert base64.b64decode(server_b64) == hmac.new(salted, b"Server Key",
                                                    hashlib.sha256).digest()
    assert credentials.is_well_formed_verifier(verifier)
    assert credentials.scram_verifier("pencil") != credentials.scram_verifier("pencil")  # fresh salt


@pytest.mark.parametrize("bad", [
    "pencil",  # would be stored as a plaintext password
    "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",  # keys of the wrong length
    "SCRAM-SHA-256$1:MDEyMzQ1Njc4OWFiY2RlZg==$" + "A" * 43 + "=:" + "A" * 43 + "=",
    "md5abcdef0123456789abcdef0123456789",
    "SCRAM-SHA-256$4096:salt$x:y' SUPERUSER --",
])
def test_malformed_verifiers_are_refused(bad: str) -> None:
    assert not credentials.is_well_formed_verifier(bad)


def test_pgpass_keeps_other_lines_reuses_the_password_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "pgpass"
    path.write_text("otherhost:5432:db:me:se\\:cret\n")
    os.chmod(path, 0o644)
    credentials.pgpass_store(["login1"], "me", "pw1", path)
    credentials.pgpass_store(["login1", "10.0.0.1"], "me", "pw1", path)
    lines = path.read_text().splitlines()
    assert lines == ["otherhost:5432:db:me:se\\:cret", "login1:*:*:me:pw1",
                     "10.0.0.1:*:*:me:pw1"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert credentials.pgpass_password(["login1"], "me", path) == "pw1"
    assert credentials.pgpass_password(["otherhost"], "me", path) is None  # not one of ours
    assert credentials.pgpass_password(["login1"], "you", path) is None


@pytest.mark.parametrize("name", ["../x", "a b", "", "-rf", "x" * 64, "a/b", "r\n"])
def test_odd_user_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError):
        enroll.check_role_name(name)


@pytest.fixture()
def project(tmp_path: Path) -> Project:
    (tmp_path / "access").mkdir()
    return Project(tmp_path)


def _good_request(project: Project, user: str = "alice") -> Path:
    return enroll.write_request(project, user, credentials.scram_verifier("pw"), "h")


def test_request_round_trip_and_replacing_our_own(project: Project) -> None:
    path = _good_request(project)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    again = _good_request(project)  # our own stale request is replaced
    request = enroll.read_request(project, "alice", os.geteuid())
    assert again == path and request is not None and request.user == "alice"
    assert enroll.read_request(project, "bob", os.geteuid()) is None
    enroll.unlink_request(project, "alice")
    assert not path.exists()


def test_request_of_another_uid_is_refused(project: Project) -> None:
    _good_request(project)
    with pytest.raises(ProjectError, match="belongs to uid"):
        enroll.read_request(project, "alice", os.geteuid() + 1)


def test_writable_linked_or_special_requests_are_refused(project: Project) -> None:
    path = _good_request(project)
    os.chmod(path, 0o660)
    with pytest.raises(ProjectError, match="others could have written"):
        enroll.read_request(project, "alice", os.geteuid())
    os.chmod(path, 0o640)
    os.link(path, project.root / "elsewhere")
    with pytest.raises(ProjectError, match="hard links"):
        enroll.read_request(project, "alice", os.geteuid())
    path.unlink()
    os.symlink(project.root / "elsewhere", path)
    with pytest.raises(ProjectError, match="symlink"):
        enroll.read_request(project, "alice", os.geteuid())
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(ProjectError, match="not a regular file"):
        enroll.read_request(project, "alice", os.geteuid())


@pytest.mark.parametrize("body", [
    b"not json", b"{}", json.dumps({"user": "bob", "verifier": "x"}).encode(),
    json.dumps({"user": "alice", "verifier": "hunter2"}).encode(), b"{" + b" " * 5000 + b"}",
])
def test_malformed_requests_are_refused(project: Project, body: bytes) -> None:
    path = project.access_dir / "alice.json"
    path.write_bytes(body)
    os.chmod(path, 0o640)
    with pytest.raises(ProjectError, match="refusing"):
        enroll.read_request(project, "alice", os.geteuid())
