"""Server configuration rendering: never trust, loopback by default, relative paths."""

from __future__ import annotations

import pytest

from balsam_mpi.dbctl import pgconf


def test_hba_has_peer_scram_reject_and_no_trust() -> None:
    hba = pgconf.render_hba("alice")
    lines = [ln.split() for ln in hba.splitlines() if ln and not ln.startswith("#")]
    assert all("trust" not in ln for ln in lines)
    assert ["local", "all", "alice", "peer"] in lines
    assert ["local", "balsam", "+balsam_member,+balsam_viewer", "peer"] in lines
    tcp = [ln for ln in lines if ln[0] == "host" and ln[-1] == "scram-sha-256"]
    assert {ln[1] for ln in tcp} == {"balsam"} and {ln[3] for ln in tcp} == {"0.0.0.0/0", "::/0"}
    assert lines[-3:] == [["local", "all", "all", "reject"],
                          ["host", "all", "all", "0.0.0.0/0", "reject"],
                          ["host", "all", "all", "::/0", "reject"]]


def test_hba_refuses_odd_names() -> None:
    with pytest.raises(ValueError):
        pgconf.render_hba("bob all trust\nhost")


def test_conf_relative_paths_and_safe_defaults() -> None:
    conf = pgconf.render_conf(port=6000, listen="localhost", group="proj")
    assert "unix_socket_directories = '../run'" in conf
    assert "log_directory = '../log/server'" in conf
    assert "listen_addresses = 'localhost'" in conf
    assert "log_statement = 'none'" in conf
    assert "password_encryption = 'scram-sha-256'" in conf
    assert pgconf.read_port(conf) == 6000
    assert "/" not in conf.split("unix_socket_directories = ")[1].split("'")[1].strip("./")


@pytest.mark.parametrize("bad", ["", "a b", "x';y", "host\n"])
def test_listen_validation(bad: str) -> None:
    with pytest.raises(ValueError):
        pgconf.validate_listen(bad)


def test_include_added_once() -> None:
    once = pgconf.with_include("a = 1\n")
    assert pgconf.with_include(once) == once
    assert once.count(pgconf.INCLUDE_LINE) == 1


def test_wal_settings_keep_pg_wal_bounded() -> None:
    """Issue 15 case 13: no replication or archive (minimal WAL), compressed full pages,
    and a checkpoint after at most max_wal_size of WAL (docs/retention.md)."""
    conf = pgconf.render_conf(port=6000, listen="localhost", group="proj")
    for line in ("wal_level = minimal", "max_wal_senders = 0", "archive_mode = off",
                 "wal_compression = on", f"max_wal_size = {pgconf.WAL_MAX_MB}MB",
                 f"min_wal_size = {pgconf.WAL_MIN_MB}MB"):
        assert line in conf.splitlines(), line
    assert pgconf.WAL_MIN_MB < pgconf.WAL_MAX_MB <= 256
