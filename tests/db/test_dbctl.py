"""balsam-dbctl as a user runs it: real clusters, real subprocesses, real modes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from balsam_mpi.base import db
from balsam_mpi.base.errors import ServerError
from balsam_mpi.base.project import Project
from balsam_mpi.dbctl import cluster, layout, lifecycle
from balsam_mpi.dbctl.cli import cli

BIN = Path(sys.executable).parent
DBCTL = str(BIN / "balsam-dbctl")


def dbctl(*args: str, umask: int | None = None, check: bool = True
          ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("BALSAM_DB_PATH", None)
    env.pop("BALSAM_DB_NAME", None)
    proc = subprocess.run(
        [DBCTL, *args], capture_output=True, text=True, env=env, timeout=120,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture()
def place(session_root: Path) -> Iterator[Path]:
    """A fresh, traversable directory for projects of one test; servers stopped after."""
    base = session_root / f"dbctl-{os.getpid()}-{len(list(session_root.iterdir()))}"
    base.mkdir(mode=0o755)
    os.chmod(base, 0o755)
    yield base
    for info in base.glob("*/server-info.json"):
        project = Project(info.parent)
        if (project.db_dir / "postmaster.pid").exists():
            subprocess.run([DBCTL, "--project", str(project.root), "stop", "--fast"],
                           capture_output=True, timeout=120, check=False)
    shutil.rmtree(base, ignore_errors=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_life_of_a_project_under_umask_077(place: Path) -> None:
    p1 = place / "p1"
    out = dbctl("init", str(p1), umask=0o077)
    assert "source balsamactivate" in out.stdout
    project = Project(p1)
    info = project.read_server_info()
    gid = project.root.stat().st_gid
    assert layout.mode_problems(project, info.owner_uid, gid) == []
    assert _mode(p1) == 0o3750 and _mode(p1 / "balsamdb") == 0o700
    assert _mode(p1 / "data") == 0o2770 and _mode(p1 / "server-info.json") == 0o640

    status = json.loads(dbctl("--project", str(p1), "status", "--json").stdout)
    assert status["running"] is True and status["port"] == info.port
    assert status["owner"] == info.owner_name and status["schema_version"] >= 1
    assert dbctl("--project", str(p1), "verify").stdout.strip() == "ok"

    dbctl("--project", str(p1), "stop")
    again = dbctl("--project", str(p1), "stop", check=False)
    assert again.returncode != 0
    assert again.stderr.count("\n") == 1 and "not running" in again.stderr
    assert "Traceback" not in again.stderr

    p2 = place / "p2"
    shutil.move(p1, p2)
    dbctl("--project", str(p2), "start")
    status = json.loads(dbctl("--project", str(p2), "status", "--json").stdout)
    assert status["running"] is True and status["project"] == str(p2)
    with db.connect(Project(p2), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_activation_sets_umask_and_path_and_deactivation_restores(place: Path) -> None:
    p = place / "act"
    dbctl("init", str(p))
    script = (
        f"umask 077; export PATH={BIN}:$PATH; source balsamactivate {p} 2>/dev/null; "
        "echo \"$BALSAM_DB_PATH\"; umask; source balsamdeactivate; umask; "
        "echo \"[${BALSAM_DB_PATH:-unset}]\""
    )
    env = {k: v for k, v in os.environ.items() if k != "BALSAM_DB_PATH"}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                         timeout=60, check=True).stdout.split()
    assert out == [str(p), "0007", "0077", "[unset]"]


def test_copy_guard_refuses_the_originals_server(place: Path) -> None:
    orig = place / "orig"
    dbctl("init", str(orig))
    dbctl("--project", str(orig), "stop")
    shutil.copytree(orig, place / "copy", symlinks=True)
    copy = Project(place / "copy")
    dbctl("--project", str(orig), "start")  # a fresh nonce for the original only
    original = Project(orig)
    info = original.read_server_info()
    with lifecycle.admin_connect(original, info, autocommit=True) as conn:
        with pytest.raises(ServerError, match="another copy"):
            db.verify_instance(conn, copy, copy.read_server_info())
        db.verify_instance(conn, original, info)  # its own project passes


def test_two_starts_at_once_and_busy_port(place: Path) -> None:
    p = place / "race"
    dbctl("init", str(p))
    project = Project(p)
    old_port = project.read_server_info().port
    dbctl("--project", str(p), "stop")
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        env = {k: v for k, v in os.environ.items() if k != "BALSAM_DB_PATH"}
        procs = [subprocess.Popen([DBCTL, "--project", str(p), "start"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        results = [proc.communicate(timeout=120) for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], results
        said = " ".join(out + err for out, err in results)
        assert "already running" in said and f"port {old_port} is busy" in said
    new_port = project.read_server_info().port
    assert new_port != old_port and cluster.socket_answers(project, new_port)


def test_start_refused_on_another_host_and_other_major(place: Path) -> None:
    p = place / "hosts"
    dbctl("init", str(p))
    project = Project(p)
    info = project.read_server_info()
    raw = json.loads(project.server_info_path.read_text())
    raw["host"] = "elsewhere.invalid"
    project.server_info_path.write_text(json.dumps(raw))
    refused = dbctl("--project", str(p), "start", check=False)
    assert refused.returncode != 0 and "--takeover" in refused.stderr
    raw["host"] = info.host
    project.server_info_path.write_text(json.dumps(raw))
    dbctl("--project", str(p), "stop")
    raw["pg_major"] = info.pg_major - 1
    project.server_info_path.write_text(json.dumps(raw))
    refused = dbctl("--project", str(p), "start", check=False)
    assert refused.returncode != 0 and f"PostgreSQL {info.pg_major - 1}" in refused.stderr
    assert refused.stderr.count("\n") == 1


@pytest.mark.parametrize("case", ["not_empty", "bad_group", "busy_port", "long_path",
                                  "bad_listen"])
def test_init_failures_are_one_line_and_write_nothing(place: Path, case: str) -> None:
    target = place / "bad"
    args = ["init", str(target)]
    squatter = None
    if case == "not_empty":
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    elif case == "bad_group":
        args += ["--group", "no_such_group_xyz"]
    elif case == "busy_port":
        squatter = socket.socket()
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        args += ["--port", str(squatter.getsockname()[1])]
    elif case == "long_path":
        target = place / ("d" * 100)
        args = ["init", str(target)]
    elif case == "bad_listen":
        args += ["--listen", "0.0.0.0;rm -rf /"]
    before = sorted(p.name for p in place.iterdir())
    proc = dbctl(*args, check=False)
    if squatter:
        squatter.close()
    assert proc.returncode != 0
    assert proc.stderr.startswith("balsam-dbctl: error: ") and proc.stderr.count("\n") == 1
    assert sorted(p.name for p in place.iterdir()) == before
    if case == "not_empty":
        assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_cli_runner_status_and_missing_project(pg_project: Project) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["--project", str(pg_project.root), "status"])
    assert result.exit_code == 0, result.output
    assert "running on" in result.output and "schema version" in result.output
    missing = runner.invoke(cli, ["--project", "/nonexistent/proj", "status"])
    assert missing.exit_code != 0 and "does not exist" in missing.output


@pytest.mark.skipif(os.geteuid() != 0, reason="root mode needs root")
def test_root_project_runs_server_as_unprivileged_account(pg_project: Project) -> None:
    info = pg_project.read_server_info()
    assert info.owner_uid == 0 and info.server_uid != 0
    assert pg_project.db_dir.stat().st_uid == info.server_uid
    pid = int((pg_project.db_dir / "postmaster.pid").read_text().split()[0])
    assert os.stat(f"/proc/{pid}").st_uid == info.server_uid
    status = json.loads(dbctl("--project", str(pg_project.root), "status", "--json").stdout)
    assert status["server_account"] == info.server_name != "root"
