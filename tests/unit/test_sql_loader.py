"""Every SQL query is loaded by name; names are unique; migrations are numbered."""

from __future__ import annotations

import pytest

from balsam_mpi import sql


def test_parse_queries_splits_by_name() -> None:
    text = "-- header\n-- name: a\nSELECT 1;\n\n-- name: b_two\nSELECT 2;\n"
    assert sql.parse_queries(text, "x.sql") == {"a": "SELECT 1;", "b_two": "SELECT 2;"}


def test_parse_queries_rejects_duplicates_and_empty() -> None:
    with pytest.raises(ValueError, match="twice"):
        sql.parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n", "x.sql")
    with pytest.raises(ValueError, match="empty"):
        sql.parse_queries("-- name: a\n\n-- name: b\nSELECT 1;", "x.sql")


def test_all_package_queries_load() -> None:
    queries = sql.all_queries()
    assert "instance_check" in queries
    with pytest.raises(KeyError, match="no SQL query named"):
        sql.query("no_such_query")


def test_migrations_numbered_without_gaps() -> None:
    versions = [m.version for m in sql.migrations()]
    assert versions == list(range(1, len(versions) + 1))
    assert sql.latest_version() == len(versions) >= 1
