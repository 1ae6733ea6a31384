"""Property-based tests of the validators (values, validate): what they accept is within
the caps of base/limits.py and typed as the column is; what they refuse is named by field."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balsam_mpi.base import jsondoc, limits, values
from balsam_mpi.base.errors import InputError
from balsam_mpi.tasks.validate import INT_FIELDS, TASK_FIELDS, AppInfo, check_changes, check_task

FAST = settings(database=None, deadline=None, max_examples=200,
                suppress_health_check=[HealthCheck.too_slow])

anything = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
    st.binary(max_size=5), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3), st.just(object()),
    st.complex_numbers(), st.sets(st.integers(), max_size=2))
stored_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                      max_size=30)
# Labels (workflow, name, tag keys and text values) hold no control character or
# bidirectional mark (base/values.py, `plain`).
NOT_IN_LABELS = "".join(map(chr, [*range(0x20), *range(0x7F, 0xA0), 0x200E, 0x200F,
                                  *range(0x202A, 0x202F), *range(0x2066, 0x206A)]))
label_text = st.text(st.characters(blacklist_categories=("Cs",),
                                   blacklist_characters=NOT_IN_LABELS), max_size=30)
json_docs = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30),
              st.floats(allow_nan=False, allow_infinity=False), stored_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(stored_text, inner, max_size=4)),
    max_leaves=15)
APPS = {"a": AppInfo(1, "a", "run {x}", frozenset({"x"}))}


def _names_field(message: str, field: str) -> bool:
    return message.startswith((f"{field}: ", f"{field}[", f"{field}."))


@FAST
@given(anything, st.integers(-100, 100), st.integers(0, 100))
def test_integer_accepts_only_whole_numbers_in_range(value: Any, lo: int, width: int) -> None:
    hi = lo + width
    try:
        n = values.integer("f", value, lo, hi)
    except InputError as exc:
        assert _names_field(str(exc), "f")
        assert isinstance(value, (bool, str, bytes, float)) or not isinstance(value, int) \
            or not lo <= value <= hi
    else:
        assert type(n) is int and lo <= n <= hi and n == value and type(value) is int


@FAST
@given(anything)
def test_number_is_finite_and_never_text_or_boolean(value: Any) -> None:
    try:
        x = values.number("f", value, -1e9, 1e9)
    except InputError as exc:
        assert _names_field(str(exc), "f")
    else:
        assert math.isfinite(x) and -1e9 <= x <= 1e9
        assert not isinstance(value, (bool, str, bytes))


@FAST
@given(anything)
def test_boolean_is_only_a_boolean(value: Any) -> None:
    try:
        assert values.boolean("f", value) is value
    except InputError as exc:
        assert not isinstance(value, bool) and _names_field(str(exc), "f")


@FAST
@given(st.one_of(st.text(max_size=50), anything), st.integers(0, 40))
def test_text_is_stored_unchanged_or_refused(value: Any, cap: int) -> None:
    try:
        assert values.text("f", value, cap) is value
    except InputError as exc:
        assert _names_field(str(exc), "f")
        assert not isinstance(value, str) or len(value) > cap or "\x00" in value or any(
            0xD800 <= ord(c) <= 0xDFFF for c in value)
    else:
        value.encode("utf-8")  # storable


def _expected_size(doc: Any) -> int:
    """The jsonb text of ``doc``, built independently: json.dumps, with numbers as
    Postgres numeric prints them (no exponent, no negative zero)."""
    if isinstance(doc, float):
        return 3 if doc == 0 else len(format(__import__("decimal").Decimal(repr(doc)), "f"))
    if isinstance(doc, dict):
        return 2 + sum(len(json.dumps(k, ensure_ascii=False).encode()) + 2 + _expected_size(v)
                       for k, v in doc.items()) + 2 * max(len(doc) - 1, 0)
    if isinstance(doc, list):
        return 2 + sum(_expected_size(v) for v in doc) + 2 * max(len(doc) - 1, 0)
    return len(json.dumps(doc, ensure_ascii=False).encode())


@FAST
@given(json_docs)
def test_json_size_is_the_jsonb_text_length(doc: Any) -> None:
    assert jsondoc.json_size("d", doc) == _expected_size(doc)


@FAST
@given(st.dictionaries(stored_text, json_docs, max_size=5))
def test_json_object_fast_path_agrees_with_the_walk(doc: dict[str, Any]) -> None:
    try:
        jsondoc.json_object("d", doc, limits.PARAMS_MAX_BYTES)
    except InputError:
        assert jsondoc.json_size("d", doc) > limits.PARAMS_MAX_BYTES
    assert (jsondoc._flat_size(doc, None) or jsondoc.json_size("d", doc)) == \
        jsondoc.json_size("d", doc)


valid_tasks = st.fixed_dictionaries(
    {"app": st.just("a"), "workflow": st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters=NOT_IN_LABELS),
        min_size=1, max_size=20),
     "params": st.fixed_dictionaries({"x": json_docs})},
    optional={"name": label_text,
              **{f: st.integers(*INT_FIELDS[f]) for f in INT_FIELDS},
              "wall_time_min": st.floats(0, limits.WALL_TIME_MIN_MAX),
              # text tag values are labels; other values are JSON of any text
              "tags": st.dictionaries(label_text, st.one_of(
                  label_text, json_docs.filter(lambda v: not isinstance(v, str))),
                  max_size=3),
              "args": st.lists(stored_text, max_size=3),
              "data": st.dictionaries(stored_text, json_docs, max_size=3),
              "parents": st.lists(st.integers(1, limits.ID_MAX), max_size=3),
              "fail_with_parents": st.booleans()})


@FAST
@given(valid_tasks)
def test_valid_tasks_are_accepted_unchanged(raw: dict[str, Any]) -> None:
    task = check_task(raw, APPS)
    assert task["app_id"] == 1
    for key, value in raw.items():
        if key != "app":
            assert task[key] == value


@FAST
@given(valid_tasks, st.sampled_from(["workflow", "name"]), label_text,
       st.sampled_from(NOT_IN_LABELS[1:]))  # NUL: HOSTILE below, refused as text
def test_a_label_with_a_control_character_is_refused(raw: dict[str, Any], field: str,
                                                     text: str, bad: str) -> None:
    at = len(text) // 2
    with pytest.raises(InputError) as info:
        check_task({**raw, field: text[:at] + bad + text[at:]}, APPS)
    message = str(info.value)
    assert message.startswith(f"{field}: contains the ") and "\n" not in message
    assert f"(character {at + 1})" in message


HOSTILE = ["a\x00b", "\udcff", float("nan"), float("inf"), 2**63, -(2**63), "3", True,
           object(), {1: 2}, [None], "x" * 300_000, {"k": "\x00"}, 10**400]


@settings(database=None, deadline=None, max_examples=40)
@given(valid_tasks)
def test_a_hostile_value_is_refused_naming_its_field(raw: dict[str, Any]) -> None:
    for field in sorted(TASK_FIELDS - {"app", "key"}):
        for bad in HOSTILE:
            try:
                check_task({**raw, field: bad}, APPS)
            except InputError as exc:
                message = str(exc)
                assert _names_field(message, field) and "\n" not in message, message
            else:  # the only legitimate ones: "3" as text or a parent's key, True as a flag
                assert (field in ("workflow", "name", "parents") and bad == "3") or (
                    field == "fail_with_parents" and bad is True), (field, bad)


@FAST
@given(st.sampled_from(sorted(INT_FIELDS)), st.one_of(st.integers(-2**64, 2**64), st.sampled_from(HOSTILE)))
def test_modify_accepts_exactly_what_add_accepts(field: str, value: Any) -> None:
    lo, hi = INT_FIELDS[field]
    try:
        assert check_changes({field: value}) == {field: value}
    except InputError as exc:
        assert _names_field(str(exc), field)
        assert not (type(value) is int and lo <= value <= hi)
    else:
        assert type(value) is int and lo <= value <= hi
