"""Five real UNIX users for the `concurrent` scenario (root only).

pyenv's Python lives under /root (0700), so the users get a venv built from the system's
/usr/bin/python3 under /opt/balsam-mpi-bench (0755) with the package (copied sources,
non-editable) and the launcher's dependencies (mpi4py and the mpich wheel's mpiexec
included), cached (see :func:`shared_venv`). Accounts ``bbench1..5`` join the group
``bbench``; the project's owner (root) authorizes them with `balsam-dbctl add-user` and
each activates with `source balsamactivate PROJECT`, as a collaborator would.
"""

from __future__ import annotations

import fcntl
import grp
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GROUP = "bbench"
USERS = tuple(f"bbench{i}" for i in range(1, 6))
# BALSAM_BENCH_VENV_BASE: another place, so that two checkouts benchmarked at once on
# one machine do not swap each other's package in the shared venv.
VENV_BASE = Path(os.environ.get("BALSAM_BENCH_VENV_BASE", "/opt/balsam-mpi-bench"))
SYSTEM_PYTHON = "/usr/bin/python3"
ROOT_DBCTL = str(Path(sys.executable).parent / "balsam-dbctl")


def unavailable() -> str | None:
    """Why the multi-user path cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "not root: cannot create UNIX users"
    for tool in ("useradd", "groupadd", "usermod"):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} is missing"
    return None


def _admin(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")


def accounts() -> dict[str, pwd.struct_passwd]:
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        _admin(["groupadd", GROUP])
    found = {}
    for name in USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            _admin(["useradd", "--create-home", "--shell", "/bin/bash", name])
        if name not in grp.getgrnam(GROUP).gr_mem:
            _admin(["usermod", "--append", "--groups", GROUP, name])
        found[name] = pwd.getpwnam(name)
    return found


def _hash(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _sources() -> list[Path]:
    return sorted(p for p in (REPO / "balsam_mpi").rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)


def shared_venv() -> Path:
    """The venv every user can run.

    Built once per pyproject (dependencies and entry points: slow, a pip install), then
    refreshed per source version by copying the package into site-packages (fast): the
    package code changes far more often than its dependencies.
    """
    VENV_BASE.mkdir(exist_ok=True)
    os.chmod(VENV_BASE, 0o755)
    venv = VENV_BASE / "venv"
    deps_mark = venv / f".deps-{_hash([REPO / 'pyproject.toml'])}"
    src_mark = venv / f".src-{_hash(_sources())}"
    with open(VENV_BASE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not deps_mark.exists():
            _build(venv)
            deps_mark.touch()
        if not src_mark.exists():
            site = next((venv / "lib").glob("python3*/site-packages"))
            shutil.rmtree(site / "balsam_mpi", ignore_errors=True)
            shutil.copytree(REPO / "balsam_mpi", site / "balsam_mpi",
                            ignore=shutil.ignore_patterns("__pycache__"))
            subprocess.run(["chmod", "-R", "a+rX", str(site / "balsam_mpi")], check=True)
            for old in venv.glob(".src-*"):
                old.unlink()
            src_mark.touch()
    return venv


def _build(venv: Path) -> None:
    src = VENV_BASE / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    shutil.copytree(REPO / "balsam_mpi", src / "balsam_mpi",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, capture_output=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, str(src), "mpich"], check=True, capture_output=True, timeout=900)
    shutil.rmtree(src, ignore_errors=True)
    subprocess.run(["chmod", "-R", "a+rX", str(venv)], check=True)
    for old in VENV_BASE.glob("venv-*"):  # earlier layouts
        shutil.rmtree(old, ignore_errors=True)


def user_env(venv: Path, entry: pwd.struct_passwd, project: Path) -> dict[str, str]:
    return {"PATH": f"{venv}/bin:/usr/bin:/bin", "HOME": entry.pw_dir,
            "USER": entry.pw_name, "LOGNAME": entry.pw_name, "LANG": "C.UTF-8",
            "BALSAM_DB_PATH": str(project)}


def as_user(entry: pwd.struct_passwd, argv: Sequence[str], env: dict[str, str],
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), user=entry.pw_uid, group=entry.pw_gid,
                          extra_groups=os.getgrouplist(entry.pw_name, entry.pw_gid),
                          env=env, cwd=entry.pw_dir, capture_output=True, text=True,
                          timeout=timeout, check=False)


def popen_as(entry: pwd.struct_passwd, argv: Sequence[str], env: dict[str, str]
             ) -> subprocess.Popen[str]:
    return subprocess.Popen(list(argv), user=entry.pw_uid, group=entry.pw_gid,
                            extra_groups=os.getgrouplist(entry.pw_name, entry.pw_gid),
                            env=env, cwd=entry.pw_dir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def enroll(project: Path, venv: Path, users: dict[str, pwd.struct_passwd]) -> None:
    """The owner's add-user, then each user's `source balsamactivate` (their credentials)."""
    for name, entry in users.items():
        proc = subprocess.run([ROOT_DBCTL, "--project", str(project), "add-user", name],
                              capture_output=True, text=True, check=False, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"add-user {name}: {proc.stderr.strip()}")
        proc = as_user(entry, ["/bin/bash", "--noprofile", "--norc", "-c",
                               f"source balsamactivate {project}"],
                       user_env(venv, entry, project))
        if proc.returncode != 0:
            raise RuntimeError(f"balsamactivate as {name}: {proc.stderr.strip()}")
