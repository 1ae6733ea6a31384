"""The states table: what may follow what (examples, then properties with hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balsam_mpi.base.errors import UsageError
from balsam_mpi.tasks.states import (
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


# -- properties of the state machine (hypothesis) ---------------------------------------------
FAST = settings(database=None, deadline=None, max_examples=300)
# The states a task can be created in (taskplan.initial_states; CREATED is the column's
# default for a raw INSERT).
FIRST = frozenset({S.CREATED, S.READY, S.AWAITING_PARENTS, S.FAILED})


def _reachable(start: TaskState) -> set[TaskState]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_can_still_finish() -> None:
    for s in TaskState:
        assert S.JOB_FINISHED in _reachable(s), s


def test_every_state_is_reachable_from_a_first_state() -> None:
    assert set().union(*(_reachable(s) for s in FIRST)) == set(TaskState)


def test_the_final_state_is_a_sink_and_the_only_one() -> None:
    sinks = {s for s in TaskState if not TRANSITIONS[s]}
    assert sinks == FINAL == {S.JOB_FINISHED}
    assert all(s not in TRANSITIONS[s] for s in TaskState)  # no self-loops


@FAST
@given(st.sampled_from(sorted(FIRST)), st.lists(st.integers(0, 1000), max_size=40))
def test_random_walks_never_get_stuck(first: TaskState, choices: list[int]) -> None:
    """Any sequence of legal moves leaves a task from which it can still finish, and a
    move out of JOB_FINISHED never exists."""
    state = first
    for c in choices:
        options = sorted(TRANSITIONS[state])
        if not options:
            assert state is S.JOB_FINISHED
            break
        nxt = options[c % len(options)]
        assert can_move(state, nxt)
        if state in STOPPED:  # only a retry leaves a stopped task
            assert nxt in (S.READY, S.AWAITING_PARENTS)
        state = nxt
        assert S.JOB_FINISHED in _reachable(state)


@FAST
@given(st.sampled_from(list(TaskState)), st.sampled_from(list(TaskState)))
def test_can_move_is_the_table(a: TaskState, b: TaskState) -> None:
    assert can_move(a, b) == (b in TRANSITIONS[a])
    assert (a in KILLABLE) == (can_move(a, S.USER_KILLED) and a not in STOPPED)


@FAST
@given(st.sampled_from(list(TaskState)), st.lists(st.booleans(), min_size=20, max_size=20),
       st.text(" \t", max_size=3))
def test_parse_state_any_case_and_padding(s: TaskState, upper: list[bool], pad: str) -> None:
    text = "".join(c.upper() if u else c.lower() for c, u in zip(s.value, upper, strict=False))
    assert parse_state(pad + text + pad) is s


@FAST
@given(st.one_of(st.text(max_size=30), st.integers(), st.none(), st.binary(max_size=5)))
def test_parse_state_refuses_anything_else_naming_the_field(text: object) -> None:
    try:
        state = parse_state(text)  # type: ignore[arg-type]
    except UsageError as exc:
        assert str(exc).startswith("state: unknown state ") and "\n" not in str(exc)
    else:
        assert isinstance(text, str) and text.strip().upper() == state.value
