"""The project directory: its paths, its control files, and the checks that keep it safe.

Everyone reads this module's files; only ``balsam-dbctl`` (the owner) writes them. The
layout and modes are those of docs/architecture.md §3. Nothing here talks to Postgres.
"""

from __future__ import annotations

import json
import math
import os
import socket
import stat
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from .errors import BadControlFile, BadProjectPath, InputError, ProjectError

ENV_VAR = "BALSAM_DB_PATH"
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes on Linux, one for the terminating NUL
SCHEMA_DB = "balsam"
# settings.toml's top level: what `init` writes (dbctl/lifecycle.py default_settings).
SETTINGS_KEYS = frozenset({"group", "umask", "launcher"})

# Modes of docs/architecture.md §3. Directories get setgid so new files inherit the project group;
# the sticky bit stops members from renaming or replacing what others own.
MODE_TOP = 0o3750
MODE_DB = 0o700
MODE_CONTROL = 0o640
MODE_TEMPLATES = 0o2750
MODE_ACCESS = 0o3770
MODE_DATA = 0o2770
MODE_LOG = 0o3770
MODE_LOG_SERVER = 0o700
MODE_RUN = 0o2750


# server-info.json's whole numbers and the ranges they may take (uids and the data
# directory's device and inode are unsigned in the kernel).
_INFO_INTS = (("port", 1, 65535), ("owner_uid", 0, 2**32 - 2), ("server_uid", 0, 2**32 - 2),
              ("pg_major", 1, 10**6), ("data_dev", 0, 2**64 - 1), ("data_ino", 0, 2**64 - 1),
              ("schema_version", 0, 10**6))
_INFO_TEXTS = ("host", "owner_name", "server_name", "group", "pg_bindir", "superuser",
               "listen", "instance_nonce")


@dataclass(frozen=True)
class ServerInfo:
    """What ``server-info.json`` records about the project's server (owner-written)."""

    host: str
    port: int
    owner_uid: int
    owner_name: str
    server_uid: int
    server_name: str
    group: str
    pg_major: int
    pg_bindir: str
    superuser: str
    listen: str = "localhost"
    instance_nonce: str = ""
    data_dev: int = 0
    data_ino: int = 0
    started_at: float = 0.0
    schema_version: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str, source: Path) -> ServerInfo:
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise TypeError(f"a JSON object was expected, not {type(raw).__name__}")
            known = {f for f in cls.__dataclass_fields__}
            info = cls(**{k: v for k, v in raw.items() if k in known})
        except (ValueError, TypeError) as exc:
            raise BadControlFile(
                f"{source} is not a valid server-info file ({exc}); the owner can restore "
                "it from a backup or correct it by hand"
            ) from exc
        info._check_fields(source)
        return info

    def _check_fields(self, source: Path) -> None:
        """Every field of the kind and range this package writes. The file is edited by
        hand, if at all, and everything that reads it (a socket path, a port to bind,
        the account to demand as the socket's peer) would otherwise fail far from here,
        or with a traceback."""
        for name, low, high in _INFO_INTS:
            value = getattr(self, name)
            if type(value) is not int:  # bool is an int to Python, not to this file
                self._bad(source, name, f"must be a whole number, got {_show(value)}")
            if not low <= value <= high:
                self._bad(source, name, f"must be in {low}-{high}, got {value}")
        for name in _INFO_TEXTS:
            value = getattr(self, name)
            if not isinstance(value, str):
                self._bad(source, name, f"must be text, got {_show(value)}")
            if "\x00" in value:
                self._bad(source, name, "contains a NUL character")
            if not value and name != "instance_nonce":
                self._bad(source, name, "must not be empty")
        if type(self.started_at) not in (int, float) or not math.isfinite(self.started_at):
            self._bad(source, "started_at", f"must be a number (seconds since the epoch), "
                                            f"got {_show(self.started_at)}")
        if not isinstance(self.extra, dict):
            self._bad(source, "extra", f"must be a JSON object, got {_show(self.extra)}")

    @staticmethod
    def _bad(source: Path, name: str, what: str) -> NoReturn:
        raise BadControlFile(f"{source}: {name}: {what}; the owner can restore the file "
                             "from a backup or correct the field by hand")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def this_host() -> str:
    """The name servers record as their host and clients compare against."""
    return socket.gethostname()


class Project:
    """A project directory and the names of everything inside it."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(os.fspath(root)))

    # -- paths -------------------------------------------------------------------------
    @property
    def db_dir(self) -> Path:
        return self.root / "balsamdb"

    @property
    def server_info_path(self) -> Path:
        return self.root / "server-info.json"

    @property
    def settings_path(self) -> Path:
        return self.root / "settings.toml"

    @property
    def templates_dir(self) -> Path:
        return self.root / "job-templates"

    @property
    def access_dir(self) -> Path:
        return self.root / "access"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def server_log_dir(self) -> Path:
        return self.log_dir / "server"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def task_dir(self, workflow: str, task_id: int, name: str = "") -> Path:
        """A task's working directory: data/<workflow>/<id // 1000>/<name>_<id>/ (sharded
        so no directory holds more than ~1000 tasks; the id makes it unique)."""
        leaf = f"{name}_{task_id}" if name else str(task_id)
        return self.data_dir / _path_safe(workflow) / str(task_id // 1000) / _path_safe(leaf)

    def socket_path(self, port: int) -> Path:
        return self.run_dir / f".s.PGSQL.{port}"

    def check_socket_length(self, port: int) -> None:
        """Unix sockets have a 107-byte path limit; say so before Postgres fails obscurely."""
        path = os.fsencode(self.socket_path(port))
        if len(path) > SOCKET_PATH_MAX:
            raise ProjectError(
                f"the server socket path {self.socket_path(port)} is {len(path)} bytes; "
                f"unix sockets allow at most {SOCKET_PATH_MAX}: use a shorter project path "
                "(or a symlink with a short name to it)"
            )

    # -- discovery ---------------------------------------------------------------------
    @classmethod
    def from_env(cls, path: str | os.PathLike[str] | None = None) -> Project:
        """The project named by ``path`` or ``$BALSAM_DB_PATH``; one line when it is not a
        usable directory (BadProjectPath: bad input, exit status 2)."""
        if isinstance(path, Project):
            return path
        if path is not None and not isinstance(path, (str, os.PathLike)) or isinstance(
                path, bytes):
            kind = {int: "the integer", float: "the number", bool: "a boolean"}.get(
                type(path), f"a {type(path).__name__}")
            raise BadProjectPath(f"project: expected a directory path, got {kind} "
                                 f"{_show(path)}")
        if path is not None and not os.fspath(path):
            # given, but empty (`--project "$P"` with P unset): not the activated project
            raise BadProjectPath("project: the path is empty; name the project's directory")
        chosen = os.fspath(path) if path else os.environ.get(ENV_VAR, "")
        where = "project" if path else ENV_VAR
        if not isinstance(chosen, str):
            raise BadProjectPath(f"{where}: expected a directory path as text")
        if not chosen:
            raise BadProjectPath(
                f"no project given: pass --project PATH or `source balsamactivate PATH` "
                f"(which sets {ENV_VAR})"
            )
        if "\x00" in chosen:
            raise BadProjectPath(f"{where}: the path contains a NUL character")
        try:
            os.fsencode(chosen)
        except UnicodeEncodeError:  # pragma: no cover - only with a non-UTF-8 locale
            raise BadProjectPath(f"{where}: the path cannot be encoded") from None
        project = cls(chosen)
        shown = str(project.root) if len(chosen) <= 200 and chosen.isprintable() \
            else _show(str(project.root))
        try:
            st = os.stat(project.root)
        except FileNotFoundError:
            raise BadProjectPath(f"{where}: {shown} does not exist") from None
        except OSError as exc:
            raise BadProjectPath(f"{where}: cannot reach {shown} ({exc.strerror})") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise BadProjectPath(f"{where}: {shown} is not a directory (a project "
                                 "is the directory `balsam-dbctl init` made)")
        return project

    def exists(self) -> bool:
        return self.server_info_path.exists()

    # -- control files -----------------------------------------------------------------
    def read_server_info(self, check_owner: bool = True) -> ServerInfo:
        path = self.server_info_path
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise BadProjectPath(
                f"{self.root} is not a balsam project (no server-info.json); "
                "create one with `balsam-dbctl init PATH`"
            ) from None
        except PermissionError:
            raise ProjectError(
                f"cannot read {path}: you are not in the project's group; "
                "ask the project owner to add you to it"
            ) from None
        info = ServerInfo.from_json(text, path)
        if check_owner:
            check_control_file(path, info.owner_uid)
        return info

    def write_server_info(self, info: ServerInfo, gid: int | None = None) -> None:
        write_atomic(self.server_info_path, info.to_json(), MODE_CONTROL, gid=gid)

    def read_settings(self) -> dict[str, Any]:
        path = self.settings_path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ProjectError(f"cannot read {path}: {exc.strerror}") from exc
        raw = raw.removeprefix(b"\xef\xbb\xbf")  # an editor's mark; TOML has no use for it
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise InputError(f"{path}, line {line}: not valid UTF-8 (byte "
                             f"0x{raw[exc.start]:02x}); save the file as UTF-8") from None
        try:
            data: dict[str, Any] = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{path}: not valid TOML ({exc})") from None
        # [launcher] refuses a key it does not know; a misspelt table, or a setting put
        # above it, would otherwise be ignored and its value silently not applied.
        unknown = sorted(set(data) - SETTINGS_KEYS)
        if unknown:
            raise InputError(f"{path}: unknown table or setting {_show(unknown[0])} (the "
                             f"file holds {', '.join(sorted(SETTINGS_KEYS))})")
        return data


def _show(value: Any) -> str:
    from .values import show

    return show(value, 80)


def _path_safe(text: str) -> str:
    """A name usable as one path component: no separators, no leading dots."""
    cleaned = "".join(c if c.isalnum() or c in "-_.=+" else "_" for c in text)
    return cleaned.lstrip(".") or "_"


def check_control_file(path: Path, owner_uid: int) -> None:
    """Refuse a control file that someone other than the owner could have written.

    Clients trust ``server-info.json`` to tell them where the server is and which account
    runs it; a group-writable or foreign-owned file could point them at an impostor.
    """
    st = path.stat()
    if st.st_uid != owner_uid:
        raise ProjectError(
            f"refusing {path}: it is owned by uid {st.st_uid}, not the project owner "
            f"(uid {owner_uid}); the owner should run `balsam-dbctl fix-perms`"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ProjectError(
            f"refusing {path}: it is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); the owner should run `balsam-dbctl fix-perms`"
        )


def write_atomic(path: Path, text: str, mode: int, gid: int | None = None) -> None:
    """Write ``text`` to ``path`` through a temporary file and rename, with an exact mode.

    Readers never see a half-written file, and the mode does not depend on the umask.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if gid is not None:
            os.chown(tmp, -1, gid)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def dump_toml(values: dict[str, Any]) -> str:
    """Render a flat or one-level-nested dict of scalars as TOML (what settings.toml holds)."""

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, str):
            return json.dumps(value)
        if isinstance(value, list):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        raise TypeError(f"cannot write {type(value).__name__} to settings.toml")

    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {scalar(value)}")
    for name, table in tables:
        lines.append("")
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {scalar(value)}" for key, value in table.items())
    return "\n".join(lines) + "\n"
