"""A flush's rows, shaped for its statements (launcher/store.py): the arrays it sends,
the one-write pairing of short tasks (migration 0011), the journal's mark when some
reports are held back (0033), and which failure means a row was held."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..protocol import EndKind, Finished, Started


# Integer arrays go as array literals ('{1,2,3}', cast in the SQL): adapting Python lists
# element by element cost the leader more than the rest of a flush. Only ints ever go
# this way, so the text cannot carry anything but numbers.
def ints(values: Iterable[int]) -> str:
    return "{" + ",".join(map(str, map(int, values))) + "}"


# Float arrays (the nodes' start and end times) go in binary (``%(name)b`` in the SQL):
# psycopg packs a list of floats in C, about 0.1 µs an element against 0.3 µs for
# ``repr`` into a literal, and the server reads 8 bytes instead of parsing 17 digits.
def floats(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values]


def pair_short_runs(started: Sequence[Started], finished: Sequence[Finished]
                    ) -> tuple[Sequence[Started], Sequence[Finished], int]:
    """The batch reordered for the one-write path (migration 0011): first, at the same
    index in both lists, the start and plain success of each task that has exactly one
    of each here; then the other reports, in their order. Returns (started, finished,
    number of pairs). The server checks every pair again; this only saves it a join."""
    if not started or not finished:
        return started, finished, 0
    ends: dict[int, int] = {}  # task -> index of its only end here (-1: several)
    for i, f in enumerate(finished):
        ends[f.id] = -1 if f.id in ends else i
    starts: dict[int, int] = {}
    for s in started:
        starts[s.id] = starts.get(s.id, 0) + 1
    s_pairs: list[Started] = []
    f_pairs: list[Finished] = []
    s_rest: list[Started] = []
    taken: set[int] = set()
    for s in started:
        j = ends.get(s.id, -1)
        if j >= 0 and starts[s.id] == 1 and finished[j].kind == EndKind.DONE:
            s_pairs.append(s)
            f_pairs.append(finished[j])
            taken.add(j)
        else:
            s_rest.append(s)
    if not s_pairs:
        return started, finished, 0
    f_rest = [f for i, f in enumerate(finished) if i not in taken]
    return s_pairs + s_rest, f_pairs + f_rest, len(s_pairs)


def mark_before(held: frozenset[int], started: Sequence[Started],
                finished: Sequence[Finished], through: int, groups: Sequence[int]) -> int:
    """The journal's mark for a flush that leaves out the reports of ``held``: the group
    before the first report left out (each report's group in ``groups``, starts then
    ends; without them, no mark), never past ``through``."""
    if through <= 0:
        return 0
    items: list[Started | Finished] = [*started, *finished]
    if len(groups) != len(items):
        return 0
    first = min((g for item, g in zip(items, groups, strict=True) if item.id in held),
                default=through + 1)
    return max(0, min(through, first - 1))


def lock_timed_out(exc: BaseException) -> bool:
    """Whether a translated driver error was a lock wait past ``lock_timeout``."""
    import psycopg

    cause = exc.__cause__
    return isinstance(cause, psycopg.errors.LockNotAvailable)
