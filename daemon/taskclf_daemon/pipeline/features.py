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
"""

from __future__ import annotations

from taskclf_daemon.labels import (
    APP_SWITCH_LOOKBACK_SECONDS,
    DEFAULT_IDLE_GAP_SECONDS,
    ROLLING_LONG,
    ROLLING_SHORT,
)
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.state import HistoryEntry, UserState

Overlay = tuple  # 9 values in schema.OVERLAY_COLUMNS order

_LOOKBACK_US = APP_SWITCH_LOOKBACK_SECONDS * 1_000_000


def rolling_mean(values: list[float | None], window: int) -> float | None:
    """Mean of the non-null values among the last ``window`` entries, rounded to 4 dp."""
    tail = [v for v in values[-window:] if v is not None]
    if not tail:
        return None
    return round(sum(tail) / len(tail), 4)


def _delta(cur: float | None, prev: float | None) -> float | None:
    if cur is None or prev is None:
        return None
    return round(cur - prev, 4)


def _num(v: object) -> float | None:
    return None if v is None else float(v)  # type: ignore[arg-type]


def push_window(state: UserState, w: FeatureWindow, idle_gap_seconds: float = DEFAULT_IDLE_GAP_SECONDS) -> Overlay:
    """Append ``w`` to the user's history and return its overlay values.

    Mutates ``state`` (history and session start); call once per window, in the user's order.
    """
    vals = w.values
    ts = w.ts_us
    hist = state.history
    if hist and (ts - hist[-1].ts_us) >= idle_gap_seconds * 1_000_000:
        state.session_start_us = ts
    if state.session_start_us is None:
        state.session_start_us = ts
    prev = hist[-1] if hist else None
    entry = HistoryEntry(ts, vals["app_id"], _num(vals["keys_per_min"]), _num(vals["clicks_per_min"]), _num(vals["mouse_distance"]))
    hist.append(entry)

    cutoff = ts - _LOOKBACK_US
    apps = {e.app_id for e in hist if e.ts_us >= cutoff}
    keys = [e.keys for e in hist]
    mouse = [e.mouse for e in hist]
    return (
        max(0, len(apps) - 1),
        rolling_mean(keys, ROLLING_SHORT),
        rolling_mean(keys, ROLLING_LONG),
        rolling_mean(mouse, ROLLING_SHORT),
        rolling_mean(mouse, ROLLING_LONG),
        _delta(entry.keys, prev.keys if prev else None),
        _delta(entry.clicks, prev.clicks if prev else None),
        _delta(entry.mouse, prev.mouse if prev else None),
        round((ts - state.session_start_us) / 60_000_000, 2),
    )
