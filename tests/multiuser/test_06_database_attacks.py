"""The database's side of the Security and Reliability issues, as the real UNIX users:
each attack fails with one clear line (a CLI error, or the server's one-line refusal)
and changes nothing. Numbers name the issue's cases (security 14.x, reliability 15.x)."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from balsam_mpi.dbctl import rolelimits

from .conftest import MEMBER, MEMBER2, OWNER, VIEWER, Runner, one_line

Steps = dict[str, subprocess.CompletedProcess[str]]


def _entry(result: dict[str, Any], i: int = 0) -> dict[str, Any]:
    assert "connect_error" not in result, result
    entry: dict[str, Any] = result["results"][i]
    return entry


def _rows(result: dict[str, Any], i: int = 0) -> list[Any]:
    entry = _entry(result, i)
    assert entry["ok"], entry
    rows: list[Any] = entry["rows"]
    return rows


def _refused(result: dict[str, Any], sqlstate: str = "42501") -> list[str]:
    """Every statement refused with ``sqlstate``, each with a one-line message."""
    lines = []
    for entry in result["results"]:
        assert not entry["ok"] and entry["sqlstate"] == sqlstate, entry
        assert "\n" not in entry["error"]
        lines.append(entry["error"])
    return lines


def _cli(mu: Runner, user: str, *args: str, stdin: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    return mu.run(user, [str(mu.venv / "bin" / "balsam-mpi"), *args], input_text=stdin)


def _world(mu: Runner) -> list[Any]:
    """Everything an attack could have changed: tasks, dependencies, batch jobs, history."""
    return _rows(mu.probe(OWNER, [
        "SELECT (SELECT json_agg(t ORDER BY id) FROM tasks t), "
        "(SELECT json_agg(d ORDER BY child_id, parent_id) FROM task_deps d), "
        "(SELECT json_agg(b ORDER BY id) FROM batch_jobs b), "
        "(SELECT count(*) FROM task_events)"]))


@pytest.fixture(scope="module")
def world(mu: Runner, enrolled: Steps) -> dict[str, int]:
    """An app; a READY task of MEMBER2 and one of MEMBER; the owner's live batch job."""
    _rows(mu.probe(OWNER, ["INSERT INTO apps (name, command) VALUES ('hello', 'echo') "
                           "ON CONFLICT (name) DO NOTHING RETURNING id"]))
    app = _rows(mu.probe(OWNER, ["SELECT id FROM apps WHERE name = 'hello'"]))[0][0]
    add = ("INSERT INTO tasks (workflow, app_id, state) VALUES ('attack', %s, 'READY') "
           "RETURNING id", [app])
    theirs = _rows(mu.probe(MEMBER2, [add]))[0][0]
    mine = _rows(mu.probe(MEMBER, [add]))[0][0]
    job = _rows(mu.probe(OWNER, ["SELECT job_id FROM launcher_open_job(NULL, 'pbs', "
                                 "'100.owner', 'h', 4, 4, '{}', NULL, 3600)"]))[0][0]
    return {"app": app, "theirs": theirs, "mine": mine, "job": job}


# -- 14.4: state changes only through checked functions ----------------------------------
def test_a_backdated_run_cannot_be_billed_to_the_owners_job(mu: Runner,
                                                            world: dict[str, int]) -> None:
    """A member's raw INSERT/UPDATE charged a 3-day run to the owner's live batch job
    (`report jobs`: 5971 % utilization)."""
    before = _world(mu)
    forge = ("UPDATE tasks SET state = 'RUNNING', batch_job_id = %s, "
             "started_at = now() - interval '3 days' WHERE id = %s")
    lines = _refused(mu.probe(MEMBER, [
        (forge, [world["job"], world["mine"]]),
        ("UPDATE tasks SET batch_job_id = %s, lease_epoch = 1 WHERE id = %s",
         [world["job"], world["mine"]]),
        ("UPDATE tasks SET ended_at = now(), exit_code = 0 WHERE id = %s", [world["mine"]]),
        ("INSERT INTO tasks (workflow, app_id, state, batch_job_id, started_at) VALUES "
         "('attack', %s, 'READY', %s, now() - interval '3 days')",
         [world["app"], world["job"]]),
        ("INSERT INTO tasks (workflow, app_id, lost_retries, created_at) VALUES "
         "('attack', %s, 9, '2000-01-01')", [world["app"]]),
    ]))
    assert all("permission denied" in line for line in lines)
    rls = _refused(mu.probe(MEMBER, [("INSERT INTO tasks (workflow, app_id, state) VALUES "
                                      "('attack', %s, 'RUNNING')", [world["app"]])]))
    assert "row-level security" in rls[0]
    assert _world(mu) == before
    charged = _rows(mu.probe(VIEWER, [("SELECT count(*) FROM task_events WHERE "
                                       "batch_job_id = %s", [world["job"]])]))
    assert charged == [[0]]


def test_no_member_can_change_another_members_task(mu: Runner, world: dict[str, int]) -> None:
    before = _world(mu)
    task = world["theirs"]
    _refused(mu.probe(MEMBER, [
        ("UPDATE tasks SET state = 'USER_KILLED' WHERE id = %s", [task]),
        ("UPDATE tasks SET args = '{rm,-rf}' WHERE id = %s", [task]),
        ("UPDATE tasks SET env = '{\"LD_PRELOAD\": \"/tmp/x.so\"}' WHERE id = %s", [task]),
        ("DELETE FROM tasks WHERE id = %s", [task]),
        "TRUNCATE tasks",
        ("INSERT INTO task_deps (child_id, parent_id) VALUES (%s, %s)",
         [task, world["mine"]]),
        "DELETE FROM task_deps",
    ]))
    # The plain columns: another's rows are not visible to UPDATE.
    plain = mu.probe(MEMBER, [("UPDATE tasks SET priority = 9 WHERE id = %s", [task])])
    assert _entry(plain)["rowcount"] == 0
    # The functions say why, per task.
    owner_says = f"not yours (owner {MEMBER2})"
    outcomes = mu.probe(MEMBER, [
        ("SELECT outcome FROM tasks_kill(%s::bigint[])", [[task]]),
        ("SELECT outcome FROM tasks_retry(%s::bigint[])", [[task]]),
        ("SELECT outcome FROM tasks_delete(%s::bigint[])", [[task]]),
        ("SELECT outcome FROM tasks_modify(%s::bigint[], '{\"args\": [\"x\"]}')", [[task]]),
    ])
    assert [_rows(outcomes, i) for i in range(4)] == [[[owner_says]]] * 4
    [line] = _refused(mu.probe(MEMBER, [("SELECT tasks_add_dependency(%s, %s)",
                                         [world["mine"], task])]))
    assert f"belongs to {MEMBER2}" in line
    # The CLI: one line, exit 1, and it never claims to have done what it did not.
    for verb in (["task", "kill"], ["task", "rm", "--yes"], ["task", "retry"]):
        line = one_line(_cli(mu, MEMBER, *verb, str(task)))
        assert f"left alone (not yours (owner {MEMBER2})): {task}" in line, line
    assert _world(mu) == before


def test_no_member_moves_their_own_task_where_the_state_machine_forbids(
        mu: Runner, world: dict[str, int]) -> None:
    mine = world["mine"]
    before = _world(mu)
    _refused(mu.probe(MEMBER, [
        ("UPDATE tasks SET state = 'JOB_FINISHED' WHERE id = %s", [mine]),
        ("UPDATE tasks SET state = 'RUNNING' WHERE id = %s", [mine]),
    ]))
    line = one_line(_cli(mu, MEMBER, "task", "retry", str(mine)))
    assert "only FAILED or USER_KILLED tasks are retried" in line
    assert _world(mu) == before


def test_no_member_or_viewer_locks_a_table_launchers_write(mu: Runner,
                                                           world: dict[str, int]) -> None:
    """`LOCK TABLE tasks` by a member stalled every launcher and `ls`."""
    for user in (MEMBER, VIEWER):
        for table in ("tasks", "batch_jobs", "task_deps", "task_events"):
            # LOCK needs a transaction: two statements in one string run in one
            statements = [f"LOCK TABLE {table} IN {mode} MODE; SELECT 1"
                          for mode in ("ROW EXCLUSIVE", "SHARE", "EXCLUSIVE",
                                       "ACCESS EXCLUSIVE")]
            _refused(mu.probe(user, statements))


def test_a_viewer_can_call_none_of_the_writing_functions(mu: Runner,
                                                         world: dict[str, int]) -> None:
    before = _world(mu)
    task = world["mine"]
    _refused(mu.probe(VIEWER, [
        ("SELECT * FROM tasks_kill(%s::bigint[])", [[task]]),
        ("SELECT * FROM tasks_modify(%s::bigint[], '{\"priority\": 1}')", [[task]]),
        ("SELECT * FROM tasks_delete(%s::bigint[])", [[task]]),
        ("SELECT * FROM tasks_retry(%s::bigint[])", [[task]]),
        ("SELECT tasks_add_dependency(%s, %s)", [world["theirs"], task]),
        "SELECT tasks_reserve_ids(1000000)",
        "SELECT batch_job_submit('pbs', 'h', 1, '{}', NULL)",
        "SELECT * FROM launcher_open_job(NULL, 'local', NULL, 'h', 1, 1, '{}', NULL, 60)",
        "SELECT * FROM launcher_expire_leases()",
        ("UPDATE tasks SET priority = 1 WHERE id = %s", [task]),
    ], route="tcp"))
    assert _world(mu) == before


# -- 14.5: limits ---------------------------------------------------------------------------
HOG = """
import sys
from balsam_mpi.base import db
from balsam_mpi.base.errors import BalsamError
from balsam_mpi.base.project import Project
held = []
try:
    for _ in range(int(sys.argv[1])):
        held.append(db.connect(Project.from_env(), route="tcp", autocommit=True))
    print(len(held), "ok")
except BalsamError as exc:
    print(len(held), str(exc).splitlines()[0])
"""


def test_a_viewer_cannot_take_every_connection(mu: Runner, enrolled: Steps) -> None:
    """A viewer opened 395 connections and locked everyone out."""
    proc = mu.run(VIEWER, [str(mu.venv / "bin" / "python"), "-c", HOG, "400"], timeout=240)
    assert proc.returncode == 0, proc.stderr
    count, _, message = proc.stdout.strip().partition(" ")
    assert int(count) == rolelimits.VIEWER.connections
    assert "too many connections for role" in message
    assert _rows(mu.probe(MEMBER, ["SELECT 1"], route="tcp")) == [[1]]
    settings = _rows(mu.probe(VIEWER, [
        "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), "
        "current_setting('idle_in_transaction_session_timeout')"]))
    limits = rolelimits.VIEWER
    assert settings == [[limits.statement_timeout, limits.lock_timeout,
                         limits.idle_in_transaction_session_timeout]]


def test_large_objects_and_advisory_locks_are_nobodys(mu: Runner,
                                                      world: dict[str, int]) -> None:
    """A viewer wrote 62 MB through lo_from_bytea and held the advisory lock that every
    task add waited for."""
    for user in (VIEWER, MEMBER):
        _refused(mu.probe(user, [
            "SELECT lo_from_bytea(0, repeat('x', 1000)::bytea)",
            "SELECT lo_create(0)",
            "SELECT pg_advisory_lock(hashtext('balsam_mpi.tasks_reserve_ids'))",
            "SELECT pg_try_advisory_lock(1)",
            "SELECT pg_advisory_xact_lock(hashtext('balsam_mpi.dag_edits'))",
            "SELECT pg_notify('x', 'y')",
        ], route="tcp"))
    assert _rows(mu.probe(VIEWER, ["SELECT count(*) FROM pg_largeobject_metadata"])) == [[0]]
    added = _cli(mu, MEMBER, "task", "add", "--app", "hello", "--workflow", "attack2")
    assert added.returncode == 0, added.stderr


def test_a_sixty_megabyte_parameter_is_refused(mu: Runner, world: dict[str, int]) -> None:
    before = _world(mu)
    big = mu.probe(MEMBER, [("INSERT INTO tasks (workflow, app_id, state, params) VALUES "
                             "('attack', %s, 'READY', jsonb_build_object('x', "
                             "repeat('y', 60000000)))", [world["app"]])])
    [line] = _refused(big, "23514")
    assert "tasks_params_limit" in line
    assert _world(mu) == before


# -- 14.6: squatting --------------------------------------------------------------------------
def test_a_squatted_scheduler_job_id_does_not_stop_the_real_launcher(
        mu: Runner, world: dict[str, int]) -> None:
    """A member recorded the owner's next scheduler job id as theirs, and the owner's
    launcher refused to start."""
    squat = _rows(mu.probe(MEMBER, [
        "SELECT batch_job_set_scheduler_id(batch_job_submit('pbs', 'h', 1, '{}', NULL), "
        "'101.owner')"]))[0][0]
    assert squat is not None
    _refused(mu.probe(MEMBER, [
        "INSERT INTO batch_jobs (scheduler, scheduler_job_id) VALUES ('pbs', '102.owner')",
        "UPDATE batch_jobs SET scheduler_job_id = '100.owner'"]))
    opened = _rows(mu.probe(OWNER, [
        "SELECT job_id, adopted FROM launcher_open_job(NULL, 'pbs', '101.owner', 'h', 1, 1, "
        "'{}', NULL, 60)"]))
    assert opened[0][0] != squat and opened[0][1] is False
    [line] = _refused(mu.probe(OWNER, [(
        "SELECT * FROM launcher_open_job(%s, 'pbs', NULL, 'h', 1, 1, '{}', NULL, 60)",
        [squat])]))
    assert f"belongs to {MEMBER}" in line


# -- 14.7 / 15.12: a poison row cannot be planted ------------------------------------------------
POISON = "INSERT INTO tasks (workflow, app_id, state, {}) VALUES ('attack', %s, 'READY', %s)"


@pytest.mark.parametrize("statement, value, constraint", [
    (POISON.format("env"), '{"A=B": "x"}', "tasks_env_limit"),
    (POISON.format("env"), '{"PATH": 1}', "tasks_env_limit"),
    (POISON.format("args"), '{x,NULL}', "tasks_args_limit"),
    (POISON.format("num_nodes"), "2147483647", "tasks_num_nodes_limit"),
    (POISON.format("wall_time_min"), "Infinity", "tasks_wall_time_min_limit"),
    (POISON.format("wall_time_min"), "NaN", "tasks_wall_time_min_limit"),
    (POISON.format("gpus_per_rank"), "1000", "tasks_gpus_per_rank_limit"),
    (POISON.format("input_files"), "{../../../home/x/.pgpass}", "tasks_input_files_limit"),
], ids=["env-name", "env-value", "args-null", "num-nodes", "wall-inf", "wall-nan", "gpus",
        "input-files"])
def test_a_poison_row_is_refused_at_insert(mu: Runner, world: dict[str, int], statement: str,
                                           value: str, constraint: str) -> None:
    before = _world(mu)
    result = mu.probe(MEMBER, [(statement, [world["app"], value])])
    [line] = _refused(result, "23514")
    assert constraint in line
    assert _world(mu) == before


# -- 15.2 / 15.4: empty ids and impossible leases ---------------------------------------------
EMPTY = """
from balsam_mpi import Client
with Client() as c:
    print(len(c.kill([])), len(c.delete([])), len(c.retry([])), len(c.kill(ids=[],
          workflow="attack")), sum(1 for _ in c.tasks()))
"""


def test_an_empty_id_list_changes_nothing(mu: Runner, world: dict[str, int]) -> None:
    before = _world(mu)
    proc = mu.run(MEMBER, [str(mu.venv / "bin" / "python"), "-c", EMPTY])
    assert proc.returncode == 0, proc.stderr
    killed, deleted, retried, filtered, total = map(int, proc.stdout.split())
    assert (killed, deleted, retried, filtered) == (0, 0, 0, 0) and total >= 2
    assert _rows(mu.probe(MEMBER, ["SELECT count(*) FROM tasks_kill('{}')"])) == [[0]]
    [line] = _refused(mu.probe(MEMBER, ["SELECT * FROM tasks_kill(NULL)"]), "22004")
    assert "NULL does not mean every task" in line
    assert _world(mu) == before


def test_a_lease_of_inf_or_nan_is_refused_and_recovery_still_works(
        mu: Runner, world: dict[str, int]) -> None:
    before = _world(mu)
    lines = _refused(mu.probe(MEMBER, [
        ("SELECT * FROM launcher_open_job(NULL, 'local', NULL, 'h', 1, 1, '{}', NULL, "
         "%s::float8)", [lease]) for lease in ("Infinity", "NaN", "1e300", "-1")]), "22023")
    assert all("lease_sec" in line for line in lines)
    assert _world(mu) == before
    recover = mu.dbctl(MEMBER, "recover")
    assert recover.returncode == 0, recover.stderr
