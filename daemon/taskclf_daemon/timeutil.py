"""Timestamps as integer epoch microseconds (UTC): exact arithmetic, cheap to store."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from taskclf_daemon import native

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)
# epoch values above this are taken as milliseconds (year 5138 in seconds)
_MS_CUTOFF = 1e11

#: the accepted range of timestamps: [1970-01-01T00:00:00Z, 2200-01-01T00:00:00Z). Anything
#: outside is refused at decode time (``bad_timestamp``): every later stage (formatting, dates,
#: arithmetic) is then total, and no single window can drag a clock decades away.
MIN_TS_US = 0
MAX_TS_US = 7_258_118_400_000_000  # 2200-01-01T00:00:00Z
#: longer ISO strings are refused before parsing (the longest valid form is ~32 characters)
MAX_TS_CHARS = 64


#: ``parse_ts_us`` of the one form agents send, ``YYYY-MM-DDTHH:MM:SSZ``, in C (``_timestamps.c``,
#: see ``native.py``; ~10x faster than ``fromisoformat``); None for anything else, then the Python
#: code below decides. None: not built, or turned off.
_c = native.load("_timestamps", "parse_utc", constants={"MAX_TS_US": MAX_TS_US})
NATIVE_PARSE: Callable[[str], int | None] | None = None if _c is None else _c[0]


def _in_range(us: int, value: object) -> int:
    if not MIN_TS_US <= us < MAX_TS_US:
        shown = value[:40] if isinstance(value, str) else value
        raise ValueError(f"timestamp {shown!r} is outside the accepted range 1970-01-01 .. 2199-12-31 (UTC)")
    return us


def parse_ts_us(value: object) -> int:
    """Parse an ISO-8601 string (any offset; naive = UTC) or epoch seconds into epoch microseconds.

    Only instants in [:data:`MIN_TS_US`, :data:`MAX_TS_US`) are accepted.

    :raises ValueError: with a message saying what is wrong
    """
    if NATIVE_PARSE is not None and type(value) is str:
        us = NATIVE_PARSE(value)
        if us is not None:
            return us
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected an ISO-8601 string or epoch seconds, got {type(value).__name__}")
    if isinstance(value, (int, float)):
        x = float(value)
        if x != x or x in (float("inf"), float("-inf")):
            raise ValueError("epoch timestamp is not finite")
        if abs(x) > _MS_CUTOFF:
            x /= 1000.0
        if isinstance(value, int) and abs(value) <= _MS_CUTOFF:
            return _in_range(value * 1_000_000, value)
        if abs(x) > 1e13:  # beyond year 318,000 even as milliseconds
            raise ValueError(f"epoch timestamp {value!r} is out of range")
        return _in_range(round(x * 1_000_000), value)
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO-8601 string or epoch seconds, got {type(value).__name__}")
    if len(value) > MAX_TS_CHARS:
        raise ValueError(f"timestamp string of {len(value)} characters (limit {MAX_TS_CHARS})")
    s = value.strip()
    try:
        ts = dt.datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"not an ISO-8601 timestamp: {value[:40]!r}") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.UTC)
    try:
        us = (ts - _EPOCH) // _US
    except OverflowError:  # e.g. an offset that moves year 9999 past the end
        raise ValueError(f"timestamp {value[:40]!r} is out of range") from None
    return _in_range(us, value)


_FORMATTED: dict[int, str] = {}


def format_ts_us(us: int) -> str:
    """Format epoch microseconds as ``YYYY-MM-DDTHH:MM:SSZ`` (``.ffffff`` only when non-zero).

    Memoised: every user's window of the same minute shares one bucket start.
    """
    s = _FORMATTED.get(us)
    if s is None:
        if len(_FORMATTED) > 100_000:
            _FORMATTED.clear()
        s = _FORMATTED[us] = _format(us)
    return s


_DAYS: dict[int, str] = {}
_DAY_US = 86_400_000_000


def _format(us: int) -> str:
    """The date part through ``strftime`` (memoised per day), the time of day in integers: the
    same string as ``(_EPOCH + timedelta(microseconds=us)).strftime(...)``, ~3x faster (the
    memo above misses on every window when users' minutes differ, e.g. a backfill)."""
    days, rem = divmod(us, _DAY_US)
    day = _DAYS.get(days)
    if day is None:
        if len(_DAYS) > 10_000:
            _DAYS.clear()
        day = _DAYS[days] = (_EPOCH + dt.timedelta(days=days)).strftime("%Y-%m-%d")
    secs, frac = divmod(rem, 1_000_000)
    h, secs = divmod(secs, 3600)
    m, secs = divmod(secs, 60)
    if frac:
        return f"{day}T{h:02d}:{m:02d}:{secs:02d}.{frac:06d}Z"
    return f"{day}T{h:02d}:{m:02d}:{secs:02d}Z"


def utc_date(us: int) -> dt.date:
    return (_EPOCH + dt.timedelta(microseconds=us)).date()
