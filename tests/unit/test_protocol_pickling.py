"""Messages cross between ranks pickled (launcher/comm.py), one or more per task.

A frozen, slotted dataclass pickles through the ``__getstate__``/``__setstate__`` that
``dataclasses`` writes for it, and both look the class's fields up again on every call
(``dataclasses.fields``): in a CPU profile of a leader running 0.1 s Python calls on
4 x 16 slots, that lookup was among its largest items. Each message class now pickles as
itself and its fields' values (``protocol._wire``), read by one ``operator.attrgetter``
made once per class, and unpickles through its ``__init__``."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from balsam_mpi import protocol
from balsam_mpi.protocol import (
    AddTasks,
    Assign,
    Bye,
    Drain,
    ErrorMsg,
    Finished,
    Hello,
    Report,
    RunOrder,
    Started,
)

REPORT = Report(rank=2, acked=5, free=0.25, running=12, queued=3,
                started=(Started(7, 1, 10.5),), finished=(Finished(6, 1, 0, 0, 9.0, 10.0),),
                done_share=3.5, returned=(9,))
MESSAGES = [
    Hello(rank=1, host="n1", pid=42, cores=64, gpus=4),
    REPORT,
    Assign(seq=3, tasks=(RunOrder(id=8, epoch=1, argv=("/bin/true",), cwd="w/8"),),
           kill=(4,), release=(5,), added=((1, (10, 11), ""),), recall=(2,)),
    Drain(reason="idle", grace_s=5.0, cut=True),
    Bye(rank=1, report=REPORT),
    ErrorMsg(rank=3, host="n3", traceback="Traceback ...", report=REPORT,
             exc_type="ValueError", message="bad"),
    AddTasks(rank=1, parent=6, tasks=({"app": "a", "params": {"x": 1}},), req=4),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_crosses_unchanged(msg: protocol.Message) -> None:
    back = pickle.loads(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
    assert type(back) is type(msg)
    assert back == msg


def test_every_message_class_pickles_without_looking_its_fields_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = [pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL) for m in MESSAGES]

    def no_lookup(*_args: object) -> None:
        raise AssertionError("dataclasses.fields was called to pickle a message")

    monkeypatch.setattr(dataclasses, "fields", no_lookup)
    for msg, blob in zip(MESSAGES, blobs, strict=True):
        assert pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL) == blob
        assert pickle.loads(blob) == msg


def test_every_message_type_is_wired() -> None:
    for cls in protocol.TAG_TYPES.values():
        assert "__reduce__" in vars(cls), cls.__name__
