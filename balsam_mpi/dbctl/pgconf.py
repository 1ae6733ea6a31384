"""The server's configuration files, rendered from values (pure functions, no I/O).

Our settings live in ``balsam.conf``, which ``postgresql.conf`` includes, so upgrading the
distribution's defaults never clobbers ours. Every path in them is relative to the data
directory, so a stopped project can be moved or copied (docs/architecture.md §3).
"""

from __future__ import annotations

import re

CONF_NAME = "balsam.conf"
INCLUDE_LINE = f"include = '{CONF_NAME}'"
MEMBER_ROLE = "balsam_member"
VIEWER_ROLE = "balsam_viewer"
OBJECT_ROLE = "balsam_objects"
OWNER_ROLE = "balsam_owner"
APP_ADMIN_ROLE = "balsam_app_admin"
# The database superuser's role. It is not the owner's name: the owner's own name is their
# everyday login role (an ordinary member with owner rights, what their launchers use over
# TCP), and the owner's OS account reaches the superuser only over the socket through the
# peer map below (docs/architecture.md §6).
SUPERUSER_ROLE = "balsam_superuser"
SUPERUSER_MAP = "balsam_superuser"

# pg_wal's size is about max_wal_size at its busiest (a soft limit: a checkpoint starts
# when this much WAL has been written since the last) and min_wal_size when idle.
WAL_MAX_MB = 128
WAL_MIN_MB = 32

_LISTEN = re.compile(r"^[A-Za-z0-9.:*_-]+$")


def validate_listen(listen: str) -> str:
    """``--listen`` as Postgres's listen_addresses: comma-separated hosts, no quoting games."""
    parts = [p.strip(" ") for p in listen.split(",") if p.strip(" ")]
    if not parts or not all(_LISTEN.fullmatch(p) for p in parts):
        raise ValueError(
            f"--listen {listen!r} is not a comma-separated list of host names or addresses"
        )
    return ",".join(parts)


def render_conf(*, port: int, listen: str, group: str, max_connections: int = 400) -> str:
    """balsam.conf: loopback TCP unless told otherwise, the socket in ../run, modest memory."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", group):
        raise ValueError(f"group name {group!r} cannot be written to the server configuration")
    return "\n".join(
        [
            "# Written by balsam-dbctl; `balsam-dbctl init/start` rewrite it. Paths are",
            "# relative to the data directory so a stopped project can be moved or copied.",
            f"port = {int(port)}",
            f"listen_addresses = '{validate_listen(listen)}'",
            "unix_socket_directories = '../run'",
            f"unix_socket_group = '{group}'",
            "unix_socket_permissions = 0770",
            f"max_connections = {int(max_connections)}",
            "superuser_reserved_connections = 5",
            # A login node is shared: keep memory modest.
            "shared_buffers = 128MB",
            "work_mem = 8MB",
            "maintenance_work_mem = 128MB",
            "password_encryption = 'scram-sha-256'",
            "authentication_timeout = 10s",
            # Most of the claim's working set is cached; random reads are cheap (and a high
            # value pushed the filtered claim off its index).
            "random_page_cost = 1.1",
            # WAL kept bounded (docs/retention.md): nothing replicates or archives a
            # project's database, so the WAL carries only what crash recovery needs
            # (minimal) and full-page images are compressed; a checkpoint starts after at
            # most max_wal_size of WAL, so pg_wal stays near that size however busy the
            # project is (measured: 128 MB at the peak and the end of a 50,000-task run,
            # against 272 MB kept under Postgres's defaults, whose bound is 1 GB).
            "wal_level = minimal",
            "max_wal_senders = 0",
            "archive_mode = off",
            "wal_compression = on",
            f"max_wal_size = {WAL_MAX_MB}MB",
            f"min_wal_size = {WAL_MIN_MB}MB",
            "checkpoint_timeout = 5min",
            "checkpoint_completion_target = 0.9",
            "logging_collector = on",
            "log_directory = '../log/server'",
            "log_filename = 'postgresql-%a.log'",
            "log_truncate_on_rotation = on",
            "log_rotation_age = 1d",
            "log_file_mode = 0600",
            # Statements may carry task data and role DDL: never log them.
            "log_statement = 'none'",
            "log_min_duration_statement = -1",
            "log_min_error_statement = panic",
            "log_connections = off",
            "log_disconnections = off",
            "",
        ]
    )


def render_hba(superuser: str, owner: str | None = None) -> str:
    """pg_hba.conf of docs/architecture.md §6: peer on the socket, scram on TCP, reject all else.

    With ``owner`` (the owner's OS account, when it differs from the superuser role) the
    superuser line uses the peer map of ``render_ident``. Members reach the project
    database over TCP; over the socket also the cluster's other databases they hold
    CONNECT on (only test copies: `init` revokes CONNECT on postgres and template1).
    """
    for name in (superuser, owner or superuser):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"account name {name!r} cannot be written to pg_hba.conf")
    members = f"+{MEMBER_ROLE},+{VIEWER_ROLE}"
    mapped = owner is not None and owner != superuser
    admin = f"peer map={SUPERUSER_MAP}" if mapped else "peer"
    return "\n".join(
        [
            "# Written by balsam-dbctl. Never `trust`: see the README's security model.",
            "# TYPE  DATABASE  USER            ADDRESS        METHOD",
            f"local   all       {superuser:<15} {admin}",
            f"local   balsam    {members:<15} peer",
            f"local   all       {members:<15} peer",
            f"host    balsam    {members:<15} 0.0.0.0/0      scram-sha-256",
            f"host    balsam    {members:<15} ::/0           scram-sha-256",
            "local   all       all                            reject",
            "host    all       all             0.0.0.0/0      reject",
            "host    all       all             ::/0           reject",
            "",
        ]
    )


def render_ident(superuser: str, owner: str | None = None) -> str:
    """pg_ident.conf: the owner's OS account, and only it, may log in as the superuser."""
    lines = ["# Written by balsam-dbctl.", "# MAPNAME          SYSTEM-USERNAME  PG-USERNAME"]
    if owner is not None and owner != superuser:
        for name in (superuser, owner):
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"account name {name!r} cannot be written to pg_ident.conf")
        lines.append(f"{SUPERUSER_MAP:<17} {owner:<16} {superuser}")
    return "\n".join(lines) + "\n"


def with_include(postgresql_conf: str) -> str:
    """postgresql.conf with our include line appended once."""
    if INCLUDE_LINE in postgresql_conf.splitlines():
        return postgresql_conf
    return postgresql_conf.rstrip("\n") + f"\n\n# balsam_mpi settings\n{INCLUDE_LINE}\n"


def read_port(conf_text: str) -> int | None:
    match = re.search(r"^port = (\d+)$", conf_text, re.MULTILINE)
    return int(match.group(1)) if match else None
