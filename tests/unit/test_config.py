"""Settings precedence: CLI flag > BALSAM_* env > settings.toml [launcher] > default."""

from __future__ import annotations

from typing import Any

import pytest

from balsam_mpi.base.errors import UsageError
from balsam_mpi.launcher.config import Settings, resolve


def test_defaults() -> None:
    s = resolve({}, {}, {})
    assert s == Settings()
    assert s.idle_timeout_s == 10.0 and not s.persistent and s.workflows == ()


def test_precedence_flag_over_env_over_file() -> None:
    file = {"launcher": {"idle_timeout_s": 3.0, "lease_s": 30.0, "heartbeat_s": 5.0}}
    env = {"BALSAM_IDLE_TIMEOUT_S": "2", "BALSAM_LEASE_S": "20", "BALSAM_KILL_GRACE_S": "5"}
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


# -- issue 15 case 4: every setting finite and in range, checked when read ----------------
@pytest.mark.parametrize(("cli", "env", "toml", "message"), [
    ({}, {"BALSAM_LEASE_S": "inf"}, {}, "BALSAM_LEASE_S: lease_s must be"),
    ({}, {"BALSAM_LEASE_S": "nan"}, {}, "BALSAM_LEASE_S: lease_s must be"),
    ({}, {"BALSAM_LEASE_S": "1e400"}, {}, "BALSAM_LEASE_S: lease_s must be"),
    ({"idle_timeout_s": float("nan")}, {}, {}, "--idle-timeout: idle_timeout_s must be"),
    ({"idle_timeout_s": float("inf")}, {}, {}, "--idle-timeout: idle_timeout_s must be"),
    ({}, {}, {"lease_s": float("inf")}, r"settings.toml \[launcher\] lease_s: lease_s must"),
    ({}, {}, {"heartbeat_s": float("nan")}, r"settings.toml \[launcher\] heartbeat_s: "),
    ({}, {"BALSAM_LEASE_S": "0.001"}, {}, "lease_s must be a number of seconds from 1 to"),
    ({}, {"BALSAM_LEASE_S": str(10**9)}, {}, "lease_s must be a number of seconds from 1 to"),
    ({"gpus_per_node": 1000}, {}, {}, "--gpus-per-node: gpus_per_node must be from 0 to 64"),
    ({"max_tasks": -1}, {}, {}, "--max-tasks: max_tasks must be from 0"),
    ({}, {"BALSAM_FLUSH_SIZE": "1e3"}, {}, "BALSAM_FLUSH_SIZE: flush_size must be a whole"),
    ({}, {"BALSAM_FLUSH_SIZE": "٣"}, {}, "BALSAM_FLUSH_SIZE: flush_size must be a whole"),
    ({}, {}, {"flush_size": 2.5}, r"\[launcher\] flush_size: flush_size must be a whole"),
    ({}, {}, {"flush_size": True}, r"\[launcher\] flush_size: flush_size must be a whole"),
    ({}, {}, {"persistent": 2}, r"\[launcher\] persistent: persistent must be true or false"),
    ({}, {}, {"lease_s": "60"}, r"\[launcher\] lease_s: lease_s must be a number"),
    ({}, {}, {"lease": 30}, r"settings.toml \[launcher\]: unknown setting 'lease'"),
    ({}, {"BALSAM_LOG_LEVEL": "LOUD"}, {}, "BALSAM_LOG_LEVEL: log_level must be one of"),
    ({"workflows": ["a\x00b"]}, {}, {}, "--workflow: workflows"),
    ({"owners": ["x" * 1000]}, {}, {}, "--owner: owners"),
    ({}, {"BALSAM_TIME_LIMIT_MIN": "1e9"}, {}, "BALSAM_TIME_LIMIT_MIN: time_limit_min"),
])
def test_every_setting_is_finite_and_in_range(cli: dict[str, object], env: dict[str, str],
                                              toml: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message) as err:
        resolve(cli, env, {"launcher": toml})
    assert err.value.exit_code == 2 and "\n" not in str(err.value)


@pytest.mark.parametrize(("env", "message"), [
    ({"BALSAM_HEARTBEAT_S": "30"},
     r"^heartbeat_s \(30, from BALSAM_HEARTBEAT_S\) must be less than half of lease_s "
     r"\(60, the default\)"),
    ({"BALSAM_KILL_GRACE_S": "31"},
     r"^kill_grace_s \(31, from BALSAM_KILL_GRACE_S\) must be less than half of lease_s"),
    ({"BALSAM_LEASE_S": "8", "BALSAM_HEARTBEAT_S": "1"},
     r"^kill_grace_s \(10, the default\) must be less than half of lease_s \(8, from "
     r"BALSAM_LEASE_S\)"),
    ({"BALSAM_CLAIM_MARGIN": "2", "BALSAM_CLAIM_MARGIN_MAX": "1"},
     r"^claim_margin \(2, from BALSAM_CLAIM_MARGIN\) must not exceed claim_margin_max"),
    ({"BALSAM_TIME_LIMIT_MIN": "0.25"},
     r"^drain_grace_s \(30, the default\) must be less than time_limit_min \(0.25 min = 15 s"),
])
def test_relations_between_settings_name_both_and_where_they_came_from(
        env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        resolve({}, env)


def test_the_launcher_section_must_be_a_table() -> None:
    with pytest.raises(UsageError, match=r"^settings.toml \[launcher\]: must be a table"):
        resolve({}, {}, {"launcher": 5})


def test_settings_that_are_fine_pass() -> None:
    s = resolve({"idle_timeout_s": 0.0, "gpus_per_node": 8}, {
        "BALSAM_LEASE_S": "6", "BALSAM_HEARTBEAT_S": "1", "BALSAM_KILL_GRACE_S": "1",
        "BALSAM_FLUSH_SIZE": " 1024 ", "BALSAM_LOG_LEVEL": "debug"},
        {"launcher": {"drain_grace_s": 20, "time_limit_min": 1}})
    assert (s.lease_s, s.heartbeat_s, s.kill_grace_s, s.flush_size, s.log_level,
            s.drain_grace_s, s.time_limit_min) == (6.0, 1.0, 1.0, 1024, "DEBUG", 20.0, 1.0)
    assert isinstance(s.drain_grace_s, float)


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--idle-timeout", "nan"], {}, "--idle-timeout: idle_timeout_s must be"),
    (["--max-tasks", "many"], {}, "argument --max-tasks: invalid int value: 'many'"),
    ([], {"BALSAM_LEASE_S": "inf"}, "BALSAM_LEASE_S: lease_s must be"),
    # Both flags were taken and --persistent won silently, where `submit` refuses the pair.
    (["--persistent", "--idle-timeout", "5"], {},
     "--persistent never exits for lack of work, --idle-timeout after a while"),
])
def test_the_launcher_refuses_a_bad_setting_in_one_line_with_status_2(
        tmp_path: Any, args: list[str], env: dict[str, str], message: str) -> None:
    """Before it touches the database: `python -m balsam_mpi` exits 2 with one line."""
    import os
    import subprocess
    import sys

    full = {k: v for k, v in os.environ.items() if not k.startswith("BALSAM_")}
    proc = subprocess.run([sys.executable, "-m", "balsam_mpi", "--project", str(tmp_path),
                           *args], env={**full, **env}, capture_output=True, text=True,
                          timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and message in lines[0], proc.stderr


@pytest.mark.parametrize("cli, env, file, persistent, idle", [
    # settings.toml's persistent with an --idle-timeout flag once ran a job meant to end
    # when idle until its wall time; `init` writes idle_timeout_s into settings.toml, so a
    # --persistent flag must win over it.
    ({"idle_timeout_s": 5.0}, {}, {"persistent": True}, False, 5.0),
    ({"persistent": True}, {}, {"idle_timeout_s": 30.0}, True, None),
    ({"idle_timeout_s": 5.0}, {"BALSAM_PERSISTENT": "1"}, {}, False, 5.0),
    ({}, {"BALSAM_IDLE_TIMEOUT_S": "2"}, {"persistent": True}, False, 2.0),
    ({}, {"BALSAM_PERSISTENT": "1"}, {"idle_timeout_s": 10.0}, True, None),
])
def test_of_persistent_and_an_idle_timeout_the_nearer_layer_wins(
        cli: dict[str, object], env: dict[str, str], file: dict[str, object],
        persistent: bool, idle: float | None) -> None:
    s = resolve(cli, env, {"launcher": file})
    assert s.persistent is persistent
    if idle is not None:
        assert s.idle_timeout_s == idle


@pytest.mark.parametrize("env, file, says", [
    ({"BALSAM_PERSISTENT": "1", "BALSAM_IDLE_TIMEOUT_S": "2"}, {},
     "persistent (from BALSAM_PERSISTENT) never exits for lack of work, idle_timeout_s "
     "(2, from BALSAM_IDLE_TIMEOUT_S)"),
    ({}, {"persistent": True, "idle_timeout_s": 5.0},
     "persistent (from settings.toml [launcher] persistent) never exits for lack of work, "
     "idle_timeout_s (5, from settings.toml [launcher] idle_timeout_s)"),
])
def test_persistent_and_an_idle_timeout_in_one_layer_are_refused(
        env: dict[str, str], file: dict[str, object], says: str) -> None:
    """Which one was meant cannot be known (the flag pair is refused the same way)."""
    with pytest.raises(UsageError) as err:
        resolve({}, env, {"launcher": file})
    assert says in str(err.value) and "\n" not in str(err.value)
    assert err.value.exit_code == 2


def test_persistent_false_goes_with_an_idle_timeout() -> None:
    s = resolve({"idle_timeout_s": 5.0}, {}, {"launcher": {"persistent": False}})
    assert (s.persistent, s.idle_timeout_s) == (False, 5.0)
