"""Per-user history overlay = taskclf's OnlineFeatureState (spec 1.5; items 9-15) + golden features."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from golden_compare import compare
from helpers_rows import golden_dir, make_window, validator
from taskclf_daemon.codec import decode_window
from taskclf_daemon.pipeline.features import push_window, rolling_mean
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.schema import OVERLAY_COLUMNS
from taskclf_daemon.state import StateStore, UserState
from taskclf_daemon.timeutil import format_ts_us

IDX = {c: i for i, c in enumerate(OVERLAY_COLUMNS)}


def _ts(minute: int, second: int = 0, hour: int = 10) -> str:
    return f"2026-04-06T{hour:02d}:{minute:02d}:{second:02d}Z"


def _win(minute: int, second: int = 0, hour: int = 10, **kw: Any) -> FeatureWindow:
    return make_window(bucket_start_ts=_ts(minute, second, hour), _drop=("bucket_end_ts",), **kw)


def _ov(overlay: tuple, name: str) -> Any:
    return overlay[IDX[name]]


def _push_all(windows: list[FeatureWindow], **kw: Any) -> list[tuple]:
    st = UserState(3)
    return [push_window(st, w, **kw) for w in windows]


# ---------------------------------------------------------------- item 9, 12: rolling_mean


def test_rolling_mean_skips_none() -> None:
    assert rolling_mean([10, None, 30], window=3) == 20.0


def test_rolling_mean_all_none_or_empty() -> None:
    assert rolling_mean([None, None, None], window=3) is None
    assert rolling_mean([], window=5) is None
    # None entries count toward the window: the only non-null value is 4 rows back
    assert rolling_mean([7.0, None, None, None], window=3) is None


def test_rolling_mean_rounds_to_4dp() -> None:
    assert rolling_mean([1, 2, 2], window=3) == 1.6667
    assert rolling_mean([0.00001, 0.00002], window=2) == 0.0
    assert rolling_mean([1.00004, 1.00008], window=5) == 1.0001


def test_rolling_mean_uses_last_n_entries() -> None:
    assert rolling_mean([10, 20, 30], window=5) == 20.0
    assert rolling_mean([10, 20, 30, 40, 50, 60], window=5) == 40.0
    assert rolling_mean([10, 20, 30, 40, 50], window=3) == 40.0


# ---------------------------------------------------------------- item 10: first row


def test_first_row_of_a_stream() -> None:
    (ov,) = _push_all([_win(0, keys_per_min=42.5, clicks_per_min=3.0, mouse_distance=900.0)])
    assert _ov(ov, "keys_per_min_delta") is None
    assert _ov(ov, "clicks_per_min_delta") is None
    assert _ov(ov, "mouse_distance_delta") is None
    assert _ov(ov, "keys_per_min_rolling_5") == _ov(ov, "keys_per_min_rolling_15") == 42.5
    assert _ov(ov, "mouse_distance_rolling_5") == _ov(ov, "mouse_distance_rolling_15") == 900.0
    assert _ov(ov, "app_switch_count_last_15m") == 0
    assert _ov(ov, "session_length_so_far") == 0.0
    assert len(ov) == 9


def test_first_row_without_input_features() -> None:
    (ov,) = _push_all([_win(0, keys_per_min=None, clicks_per_min=None, mouse_distance=None)])
    for c in OVERLAY_COLUMNS:
        if c not in ("app_switch_count_last_15m", "session_length_so_far"):
            assert _ov(ov, c) is None, c


# ---------------------------------------------------------------- item 11: deltas


def test_delta_40_to_60() -> None:
    ovs = _push_all([
        _win(0, keys_per_min=40.0, clicks_per_min=5.0, mouse_distance=100.0),
        _win(1, keys_per_min=60.0, clicks_per_min=2.5, mouse_distance=350.25),
    ])  # fmt: skip
    assert _ov(ovs[1], "keys_per_min_delta") == 20.0
    assert _ov(ovs[1], "clicks_per_min_delta") == -2.5
    assert _ov(ovs[1], "mouse_distance_delta") == 250.25


def test_delta_none_propagation() -> None:
    ovs = _push_all([
        _win(0, keys_per_min=None, clicks_per_min=1.0),
        _win(1, keys_per_min=60.0, clicks_per_min=None),
        _win(2, keys_per_min=None, clicks_per_min=4.0),
        _win(3, keys_per_min=10.0, clicks_per_min=6.0),
        _win(4, keys_per_min=15.0, clicks_per_min=6.5),
    ])  # fmt: skip
    assert _ov(ovs[1], "keys_per_min_delta") is None  # previous None
    assert _ov(ovs[1], "clicks_per_min_delta") is None  # current None
    assert _ov(ovs[2], "keys_per_min_delta") is None  # current None
    assert _ov(ovs[2], "clicks_per_min_delta") is None  # previous None
    # delta is vs the immediately previous row, not the last non-null value
    assert _ov(ovs[3], "keys_per_min_delta") is None
    assert _ov(ovs[3], "clicks_per_min_delta") == 2.0
    assert _ov(ovs[4], "keys_per_min_delta") == 5.0
    assert _ov(ovs[4], "clicks_per_min_delta") == 0.5


def test_delta_rounded_to_4dp() -> None:
    ovs = _push_all([_win(0, keys_per_min=0.1), _win(1, keys_per_min=0.3)])
    assert _ov(ovs[1], "keys_per_min_delta") == 0.2  # 0.3 - 0.1 = 0.19999999999999998 unrounded
    ovs = _push_all([
        _win(0, keys_per_min=10.0, clicks_per_min=1.0, mouse_distance=5.0),
        _win(1, keys_per_min=10.12346, clicks_per_min=1.98764, mouse_distance=5.00006),
    ])  # fmt: skip
    assert _ov(ovs[1], "keys_per_min_delta") == 0.1235
    assert _ov(ovs[1], "clicks_per_min_delta") == 0.9876
    assert _ov(ovs[1], "mouse_distance_delta") == 0.0001
    assert _ov(ovs[1], "keys_per_min_rolling_5") == 10.0617  # (10 + 10.12346) / 2 = 10.06173
    assert _ov(ovs[1], "mouse_distance_rolling_15") == 5.0


# ---------------------------------------------------------------- item 12: rolling over rows


def test_rolling_5_after_three_rows() -> None:
    ovs = _push_all([_win(i, keys_per_min=float(k)) for i, k in enumerate((10, 20, 30))])
    assert _ov(ovs[-1], "keys_per_min_rolling_5") == 20.0
    assert _ov(ovs[-1], "keys_per_min_rolling_15") == 20.0


def test_rolling_5_and_15_after_six_rows() -> None:
    ovs = _push_all([_win(i, keys_per_min=float(k), mouse_distance=float(k * 10)) for i, k in enumerate((10, 20, 30, 40, 50, 60))])
    assert _ov(ovs[-1], "keys_per_min_rolling_5") == 40.0
    assert _ov(ovs[-1], "keys_per_min_rolling_15") == 35.0
    assert _ov(ovs[-1], "mouse_distance_rolling_5") == 400.0
    assert _ov(ovs[-1], "mouse_distance_rolling_15") == 350.0


def test_rolling_nulls_count_as_rows() -> None:
    ovs = _push_all([_win(0, keys_per_min=10.0)] + [_win(i, keys_per_min=None) for i in range(1, 6)])
    assert _ov(ovs[4], "keys_per_min_rolling_5") == 10.0  # 10 is still among the last 5 rows
    assert _ov(ovs[5], "keys_per_min_rolling_5") is None  # last 5 rows all null
    assert _ov(ovs[5], "keys_per_min_rolling_15") == 10.0


def test_rolling_15_holds_only_15_rows() -> None:
    ws = [_win(0, keys_per_min=1000.0, mouse_distance=1000.0)] + [_win(i, keys_per_min=10.0, mouse_distance=20.0) for i in range(1, 16)]
    ovs = _push_all(ws)
    assert _ov(ovs[14], "keys_per_min_rolling_15") == round((1000 + 14 * 10) / 15, 4)
    assert _ov(ovs[15], "keys_per_min_rolling_15") == 10.0
    assert _ov(ovs[15], "mouse_distance_rolling_15") == 20.0


def test_dynamics_not_reset_at_session_break() -> None:
    ovs = _push_all([_win(0, keys_per_min=10.0), _win(30, keys_per_min=30.0)])
    assert _ov(ovs[1], "session_length_so_far") == 0.0  # new session
    assert _ov(ovs[1], "keys_per_min_delta") == 20.0
    assert _ov(ovs[1], "keys_per_min_rolling_5") == 20.0


# ---------------------------------------------------------------- item 13: app switch count


def test_app_switch_cycle_a_to_h_twice() -> None:
    apps = [chr(ord("a") + i % 8) for i in range(16)]
    ovs = _push_all([_win(i, app_id=a) for i, a in enumerate(apps)])
    assert _ov(ovs[-1], "app_switch_count_last_15m") == 7
    assert [_ov(o, "app_switch_count_last_15m") for o in ovs[:8]] == list(range(8))


def test_app_switch_buffer_holds_15_rows() -> None:
    # row 0 (app z) is exactly 15 min before row 15, inside the look-back, but evicted from the 15-row buffer
    ovs = _push_all([_win(0, app_id="z")] + [_win(i, app_id="a") for i in range(1, 16)])
    assert _ov(ovs[14], "app_switch_count_last_15m") == 1
    assert _ov(ovs[15], "app_switch_count_last_15m") == 0


def test_app_switch_lookback_is_15_minutes_inclusive() -> None:
    ovs = _push_all([_win(0, app_id="a"), _win(15, app_id="b")])
    assert _ov(ovs[1], "app_switch_count_last_15m") == 1  # bucket_start >= current - 15 min
    ovs = _push_all([_win(0, app_id="a"), _win(15, 1, app_id="b")])
    assert _ov(ovs[1], "app_switch_count_last_15m") == 0


def test_app_switch_counts_distinct_apps() -> None:
    ovs = _push_all([_win(i, app_id=a) for i, a in enumerate("abab")])
    assert _ov(ovs[-1], "app_switch_count_last_15m") == 1


# ---------------------------------------------------------------- item 14, 15: sessions


def _session_lengths(times: list[tuple[int, int]], **kw: Any) -> list[float]:
    return [_ov(o, "session_length_so_far") for o in _push_all([_win(m, s) for m, s in times], **kw)]


def test_session_length_continuous() -> None:
    assert _session_lengths([(m, 0) for m in range(5)]) == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_session_reset_gap_360() -> None:
    assert _session_lengths([(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (10, 0), (11, 0)]) == [0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 1.0]


def test_session_reset_gap_exactly_300() -> None:
    assert _session_lengths([(0, 0), (4, 0), (9, 0)]) == [0.0, 4.0, 0.0]


def test_session_no_reset_gap_240() -> None:
    assert _session_lengths([(0, 0), (4, 0)]) == [0.0, 4.0]
    assert _session_lengths([(0, 0), (4, 59)]) == [0.0, 4.98]  # 299 s: no reset


def test_session_length_minutes_rounded() -> None:
    assert _session_lengths([(0, 0), (2, 0)]) == [0.0, 2.0]
    assert _session_lengths([(0, 0), (0, 20)]) == [0.0, 0.33]


def test_session_idle_gap_is_configurable() -> None:
    assert _session_lengths([(0, 0), (6, 0)], idle_gap_seconds=600.0) == [0.0, 6.0]
    assert _session_lengths([(0, 0), (1, 0)], idle_gap_seconds=60.0) == [0.0, 0.0]


# ---------------------------------------------------------------- per-user isolation


def test_interleaved_users_match_separate_runs_synthetic() -> None:
    a = [_win(m, user_id="alice", app_id=f"a{m % 3}", keys_per_min=float(m)) for m in range(0, 20)]
    b = [_win(m, user_id="bob", app_id="b", keys_per_min=float(100 - m)) for m in range(0, 40, 2)]
    sep = {"alice": _push_all(a), "bob": _push_all(b)}
    merged = sorted(a + b, key=lambda w: (w.ts_us, w.user_id))
    store = StateStore(3)
    got: dict[str, list[tuple]] = defaultdict(list)
    for w in merged:
        got[w.user_id].append(push_window(store.get(w.user_id), w))
    assert got == sep
    assert len(store) == 2


def _golden_windows() -> list[FeatureWindow]:
    v = validator("v1")
    with open(golden_dir() / "inputs.jsonl", "rb") as f:
        return [decode_window(line, v) for line in f if line.strip()]


@pytest.fixture(scope="module")
def golden_windows() -> list[FeatureWindow]:
    return _golden_windows()


def _overlay_records(windows: list[FeatureWindow]) -> list[dict[str, Any]]:
    store = StateStore(3)
    out = []
    for w in windows:
        ov = push_window(store.get(w.user_id), w)
        rec = {"user_id": w.user_id, "bucket_start_ts": format_ts_us(w.ts_us)}
        rec.update(zip(OVERLAY_COLUMNS, ov))
        out.append(rec)
    return out


def test_interleaved_golden_users_match_separate_runs(golden_windows: list[FeatureWindow]) -> None:
    together = _overlay_records(golden_windows)
    users = sorted({w.user_id for w in golden_windows})
    assert len(users) == 10
    by_user: dict[str, list[dict[str, Any]]] = {}
    for u in users:
        by_user[u] = _overlay_records([w for w in golden_windows if w.user_id == u])
    it = {u: iter(recs) for u, recs in by_user.items()}
    for rec in together:
        assert rec == next(it[rec["user_id"]])


# ---------------------------------------------------------------- golden


def _close(e: Any, a: Any) -> bool:
    if e is None or a is None:
        return e is None and a is None
    return math.isfinite(a) and abs(float(e) - float(a)) <= 1e-9


def test_golden_overlay_equals_expected_features(golden_windows: list[FeatureWindow]) -> None:
    recs = _overlay_records(golden_windows)
    with open(golden_dir() / "expected_features.jsonl", encoding="utf-8") as f:
        expected = [json.loads(line) for line in f if line.strip()]
    assert len(expected) == len(recs) == 3030
    bad = []
    for e, a in zip(expected, recs):
        assert (e["user_id"], e["bucket_start_ts"]) == (a["user_id"], a["bucket_start_ts"])
        for c in OVERLAY_COLUMNS:
            if not _close(e[c], a[c]):
                bad.append((e["user_id"], e["bucket_start_ts"], c, e[c], a[c]))
    assert not bad, f"{len(bad)} mismatches, first: {bad[:5]}"
    # exact types where taskclf has them: the switch count is an int
    assert all(isinstance(r["app_switch_count_last_15m"], int) for r in recs)


def test_golden_overlay_passes_compare_tool(golden_windows: list[FeatureWindow], tmp_path: Path) -> None:
    out = tmp_path / "overlay.jsonl"
    out.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in _overlay_records(golden_windows)))
    report = compare(golden_dir() / "expected_features.jsonl", out, mode="features", tol=1e-9, fail_on_extra=True)
    assert report.ok, str(report)
    assert report.matched == 3030
