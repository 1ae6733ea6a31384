"""balsam-dbctl as a user runs it: real clusters, real subprocesses, real modes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
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


EVERYONE = ("start", "status", "verify")


@pytest.mark.parametrize(("edit", "said", "commands"), [
    ({"port": "abc"}, "port: must be a whole number", EVERYONE),
    ({"pg_bindir": 5}, "pg_bindir: must be text", EVERYONE),
    ({"host": ["x"]}, "host: must be text", EVERYONE),
    ({"server_uid": "999"}, "server_uid: must be a whole number", EVERYONE),
    # only `start` writes these into the server's configuration
    ({"listen": "*; rm -rf /"}, "listen: '*; rm -rf /' is not", ("start",)),
    ({"group": "a b"}, "group: 'a b' is not a valid name", ("start",)),
])
def test_a_hand_edited_server_info_is_one_line_and_starts_nothing(
        place: Path, edit: dict[str, object], said: str, commands: tuple[str, ...]) -> None:
    """`start`, `status` and `verify` on a server-info.json whose owner edited a field to
    a value of the wrong kind printed a traceback (TypeError from socket or pathlib, a
    ValueError from writing balsam.conf); now each is one line naming the file and the
    field, exit status 2, no server started and the file left as it was."""
    p = place / "edited"
    dbctl("init", str(p))
    dbctl("--project", str(p), "stop")
    project = Project(p)
    raw = json.loads(project.server_info_path.read_text())
    raw.update(edit)
    project.server_info_path.write_text(json.dumps(raw))
    before = project.server_info_path.read_bytes()
    for command in commands:
        proc = dbctl("--project", str(p), command, check=False)
        assert proc.returncode == 2, (command, proc.stderr)
        assert proc.stderr.startswith("balsam-dbctl: error: ") and proc.stderr.count("\n") == 1
        assert said in proc.stderr and "server-info.json" in proc.stderr, proc.stderr
    assert project.server_info_path.read_bytes() == before
    assert not (project.db_dir / "postmaster.pid").exists()


def _init_that_waits_after_starting(place: Path, target: Path) -> subprocess.Popen[str]:
    """`init TARGET` whose pg_ctl, once the server is up, says so and waits (for a signal)."""
    real = cluster.find_pg_bin()
    fake = place / "bin"
    fake.mkdir()
    marks = place / "marks"
    marks.mkdir(mode=0o777)
    os.chmod(marks, 0o777)  # the wrapper runs as the server account
    for exe in ("initdb", "postgres"):
        (fake / exe).symlink_to(real / exe)
    (fake / "pg_ctl").write_text(
        f'#!/bin/sh\n"{real}/pg_ctl" "$@"; rc=$?\n'
        f'if [ "$1" = start ]; then touch "{marks}/started"; sleep 120; fi\nexit $rc\n')
    os.chmod(fake / "pg_ctl", 0o755)
    env = {k: v for k, v in os.environ.items() if k != "BALSAM_DB_PATH"}
    env["BALSAM_PG_BIN"] = str(fake)
    proc = subprocess.Popen([DBCTL, "init", str(target)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while not (marks / "started").exists():
        if proc.poll() is not None:
            pytest.fail(f"init ended early: {proc.communicate()}")
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_init_ended_by_a_signal_leaves_nothing_behind(place: Path, signame: str) -> None:
    """Ctrl-C during `init` removed what it had made, but SIGTERM (a batch system, `kill`)
    and SIGHUP (a dropped ssh session) killed it where it stood: a half project that the
    next `init` refused as "not empty", and a server still running from it, which `rm -rf`
    of the directory left running. The signal now ends `init` the way Ctrl-C does."""
    target = place / "interrupted"
    proc = _init_that_waits_after_starting(place, target)
    try:
        pid = int((target / "balsamdb" / "postmaster.pid").read_text().split()[0])
        proc.send_signal(getattr(signal, signame))
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not target.exists()
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        cmdline = b""
    assert str(target).encode() not in cmdline  # its server was stopped


def test_after_a_killed_init_the_next_init_says_how_to_clean_up(place: Path) -> None:
    """An init killed outright (SIGKILL, a crash) cannot clean up. The next init refused
    with "exists and is not empty: choose a new path", not a word about the server still
    running from it. It now says what the directory is and how to start over, and doing
    what it says works."""
    target = place / "killed"
    proc = _init_that_waits_after_starting(place, target)
    proc.kill()
    proc.communicate(timeout=120)
    again = dbctl("init", str(target), check=False)
    assert again.returncode != 0 and again.stderr.count("\n") == 1, again.stderr
    said = again.stderr
    assert "interrupted init" in said and f"balsam-dbctl --project {target} stop --fast" in said
    dbctl("--project", str(target), "stop", "--fast")
    shutil.rmtree(target)
    dbctl("init", str(target))


def test_a_stale_pid_file_whose_pid_was_reused_does_not_block_start(place: Path) -> None:
    """A server that crashed (or a host that rebooted) leaves balsamdb/postmaster.pid
    behind. When its pid has since gone to another process of the server account, the
    server refused to start ("lock file already exists … Is another postmaster (PID n)
    running") until a human found that the pid was not a server and removed the file;
    the same for the socket's lock file in run/, where the refusal went to the server's
    log and `start` printed only "redirecting log output to logging collector process".
    `start` now removes both itself, unless something still runs in the data directory,
    and a refusal it cannot help is quoted from the server's log."""
    p = place / "crashed"
    dbctl("init", str(p))
    project = Project(p)
    info = project.read_server_info()
    pid_file = project.db_dir / "postmaster.pid"
    socket_lock = project.run_dir / f".s.PGSQL.{info.port}.lock"
    left = {f: f.read_text().split("\n") for f in (pid_file, socket_lock)}
    dbctl("--project", str(p), "stop")
    as_server = {"user": info.server_uid} if os.geteuid() == 0 else {}

    def plant(pid: int, datadir: str | None = None) -> None:
        for path, lines in left.items():  # both lock files a crash leaves
            path.write_text("\n".join([str(pid), datadir or lines[1], *lines[2:]]))
            if os.geteuid() == 0:
                os.chown(path, info.server_uid, -1)

    # a process of the server account that runs in the data directory: the file stays
    inside = subprocess.Popen(["sleep", "300"], cwd=project.db_dir, **as_server)
    other = subprocess.Popen(["sleep", "300"], cwd="/", **as_server)
    try:
        plant(other.pid)
        refused = dbctl("--project", str(p), "start", check=False)
        assert refused.returncode != 0 and pid_file.exists()
        assert "lock file" in refused.stderr and f"PID {other.pid}" in refused.stderr
        inside.kill()
        inside.wait()
        # written by the server of another directory (this one a copy made while that
        # ran): Postgres refuses, rightly, and the file stays
        plant(other.pid, datadir=str(place))
        refused = dbctl("--project", str(p), "start", check=False)
        assert refused.returncode != 0 and pid_file.exists()
        pid_file.unlink()  # only the socket's lock is left, the log has the refusal
        refused = dbctl("--project", str(p), "start", check=False)
        assert refused.returncode != 0 and socket_lock.exists()
        assert f'"../run/.s.PGSQL.{info.port}.lock" already exists' in refused.stderr, \
            refused.stderr
        plant(other.pid)
        out = dbctl("--project", str(p), "start")
        said = out.stderr + out.stdout
        assert f"stale postmaster.pid (pid {other.pid}" in said
        assert f"stale .s.PGSQL.{info.port}.lock (pid {other.pid}" in said
        assert other.poll() is None  # nothing was done to the process that has the pid
    finally:
        for proc in (inside, other):
            proc.kill()
            proc.wait()
    assert cluster.socket_answers(project, project.read_server_info().port)


@pytest.mark.parametrize("name", ["my project é ✓", "cost $(touch PWNED) `touch PWNED2`",
                                  'say "hi"', "back\\slash"])
def test_a_project_path_is_never_read_by_a_shell(place: Path, name: str) -> None:
    """pg_ctl runs the server through /bin/sh with the data directory and the log file in
    double quotes; a project path with `$(…)`, a backquote, `"` or `\\` ran commands as the
    server account (`$(id)` in a path did) or broke `init` and `start`. The server is now
    given paths relative to its data directory, where pg_ctl already runs."""
    p = place / name
    dbctl("init", str(p))
    project = Project(p)
    dbctl("--project", str(p), "stop")
    dbctl("--project", str(p), "start")
    status = json.loads(dbctl("--project", str(p), "status", "--json").stdout)
    assert status["running"] is True and status["project"] == str(p)
    with db.connect(project, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert not list(place.rglob("PWNED*"))


def test_a_member_holding_a_lock_on_the_directory_does_not_hang_start_or_stop(
        place: Path) -> None:
    """`start` and `stop` serialized on an exclusive flock of the project directory, which
    every group member may open (it is 3750): a member who took that lock and kept it
    made the owner's `stop`, `start` and `restart` wait forever, without a word. The lock
    is now a file only the owner can open."""
    p = place / "locked"
    dbctl("init", str(p))
    info = Project(p).read_server_info()
    # the server account is a member of the project group (this Python may be under
    # root's home, which it cannot reach: the system's python3 will do)
    as_member: dict[str, object] = {}
    if os.geteuid() == 0:
        as_member = {"user": info.server_uid, "group": p.stat().st_gid,
                     "extra_groups": [p.stat().st_gid]}
    locker = subprocess.Popen(
        [shutil.which("python3", path="/usr/bin:/bin") or sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('locked', flush=True)\n"
         "time.sleep(600)\n", str(p)],
        stdout=subprocess.PIPE, text=True, **as_member)
    try:
        assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
        env = {k: v for k, v in os.environ.items() if k != "BALSAM_DB_PATH"}
        for command in ("stop", "start"):
            proc = subprocess.run([DBCTL, "--project", str(p), command], env=env,
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
    finally:
        locker.kill()
        locker.wait()
    locks = [f for f in p.iterdir() if f.name.endswith(".lock")]
    assert all(_mode(f) == 0o600 and f.stat().st_uid == info.owner_uid for f in locks)


@pytest.fixture()
def small_fs(place: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs of its own (root only), unmounted after."""
    mnt = place / "small"
    mnt.mkdir(mode=0o755)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=755", "tmpfs",
                           str(mnt)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mnt
    for info in mnt.glob("*/server-info.json"):
        subprocess.run([DBCTL, "--project", str(info.parent), "stop", "--fast"],
                       capture_output=True, timeout=120, check=False)
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


@pytest.mark.parametrize("case", ["disk_full", "read_only"])
def test_init_on_a_full_or_read_only_disk_is_one_line(small_fs: Path, case: str) -> None:
    """The disk filling up while init wrote the schema (psycopg's DiskFull), or a parent
    where the project cannot be made (PermissionError from mkdir), printed a traceback;
    now one line that says what failed, with nothing left behind."""
    target = small_fs / "p"
    env = {k: v for k, v in os.environ.items() if k != "BALSAM_DB_PATH"}
    if case == "read_only":
        subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    else:
        # once the server is up, its account fills the disk from inside the data directory
        # (on a 64 MiB tmpfs: after initdb, before the schema)
        real = cluster.find_pg_bin()
        fake = small_fs.parent / "bin"
        fake.mkdir()
        for exe in ("initdb", "postgres"):
            (fake / exe).symlink_to(real / exe)
        (fake / "pg_ctl").write_text(
            f'#!/bin/sh\n"{real}/pg_ctl" "$@"; rc=$?\n'
            'if [ "$1" = start ]; then\n'
            # what is left: enough to log in, not enough for the schema
            "  left=$(df -Pm . | awk 'NR==2 {print $4}')\n"
            '  dd if=/dev/zero of=filler bs=1M count=$((left - 1)) 2>/dev/null\nfi\n'
            'exit $rc\n')
        os.chmod(fake / "pg_ctl", 0o755)
        env["BALSAM_PG_BIN"] = str(fake)
    proc = subprocess.run([DBCTL, "init", str(target)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("balsam-dbctl: error: ") and proc.stderr.count("\n") == 1, \
        proc.stderr
    assert "Traceback" not in proc.stderr
    said = {"disk_full": "No space left on device", "read_only": "Read-only file system"}
    assert said[case] in proc.stderr, proc.stderr
    assert not target.exists()


@pytest.fixture()
def scratch_group() -> Iterator[str]:
    """A UNIX group of its own for one test, removed after (with the memberships init
    gave it): the project groups of real sites list their members, the server account
    among them once `init` added it."""
    import grp

    if os.geteuid() != 0 or shutil.which("groupadd") is None:
        pytest.skip("needs root and groupadd (a group that lists the server account)")
    name = f"bfp{os.getpid() % 100000}"
    with contextlib.suppress(KeyError):
        grp.getgrnam(name)
        subprocess.run(["groupdel", name], check=False, capture_output=True)
    subprocess.run(["groupadd", name], check=True, capture_output=True)
    yield name
    subprocess.run(["groupdel", name], check=False, capture_output=True)


def test_fix_perms_right_after_init_changes_nothing(place: Path, scratch_group: str) -> None:
    """`init` and `fix-perms` want the same modes and ACL entries. As root, the server
    account (added to the project group by init, not a database member) was left alone by
    init and barred from data/, log/ and qsubmit/ by the first fix-perms ("viewers' ACL
    entries: 3 paths updated")."""
    from balsam_mpi.base import acl

    p = place / "fresh"
    dbctl("init", str(p), "--group", scratch_group)
    shared = ("data", "log", "qsubmit", "access")
    before = {d: (acl.read(str(p / d)), acl.read(str(p / d), acl.DEFAULT)) for d in shared}
    out = dbctl("--project", str(p), "fix-perms")
    assert out.stdout.strip() == "all modes were already right", out.stdout
    assert {d: (acl.read(str(p / d)), acl.read(str(p / d), acl.DEFAULT))
            for d in shared} == before
    dbctl("--project", str(p), "stop", "--fast")
