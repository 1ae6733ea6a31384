"""The leader's AddService (tasks that running tasks add) and AppCache (apps' extras read
once per app) over the in-memory store, with database calls run inline."""

from __future__ import annotations

from typing import Any

from balsam_mpi.base.errors import ServerError
from balsam_mpi.launcher.adds import Added, AddService
from balsam_mpi.launcher.appinfo import NONE, AppCache
from balsam_mpi.launcher.calls import Calls
from balsam_mpi.launcher.dbthread import Inline
from balsam_mpi.launcher.memstore import MemStore
from balsam_mpi.launcher.storeport import AppExtras, ClaimFilter, Lease
from balsam_mpi.protocol import LOCAL, AddTasks


class LocalChannel:
    """The local node's task channel: requests handed in, replies noted."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.replies: list[tuple[int, tuple[int, ...], str]] = []

    def poll(self) -> list[Any]:
        out, self.requests = self.requests, []
        return out

    def reply(self, req_id: int, ids: tuple[int, ...], error: str = "") -> None:
        self.replies.append((req_id, ids, error))


class Request:
    def __init__(self, req_id: int, tasks: tuple[dict[str, Any], ...]) -> None:
        self.id = req_id
        self.tasks = tasks


def service(store: MemStore, chan: LocalChannel | None = None
            ) -> tuple[AddService, dict[int, list[Added]]]:
    sent: dict[int, list[Added]] = {}
    svc = AddService(Calls(Inline(store)), store,
                     lambda rank, added: sent.setdefault(rank, []).append(added),
                     chan)  # type: ignore[arg-type]
    return svc, sent


def step(svc: AddService) -> None:
    svc.step()
    svc.calls.collect()


def test_each_request_gets_its_own_ids_and_its_own_error() -> None:
    store = MemStore()
    store.add_app("a")
    svc, sent = service(store)
    svc.received(AddTasks(rank=1, req=7, tasks=({"app": "a"}, {"app": "a"}), parent=11))
    svc.received(AddTasks(rank=2, req=3, tasks=({"app": "nope"},), parent=12))
    svc.received(AddTasks(rank=1, req=8, tasks=({"app": "a"},), parent=11))
    step(svc)
    [[(r7, ids7, e7), (r8, ids8, e8)]] = sent[1]
    assert (r7, r8, e7, e8) == (7, 8, "", "")
    assert len(ids7) == 2 and len(ids8) == 1 and set(ids7).isdisjoint(ids8)
    assert all(store.tasks[i].app == "a" for i in ids7 + ids8)
    [[(r3, ids3, e3)]] = sent[2]
    assert (r3, ids3) == (3, ()) and "no app named 'nope'" in e3  # the bad one alone
    assert svc.added == 3 and not svc.waiting


def test_a_failed_write_still_answers_every_request() -> None:
    store = MemStore()
    store.add_app("a")
    chan = LocalChannel()
    svc, sent = service(store, chan)
    store.fail("add_tasks", ServerError("lost the database connection: gone"))
    chan.requests.append(Request(5, ({"app": "a"},)))
    step(svc)  # one request, one failed write
    assert chan.replies == [(5, (), "lost the database connection: gone")]
    assert not store.tasks and not sent


def test_local_requests_are_answered_on_the_channel_and_one_write_at_a_time() -> None:
    store = MemStore()
    store.add_app("a")
    chan = LocalChannel()
    svc, sent = service(store, chan)
    chan.requests.append(Request(1, ({"app": "a"},)))
    svc.received(AddTasks(rank=LOCAL, req=2, tasks=({"app": "a"},), parent=13))
    assert svc.step()  # both requests in one write, each its own transaction
    assert store.calls.count("add_tasks") == 2
    svc.received(AddTasks(rank=LOCAL, req=3, tasks=({"app": "a"},), parent=13))
    assert not svc.step()  # the first write is not collected yet: the third waits
    assert store.calls.count("add_tasks") == 2
    svc.calls.collect()
    assert sorted(r for r, _ids, _e in chan.replies) == [1, 2]
    step(svc)
    assert sorted(r for r, _ids, _e in chan.replies) == [1, 2, 3]
    assert not sent  # nothing to a worker rank
    assert not svc.step()  # nothing waits: no write


def lease_and_claim(store: MemStore) -> tuple[Lease, AppCache]:
    lease = store.open_job(job_id=None, scheduler="local", scheduler_job_id=None, host="h",
                           nodes=1, ranks=1, filters=ClaimFilter(), wall_time_min=None,
                           lease_sec=60)
    return lease, AppCache()


def test_the_app_cache_reads_each_app_once_after_a_claim() -> None:
    store = MemStore()
    store.add_app("pre", preprocess="echo hi")
    store.add_app("py", python="pkg.mod:fn")
    store.add_app("plain")
    store.add_tasks([{"app": a, "node_packing_count": 2}
                    for a in ("pre", "py", "plain", "pre")])
    lease, cache = lease_and_claim(store)
    kw = dict(limit=2, capacity=1.0, max_need=1.0, filters=ClaimFilter())
    assert len(cache.claim(store, lease, **kw)) == 2
    assert store.calls.count("app_extras") == 1
    assert cache.get("pre") == AppExtras(preprocess="echo hi")
    assert cache.get("py").python == "pkg.mod:fn"
    assert len(cache.claim(store, lease, **kw)) == 2  # "plain" new, "pre" known
    assert store.calls.count("app_extras") == 2
    assert cache.get("plain") == NONE
    cache.claim(store, lease, **kw)  # nothing left: no read of extras
    assert store.calls.count("app_extras") == 2


def test_an_app_without_extras_is_not_asked_about_again() -> None:
    store = MemStore()
    store.add_app("plain")
    cache = AppCache()
    cache.fetch(store, ["plain", "gone"])  # "gone" was deleted meanwhile
    cache.fetch(store, ["gone", "plain"])
    assert store.calls.count("app_extras") == 1
    assert cache.get("gone") == NONE and cache.get("unseen") == NONE
