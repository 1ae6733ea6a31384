"""Settings precedence: CLI flag > BALSAM_* env > settings.toml [launcher] > default."""

from __future__ import annotations

import pytest

from balsam_mpi.config import Settings, resolve
from balsam_mpi.errors import UsageError


def test_defaults() -> None:
    s = resolve({}, {}, {})
    assert s == Settings()
    assert s.idle_timeout_s == 10.0 and not s.persistent and s.workflows == ()


def test_precedence_flag_over_env_over_file() -> None:
    file = {"launcher": {"idle_timeout_s": 3.0, "lease_s": 30.0, "heartbeat_s": 5.0}}
    env = {"BALSAM_IDLE_TIMEOUT_S": "2", "BALSAM_LEASE_S": "20"}
    s = resolve({"idle_timeout_s": 1.0}, env, file)
    assert (s.idle_timeout_s, s.lease_s, s.heartbeat_s) == (1.0, 20.0, 5.0)


def test_lists_tags_and_booleans() -> None:
    s = resolve({"workflows": ["a", "b"], "tags": ["k=v", "x=1=2"], "persistent": True},
                {"BALSAM_DIE_WITH_PARENT": "0", "BALSAM_OWNERS": "alice, bob"})
    assert s.workflows == ("a", "b")
    assert s.tag_filter == {"k": "v", "x": "1=2"}
    assert s.persistent and not s.die_with_parent
    assert s.owners == ("alice", "bob")


def test_project_is_not_taken_from_a_balsam_env_name() -> None:
    assert resolve({}, {"BALSAM_PROJECT": "/x"}).project is None


@pytest.mark.parametrize(("cli", "env"), [
    ({"idle_timeout_s": -1.0}, {}),
    ({}, {"BALSAM_LEASE_S": "soon"}),
    ({"tags": ["novalue"]}, {}),
    ({}, {"BALSAM_PERSISTENT": "maybe"}),
])
def test_bad_values_say_which_setting(cli: dict[str, object], env: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        resolve(cli, env)
