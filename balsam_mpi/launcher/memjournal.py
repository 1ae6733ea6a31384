"""The journal bookkeeping of the in-memory store (``launcher/memstore.py``): keys per
(batch job, epoch), the report group a journal is written ``through``, which journals are
due for replay, and replays checked by MAC and order — as ``launcher_journal_*`` and
``launcher_replay`` do in the database (0008), without the requeue repair."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from ..protocol import Finished, Started
from .journal import mac
from .memrows import Job
from .storeport import Lease


class JournalsInMemory:
    journals: dict[tuple[int, int], dict[str, Any]]
    jobs: dict[int, Job]
    _enter: Callable[[str], None]
    _holds: Callable[[Lease], Job]
    _expired: Callable[[Job], bool]
    _apply: Callable[[Lease, Sequence[Started], Sequence[Finished]], dict[str, int]]

    def journal_key(self, lease: Lease) -> bytes:
        self._enter("journal_key")
        self._holds(lease)
        entry = self.journals.setdefault((lease.job_id, lease.epoch), {
            "key": bytes([lease.job_id % 256]) * 32, "through": 0, "seq": 0,
            "done": False})
        return bytes(entry["key"])

    def journal_done(self, lease: Lease) -> None:
        self._enter("journal_done")
        self.journals[(lease.job_id, lease.epoch)]["done"] = True

    def journals_due(self) -> list[tuple[int, int, str, int]]:
        self._enter("journals_due")
        return [(job, epoch, self.jobs[job].user, j["seq"])
                for (job, epoch), j in sorted(self.journals.items())
                if not j["done"] and not (self.jobs[job].state == "RUNNING"
                                          and self.jobs[job].epoch == epoch
                                          and not self._expired(self.jobs[job]))]

    def replay(self, job_id: int, epoch: int, lines: Sequence[str],
               macs: Sequence[str]) -> dict[str, int]:
        """Applies lines in order while their MACs check out, skipping the report groups
        the live leader wrote (as launcher_replay, without its requeue repair)."""
        self._enter("replay")
        j = self.journals[(job_id, epoch)]
        lease, applied = Lease(job_id, epoch, False), 0
        counts: dict[str, int] = {}
        for line, tag in zip(lines, macs, strict=True):
            doc = json.loads(line)
            if mac(j["key"], line) != tag or (doc["job"], doc["epoch"]) != (job_id, epoch):
                break
            if doc["seq"] <= j["seq"]:
                continue
            if doc["seq"] != j["seq"] + 1:
                break
            j["seq"], applied = doc["seq"], applied + 1
            j["done"] = j["done"] or bool(doc.get("end"))
            for group, st, fin in doc["g"]:
                if group <= j["through"]:
                    continue
                j["through"] = group
                for step, n in self._apply(lease, [Started(*s) for s in st],
                                           [Finished(*f) for f in fin]).items():
                    counts[step] = counts.get(step, 0) + n
        return {"lines": applied, **counts}

