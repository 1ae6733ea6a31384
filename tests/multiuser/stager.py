"""Stage one task by binary COPY in an open transaction, say where, and wait for a line on
stdin before moving it: meanwhile another user's session tries to reach the staged row.

Usage: python stager.py APP_ID   (prints {"schema": …, "id": …}, then {"moved": n})
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    from balsam_mpi.base import db
    from balsam_mpi.base.project import Project

    app = int(sys.argv[1])
    with db.connect(Project.from_env(), autocommit=True, application_name="stager") as conn:
        conn.execute("SELECT tasks_stage_open()")  # committed: in the catalog for all to see
        with conn.transaction():
            row = conn.execute("SELECT tasks_reserve_ids(1), "
                               "pg_my_temp_schema()::regnamespace::text").fetchone()
            assert row is not None
            with conn.cursor() as cur, cur.copy("COPY pg_temp.task_stage (id, workflow, "
                                                "app_id) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "text", "int8"])
                copy.write_row((row[0], "staged", app))
            print(json.dumps({"schema": row[1], "id": row[0]}), flush=True)
            sys.stdin.readline()
            moved = conn.execute("SELECT tasks_add_staged('{}', '{}')").fetchone()
        print(json.dumps({"moved": moved[0] if moved else None}), flush=True)


if __name__ == "__main__":
    main()
