"""Messages: one tag each, picklable, typed; the per-task records stay small tuples."""

from __future__ import annotations

import pickle

import pytest

from balsam_mpi import protocol as p


def test_every_tag_has_a_type_and_the_types_know_their_tag() -> None:
    assert len(set(p.Tag)) == len(list(p.Tag))
    for tag, cls in p.TAG_TYPES.items():
        assert cls.TAG is tag


@pytest.mark.parametrize("msg", [
    p.Hello(rank=1, host="n1", pid=9, cores=8, gpus=0),
    p.Report(rank=2, acked=3, free=0.5, running=2, queued=1,
             started=(p.Started(1, 1, 1.5),),
             finished=(p.Finished(1, 1, int(p.EndKind.ERROR), 2, 1.5, 2.5, "tail"),)),
    p.Assign(seq=4, tasks=(p.RunOrder(7, 1, ("/bin/true",), "/tmp/x", (("A", "b"),), 0.25),),
             kill=(3,)),
    p.Drain(reason="idle", grace_s=30.0),
    p.Bye(rank=1, report=p.Report(rank=1, acked=0, free=1.0, running=0, queued=0)),
    p.ErrorMsg(rank=1, host="n1", traceback="Traceback …"),
])
def test_messages_round_trip_through_pickle(msg: object) -> None:
    assert pickle.loads(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)) == msg


def test_messages_are_frozen() -> None:
    msg = p.Drain(reason="idle", grace_s=1.0)
    with pytest.raises(AttributeError):
        msg.reason = "other"  # type: ignore[misc]


def test_hello_carries_the_protocol_version() -> None:
    assert p.Hello(rank=1, host="h", pid=1, cores=1, gpus=0).version == p.PROTOCOL_VERSION


def test_end_kinds_match_the_database_report_function() -> None:
    # launcher_report (0004) reads 0 done, 1 error, 2 timeout, 3 cut off.
    assert [int(k) for k in (p.EndKind.DONE, p.EndKind.ERROR, p.EndKind.TIMEOUT,
                             p.EndKind.CUT)] == [0, 1, 2, 3]


def test_changes_take_empties_them() -> None:
    c = p.Changes()
    assert not c
    c.started.append(p.Started(1, 1, 0.0))
    assert c
    started, finished = c.take()
    assert started == (p.Started(1, 1, 0.0),) and finished == () and not c
