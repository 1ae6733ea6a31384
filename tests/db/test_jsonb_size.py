"""The client measures a JSON document as Postgres stores it: jsondoc.json_size equals
``octet_length(doc::jsonb::text)``, which is what the database's CHECK constraints cap
(base/limits.py). Checked against the server with hypothesis-generated documents."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balsam_mpi.base import jsondoc

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=20)
docs = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**40, 10**40),
              st.floats(allow_nan=False, allow_infinity=False), text),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(text, inner, max_size=4)),
    max_leaves=20)


def test_json_size_is_what_postgres_measures(conn: psycopg.Connection) -> None:
    @settings(database=None, deadline=None, max_examples=300,
              suppress_health_check=[HealthCheck.too_slow,
                                     HealthCheck.function_scoped_fixture])
    @given(docs)
    def check(doc: Any) -> None:
        row = conn.execute("SELECT octet_length(%s::jsonb::text)",
                           (json.dumps(doc),)).fetchone()
        assert row is not None and jsondoc.json_size("d", doc) == row[0], json.dumps(doc)

    check()
