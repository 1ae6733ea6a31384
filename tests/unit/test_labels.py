"""Labels people read (workflow, task name, a batch's key, tag keys and text tag values,
filter values) refuse the characters a terminal acts on, with one line naming the field.

The CLIs spell such characters out when they print stored values (base/termtext.py), so
an old row cannot act on a terminal; a new label has no use for them, and a name with a
newline or a bidirectional override reads as something it is not everywhere else (a
directory listing of data/, another program's output, a spreadsheet of `--csv`).
"""

from __future__ import annotations

import io
from typing import Any

import pytest

from balsam_mpi.base import values
from balsam_mpi.base.errors import InputError
from balsam_mpi.tasks import files, filters
from balsam_mpi.tasks.validate import AppInfo, check_changes, check_task

APPS = {"hello": AppInfo(1, "hello", "echo hello", frozenset())}

BAD = ["a\x1b[2Jb", "tab\there", "line\nbreak", "back\rspace", "del\x7f", "csi\x9b31m",
       "rtl\u202eevil", "mark\u200f", "isolate\u2066x\u2069", "arabic\u061cmark"]


def _task(**kw: Any) -> dict[str, Any]:
    return check_task({"app": "hello", "workflow": "w", **kw}, APPS)


@pytest.mark.parametrize("text", BAD)
@pytest.mark.parametrize("field", ["workflow", "name", "key"])
def test_a_label_with_a_control_character_is_refused(field: str, text: str) -> None:
    with pytest.raises(InputError, match=f"^{field}: contains .*character"):
        _task(**{field: text})


@pytest.mark.parametrize("text", BAD[:3] + BAD[-3:])
def test_tag_keys_and_text_values_are_labels_too(text: str) -> None:
    with pytest.raises(InputError, match="^tags: .*contains .*character"):
        _task(tags={text: "v"})
    with pytest.raises(InputError, match="^tags.k: contains .*character"):
        _task(tags={"k": text})
    # Values that are not text are JSON: shown as JSON, escaped by JSON's rules.
    assert _task(tags={"k": [1, {"deep": "ok"}]})["tags"] == {"k": [1, {"deep": "ok"}]}


def test_the_error_names_the_character_and_where_it_is() -> None:
    with pytest.raises(InputError) as info:
        _task(name="ab\x1bc")
    assert str(info.value).startswith("name: contains the control character \\x1b "
                                      "(character 3)")
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


@pytest.mark.parametrize("good", ["Résumé", "日本語の名前", "emoji 👩\u200d🔬", "a b",
                                  "x-y_z.1", "Ω≈ç√", "שלום", "السلام"])
def test_other_scripts_and_joiners_stay_welcome(good: str) -> None:
    task = _task(name=good, workflow=good, tags={good: good})
    assert (task["name"], task["workflow"], task["tags"]) == (good, good, {good: good})


def test_modify_refuses_them_as_add_does() -> None:
    with pytest.raises(InputError, match="^name: contains"):
        check_changes({"name": "x\ry"})
    with pytest.raises(InputError, match="^workflow: contains"):
        check_changes({"workflow": "x\u202ey"})


def test_a_file_names_the_line() -> None:
    data = b'{"app": "hello", "workflow": "w"}\n{"app": "hello", "workflow": "w\\u001b"}\n'
    rows = list(files.read_tasks(io.BytesIO(data), "t.jsonl"))
    with pytest.raises(InputError, match="^workflow: contains the control character"):
        check_task(rows[1][1], APPS)


def test_filter_values_are_labels() -> None:
    with pytest.raises(InputError, match="^workflow: contains"):
        filters.filter_params({"workflow": ["ok", "bad\x1b"]})
    with pytest.raises(InputError, match="^name: contains"):
        values.name("name", "a\nb")
