"""Real UNIX users and a real group, a package install they can all run, one project.

Needs root (to create the accounts); otherwise every test here is skipped with the reason.
pyenv's Python lives under /root (0700), so the other users get a venv built from the
system's /usr/bin/python3 under /opt/balsam-mpi-test (0755), with a non-editable install
of a copy of the sources. It is cached by a hash of the sources, so later runs reuse it.

The project is owned by the unprivileged ``proj_owner`` (the server then runs as
proj_owner), in group ``proj``, under a 0755 directory in /tmp.
"""

from __future__ import annotations

import fcntl
import grp
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# BALSAM_MU_PREFIX gives a checkout its own group, accounts and venv, so two checkouts on
# one machine can run this tier at the same time without touching each other's users.
PREFIX = os.environ.get("BALSAM_MU_PREFIX", "proj")
if not PREFIX.isidentifier() or not PREFIX.islower() or len(PREFIX) > 16:
    raise RuntimeError(f"BALSAM_MU_PREFIX={PREFIX!r}: use up to 16 lower-case letters")
GROUP = PREFIX
OWNER, MEMBER, MEMBER2, VIEWER, LEAVER = (
    f"{PREFIX}_owner", f"{PREFIX}_member", f"{PREFIX}_member2", f"{PREFIX}_viewer",
    f"{PREFIX}_leaver")
OUTSIDER = "outsider" if PREFIX == "proj" else f"{PREFIX}_outsider"
IN_GROUP = (OWNER, MEMBER, MEMBER2, VIEWER, LEAVER)
VENV_BASE = Path("/opt/balsam-mpi-test" if PREFIX == "proj" else f"/opt/balsam-mpi-test-{PREFIX}")
SYSTEM_PYTHON = "/usr/bin/python3"
DEPS = ("setuptools>=68", "wheel", "psycopg[binary]", "click", "mpi4py", "mpich")
DEPS_TAG = hashlib.sha256(" ".join(DEPS).encode()).hexdigest()[:8]


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "multiuser tests create real UNIX users and a group: run them as root (CI does)"
    for tool in ("useradd", "groupadd", "usermod"):
        if shutil.which(tool) is None:
            return f"multiuser tests need {tool} (package passwd)"
    if not Path(SYSTEM_PYTHON).exists():
        return f"multiuser tests need {SYSTEM_PYTHON} to build a venv all users can run"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip this tier, with the reason, before any fixture runs: an autouse skip ran after
    the session fixtures (which create the accounts), so a non-root user got 22 errors."""
    reason = _skip_reason()
    if reason is None:
        return
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=reason))


def _admin(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")


@pytest.fixture(scope="session")
def accounts() -> dict[str, pwd.struct_passwd]:
    """The accounts, created when missing; their ~/.pgpass cleared (a fresh start)."""
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        _admin(["groupadd", GROUP])
    found: dict[str, pwd.struct_passwd] = {}
    for name in (*IN_GROUP, OUTSIDER):
        try:
            pwd.getpwnam(name)
        except KeyError:
            _admin(["useradd", "--create-home", "--shell", "/bin/bash", name])
        if name in IN_GROUP and name not in grp.getgrnam(GROUP).gr_mem:
            _admin(["usermod", "--append", "--groups", GROUP, name])
        entry = pwd.getpwnam(name)
        Path(entry.pw_dir, ".pgpass").unlink(missing_ok=True)
        found[name] = entry
    return found


# -- the shared venv --------------------------------------------------------------------
def _hash(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _source_files() -> list[Path]:
    return [REPO / "pyproject.toml", REPO / "README.md", *sorted(
        p for p in (REPO / "balsam_mpi").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts)]


def _pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *args],
                   check=True, capture_output=True)


@pytest.fixture(scope="session")
def shared_venv() -> Path:
    """Dependencies installed once (keyed by pyproject.toml); the package reinstalled, from
    a copy of the sources, whenever they change (keyed by their hash)."""
    VENV_BASE.mkdir(exist_ok=True)
    os.chmod(VENV_BASE, 0o755)
    venv = VENV_BASE / "venv"
    deps_mark = venv / f".deps-{_hash([REPO / 'pyproject.toml'])}-{DEPS_TAG}"
    src_tag = _hash(_source_files())
    src_mark = venv / f".src-{src_tag}"
    with open(VENV_BASE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not deps_mark.exists():
                shutil.rmtree(venv, ignore_errors=True)
                subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True,
                               capture_output=True)
                # mpi4py with the mpich wheel: the planted-path tests run launchers as
                # these users (single rank, no mpiexec). No numpy: no reports here.
                _pip(venv, *DEPS)
                deps_mark.touch()
            if not src_mark.exists():
                src = VENV_BASE / f"src-{src_tag}"
                shutil.rmtree(src, ignore_errors=True)
                shutil.copytree(REPO / "balsam_mpi", src / "balsam_mpi",
                                ignore=shutil.ignore_patterns("__pycache__"))
                for name in ("pyproject.toml", "README.md"):
                    shutil.copy(REPO / name, src / name)
                _pip(venv, "--no-deps", "--no-build-isolation", "--force-reinstall", str(src))
                shutil.rmtree(src, ignore_errors=True)
                for old in venv.glob(".src-*"):
                    old.unlink()
                subprocess.run(["chmod", "-R", "a+rX", str(venv)], check=True)
                src_mark.touch()
        except subprocess.CalledProcessError as exc:
            pytest.fail(f"could not build the shared venv: {exc.stderr!r}")
    return venv


# -- running as another user ------------------------------------------------------------
@dataclass
class Runner:
    venv: Path
    accounts: dict[str, pwd.struct_passwd]
    project: Path | None = None

    def env(self, user: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        entry = self.accounts[user]
        env = {"PATH": f"{self.venv}/bin:/usr/bin:/bin", "HOME": entry.pw_dir, "USER": user,
               "LOGNAME": user, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        if self.project is not None:
            env["BALSAM_DB_PATH"] = str(self.project)
        env.update(extra or {})
        return env

    def run(self, user: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
            timeout: float = 90, input_text: str | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess[str]:
        entry = self.accounts[user]
        return subprocess.run(
            list(argv), user=entry.pw_uid, group=entry.pw_gid,
            extra_groups=os.getgrouplist(user, entry.pw_gid), env=self.env(user, env),
            cwd=cwd or entry.pw_dir, capture_output=True, text=True, timeout=timeout,
            input=input_text, check=False)

    def popen(self, user: str, argv: Sequence[str]) -> subprocess.Popen[str]:
        entry = self.accounts[user]
        return subprocess.Popen(
            list(argv), user=entry.pw_uid, group=entry.pw_gid,
            extra_groups=os.getgrouplist(user, entry.pw_gid), env=self.env(user),
            cwd=entry.pw_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)

    def dbctl(self, user: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run(user, [str(self.venv / "bin" / "balsam-dbctl"), *args], **kw)

    def bash(self, user: str, script: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run(user, ["/bin/bash", "--noprofile", "--norc", "-c", script], **kw)

    def probe(self, user: str, statements: Sequence[tuple[str, Sequence[Any]] | str],
              route: str = "auto", env: dict[str, str] | None = None) -> dict[str, Any]:
        assert self.project is not None
        pairs = [[s, []] if isinstance(s, str) else [s[0], list(s[1])] for s in statements]
        proc = self.run(user, [str(self.venv / "bin" / "python"),
                               str(self.project.parent / "probe.py"),
                               json.dumps({"route": route, "statements": pairs})], env=env)
        assert proc.returncode == 0, proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def psql(self, user: str, *args: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
        return self.run(user, ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", *args], env=env)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """A refusal must be one clear line on stderr, and a non-zero exit."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0, proc.stdout
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="session")
def mu(accounts: dict[str, pwd.struct_passwd], shared_venv: Path) -> Iterator[Runner]:
    """A project owned by proj_owner in group proj, running; nobody authorized yet."""
    base = Path(tempfile.mkdtemp(prefix="bmu-", dir="/tmp"))
    owner = accounts[OWNER]
    os.chown(base, owner.pw_uid, owner.pw_gid)
    os.chmod(base, 0o755)
    shutil.copy(Path(__file__).with_name("probe.py"), base / "probe.py")
    os.chmod(base / "probe.py", 0o644)
    runner = Runner(shared_venv, accounts)
    project = base / "p"
    # Under umask 077: the modes must not depend on it.
    proc = runner.bash(OWNER, f"umask 077 && balsam-dbctl init {project} --group {GROUP}")
    if proc.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"init as {OWNER} failed: {proc.stderr}")
    runner.project = project
    yield runner
    runner.dbctl(OWNER, "stop", "--fast")
    shutil.rmtree(base, ignore_errors=True)


def port_of(runner: Runner) -> int:
    assert runner.project is not None
    return int(json.loads((runner.project / "server-info.json").read_text())["port"])


@pytest.fixture(scope="session")
def enrolled(mu: Runner) -> dict[str, subprocess.CompletedProcess[str]]:
    """The README's flow, both orders: owner first for the member (then the member's
    activation finishes over the socket), collaborator first for the viewer (a request
    file, then the owner's add-user applies it). Returns each step's output."""
    steps: dict[str, subprocess.CompletedProcess[str]] = {}
    assert mu.project is not None
    steps["add_member"] = mu.dbctl(OWNER, "add-user", MEMBER)
    steps["activate_member"] = mu.bash(MEMBER, f"source balsamactivate {mu.project} && umask")
    steps["add_member2"] = mu.dbctl(OWNER, "add-user", MEMBER2)
    steps["activate_member2"] = mu.bash(MEMBER2, f"source balsamactivate {mu.project}")
    steps["request_viewer"] = mu.bash(VIEWER, f"source balsamactivate {mu.project}")
    steps["add_viewer"] = mu.dbctl(OWNER, "add-user", VIEWER, "--read-only")
    steps["activate_viewer"] = mu.bash(VIEWER, f"source balsamactivate {mu.project}")
    steps["owner_request"] = mu.dbctl(OWNER, "request-access")
    for name, proc in steps.items():
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
    return steps
