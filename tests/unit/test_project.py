"""The project directory's pure parts: paths, control-file checks, TOML, server-info."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from balsam_mpi.base.errors import ProjectError
from balsam_mpi.base.project import (
    Project,
    ServerInfo,
    check_control_file,
    dump_toml,
    tomllib,
    write_atomic,
)


def _info(**kw: object) -> ServerInfo:
    base = dict(host="h", port=5555, owner_uid=os.geteuid(), owner_name="o", server_uid=1,
                server_name="s", group="g", pg_major=15, pg_bindir="/x", superuser="o")
    base.update(kw)
    return ServerInfo(**base)  # type: ignore[arg-type]


def test_task_dir_is_sharded_and_path_safe(tmp_path: Path) -> None:
    p = Project(tmp_path)
    assert p.task_dir("demo", 12345, "t1") == tmp_path / "data/demo/12/t1_12345"
    assert p.task_dir("../evil", 7, "a/b") == tmp_path / "data/_evil/0/a_b_7"
    assert p.task_dir("w", 999, "") == tmp_path / "data/w/0/999"


def test_socket_path_limit_is_checked(tmp_path: Path) -> None:
    Project(tmp_path).check_socket_length(5432)
    deep = tmp_path / ("x" * 120)
    with pytest.raises(ProjectError, match="107"):
        Project(deep).check_socket_length(5432)


def test_server_info_round_trip_and_bad_json(tmp_path: Path) -> None:
    info = _info(instance_nonce="abc")
    assert ServerInfo.from_json(info.to_json(), tmp_path) == info
    with pytest.raises(ProjectError, match="not a valid server-info"):
        ServerInfo.from_json("{not json", tmp_path)


def test_write_atomic_sets_exact_mode_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        target = tmp_path / "f.json"
        write_atomic(target, "x", 0o640)
    finally:
        os.umask(old)
    assert target.read_text() == "x"
    assert target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_control_file_refused_when_group_writable_or_foreign(tmp_path: Path) -> None:
    target = tmp_path / "server-info.json"
    target.write_text("{}")
    os.chmod(target, 0o640)
    check_control_file(target, os.geteuid())
    os.chmod(target, 0o660)
    with pytest.raises(ProjectError, match="writable by group"):
        check_control_file(target, os.geteuid())
    os.chmod(target, 0o640)
    with pytest.raises(ProjectError, match="not the project owner"):
        check_control_file(target, os.geteuid() + 1)


def test_from_env_errors_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BALSAM_DB_PATH", raising=False)
    with pytest.raises(ProjectError, match="balsamactivate"):
        Project.from_env()
    with pytest.raises(ProjectError, match="does not exist"):
        Project.from_env(tmp_path / "nope")
    with pytest.raises(ProjectError, match="balsam-dbctl init"):
        Project(tmp_path).read_server_info()


def test_dump_toml_round_trips() -> None:
    values = {"group": "proj", "umask": "0007", "n": 3, "flag": True,
              "launcher": {"lease_s": 60.0, "names": ["a", "b"]}}
    assert tomllib.loads(dump_toml(values)) == values


def test_settings_typos_and_encodings_are_named(tmp_path: Path) -> None:
    """A misspelt table or a setting put outside [launcher] was ignored without a word
    (its values silently not applied), and an editor's byte-order mark was reported as
    "Invalid statement at line 1, column 1"."""
    from balsam_mpi.base.errors import InputError

    p = Project(tmp_path)
    p.settings_path.write_text('[lancher]\nlease_s = 90.0\n')
    with pytest.raises(InputError, match=r"settings.toml: unknown table or setting 'lancher'"):
        p.read_settings()
    p.settings_path.write_text('idle_timeout_s = 5.0\n[launcher]\n')
    with pytest.raises(InputError, match=r"unknown table or setting 'idle_timeout_s'"):
        p.read_settings()
    p.settings_path.write_bytes(b'\xef\xbb\xbfgroup = "g"\n[launcher]\nlease_s = 90.0\n')
    assert p.read_settings() == {"group": "g", "launcher": {"lease_s": 90.0}}
    p.settings_path.write_bytes(b'group = "g"\n[launcher]\n# caf\xe9\n')
    with pytest.raises(InputError, match=r"settings.toml, line 3: not valid UTF-8"):
        p.read_settings()


@pytest.mark.parametrize(("field", "value", "said"), [
    ("port", "abc", "port: must be a whole number"),
    ("port", True, "port: must be a whole number"),
    ("port", -5, "port: must be in 1-65535"),
    ("port", 99999999, "port: must be in 1-65535"),
    ("port", None, "port: must be a whole number"),
    ("owner_uid", "0", "owner_uid: must be a whole number"),
    ("server_uid", -1, "server_uid: must be in"),
    ("pg_major", "15", "pg_major: must be a whole number"),
    ("host", ["x"], "host: must be text"),
    ("host", "", "host: must not be empty"),
    ("pg_bindir", 5, "pg_bindir: must be text"),
    ("owner_name", None, "owner_name: must be text"),
    ("server_name", "a\x00b", "server_name: contains a NUL"),
    ("started_at", "x", "started_at: must be a number"),
    ("started_at", float("inf"), "started_at: must be a number"),
    ("extra", 5, "extra: must be a JSON object"),
])
def test_a_hand_edited_server_info_names_the_field(tmp_path: Path, field: str, value: object,
                                                   said: str) -> None:
    """server-info.json edited by hand to a value of the wrong type or out of range gave
    tracebacks (`"host": ["x"]` in status, `"port": "abc"` or `"pg_bindir": 5` in start),
    or absurd lines ("owned by uid 0, not the project owner (uid 0)" for `"owner_uid":
    "0"`, a socket named `.s.PGSQL.None`). Now one line naming the file and the field,
    exit status 2, and nothing is written."""
    from balsam_mpi.base.errors import InputError

    raw = json.loads(_info().to_json())
    raw[field] = value
    with pytest.raises(ProjectError, match=re.escape(said)) as caught:
        ServerInfo.from_json(json.dumps(raw), tmp_path / "server-info.json")
    assert isinstance(caught.value, InputError) and caught.value.exit_code == 2
    assert "server-info.json" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("text", ["[1]", "5", "null", '"x"'])
def test_server_info_that_is_not_an_object_is_one_line(tmp_path: Path, text: str) -> None:
    with pytest.raises(ProjectError, match="not a valid server-info"):
        ServerInfo.from_json(text, tmp_path / "server-info.json")
