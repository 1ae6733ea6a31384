"""`balsam-mpi autoscale` and `job sync` as the real UNIX users: a member's look reads the
backlog, holds its lock and would submit; a viewer's is refused in one line; the lock is
each caller's own (migrations/0024)."""

from __future__ import annotations

import json

from .conftest import MEMBER, MEMBER2, OWNER, VIEWER, Runner, one_line
from .test_06_database_attacks import Steps, _cli, _rows, _world

FLAGS = ("--scheduler", "slurm", "-n", "2", "-t", "10", "--workflow", "mu-scale", "--once",
         "--dry-run")


def _backlog(mu: Runner) -> None:
    _rows(mu.probe(OWNER, ["INSERT INTO apps (name, command) VALUES ('hello', 'echo') "
                           "ON CONFLICT (name) DO NOTHING"]))
    lines = "".join(json.dumps({"app": "hello", "workflow": "mu-scale", "name": f"s{i}",
                                "node_packing_count": 2}) + "\n" for i in range(5))
    added = _cli(mu, MEMBER, "task", "add", "--from-file", "-", stdin=lines)
    assert added.returncode == 0, added.stderr


def test_a_members_look_reads_the_backlog_and_changes_nothing_in_a_dry_run(
        mu: Runner, enrolled: Steps) -> None:
    _backlog(mu)
    before = _world(mu)
    look = _cli(mu, MEMBER, "autoscale", *FLAGS)
    assert look.returncode == 0, look.stderr
    assert "5 runnable tasks need 2.50 nodes" in look.stdout, look.stdout
    assert "submitting 2 node(s) (dry run: nothing submitted)" in look.stdout, look.stdout
    synced = _cli(mu, MEMBER2, "job", "sync")
    assert synced.returncode == 0 and "0 closed" in synced.stdout, synced.stderr
    assert _world(mu) == before


def test_a_viewer_cannot_look(mu: Runner, enrolled: Steps) -> None:
    refused = _cli(mu, VIEWER, "autoscale", *FLAGS)
    assert "not allowed" in one_line(refused) or "permission" in one_line(refused)


def test_the_lock_is_each_members_own(mu: Runner, enrolled: Steps) -> None:
    """One member's lock of some filters does not hold up another's look with the same
    filters, and a second lock in one session is refused (no filling the lock table)."""
    key = json.dumps({"workflows": ["mu-scale"]})
    held = mu.probe(MEMBER, [("SELECT autoscale_try_lock(%s::jsonb)", [key]),
                             ("SELECT autoscale_try_lock(%s::jsonb)",
                              [json.dumps({"workflows": ["other"]})]),
                             ("SELECT autoscale_try_lock(%s::jsonb)", [key])])
    assert [_rows(held, i)[0][0] for i in range(3)] == [True, False, False]
    theirs = mu.probe(MEMBER2, [("SELECT autoscale_try_lock(%s::jsonb)", [key])])
    assert _rows(theirs)[0][0] is True
