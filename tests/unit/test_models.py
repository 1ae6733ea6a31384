"""The states table: what may follow what."""

from __future__ import annotations

import pytest

from balsam_mpi.errors import UsageError
from balsam_mpi.models import (
    FINAL,
    KILLABLE,
    STOPPED,
    TRANSITIONS,
    TaskState,
    can_move,
    parse_state,
)

S = TaskState


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(TaskState)


def test_job_finished_is_final_and_stopped_leave_only_by_retry() -> None:
    assert TRANSITIONS[S.JOB_FINISHED] == frozenset()
    for s in STOPPED:
        assert TRANSITIONS[s] == {S.READY, S.AWAITING_PARENTS}
    assert FINAL.isdisjoint(KILLABLE) and STOPPED.isdisjoint(KILLABLE)


def test_kill_is_possible_from_every_live_state() -> None:
    for s in KILLABLE:
        assert can_move(s, S.USER_KILLED), s


def test_happy_path_is_legal() -> None:
    path = [S.CREATED, S.AWAITING_PARENTS, S.READY, S.PREPROCESSED, S.RUNNING, S.RUN_DONE,
            S.POSTPROCESSED, S.JOB_FINISHED]
    assert all(can_move(a, b) for a, b in zip(path, path[1:], strict=False))
    assert not can_move(S.JOB_FINISHED, S.READY)
    assert not can_move(S.USER_KILLED, S.RUNNING)


def test_parse_state_is_case_insensitive_and_names_the_field() -> None:
    assert parse_state(" ready ") is S.READY
    with pytest.raises(UsageError, match="state: unknown state 'nope'"):
        parse_state("nope")
    with pytest.raises(ValueError):
        parse_state("")
