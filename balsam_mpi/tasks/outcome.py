"""What a change did, task by task: the ids it changed and why each other one was left.

The database's change functions (``tasks_kill``, ``tasks_retry``, ``tasks_modify``,
``tasks_delete``; migrations/0007) return one ``(id, outcome)`` row per task they were
given, so what the client reports is what the database did — never the number of ids it
asked about.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

SHOWN = 20  # ids listed per reason before "… and N more"


class Outcome(list[int]):
    """The ids changed (a list, as the API always returned), plus ``refused``: for every
    other id asked about, the reason it was left alone."""

    def __init__(self, done: Iterable[int] = (),
                 refused: Mapping[int, str] | None = None,
                 how: Mapping[int, str] | None = None) -> None:
        super().__init__(done)
        self.refused: dict[int, str] = dict(refused or {})
        self.how: dict[int, str] = dict(how or {})  # id changed -> what was done to it

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[Any, ...]], done: Collection[str]) -> Outcome:
        """From ``(id, outcome)`` rows: ids whose outcome is in ``done`` were changed."""
        changed: list[int] = []
        refused: dict[int, str] = {}
        how: dict[int, str] = {}
        for task_id, word in rows:
            if str(word) in done:
                changed.append(int(task_id))
                how[int(task_id)] = str(word)
            else:
                refused[int(task_id)] = str(word)
        return cls(changed, refused, how)

    def reasons(self) -> dict[str, list[int]]:
        """Refused ids grouped by reason, each group in id order."""
        out: dict[str, list[int]] = {}
        for task_id in sorted(self.refused):
            out.setdefault(self.refused[task_id], []).append(task_id)
        return out

    def refusal_lines(self) -> list[str]:
        """One line per reason: ``left alone (REASON): 3, 4, 5``."""
        lines = []
        for reason, ids in self.reasons().items():
            shown = ", ".join(map(str, ids[:SHOWN]))
            more = f" … and {len(ids) - SHOWN} more" if len(ids) > SHOWN else ""
            lines.append(f"left alone ({reason}): {shown}{more}")
        return lines
