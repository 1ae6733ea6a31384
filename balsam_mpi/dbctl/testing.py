"""Database copies for test suites: ``CREATE DATABASE … TEMPLATE balsam`` and back.

A copy keeps the schema, grants and instance record, so code under test connects to it
through the normal path with ``BALSAM_DB_NAME`` set. Nothing may be connected to the
template while it is copied, so tests never use the project's own ``balsam`` database.
"""

from __future__ import annotations

from psycopg import sql as pgsql

from .. import sql
from ..base.project import SCHEMA_DB, Project
from .admin import admin_connect
from .pgconf import OBJECT_ROLE


def create_copy(project: Project, name: str) -> None:
    info = project.read_server_info()
    with admin_connect(project, info, dbname="postgres") as admin:
        admin.execute(pgsql.SQL(sql.query("create_database_copy")).format(
            db=pgsql.Identifier(name), template=pgsql.Identifier(SCHEMA_DB),
            owner=pgsql.Identifier(OBJECT_ROLE)))


def drop_copy(project: Project, name: str) -> None:
    info = project.read_server_info()
    with admin_connect(project, info, dbname="postgres") as admin:
        admin.execute(pgsql.SQL(sql.query("drop_database_force")).format(
            db=pgsql.Identifier(name)))
