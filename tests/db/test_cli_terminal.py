"""What the CLIs print for people never carries a stored value's control characters raw.

Task names, workflows, state messages, output tails and job hosts are written by any
member (an output tail by the task's own program). Printed raw, an escape sequence in one
of them would act on the terminal of whoever lists it — the project owner included:
clear the screen, rewrite what an earlier line said, set the window title, or (on some
terminals) the clipboard. The human-readable output shows such characters as escapes.
"""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from balsam_mpi.cli import cli
from balsam_mpi.dbctl.cli import cli as dbctl

from . import test_analytics_build as build
from .test_analytics_build import Builder

Conn = psycopg.Connection[Any]
admin = build.admin

# A terminal acts on C0 controls but newline and tab, on DEL and C1 controls (U+0080 to
# U+009F; CSI is U+009B), and reorders text around bidirectional overrides.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
HOSTILE = "x\x1b]0;owned\x07\x1b[2J\r\u009b31m\u202eevil"
RESULT = "ok\n               state: FAILED"  # would read as a field of `task show`


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False,
                              prog_name="balsam-mpi")


def _clean(result: Result) -> str:
    assert result.exit_code == 0, result.output
    found = RAW.findall(result.output)
    assert not found, f"raw control characters printed: {found!r}"
    return result.output


@pytest.fixture()
def hostile(admin: Conn, dbname: str) -> dict[str, int]:
    b = Builder(admin)
    job = b.job(1, 0, 100, host=f"nid{HOSTILE}")
    failed = b.task(state="RUN_ERROR", workflow="w", job=job, exit_code=3,
                    tail=f"boom{HOSTILE}\nmore\x1b[31m", ended=99)
    done = b.task(state="JOB_FINISHED", workflow="done", job=job, ended=50)
    # Labels with control characters are refused since migration 0023; rows written
    # before it keep theirs, so they are planted as such a row: the superuser with the
    # table's triggers off (no state changes here).
    admin.execute("SET session_replication_role = replica")
    admin.execute("UPDATE tasks SET workflow = %s, name = %s, state_message = %s "
                  "WHERE id = %s", (f"w{HOSTILE}", f"n{HOSTILE}", f"m{HOSTILE}", failed))
    admin.execute("UPDATE tasks SET workflow = %s WHERE id = %s", (f"done{HOSTILE}", done))
    # A Python call's returned string: only a launcher writes one, so planted too.
    admin.execute("UPDATE tasks SET result = %s::json WHERE id = %s",
                  (json.dumps(RESULT), done))
    admin.execute("RESET session_replication_role")
    return {"job": job, "task": failed, "done": done}


def test_task_listings_show_control_characters_as_escapes(hostile: dict[str, int]) -> None:
    out = _clean(_run("task", "ls"))
    assert "\\x1b]0;owned\\x07" in out  # the cell is cut after 40 characters
    _clean(_run("ls"))
    show = _clean(_run("task", "show", str(hostile["task"])))
    assert "boom" in show and "\\x1b[2J" in show and "\\r" in show and "\\x9b" in show
    _clean(_run("task", "why", str(hostile["task"])))


def test_task_show_prints_no_line_a_stored_value_made(hostile: dict[str, int]) -> None:
    """A returned string or a message cannot add a line to `task show` that reads as one
    of its fields; the output tail stays indented under its label."""
    show = _clean(_run("task", "show", str(hostile["done"])))
    assert '              result: "ok\\n               state: FAILED"' in show.splitlines()
    assert [ln for ln in show.splitlines() if ln.strip().startswith("state:")] == [
        "               state: JOB_FINISHED"]
    show = _clean(_run("task", "show", str(hostile["task"])))
    tail = show.split("output_tail:", 1)[1].splitlines()[1:3]
    assert tail[0].startswith(" " * 22 + "boom") and tail[1] == " " * 22 + "more\\x1b[31m"


def test_reports_and_jobs_show_control_characters_as_escapes(
        hostile: dict[str, int]) -> None:
    assert "boom" in _clean(_run("report", "failures"))
    _clean(_run("report", "jobs"))
    _clean(_run("job", "ls"))
    _clean(_run("job", "show", str(hostile["job"])))


def test_json_keeps_the_values_themselves(hostile: dict[str, int]) -> None:
    """Machine output carries the value: JSON escapes control characters by its own rule,
    and a reader gets the exact text back."""
    result = _run("task", "show", str(hostile["task"]), "--json")
    assert not RAW.findall(result.output)
    assert json.loads(result.output)["name"] == f"n{HOSTILE}"


def test_prune_dry_run_shows_control_characters_as_escapes(hostile: dict[str, int]) -> None:
    result = CliRunner().invoke(dbctl, ["prune", "--all-finished", "--dry-run"],
                                catch_exceptions=False, prog_name="balsam-dbctl")
    assert "done" in _clean(result)
