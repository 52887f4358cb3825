"""``scripts/consume_predictions.py`` without a broker: what counts as a duplicate."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("consume_predictions", REPO / "scripts" / "consume_predictions.py")
assert _spec is not None and _spec.loader is not None
cp = importlib.util.module_from_spec(_spec)
sys.modules["consume_predictions"] = cp
_spec.loader.exec_module(cp)

MIN = 60_000_000


def _kept(d, seq: list[tuple[str, int]]) -> list[tuple[str, int]]:
    return [(u, t) for u, t in seq if d.is_new(u, t)]


def test_watermark_drops_a_restart_reemission_and_keeps_everything_new() -> None:
    first = [(u, t * MIN) for t in range(10) for u in ("a", "b")]
    again = [(u, t * MIN) for t in range(6, 10) for u in ("a", "b")]  # a suffix, re-produced after a restart
    more = [(u, t * MIN) for t in range(10, 13) for u in ("b", "a")]
    d = cp.Deduper()
    assert _kept(d, first + again + more) == first + more
    assert len(d) == 2


def test_timestamps_compare_as_instants() -> None:
    a = cp.instant_us("2026-04-06T10:00:00.500000Z")
    b = cp.instant_us("2026-04-06T10:00:00Z")
    assert "2026-04-06T10:00:00.500000Z" < "2026-04-06T10:00:00Z" and a > b  # strings would sort them wrongly
    d = cp.Deduper()
    assert d.is_new("u", b) and d.is_new("u", a) and not d.is_new("u", b)


def test_forgetting_a_user_only_lets_a_duplicate_through() -> None:
    d = cp.Deduper(max_users=2)
    assert _kept(d, [("a", 1), ("b", 1), ("c", 1)]) == [("a", 1), ("b", 1), ("c", 1)]
    assert d.is_new("a", 1)  # "a" was forgotten (least recently seen): its duplicate passes
    assert not d.is_new("c", 1) and len(d) == 2


def test_exact_mode_keeps_late_windows_and_bounds_its_keys() -> None:
    d = cp.Deduper("exact", max_keys=3)
    assert _kept(d, [("a", 5), ("a", 3), ("a", 5), ("a", 4)]) == [("a", 5), ("a", 3), ("a", 4)]
    assert len(d) == 3
    d.is_new("a", 9)  # evicts the least recently seen key: ("a", 5) was refreshed, ("a", 3) goes
    assert not d.is_new("a", 5) and d.is_new("a", 3)
    with pytest.raises(ValueError):
        cp.Deduper("other")


def test_identity_of_records() -> None:
    assert cp.identity(b'{"user_id":"u","bucket_start_ts":"1970-01-01T00:01:00Z"}') == ("u", MIN)
    for bad in (b"not json", b"[]", b'{"user_id":"u"}', b'{"user_id":1,"bucket_start_ts":"1970-01-01T00:01:00Z"}', b'{"user_id":"u","bucket_start_ts":"soon"}'):
        assert cp.identity(bad) is None, bad
