"""termtext: what a terminal would act on is spelled out; plain text passes unchanged."""

from __future__ import annotations

import io

import pytest

from balsam_mpi.base.termtext import for_stream, visible
from balsam_mpi.cli.taskout import _write


def test_plain_text_and_layout_pass_unchanged() -> None:
    text = "task 7 fit/run_7\tRUN_DONE\nnext line é ü 漢字"
    assert visible(text) == text


def test_escapes_returns_c1_and_bidi_overrides_are_spelled_out() -> None:
    assert visible("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert visible("over\rwrite") == "over\\rwrite"
    assert visible("\x07\x7f\u009b31m") == "\\x07\\x7f\\x9b31m"
    assert visible("abc\u202edef\u2066") == "abc\\u202edef\\u2066"
    assert visible("mark\u061c") == "mark\\u061c"  # Arabic letter mark: bidi too
    assert visible("bad \udcff byte") == "bad \\udcff byte"


def test_newlines_kept_or_spelled_for_one_line() -> None:
    assert visible("a\nb\x1b") == "a\nb\\x1b"
    assert visible("a\nb\x1b", newlines=False) == "a\\nb\\x1b"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_for_stream_spells_out_only_on_a_terminal() -> None:
    text = "out\x1b[31m\n"
    assert for_stream(text, io.StringIO()) == text
    assert for_stream(text, _Tty()) == "out\\x1b[31m\n"


def test_task_out_on_a_terminal_decodes_across_reads_and_spells_out(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`task out` to a terminal: a character split between two reads is decoded whole,
    an undecodable byte becomes U+FFFD, and an escape is spelled out."""
    text = "é漢\x1b[2J".encode()
    _write([text[:1], text[1:3], text[3:], b"\xff\n"], tty=True)
    assert capsys.readouterr().out == "é漢\\x1b[2J\ufffd\n"
