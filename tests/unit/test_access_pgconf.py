"""The superuser is reached only by the owner's OS account, over the socket, by peer."""

from __future__ import annotations

import pytest

from balsam_mpi.dbctl import pgconf


def _lines(text: str) -> list[list[str]]:
    return [ln.split() for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_superuser_only_through_the_owners_peer_map() -> None:
    hba = _lines(pgconf.render_hba(pgconf.SUPERUSER_ROLE, "proj_owner"))
    assert hba[0] == ["local", "all", "balsam_superuser", "peer", "map=balsam_superuser"]
    assert all("balsam_superuser" not in ln for ln in hba[1:])
    assert all(ln[0] == "local" or ln[-1] in ("scram-sha-256", "reject") for ln in hba)
    assert all(ln[1] == "balsam" for ln in hba if ln[-1] == "scram-sha-256")
    ident = _lines(pgconf.render_ident(pgconf.SUPERUSER_ROLE, "proj_owner"))
    assert ident == [["balsam_superuser", "proj_owner", "balsam_superuser"]]


def test_no_map_when_the_superuser_is_the_owner() -> None:
    assert _lines(pgconf.render_ident("alice", "alice")) == []
    assert _lines(pgconf.render_hba("alice", "alice"))[0] == ["local", "all", "alice", "peer"]


@pytest.mark.parametrize("owner", ["bob all", "x\nlocal all all trust", "/^.*$"])
def test_odd_owner_names_are_refused(owner: str) -> None:
    with pytest.raises(ValueError):
        pgconf.render_ident(pgconf.SUPERUSER_ROLE, owner)
    with pytest.raises(ValueError):
        pgconf.render_hba(pgconf.SUPERUSER_ROLE, owner)
