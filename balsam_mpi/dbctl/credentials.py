"""The collaborator's password: made here, kept in their ``~/.pgpass``, shown to nobody.

Only its SCRAM-SHA-256 verifier leaves the account (``enroll.py`` hands it over). A
verifier lets the server check a password; it does not let anyone log in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import re
import secrets
from pathlib import Path

SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)
_B64 = r"[A-Za-z0-9+/]+={0,2}"
_VERIFIER = re.compile(rf"SCRAM-SHA-256\$(\d{{1,8}}):({_B64})\$({_B64}):({_B64})")


def new_password() -> str:
    return secrets.token_urlsafe(32)


# -- SCRAM-SHA-256 (RFC 5802 / RFC 7677) ---------------------------------------------------
def scram_verifier(password: str, *, salt: bytes | None = None,
                   iterations: int = SCRAM_ITERATIONS) -> str:
    """The verifier PostgreSQL stores for ``password``:
    ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64).

    Our passwords are ASCII (``secrets.token_urlsafe``), which SASLprep leaves unchanged.
    """
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def is_well_formed_verifier(text: str) -> bool:
    """Would PostgreSQL take ``text`` as a verifier? (If not, ALTER ROLE … PASSWORD would
    store it as a plaintext password: never apply one that fails this.)"""
    match = _VERIFIER.fullmatch(text)
    if not match:
        return False
    iterations = int(match.group(1))
    try:
        salt, stored, server = (base64.b64decode(match.group(i), validate=True)
                                for i in (2, 3, 4))
    except ValueError:
        return False
    return 1024 <= iterations <= 10_000_000 and len(salt) >= 8 and len(stored) == 32 \
        and len(server) == 32


# -- ~/.pgpass --------------------------------------------------------------------------
def _me() -> pwd.struct_passwd:
    return pwd.getpwuid(os.geteuid())


def pgpass_path() -> Path:
    """$PGPASSFILE, else ~/.pgpass of the account (not $HOME: `runuser` may keep root's)."""
    return Path(os.environ.get("PGPASSFILE") or Path(_me().pw_dir) / ".pgpass")


def _fields(line: str) -> list[str]:
    """Split a .pgpass line on unescaped colons, unescaping \\: and \\\\."""
    out, cur, escaped = [], [], False
    for ch in line:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def pgpass_password(hosts: list[str], role: str, path: Path | None = None) -> str | None:
    """The password our own lines keep for ``role`` on one of ``hosts`` (any port, any db)."""
    path = path or pgpass_path()
    try:
        lines = path.read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    for line in lines:
        parts = _fields(line)
        if len(parts) == 5 and parts[0] in hosts and parts[1] == "*" and parts[3] == role:
            return parts[4]
    return None


def pgpass_has(host: str, role: str, path: Path | None = None) -> bool:
    return pgpass_password([host], role, path) is not None


def pgpass_store(hosts: list[str], role: str, password: str, path: Path | None = None) -> None:
    """Add ``host:*:*:role:password`` lines for hosts that lack one; keep every other line.

    Port ``*`` because `start` may move the server to another port; database ``*`` because
    a role's password belongs to the whole cluster. Written through a temporary file,
    0600 (libpq ignores a .pgpass that others can read).
    """
    path = path or pgpass_path()
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        lines = []
    have = {(p[0], p[3]) for p in map(_fields, lines) if len(p) == 5 and p[1] == "*"}
    for host in hosts:
        if (host, role) not in have:
            lines.append(f"{host}:*:*:{role}:{password}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
