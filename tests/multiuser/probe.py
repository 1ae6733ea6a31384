"""Run SQL statements as whoever runs this script, through balsam_mpi's own connection
code, and print one JSON result per statement (or the connection error).

Usage: python probe.py '{"route": "socket"|"tcp"|"auto", "statements": [[sql, params]]}'
Each statement runs in its own transaction, so one refusal does not hide the next.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def main() -> None:
    request = json.loads(sys.argv[1])
    from balsam_mpi.base import db
    from balsam_mpi.base.errors import BalsamError
    from balsam_mpi.base.project import Project

    try:
        conn = db.connect(Project.from_env(), route=request.get("route", "auto"),
                          autocommit=True, application_name="probe")
    except BalsamError as exc:
        print(json.dumps({"connect_error": str(exc)}))
        return
    results: list[dict[str, Any]] = []
    import psycopg

    with conn:
        for statement, params in request.get("statements", []):
            try:
                cur = conn.execute(statement, params or None)
                rows = cur.fetchall() if cur.description else []
                results.append({"ok": True, "rowcount": cur.rowcount,
                                "rows": json.loads(json.dumps(rows, default=str))})
            except psycopg.Error as exc:
                results.append({"ok": False, "sqlstate": exc.sqlstate,
                                "error": str(exc).strip().splitlines()[0]})
                if conn.closed:
                    break
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
