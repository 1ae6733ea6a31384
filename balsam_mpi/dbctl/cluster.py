"""The project's PostgreSQL cluster: find the binaries, initdb, start, stop, probe.

Binaries always run from argv lists as the server account (``accounts.run_as``). Only the
owner starts and stops; two ``start``s at once serialize on a lock file in the project
directory; a server recorded on another host is never started here while it answers.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from ..base.errors import ProjectError, ServerError
from ..base.procs import pid_alive
from ..base.project import Project, ServerInfo
from . import pgconf
from .accounts import Account, run_as
from .startlock import project_lock as project_lock

PG_BIN_ENV = "BALSAM_PG_BIN"
PG_BIN_RECORD = "balsam-pg-bin"  # written into the venv by setup_env.sh
_HOW_TO_GET = (
    "no PostgreSQL server binaries found (need initdb, pg_ctl, postgres): install them "
    "(Debian/Ubuntu: `apt-get install postgresql`; HPC systems: `module load postgresql`) "
    f"or set {PG_BIN_ENV} to their directory"
)


def _has_server(bindir: Path) -> bool:
    return all((bindir / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres"))


def find_pg_bin() -> Path:
    """Server binaries: $BALSAM_PG_BIN, the venv's record, pg_config, newest Debian layout."""
    explicit = os.environ.get(PG_BIN_ENV)
    if explicit:
        if not _has_server(Path(explicit)):
            raise ProjectError(f"{PG_BIN_ENV}={explicit} has no initdb/pg_ctl/postgres")
        return Path(explicit)
    candidates: list[Path] = []
    record = Path(sys.prefix) / PG_BIN_RECORD
    if record.is_file():
        candidates.append(Path(record.read_text().strip()))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=False)
            candidates.append(Path(out.stdout.strip()))
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    debian.sort(key=lambda p: int(re.sub(r"\D", "", Path(p).parent.name) or 0), reverse=True)
    candidates.extend(Path(p) for p in debian)
    for candidate in candidates:
        if _has_server(candidate):
            return candidate
    raise ProjectError(_HOW_TO_GET)


def pg_major(bindir: Path) -> int:
    out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True,
                         text=True, check=False).stdout
    match = re.search(r"\) (\d+)", out)
    if not match:
        raise ProjectError(f"cannot tell the version of {bindir / 'postgres'}: {out.strip()!r}")
    return int(match.group(1))


def data_major(project: Project) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((project.db_dir / "PG_VERSION").read_text().strip())
    return None


def choose_bindir(project: Project, info: ServerInfo) -> Path:
    """The binaries to run this cluster with; a different major version is refused."""
    recorded = Path(info.pg_bindir)
    bindir = recorded if _has_server(recorded) and PG_BIN_ENV not in os.environ else find_pg_bin()
    major = pg_major(bindir)
    if major != info.pg_major:
        raise ProjectError(
            f"this project's database was made by PostgreSQL {info.pg_major}, but the "
            f"binaries found ({bindir}) are PostgreSQL {major}: set {PG_BIN_ENV} to a "
            f"PostgreSQL {info.pg_major} bin directory (or upgrade the data with pg_upgrade)"
        )
    return bindir


# -- ports and probes -------------------------------------------------------------------
def port_is_free(port: int) -> bool:
    for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((addr, port))
            except OSError as exc:
                if family == socket.AF_INET6 and exc.errno in (97, 99):  # no IPv6 here
                    continue
                return False
    return True


def pick_port() -> int:
    """A free TCP port; the kernel's ephemeral choice, checked on both loopbacks."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port_is_free(port):
            return port
    raise ServerError("could not find a free TCP port; pass --port")


def socket_answers(project: Project, port: int) -> bool:
    """Is a server listening on the project's unix socket? (No authentication needed.)"""
    path = project.socket_path(port)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(os.fspath(path))
        except PermissionError:
            return path.exists()  # it is there; we may just not be allowed in
        except OSError:
            return False
    return True


def tcp_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# -- initdb, start, stop ----------------------------------------------------------------
def initdb(project: Project, bindir: Path, server: Account, superuser: str) -> None:
    run_as(
        [str(bindir / "initdb"), "-D", str(project.db_dir), "-U", superuser,
         "--auth-local=peer", "--auth-host=reject", "--encoding=UTF8", "--locale=C",
         "--no-instructions"],
        server,
    )


def write_server_conf(project: Project, server: Account, *, port: int, listen: str,
                      group: str, superuser: str, owner: str | None = None) -> None:
    """(Re)write balsam.conf, pg_hba.conf, pg_ident.conf and the include line, as the
    server account."""
    files = {
        pgconf.CONF_NAME: pgconf.render_conf(port=port, listen=listen, group=group),
        "pg_hba.conf": pgconf.render_hba(superuser, owner),
        "pg_ident.conf": pgconf.render_ident(superuser, owner),
    }
    main_conf = project.db_dir / "postgresql.conf"
    files["postgresql.conf"] = pgconf.with_include(main_conf.read_text())
    for name, text in files.items():
        path = project.db_dir / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o600)
        if os.geteuid() == 0:
            os.chown(tmp, server.uid, server.gid)
        os.replace(tmp, path)


def configured_port(project: Project) -> int | None:
    with contextlib.suppress(OSError):
        return pgconf.read_port((project.db_dir / pgconf.CONF_NAME).read_text())
    return None


def pg_ctl_start(project: Project, bindir: Path, server: Account, timeout_s: int = 60) -> None:
    log = project.server_log_dir / "pg_ctl.log"
    # pg_ctl starts the server through /bin/sh, with -D and -l inside double quotes, where
    # `$(…)`, a backquote, `"` and `\` still act: a project path holding one ran commands
    # or broke the start. From the data directory both can be plain relative names; the
    # full path is kept where it is safe, so that `ps` shows whose server this is.
    datadir = str(project.db_dir)
    if any(c in datadir for c in '$`"\\'):
        datadir = "."
    proc = run_as(
        [str(bindir / "pg_ctl"), "start", "-D", datadir, "-w", "-t", str(timeout_s),
         "-l", os.path.relpath(log, project.db_dir)],
        server, check=False, cwd=str(project.db_dir),
    )
    if proc.returncode != 0:
        # Once the server's logging collector runs, its refusal goes to the server's own
        # log, and pg_ctl.log ends with "redirecting log output to logging collector".
        detail = (_refusal(project.server_log_dir, log) or _log_tail(log)
                  or (proc.stderr or proc.stdout).strip())
        raise ServerError(f"the server did not start: {detail} (full log: {log})")


def pg_ctl_stop(project: Project, bindir: Path, server: Account, mode: str) -> None:
    proc = run_as(
        [str(bindir / "pg_ctl"), "stop", "-D", str(project.db_dir), "-m", mode, "-w",
         "-t", "60"],
        server, check=False, cwd=str(project.db_dir),
    )
    if proc.returncode != 0:
        raise ServerError(f"the server did not stop: {(proc.stderr or proc.stdout).strip()}")


def clear_reused_lock_files(project: Project, port: int) -> list[str]:
    """Remove the lock files a crash left (balsamdb/postmaster.pid, the socket's in run/)
    when their pid now belongs to another process; a notice for each one removed.

    Postgres takes a live pid in such a file for a server still running there and refuses
    to start, so a pid reused by any process of the server account (after a reboot, say)
    blocks the project until someone removes the file. One is removed only when it was
    written by a server of this very directory (its second line), not by the original of
    a copy made while that ran (a copy Postgres is right to refuse), and when no process
    runs in the data directory (every server process does: the postmaster and each of its
    children chdir there), so a server or an orphaned backend is never started beside. A
    pid that is gone is left to Postgres, which checks the file's shared memory itself.
    """
    removed: list[str] = []
    for path in (project.db_dir / "postmaster.pid", project.socket_path(port).with_name(
            f"{project.socket_path(port).name}.lock")):
        try:
            lines = path.read_text().split("\n")
            pid = int(lines[0])
            ours = len(lines) > 1 and os.path.samefile(lines[1], project.db_dir)
        except (OSError, ValueError):
            continue
        if not ours or pid <= 0 or not pid_alive(pid) or _running_in(project.db_dir):
            continue
        path.unlink(missing_ok=True)
        removed.append(f"removed a stale {path.name} (pid {pid} is another process now, and "
                       "nothing runs in the data directory): the server had not been "
                       "stopped cleanly")
    return removed


def _running_in(directory: Path) -> bool:
    """Does any process we may inspect have ``directory`` as its working directory?"""
    target = directory.stat()
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                st = os.stat(f"/proc/{entry.name}/cwd")
            except OSError:  # gone, a zombie, or another user's (so not the server's)
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                return True
    return False


def postmaster_pid_exists(project: Project) -> bool:
    with contextlib.suppress(PermissionError):
        return (project.db_dir / "postmaster.pid").exists()
    return True


def _refusal(log_dir: Path, pg_ctl_log: Path) -> str:
    """Why the server that pg_ctl last started stopped, from the server's own log: the
    postmaster's pid is on pg_ctl.log's last "redirecting log output" line, and its
    FATAL or PANIC line (with HINT or DETAIL) in the newest server log. "" when pg_ctl.log
    does not end with that hand-over (the refusal is then in pg_ctl.log itself)."""
    with contextlib.suppress(OSError):
        tail = pg_ctl_log.read_text(errors="replace").splitlines()[-3:]
        last = re.search(r"\[(\d+)\] ", tail[-1]) if tail else None
        if last is None:
            return ""
        mark = f"[{last.group(1)}] "  # the postmaster that wrote last, this start's
        newest = max(log_dir.glob("postgresql-*.log"), key=lambda p: p.stat().st_mtime,
                     default=None)
        if newest is None or not any(mark + "LOG:  redirecting log output" in line
                                     for line in tail):
            return ""
        ours = [line for line in newest.read_text(errors="replace").splitlines()
                if mark in line]
        for i in range(len(ours) - 1, -1, -1):  # the newest: a pid may have come round
            line = ours[i]
            if "FATAL:" in line or "PANIC:" in line:
                return " | ".join([line] + [more for more in ours[i + 1:i + 3]
                                            if "HINT:" in more or "DETAIL:" in more])
    return ""


def _log_tail(path: Path, lines: int = 3) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])
    return ""
