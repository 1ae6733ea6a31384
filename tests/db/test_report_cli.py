"""`balsam-mpi report …` and `balsam-mpi job ls|show` through click's CliRunner."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from balsam_mpi.cli import cli

from . import test_analytics_build as build
from .test_analytics_build import Builder

Conn = psycopg.Connection[Any]
admin = build.admin  # the fixture that writes histories as the database superuser


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture()
def history(admin: Conn, dbname: str) -> dict[str, int]:
    """The 75% history: 2 nodes for 100 s, busy 150 node-seconds; one failed task."""
    b = Builder(admin)
    job = b.job(2, 0, 100, submitted=-30)
    b.finished_task(job, 0, 100)
    b.finished_task(job, 0, 60, packing=2)
    b.finished_task(job, 0, 40, packing=2)
    b.task(state="RUN_ERROR", job=job, exit_code=3, tail="boom\nmore", ended=99)
    return {"job": job}


def test_utilization_json_carries_the_overall_fraction(history: dict[str, int]) -> None:
    result = _run("report", "utilization", "--bin", "10s", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["utilization"] == pytest.approx(0.75)
    assert data["bin_seconds"] == 10
    assert [s["utilization"] for s in data["series"]] == pytest.approx(
        [1.0] * 4 + [0.75] * 2 + [0.5] * 4)
    assert data["series"][0]["batch_jobs"] == {str(history["job"]): pytest.approx(1.0)}
    assert data["batch_jobs"][0]["utilization"] == pytest.approx(0.75)


def test_utilization_text_csv_and_png(history: dict[str, int], tmp_path: Path) -> None:
    text = _run("report", "utilization", "--bin", "10s")
    assert text.exit_code == 0
    assert "utilization 75.0%" in text.output and "█" in text.output
    rows = list(csv.DictReader(io.StringIO(_run("report", "utilization", "--bin", "10s",
                                                "--csv").output)))
    assert len(rows) == 10 and float(rows[-1]["utilization"]) == pytest.approx(0.5)
    assert f"batch_job_{history['job']}" in rows[0]
    png = tmp_path / "util.png"
    result = _run("report", "utilization", "--png", str(png))
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_png_is_written_to_the_file_named(history: dict[str, int], tmp_path: Path) -> None:
    """matplotlib chose the format from the name: `--png plot` wrote plot.png while saying
    "wrote plot", `--png DIR` wrote DIR.png beside the directory, and `--png plot.dat`
    was a ValueError traceback after the report had printed."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("plot", "plot.dat"):
        result = _run("report", "throughput", "--png", str(out / name))
        assert result.exit_code == 0, result.output
        assert f"wrote {out / name}" in result.output
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = _run("report", "throughput", "--png", str(out))
    assert result.exit_code == 2
    [line] = result.output.splitlines()
    assert line.endswith(f": error: --png: {out} is a directory; name a file in it")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["plot", "plot.dat"]


def test_throughput_json_csv_png(history: dict[str, int], tmp_path: Path) -> None:
    data = json.loads(_run("report", "throughput", "--bin", "50s", "--json").output)
    assert [s["done"] for s in data["series"]] == [1, 2]  # ends at 40; 60 and 100
    assert data["series"][-1]["cumulative_done"] == 3
    assert data["utilization"] == pytest.approx(0.75)
    rows = list(csv.reader(io.StringIO(_run("report", "throughput", "--bin", "50s",
                                            "--csv").output)))
    assert rows[0][:3] == ["start", "seconds", "done"] and len(rows) == 3
    png = tmp_path / "tp.png"
    assert _run("report", "throughput", "--png", str(png)).exit_code == 0
    assert png.stat().st_size > 5000


def test_jobs_and_failures_reports(history: dict[str, int], tmp_path: Path) -> None:
    text = _run("report", "jobs")
    assert text.exit_code == 0 and "75.0%" in text.output
    (row,) = json.loads(_run("report", "jobs", "--json").output)["batch_jobs"]
    assert row["id"] == history["job"] and row["queue_seconds"] == pytest.approx(30)
    assert _run("report", "jobs", "--csv").output.startswith("id,")
    png = tmp_path / "jobs.png"
    assert _run("report", "jobs", "--png", str(png)).exit_code == 0
    assert png.stat().st_size > 5000
    failures = json.loads(_run("report", "failures", "--json").output)
    assert failures["groups"][0]["first_line"] == "boom"
    assert "boom" in _run("report", "failures").output
    fpng = tmp_path / "fail.png"
    assert _run("report", "failures", "--png", str(fpng)).exit_code == 0
    assert fpng.stat().st_size > 5000


def test_usage_and_latency_reports(history: dict[str, int]) -> None:
    usage = json.loads(_run("report", "usage", "--json").output)
    assert usage["by_job_user"][0]["busy_node_hours"] == pytest.approx(150 / 3600)
    assert "busy node-h" in _run("report", "usage").output
    latency = json.loads(_run("report", "latency", "--json").output)
    names = [s["stage"] for s in latency["stages"]]
    assert "running_to_done" in names and "batch_job_queued_to_started" in names


@pytest.mark.parametrize("args, message", [
    (["report", "utilization", "--bin", "ten"], "--bin 'ten' is not a duration"),
    (["report", "utilization", "--bin", "0s"], "must be longer than zero"),
    (["report", "throughput", "--since", "yesterday-ish"], "is not a time"),
    (["report", "jobs", "--batch-job", "x1"], "is not a batch job id"),
    (["report", "jobs", "--batch-job", "9999"], "no batch job 9999"),
    (["report", "utilization", "--json", "--csv"], "choose one of --json and --csv"),
    (["report", "utilization", "--since", "2026-01-01T00:01:00Z",
      "--until", "2026-01-01T00:00:30Z"], "not after its start"),
    (["job", "show", "9999"], "no batch job 9999"),
    (["job", "ls", "--state", "sleeping"], "not a batch-job state"),
])
def test_bad_input_is_one_line_and_non_zero(history: dict[str, int], args: list[str],
                                            message: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


def test_png_without_matplotlib_says_so(history: dict[str, int], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    result = CliRunner().invoke(cli, ["report", "utilization", "--png",
                                      str(tmp_path / "x.png")])
    assert result.exit_code != 0
    assert "needs matplotlib" in result.output and "balsam_mpi[plot]" in result.output
    assert not (tmp_path / "x.png").exists()


def test_job_ls_and_show(history: dict[str, int]) -> None:
    listing = _run("job", "ls")
    assert listing.exit_code == 0 and "FINISHED" in listing.output
    (row,) = json.loads(_run("job", "ls", "--json").output)
    assert row["id"] == history["job"] and row["nodes"] == 2
    shown = _run("job", "show", str(history["job"]))
    assert shown.exit_code == 0 and "75.0%" in shown.output and "idle tail" in shown.output
    data = json.loads(_run("job", "show", str(history["job"]), "--json").output)
    assert data["utilization"] == pytest.approx(0.75) and data["done"] == 3


def test_job_show_of_a_queued_job(admin: Conn, dbname: str) -> None:
    job = Builder(admin).job(8, None, state="QUEUED", submitted=0)
    shown = _run("job", "show", str(job), "--json")
    assert shown.exit_code == 0
    assert json.loads(shown.output)["state"] == "QUEUED"


def test_selection_flags_reach_the_report(admin: Conn, dbname: str) -> None:
    b = Builder(admin)
    alice = b.job(2, 0, 100, user="alice")
    b.job(1, 0, 100, user="bob")
    b.finished_task(alice, 0, 100, workflow="big", owner="carol")
    b.finished_task(alice, 0, 50, workflow="small", owner="dave")

    def util(*flags: str) -> Any:
        result = _run("report", "utilization", "--json", *flags)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["utilization"]

    assert util() == pytest.approx(150 / 300)
    assert util("--user", "alice") == pytest.approx(150 / 200)
    assert util("--user", "bob") == pytest.approx(0.0)
    assert util("--workflow", "small") == pytest.approx(50 / 300)
    assert util("--owner", "carol", "--user", "alice") == pytest.approx(100 / 200)
    assert util("--since", "2026-01-01T00:00:50Z") == pytest.approx(50 / 150)
    assert util("--until", "2026-01-01T00:00:50Z", "--bin", "5s") == pytest.approx(1.0 * 2 / 3)


def test_job_show_says_which_tasks_the_job_takes(history: dict[str, int], admin: Conn,
                                                 dbname: str) -> None:
    """The launcher's filters (workflows, tags, owners) are part of what a job is."""
    job = history["job"]
    assert "\nfilters             every task\n" in _run("job", "show", str(job)).output
    admin.execute("UPDATE batch_jobs SET filters = %s WHERE id = %s",
                  ('{"workflows": ["w1", "w2"], "tags": {"site": "a b"}, "owners": ["alice"]}',
                   job))
    shown = _run("job", "show", str(job)).output
    assert "\nfilters             workflows w1, w2; tags site='a b'; owners alice\n" in shown
    data = json.loads(_run("job", "show", str(job), "--json").output)
    assert data["filters"] == {"workflows": ["w1", "w2"], "tags": {"site": "a b"},
                               "owners": ["alice"]}


def test_job_show_keeps_the_filters_on_one_line(history: dict[str, int], admin: Conn,
                                                dbname: str) -> None:
    """A member's own launcher may record a workflow name holding a newline."""
    admin.execute("UPDATE batch_jobs SET filters = %s WHERE id = %s",
                  ('{"workflows": ["a\\nb"]}', history["job"]))
    shown = _run("job", "show", str(history["job"])).output
    assert "\nfilters             workflows a b\n" in shown


def test_a_report_for_an_owner_no_task_can_have_says_so_on_stderr(dbname: str) -> None:
    """An --owner that matches nobody stays legal (the report is empty, an honest
    answer), but a misspelt name is said in one line on stderr; a member's is not."""
    from balsam_mpi.base.project import Project

    me = Project.from_env(None).read_server_info().owner_name
    result = CliRunner().invoke(cli, ["report", "utilization", "--json", "--owner", "alcie"])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == ("note: --owner 'alcie': no member of this project has "
                                     "that role and no task is owned by it")
    json.loads(result.stdout)
    result = CliRunner().invoke(cli, ["report", "usage", "--owner", me])
    assert result.exit_code == 0 and result.stderr == "", result.output


def test_job_ls_shows_a_row_whose_submission_is_uncertain(admin: Conn, dbname: str) -> None:
    """A row whose scheduler answer was lost is QUEUED like a queued job, but nobody
    knows yet whether a job exists: the listing says so, in text and in JSON."""
    b = Builder(admin)
    plain = b.job(1, None, state="QUEUED", submitted=0)
    held = b.job(2, None, state="QUEUED", submitted=0)
    admin.execute("UPDATE batch_jobs SET submit_token = '00112233445566778899', "
                  "uncertain_at = '2026-01-02 03:04:05+00' WHERE id = %s", (held,))
    rows = {r["id"]: r for r in json.loads(_run("job", "ls", "--json").output)}
    assert rows[held]["uncertain_at"] == "2026-01-02T03:04:05Z"
    assert rows[plain]["uncertain_at"] is None
    lines = {line.split()[0]: line for line in _run("job", "ls").output.splitlines()
             if line.split() and line.split()[0].isdigit()}
    assert "uncertain since 2026-01-02 03:04:05" in lines[str(held)]
    assert "uncertain" not in lines[str(plain)]


def test_job_show_says_a_queued_row_is_uncertain(admin: Conn, dbname: str) -> None:
    """`job show` of a row whose scheduler answer was lost says so, as `job ls` does."""
    b = Builder(admin)
    plain = b.job(1, None, state="QUEUED", submitted=0)
    held = b.job(2, None, state="QUEUED", submitted=0)
    admin.execute("UPDATE batch_jobs SET submit_token = '00112233445566778899', "
                  "uncertain_at = '2026-01-02 03:04:05+00' WHERE id = %s", (held,))
    shown = json.loads(_run("job", "show", str(held), "--json").output)
    assert shown["uncertain_at"] == "2026-01-02T03:04:05Z"
    assert json.loads(_run("job", "show", str(plain), "--json").output)["uncertain_at"] is None
    text = _run("job", "show", str(held)).output
    assert "QUEUED (uncertain since 2026-01-02 03:04:05)" in text
    assert "uncertain" not in _run("job", "show", str(plain)).output
