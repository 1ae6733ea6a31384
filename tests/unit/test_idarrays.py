"""base/idarrays.py: compact id arrays encoded as Postgres's binary bigint[]."""

from __future__ import annotations

import struct
from array import array

import pytest

from balsam_mpi.base.idarrays import encode


@pytest.mark.parametrize("ids", [[], [1], [1, 2**40, 3, 2**63 - 1, 7]])
def test_encode_is_postgres_binary_bigint_array(ids: list[int]) -> None:
    if ids:
        expected = struct.pack("!iiIii", 1, 0, 20, len(ids), 1) + b"".join(
            struct.pack("!iq", 8, i) for i in ids)
    else:
        expected = struct.pack("!iiI", 0, 0, 20)
    assert bytes(encode(array("q", ids))) == expected
