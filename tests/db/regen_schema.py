"""Rewrite balsam_mpi/sql/schema.sql as the migrations applied in order.

Run after adding or changing a migration: `python tests/db/regen_schema.py`. The test
`test_schema_matches_migrations` then checks the two give the same catalog. Once a
release has shipped, schema.sql is edited by hand instead and the test keeps them equal.
"""

from __future__ import annotations

from pathlib import Path

SQL = Path(__file__).resolve().parents[2] / "balsam_mpi" / "sql"
HEADER = (
    "-- schema.sql: the schema of a fresh database. It must give the same catalog as\n"
    "-- migrations/ applied in order (tests/db/test_schema.py checks it).\n"
)


def main() -> None:
    parts = [HEADER]
    for path in sorted((SQL / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql")):
        parts.append(f"\n-- ==== {path.name} ====\n")
        parts.append(path.read_text())
    (SQL / "schema.sql").write_text("".join(parts))


if __name__ == "__main__":
    main()
