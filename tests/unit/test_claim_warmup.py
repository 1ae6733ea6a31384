"""A leader's first claim goes out on a connection that has never claimed: the server
plans the claim's statement and reads the tables' catalogs then (21 ms against about
1 ms for the next claims, measured in a server log here), and every node waits for it.
So the leader sends a claim of nothing as it starts, while the nodes say HELLO and the
preference is read (claims.Claims.warm); it claims nothing and is not counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from balsam_mpi.launcher.memstore import MemStore
from tests.unit.leaderkit import make

pytestmark = pytest.mark.timeout(60)


def test_the_first_claim_of_a_run_is_a_claim_of_nothing(tmp_path: Path) -> None:
    store = MemStore()
    store.add_app("a")
    store.add_tasks([{"app": "a"} for _ in range(8)])
    kit = make(tmp_path, store=store, workers=1, finish=False)
    assert kit.store.calls.count("claim") == 1  # before any node said HELLO
    assert all(t.batch_job_id is None for t in store.tasks.values())
    assert kit.leader.claims.sent == 0
    kit.turns(lambda: kit.leader.claims.total == 8)  # the usual claims follow
    assert all(t.batch_job_id is not None for t in store.tasks.values())
