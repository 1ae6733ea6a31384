"""An app's preprocess and postprocess (and its error and timeout handlers) under the real
launcher: what runs where, and the states they lead to (balsam_mpi/node/prepost.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs_mpiexec
from tests.e2e.test_launcher import finish, no_strays
from tests.e2e.test_mpi_tasks import add_app, add_tasks, launcher, task_dir

pytestmark = [
    pytest.mark.timeout(240),
    needs_mpiexec,
]

FAIL = "sh -c 'echo boom >&2; exit 3'"
HANDLER = 'echo "err=$BALSAM_JOB_ERROR timeout=$BALSAM_JOB_TIMEOUT" >> handler.txt; exit {rc}'


def path_of(conn: Any, task_id: int) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT to_state::text FROM task_events WHERE task_id = %s ORDER BY id", (task_id,))]


def test_prepost_and_handlers_move_the_states_as_balsam_did(
        conn: Any, dbname: str, pg_project: Any) -> None:
    add_app(conn, "ok", "sh -c 'cat pre.txt > seen.txt'", pre="echo pre > pre.txt",
            post="echo post > post.txt")
    add_app(conn, "handled", FAIL, post=HANDLER.format(rc=0), on_error=True)
    add_app(conn, "retry", FAIL, pre="echo once >> pre.txt", post=HANDLER.format(rc=75),
            on_error=True)
    add_app(conn, "unhandled", FAIL, post=HANDLER.format(rc=1), on_error=True)
    add_app(conn, "no_handler", FAIL, post=HANDLER.format(rc=0))  # not on errors
    add_app(conn, "slow", "sleep 30", post=HANDLER.format(rc=0), on_timeout=True)
    add_app(conn, "pre_fails", "sh -c 'echo ran > ran.txt'", pre="exit 4")
    add_app(conn, "post_fails", "true", post="echo bad >&2; exit 2")
    t = {name: add_tasks(conn, name, packing=8)[0]
         for name in ("ok", "handled", "unhandled", "no_handler", "pre_fails", "post_fails")}
    t["retry"] = add_tasks(conn, "retry", packing=8, error_retries=1)[0]
    t["slow"] = add_tasks(conn, "slow", packing=8, wall_time_min=0.02)[0]
    finish(launcher(2, env={"BALSAM_KILL_GRACE_S": "2"}))

    def d(name: str) -> Path:
        return task_dir(pg_project, t[name])

    assert path_of(conn, t["ok"]) == [
        "READY", "PREPROCESSED", "RUNNING", "RUN_DONE", "POSTPROCESSED", "JOB_FINISHED"]
    assert (d("ok") / "seen.txt").read_text() == "pre\n"  # ran in the task's directory first
    assert (d("ok") / "post.txt").read_text() == "post\n"
    assert (d("ok") / "preprocess.out").exists() and (d("ok") / "postprocess.err").exists()

    assert path_of(conn, t["handled"])[-3:] == ["RUN_ERROR", "POSTPROCESSED", "JOB_FINISHED"]
    assert (d("handled") / "handler.txt").read_text() == "err=TRUE timeout=\n"

    # Exit 75 asks for a retry: the retry counter still decides (1 here), and the
    # preprocess ran once, before the first run only.
    assert path_of(conn, t["retry"]) == [
        "READY", "PREPROCESSED", "RUNNING", "RUN_ERROR", "RESTART_READY", "RUNNING",
        "RUN_ERROR", "FAILED"]
    assert (d("retry") / "pre.txt").read_text() == "once\n"
    assert (d("retry") / "handler.txt").read_text().count("err=TRUE") == 2

    assert path_of(conn, t["unhandled"])[-2:] == ["RUN_ERROR", "FAILED"]
    assert path_of(conn, t["no_handler"])[-2:] == ["RUN_ERROR", "FAILED"]
    assert not (d("no_handler") / "handler.txt").exists()

    assert path_of(conn, t["slow"])[-3:] == ["RUN_TIMEOUT", "POSTPROCESSED", "JOB_FINISHED"]
    assert (d("slow") / "handler.txt").read_text() == "err= timeout=TRUE\n"

    assert path_of(conn, t["pre_fails"]) == ["READY", "FAILED"]
    assert not (d("pre_fails") / "ran.txt").exists()
    assert path_of(conn, t["post_fails"])[-2:] == ["RUN_DONE", "FAILED"]
    msg = dict(conn.execute("SELECT id, state_message FROM tasks").fetchall())
    assert msg[t["pre_fails"]] == "preprocess exit code 4"
    assert msg[t["post_fails"]] == "the postprocess failed"
    no_strays(dbname)
