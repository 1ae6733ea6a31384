"""Text for a person's terminal: stored values shown, never obeyed.

Any member writes task names, workflows and messages, and a task's own program writes its
output tail. A terminal acts on what it is sent: an escape sequence in a value can clear
the screen, rewrite an earlier line (a carriage return does too), set the window title or,
on some terminals, the clipboard; bidirectional overrides reorder what is read. So every
line the CLIs print for people passes through :func:`visible`, which spells such
characters out (``\\x1b``, ``\\r``, ``\\u202e``). Machine output keeps the values
themselves: JSON escapes control characters by its own rules, and ``--csv`` or a task's
output sent down a pipe is left as stored (see :func:`for_stream`).
"""

from __future__ import annotations

import re
from typing import TextIO

# C0 controls but tab and newline, DEL, the C1 controls (CSI is U+009B), the marks and
# overrides of bidirectional text (U+061C, U+200E/F, U+202A-E, U+2066-9: Unicode's
# Bidi_Control set), and the lone surrogates a bad byte can decode to.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e"
                     "\u2066-\u2069\ud800-\udfff]")
_UNSAFE_OR_NEWLINE = re.compile(f"\n|{_UNSAFE.pattern}")
# What no label may hold (base/values.py `plain`): the same, and tab and newline too.
NOT_IN_LABELS = re.compile(f"[\t\n]|{_UNSAFE.pattern}")
_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def spelled(ch: str) -> str:
    """One character as it is spelled out: ``\\n``, ``\\x1b``, ``\\u202e``."""
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _spelled(match: re.Match[str]) -> str:
    return spelled(match.group())


def visible(text: str, *, newlines: bool = True) -> str:
    """``text`` with every character a terminal would act on spelled out; newlines kept
    (or spelled out too, for one line of a table or a message)."""
    if text.isascii() and text.isprintable():  # the common case: nothing to spell
        return text
    return (_UNSAFE if newlines else _UNSAFE_OR_NEWLINE).sub(_spelled, text)


def for_stream(text: str, stream: TextIO) -> str:
    """``text`` for ``stream``: spelled out on a terminal, as it is down a pipe or into
    a file (where a program, not a person, reads it)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return visible(text) if tty else text
