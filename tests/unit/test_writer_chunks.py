"""The chunks of a bulk add without parents (tasks/writer.py): every input once, in
order; small first (the server starts early), each at most CHUNK_GROWTH times the one
before (the client readies the next while the server moves the last), never over CHUNK."""

from __future__ import annotations

import pytest

from balsam_mpi.tasks import writer


@pytest.mark.parametrize("n", [1, 999, 1000, 1001, 50_000, 100_000, 1_000_003])
def test_chunks_cover_every_task_once_and_grow_to_the_cap(n: int) -> None:
    parts = writer.chunks(n)
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
    sizes = [hi - lo for lo, hi in parts]
    assert all(s > 0 for s in sizes)
    assert sizes[0] == min(n, writer.FIRST_CHUNK)
    assert max(sizes) <= writer.CHUNK
    full = sizes[:-1]  # the last may be cut short by n
    assert all(b <= a * writer.CHUNK_GROWTH + 1 for a, b in zip(full, full[1:], strict=False))
    if n >= 1_000_000:
        assert sizes.count(writer.CHUNK) >= n // writer.CHUNK - 10

