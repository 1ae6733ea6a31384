"""Durations, instants and bin widths as users type them, and times as reports print them."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

from ..base.errors import UsageError
from ..base.values import show

_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0,
          "hr": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)\s*$", re.IGNORECASE)
# A duration is at least a millisecond (the smallest unit) and at most a century: beyond
# that no bin, and no time back from now, means anything (and datetime overflows).
DURATION_MIN_S = 0.001
DURATION_MAX_S = 100 * 365.25 * 86400.0
_TEXT_MAX = 100
_AGO = re.compile(r"^\s*-?\s*(.+?)\s*(?:ago)?\s*$", re.IGNORECASE)

# Bin widths a person reads easily; the automatic choice takes the first that gives at
# most TARGET_BINS bins.
_NICE = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
         10800, 21600, 43200, 86400, 172800, 604800)
TARGET_BINS = 60


def parse_duration(text: str, what: str = "--bin") -> float:
    """'10s', '5m', '1.5h', '2d', '250ms' or plain seconds '30' -> seconds, from 1 ms to a
    century."""
    _check_text(text, what)
    match = _DURATION.match(text or "")
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS and unit != "":
        raise UsageError(f"{what} {show(text)} is not a duration: use a number with a "
                         "unit, like 10s, 5m, 1h or 2d")
    seconds = float(match.group(1)) * (_UNITS[unit] if unit else 1.0)
    if seconds <= 0:
        raise UsageError(f"{what} {show(text)} must be longer than zero")
    if not DURATION_MIN_S <= seconds <= DURATION_MAX_S:
        raise UsageError(f"{what} {show(text)} is out of range: from 1ms to 100 years")
    return seconds


def parse_time(text: str, what: str, *, now: datetime | None = None) -> datetime:
    """An instant: ISO 8601 ('2026-11-27T10:00', '2026-11-27 10:00:00+00:00'; without a
    zone it is local time), 'now', 'today', or a duration back from now ('2h', '-2h',
    '90m ago')."""
    _check_text(text, what)
    now = now or datetime.now(UTC)
    raw = (text or "").strip()
    lowered = raw.lower()
    if lowered == "now":
        return now
    if lowered == "today":
        local = now.astimezone()
        return local.replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
        return when if when.tzinfo is not None else when.astimezone()
    except (ValueError, OverflowError, OSError):
        pass
    relative = _AGO.match(raw)
    if relative and _DURATION.match(relative.group(1)):
        try:
            return now - timedelta(seconds=parse_duration(relative.group(1), what))
        except (UsageError, OverflowError):
            pass
    raise UsageError(f"{what} {show(text)} is not a time: use ISO 8601 like 2026-11-27T10:00 "
                     "(local time unless it ends in Z or +HH:MM), 'today', or a duration "
                     "back from now like 2h (at most 100 years)")


def _check_text(text: str, what: str) -> None:
    if not isinstance(text, str) or len(text) > _TEXT_MAX or "\x00" in text \
            or not text.isascii() and not text.isprintable():
        raise UsageError(f"{what} {show(text, 40)} is not a time or duration (at most "
                         f"{_TEXT_MAX} printable characters)")


def auto_bin(span_seconds: float) -> float:
    for width in _NICE:
        if span_seconds / width <= TARGET_BINS:
            return float(width)
    return float(_NICE[-1])


def iso(when: datetime | None) -> str | None:
    """UTC, ISO 8601, second resolution unless finer is needed."""
    if when is None:
        return None
    utc = when.astimezone(UTC)
    if utc.microsecond == 0:
        return utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def short_time(when: datetime | None) -> str:
    """UTC to the second, for tables: '2026-11-28 00:04:30'."""
    if when is None:
        return "-"
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def short_duration(seconds: float | None) -> str:
    """'3.2s', '4m05s', '2h10m', '3d4h' — for tables."""
    if seconds is None or not math.isfinite(seconds):  # None, NaN, or an infinite time
        return "-"
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 60:
        return f"{sign}{s:.1f}s" if s < 10 else f"{sign}{s:.0f}s"
    if s < 3600:
        return f"{sign}{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{sign}{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{sign}{int(s // 86400)}d{int(s % 86400 // 3600)}h"


def bin_label(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
