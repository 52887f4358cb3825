"""Per-user history overlay: the 9 fields taskclf's ``OnlineFeatureState`` recomputes (spec 1.5).

Semantics reproduced exactly:

* buffer of the user's last 15 rows (not minutes); not reset at session breaks;
* ``*_rolling_N`` = mean of the non-null values among the last N rows (nulls count as rows),
  rounded to 4 dp, null if none; there is no rolling mean for clicks;
* ``*_delta`` = current - previous row value, rounded to 4 dp, null if either is null;
* ``app_switch_count_last_15m`` = max(0, distinct ``app_id`` among buffered rows (incl. current)
  with ``bucket_start >= current - 15 min`` - 1);
* a session restarts at a row whose ``bucket_start`` is >= ``idle_gap`` after the previous row;
  ``session_length_so_far`` = minutes since the session start, rounded to 2 dp.

Speed (this runs once per window): the history is kept by column (``state.History``: typed
arrays, NaN for null), a column is summed directly (``sum()`` over the tail in buffer order: the
same floats as ever; a NaN sum means a null is there, and only then are nulls filtered), and rounding goes through :func:`_round_to`, which returns exactly ``round()``'s
float without its decimal conversion in the usual cases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from taskclf_daemon import native
from taskclf_daemon.labels import (
    APP_SWITCH_LOOKBACK_SECONDS,
    DEFAULT_IDLE_GAP_SECONDS,
    HISTORY_ROWS,
    ROLLING_LONG,
    ROLLING_SHORT,
)
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.state import NULL, UserState

Overlay = tuple[float | None, ...]  # 9 values in schema.OVERLAY_COLUMNS order (the first an int)

_LOOKBACK_US = APP_SWITCH_LOOKBACK_SECONDS * 1_000_000

#: the C version of :func:`push_window_py` (``_overlay.c``, see ``native.py``): the same values
#: and state changes, ~4x faster; it declines anything but the plain case (NotImplemented,
#: nothing changed) and the Python version runs. None: not built, turned off, or compiled with
#: other constants than these (a stale build).
_c = native.load("_overlay", "push_window", constants={"HISTORY_ROWS": HISTORY_ROWS, "ROLLING_SHORT": ROLLING_SHORT, "ROLLING_LONG": ROLLING_LONG, "LOOKBACK_US": _LOOKBACK_US})
NATIVE_PUSH: Callable[[UserState, FeatureWindow, float], Any] | None = None if _c is None else _c[0]


def _round_to(x: float, scale: float, ndigits: int) -> float:
    """``round(x, ndigits)`` for a float, ``scale = 10.0 ** ndigits`` (100.0 or 10000.0): the same float, faster.

    ``round`` returns the float nearest to ``T / scale``, ``T`` the integer nearest to the *exact*
    ``x * scale`` (ties to even; CPython: correctly rounded dtoa, then strtod). While
    ``|y| < 8e12 < 2**43``, ``y = x * scale`` is within ``ulp(y)/2 <= 2**-11`` of the exact
    product, and ``d = y - floor(y)`` is ``y``'s fraction (exact, or within ``2**-53`` when
    ``-1 < y < 0``); so when ``d`` is not within 0.01 of one half, ``T`` is ``floor(y)`` or
    ``floor(y) + 1`` with certainty, and ``T / scale`` (two exact floats, ``|T| < 2**53``, one
    correctly rounded division) is round()'s float. Near-halves, zero results (round keeps the
    sign of ``x``), large, infinite and NaN values go to ``round`` itself.
    """
    y = x * scale
    if -8e12 < y < 8e12:
        f = y // 1.0
        d = y - f
        if d < 0.49:
            if f:
                return f / scale
        elif d > 0.51:
            f += 1.0
            if f:
                return f / scale
    return round(x, ndigits)


def rolling_mean(values: Sequence[float | None], window: int) -> float | None:
    """Mean of the non-null values among the last ``window`` entries, rounded to 4 dp."""
    tail: Sequence[float | None] = values[-window:]
    if None in tail:  # only then filter (no number equals None)
        tail = [v for v in tail if v is not None]
        if not tail:
            return None
    elif not tail:
        return None
    tail = cast("Sequence[float]", tail)  # no None left (filtered above, or there was none)
    mean = sum(tail) / len(tail)  # summed in buffer order, as always
    return _round_to(mean, 10000.0, 4) if type(mean) is float else round(mean, 4)


def _mean_4dp(col: Sequence[float]) -> float | None:
    """:func:`rolling_mean` of a whole :class:`~taskclf_daemon.state.History` column (NaN = null).

    The sum of a column without NaN is the sum of the same floats in the same order as before;
    one NaN makes the sum NaN (inputs are finite, so nothing else can), and only then are the
    nulls filtered out.
    """
    s = sum(col)
    if s != s:
        vals = [v for v in col if v == v]
        if not vals:
            return None
        s = sum(vals)
        return _round_to(s / len(vals), 10000.0, 4)
    return _round_to(s / len(col), 10000.0, 4)


def _short_long(col: Sequence[float]) -> tuple[float | None, float | None]:
    """Rolling 5- and 15-row means of one history column (taskclf's semantics, see :func:`rolling_mean`)."""
    return _mean_4dp(col[-ROLLING_SHORT:]), _mean_4dp(col[-ROLLING_LONG:])


def _delta(cur: float | None, prev: float) -> float | None:
    """``cur - prev`` rounded to 4 dp (round(d, 4) of an integral d is d); None if either is null."""
    if cur is None or prev != prev:
        return None
    d = cur - prev
    return d if d.is_integer() else _round_to(d, 10000.0, 4)


def push_window(state: UserState, w: FeatureWindow, idle_gap_seconds: float = DEFAULT_IDLE_GAP_SECONDS) -> Overlay:
    """Append ``w`` to the user's history and return its overlay values.

    Mutates ``state`` (history and session start); call once per window, in the user's order.
    The C version where it is built and takes the case, else :func:`push_window_py`.
    """
    if NATIVE_PUSH is not None:
        ov = NATIVE_PUSH(state, w, idle_gap_seconds)
        if ov is not NotImplemented:
            return cast("Overlay", ov)
    return push_window_py(state, w, idle_gap_seconds)


def push_window_py(state: UserState, w: FeatureWindow, idle_gap_seconds: float = DEFAULT_IDLE_GAP_SECONDS) -> Overlay:
    """:func:`push_window` in Python: the reference the C version is held to."""
    vals = w.values
    ts = w.ts_us
    hist = state.history
    ts_col = hist.ts
    n = len(ts_col)
    if n and (ts - ts_col[-1]) >= idle_gap_seconds * 1_000_000:
        state.session_start_us = ts
    start = state.session_start_us
    if start is None:
        start = state.session_start_us = ts
    keys = vals["keys_per_min"]
    clicks = vals["clicks_per_min"]
    mouse = vals["mouse_distance"]
    if type(keys) is not float and keys is not None:  # _num(): None or float(value)
        keys = float(keys)
    if type(clicks) is not float and clicks is not None:
        clicks = float(clicks)
    if type(mouse) is not float and mouse is not None:
        mouse = float(mouse)
    keys_col, mouse_col = hist.keys, hist.mouse
    # deltas against the previous row (read before the push drops the oldest)
    d_keys = d_clicks = d_mouse = None
    if n:
        d_keys = _delta(keys, keys_col[-1])
        d_clicks = _delta(clicks, hist.clicks[-1])
        d_mouse = _delta(mouse, mouse_col[-1])
    hist.push(ts, vals["app_id"], NULL if keys is None else keys, NULL if clicks is None else clicks, NULL if mouse is None else mouse)

    # the buffer's columns, oldest first (timestamps need not be ordered: late rows are kept)
    app_col = hist.apps
    cutoff = ts - _LOOKBACK_US
    if ts_col[0] >= cutoff and min(ts_col) >= cutoff:  # (the oldest row is usually the earliest)
        n_apps = len(set(app_col))
    else:
        n_apps = len({a for t, a in zip(ts_col, app_col) if t >= cutoff})
    keys_short, keys_long = _short_long(keys_col)
    mouse_short, mouse_long = _short_long(mouse_col)
    minutes = (ts - start) / 60_000_000
    return (
        n_apps - 1 if n_apps > 1 else 0,  # max(0, n_apps - 1)
        keys_short,
        keys_long,
        mouse_short,
        mouse_long,
        d_keys,
        d_clicks,
        d_mouse,
        minutes if minutes.is_integer() else _round_to(minutes, 100.0, 2),
    )
