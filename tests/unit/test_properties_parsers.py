"""Property-based tests of the parsers: JSON lines and CSV (taskio), ``KEY=VALUE`` flags
and ``--set`` (taskio), numbers and ids written as text (values), durations and times in
reports (analytics_time). Whatever the input, a parser returns what was written or raises
one InputError/UsageError line that names where — never another exception."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balsam_mpi.base import limits, values
from balsam_mpi.base.errors import InputError, UsageError
from balsam_mpi.reports import timefmt
from balsam_mpi.tasks import files
from balsam_mpi.tasks.validate import INT_FIELDS, MODIFIABLE

FAST = settings(database=None, deadline=None, max_examples=150,
                suppress_health_check=[HealthCheck.too_slow])

# Text a user can store: any character but NUL and lone surrogates.
stored_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                      max_size=40)
names = st.text(st.characters(blacklist_categories=("Cs", "Cc"),
                              blacklist_characters="\x00="), min_size=1, max_size=20
                ).filter(lambda s: s.strip() == s and s != "")
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                         st.floats(allow_nan=False, allow_infinity=False), stored_text)
json_docs = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(stored_text, inner, max_size=4)),
    max_leaves=12)
tasks = st.fixed_dictionaries(
    {"app": names, "workflow": names},
    optional={"name": stored_text, "num_nodes": st.integers(1, 100_000),
              "wall_time_min": st.floats(0, limits.WALL_TIME_MIN_MAX),
              "params": st.dictionaries(names, json_docs, max_size=3),
              "tags": st.dictionaries(names, stored_text, max_size=3),
              "args": st.lists(stored_text, max_size=3),
              "fail_with_parents": st.booleans(),
              "parents": st.lists(st.integers(1, limits.ID_MAX), max_size=3)})


# -- JSON lines -----------------------------------------------------------------------------
@FAST
@given(st.lists(st.tuples(tasks, st.sampled_from(["", "\n", "# note\n", "   \n"]),
                          st.booleans()), max_size=8))
def test_jsonl_round_trip_keeps_values_and_line_numbers(
        rows: list[tuple[dict[str, Any], str, bool]]) -> None:
    out, expected, line = [], [], 0
    for task, filler, ascii_only in rows:
        for _ in range(filler.count("\n")):
            out.append(filler)
            line += 1
        out.append(json.dumps(task, ensure_ascii=ascii_only) + "\n")
        line += 1
        expected.append((f"t.jsonl line {line}", task))
    data = "".join(out).encode("utf-8")
    assert list(files.read_tasks(io.BytesIO(data), "t.jsonl")) == expected


@FAST
@given(st.binary(max_size=300))
def test_any_bytes_give_tasks_or_one_line_naming_the_line(data: bytes) -> None:
    lines = data.count(b"\n") + 1
    try:
        for label, task in files.read_tasks(io.BytesIO(data), "f.jsonl"):
            assert isinstance(task, dict) and label.startswith("f.jsonl line ")
    except InputError as exc:
        match = re.match(r"f\.jsonl line (\d+): \S", str(exc))
        assert match and 1 <= int(match.group(1)) <= lines and "\n" not in str(exc)


@FAST
@given(st.integers(65, 3000))
def test_any_nesting_depth_is_refused_by_the_cap_not_the_stack(depth: int) -> None:
    from balsam_mpi.tasks.validate import AppInfo, check_task

    line = ('{"app": "a", "workflow": "w", "data": {"x": ' + "[" * depth + "]" * depth
            + "}}\n").encode()
    try:
        [(_label, raw)] = list(files.read_tasks(io.BytesIO(line), "d.jsonl"))
    except InputError as exc:  # deeper than the parser's own recursion limit
        assert "d.jsonl line 1: nested deeper than" in str(exc)
        return
    try:
        check_task(raw, {"a": AppInfo(1, "a", "true", frozenset())})
    except InputError as exc:
        assert str(exc).startswith("data: nested deeper than 64")
    else:
        raise AssertionError("accepted")


# -- CSV ------------------------------------------------------------------------------------
@FAST
@given(st.lists(st.fixed_dictionaries(
    {"app": names, "workflow": names, "num_nodes": st.integers(1, 100_000),
     "priority": st.integers(-1_000_000, 1_000_000),
     "wall_time_min": st.floats(0, limits.WALL_TIME_MIN_MAX),
     "fail_with_parents": st.booleans(), "name": names}), min_size=1, max_size=5))
def test_csv_cells_come_back_typed(rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: repr(v) if isinstance(v, float) else
                         str(v).lower() if isinstance(v, bool) else v for k, v in row.items()})
    got = [task for _label, task in files.read_tasks(
        io.BytesIO(buf.getvalue().encode("utf-8")), "t.csv")]
    assert got == rows


@FAST
@given(st.binary(max_size=300))
def test_any_csv_bytes_give_tasks_or_one_line(data: bytes) -> None:
    try:
        for label, task in files.read_tasks(io.BytesIO(data), "f.csv"):
            assert isinstance(task, dict) and label.startswith("f.csv line ")
    except InputError as exc:
        assert re.match(r"f\.csv line \d+: \S", str(exc)) and "\n" not in str(exc)


# -- KEY=VALUE flags and --set ------------------------------------------------------------------
@FAST
@given(st.dictionaries(names, stored_text, max_size=5))
def test_pairs_round_trip(pairs: dict[str, str]) -> None:
    assert files.parse_pairs([f"{k}={v}" for k, v in pairs.items()], "tags") == pairs


@FAST
@given(names, stored_text, stored_text)
def test_pairs_refuse_duplicates_and_missing_equals(key: str, a: str, b: str) -> None:
    for bad in ([f"{key}={a}", f"{key}={b}"], [key]):
        try:
            files.parse_pairs(bad, "tags")
        except InputError as exc:
            assert str(exc).startswith("tags: ")
        else:
            raise AssertionError(bad)


@FAST
@given(st.sampled_from(sorted(INT_FIELDS)), st.integers(-2**70, 2**70))
def test_set_parses_integers_by_field(field: str, n: int) -> None:
    lo, hi = INT_FIELDS[field]
    try:
        assert files.parse_sets([f"{field}={n}"]) == {field: n} and lo <= n <= hi
    except InputError as exc:
        assert not lo <= n <= hi and str(exc).startswith(f"{field}: must be from")


@FAST
@given(st.sampled_from(sorted(MODIFIABLE)), stored_text)
def test_set_text_gives_a_typed_value_or_names_the_field(field: str, raw: str) -> None:
    try:
        value = files.parse_sets([f"{field}={raw}"])[field]
    except InputError as exc:
        assert str(exc).startswith((f"{field}: ", f"{field}[", f"{field}.", "set: "))
        return
    if field in INT_FIELDS:
        assert isinstance(value, int) and not isinstance(value, bool)
    elif field == "wall_time_min":
        assert isinstance(value, float) and math.isfinite(value)
    elif field in ("workflow", "name"):
        assert value == raw  # text stays text: name=123 is the name "123"


# -- numbers and ids written as text ----------------------------------------------------------
@FAST
@given(st.text(max_size=30))
def test_int_from_text_is_the_ascii_grammar_only(raw: str) -> None:
    try:
        n = values.int_from_text("x", raw, -10**9, 10**9)
    except InputError as exc:
        assert str(exc).startswith("x: ")
    else:
        assert re.fullmatch(r"[ \t\r\n]*[+-]?[0-9]+[ \t\r\n]*", raw) and n == int(raw)


@FAST
@given(st.one_of(st.text(max_size=30), st.floats().map(repr), st.integers().map(str)))
def test_number_from_text_is_always_finite(raw: str) -> None:
    try:
        x = values.number_from_text("x", raw, 0.0, 1e6)
    except InputError as exc:
        assert str(exc).startswith("x: ")
    else:
        assert math.isfinite(x) and 0.0 <= x <= 1e6


@FAST
@given(st.one_of(st.integers(), st.text(max_size=25)))
def test_ids_are_in_bigint(raw: Any) -> None:
    try:
        n = values.id_from_text("id", str(raw))
    except InputError as exc:
        assert str(exc).startswith("id: ")
    else:
        assert 1 <= n <= 2**63 - 1


# -- durations and times in reports -----------------------------------------------------------
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@FAST
@given(st.integers(1, 10**6), st.sampled_from(sorted(UNITS)))
def test_durations_read_as_written(n: int, unit: str) -> None:
    seconds = n * UNITS[unit]
    try:
        assert timefmt.parse_duration(f"{n}{unit}") == seconds
    except UsageError as exc:
        assert seconds > timefmt.DURATION_MAX_S and "--bin" in str(exc)


@FAST
@given(st.text(max_size=40))
def test_any_text_is_a_duration_in_range_or_one_line(raw: str) -> None:
    try:
        seconds = timefmt.parse_duration(raw)
    except UsageError as exc:
        assert str(exc).startswith("--bin ") and "\n" not in str(exc)
    else:
        assert timefmt.DURATION_MIN_S <= seconds <= timefmt.DURATION_MAX_S


NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@FAST
@given(st.text(max_size=40))
def test_any_text_is_a_time_or_one_line(raw: str) -> None:
    try:
        when = timefmt.parse_time(raw, "--since", now=NOW)
    except UsageError as exc:
        assert str(exc).startswith("--since ") and "\n" not in str(exc)
    else:
        assert when.tzinfo is not None


@FAST
@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1),
                    timezones=st.just(UTC)))
def test_times_printed_by_reports_read_back(when: datetime) -> None:
    text = timefmt.iso(when)
    assert text is not None and timefmt.parse_time(text, "--since", now=NOW) == when


@FAST
@given(st.integers(1, 10**5), st.sampled_from(["s", "m", "h"]))
def test_durations_back_from_now(n: int, unit: str) -> None:
    when = timefmt.parse_time(f"{n}{unit} ago", "--since", now=NOW)
    assert when == NOW - timedelta(seconds=n * UNITS[unit])


@FAST
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_short_duration_never_raises(seconds: float) -> None:
    assert isinstance(timefmt.short_duration(seconds), str)
