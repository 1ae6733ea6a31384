"""Text the launcher stores, made storable: no NUL, valid UTF-8, bounded length.

Postgres refuses NUL in text and a lone surrogate cannot be encoded at all; one such
byte in a task's stderr once made every flush of its launcher fail, forever. Whatever a
task wrote, or a message built from a task's fields, passes through :func:`clean` before
it is buffered, journaled or written.
"""

from __future__ import annotations

from .limits import OUTPUT_TAIL_MAX

REPLACEMENT = "\ufffd"


def clean(text: object, limit: int = OUTPUT_TAIL_MAX, *, keep_end: bool = True) -> str:
    """``text`` without NUL (each becomes U+FFFD) or unencodable characters, at most
    ``limit`` characters: the end (an output tail) or the start (a message) is kept."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if not (text.isascii() and "\x00" not in text):  # the fast path: plain ASCII
        text = text.replace("\x00", REPLACEMENT)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) > limit:
        text = text[-limit:] if keep_end else text[:limit]
    return text


def one_line(text: object, limit: int = 500) -> str:
    """A message for a state or an end reason: the first line, cleaned and capped."""
    first = clean(text, limit * 4, keep_end=False).strip().split("\n", 1)[0]
    return clean(first, limit, keep_end=False)
