"""Compact id arrays (8 bytes an id) sent to Postgres as one binary ``bigint[]``.

A Python list of a million ids holds a million int objects (about 36 bytes each), and
psycopg's list dumper builds another copy; an ``IdArray`` is one ``array('q')`` and is
encoded straight into Postgres's binary array format (12 bytes an id, built by strided
byte copies, no per-id Python object). Used where a whole batch's ids must go in one
statement: a bulk add's dependencies, the tasks a prune deletes.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable
from typing import Any

_INT8_OID = 20
_INT8_ARRAY_OID = 1016


class IdArray(array):  # type: ignore[type-arg]
    """``array('q')`` that psycopg sends as a binary ``bigint[]`` (made by id_array)."""


def id_array(ids: Iterable[int] = ()) -> IdArray:
    """An IdArray; the connection that sends it must have been through ``register``."""
    return IdArray("q", ids)


def encode(ids: array) -> bytes | bytearray:  # type: ignore[type-arg]
    """Postgres's binary form of a one-dimensional ``bigint[]`` without NULLs."""
    n = len(ids)
    if n == 0:
        return struct.pack("!iiI", 0, 0, _INT8_OID)
    data = array("q", ids)
    if sys.byteorder == "little":
        data.byteswap()
    raw = data.tobytes()
    del data
    out = bytearray(20 + 12 * n)  # the header, then each element after its length
    struct.pack_into("!iiIii", out, 0, 1, 0, _INT8_OID, n, 1)
    out[23::12] = b"\x08" * n  # each element's length, 8, as a big-endian int32
    for k in range(8):  # the 8 bytes of each element
        out[24 + k::12] = raw[k::8]
    return out


def register(conn: Any) -> None:
    """Tell a connection how to send an IdArray (its adapters were copied from psycopg's
    global ones when it was made, so registering globally later would not reach it)."""
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    class IdArrayDumper(Dumper):
        format = Format.BINARY
        oid = _INT8_ARRAY_OID

        def dump(self, obj: Any) -> bytes | bytearray:
            return encode(obj)

    conn.adapters.register_dumper(IdArray, IdArrayDumper)
