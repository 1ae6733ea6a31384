"""`balsam-dbctl prune` as the real users (issue 15 case 13): only the owner forgets
history; a member removes the directories of workflows wholly theirs and nothing else;
what a member plants in data/ never leads the owner's prune outside it."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from .conftest import MEMBER, MEMBER2, OWNER, VIEWER, Runner, one_line, port_of

Steps = dict[str, subprocess.CompletedProcess[str]]


def _rows(result: dict[str, Any], i: int = 0) -> list[Any]:
    entry = result["results"][i]
    assert entry["ok"], entry
    rows: list[Any] = entry["rows"]
    return rows


@pytest.fixture(scope="module")
def finished(mu: Runner, enrolled: Steps) -> dict[str, Any]:
    """A finished task of MEMBER (workflow prm) and of MEMBER2 (workflow prm2), each with a
    working directory its owner wrote."""
    _rows(mu.probe(OWNER, ["INSERT INTO apps (name, command) VALUES ('hello', 'echo') "
                           "ON CONFLICT (name) DO NOTHING"]))
    ids = {}
    for user, wf in ((MEMBER, "prm"), (MEMBER2, "prm2")):
        made = mu.probe(user, [(
            "INSERT INTO tasks (workflow, name, app_id, state) SELECT %s, 't', id, "
            "'READY' FROM apps WHERE name = 'hello' RETURNING id", [wf])])
        ids[wf] = _rows(made)[0][0]
    assert mu.project is not None
    # Finished as a launcher would finish them, step by legal step: members may not move
    # their tasks' states themselves, so the database superuser (the owner's OS account,
    # over the socket) plays the launcher here.
    finish = ("UPDATE tasks SET state = 'RUNNING' WHERE id IN (:a, :b); "
              "UPDATE tasks SET state = 'RUN_DONE' WHERE id IN (:a, :b); "
              "UPDATE tasks SET state = 'JOB_FINISHED' WHERE id IN (:a, :b)")
    done = mu.run(OWNER, ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", "-h",
                          str(mu.project / "run"), "-p", str(port_of(mu)), "-U",
                          "balsam_superuser", "-v", f"a={ids['prm']}", "-v",
                          f"b={ids['prm2']}", "balsam"], input_text=finish + ";\n")
    assert done.returncode == 0, done.stderr
    dirs = {wf: mu.project / "data" / wf / str(tid // 1000) / f"t_{tid}"
            for wf, tid in ids.items()}
    for user, wf in ((MEMBER, "prm"), (MEMBER2, "prm2")):
        made = mu.bash(user, f"source balsamactivate {mu.project} 2>/dev/null && "
                             f"mkdir -p {dirs[wf]} && echo out > {dirs[wf]}/task.out")
        assert made.returncode == 0, made.stderr
    return {"ids": ids, "dirs": dirs}


def _count(mu: Runner, wf: str) -> int:
    return int(_rows(mu.probe(VIEWER, [("SELECT count(*) FROM tasks WHERE workflow = %s",
                                        [wf])]))[0][0])


def test_a_member_cannot_prune_history(mu: Runner, finished: dict[str, Any]) -> None:
    line = one_line(mu.dbctl(MEMBER, "prune", "--workflow", "prm", "--yes"))
    assert "only the project owner" in line and "--dirs-only" in line
    assert _count(mu, "prm") == 1 and finished["dirs"]["prm"].exists()


def test_a_member_removes_only_directories_of_workflows_wholly_theirs(
        mu: Runner, finished: dict[str, Any]) -> None:
    line = one_line(mu.dbctl(MEMBER, "prune", "--workflow", "prm2", "--dirs-only", "--yes"))
    assert "belong to other members" in line and finished["dirs"]["prm2"].exists()
    done = mu.dbctl(MEMBER, "prune", "--workflow", "prm", "--dirs-only", "--yes")
    assert done.returncode == 0, done.stderr
    assert not finished["dirs"]["prm"].exists() and _count(mu, "prm") == 1  # rows kept


def test_the_owner_prunes_and_a_planted_link_leads_nowhere(
        mu: Runner, finished: dict[str, Any]) -> None:
    assert mu.project is not None
    leaf = finished["dirs"]["prm2"]
    secret = mu.project.parent / "owner-secret"
    made = mu.bash(OWNER, f"echo keep > {secret} && chmod 600 {secret}")
    assert made.returncode == 0, made.stderr
    # MEMBER plants, inside MEMBER2's task directory, a link to the owner's file.
    planted = mu.bash(MEMBER, f"ln -s {secret} {leaf}/escape && ln -s {secret.parent} "
                              f"{leaf}/up")
    assert planted.returncode == 0, planted.stderr
    done = mu.dbctl(OWNER, "prune", "--workflow", "prm2", "--yes")
    assert done.returncode == 0, done.stderr
    assert "pruned 1 workflow(s) (prm2): 1 tasks" in done.stdout
    assert not leaf.exists() and secret.read_text() == "keep\n"
    assert _count(mu, "prm2") == 0
