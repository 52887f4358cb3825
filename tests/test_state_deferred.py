"""The compact state: the history by column, the label ring, and a restore that decodes a user on
first use (``StateStore.restore``) -- same fields, same changelog bytes as decoding at once."""

from __future__ import annotations

import math

import orjson
import pytest

from taskclf_daemon.labels import HISTORY_ROWS
from taskclf_daemon.state import History, HistoryEntry, LabelRing, StateFormatError, StateStore, UserState


def _full(seen: int = 1_775_000_000) -> UserState:
    st = UserState(3)
    for r in range(HISTORY_ROWS + 2):  # two rows dropped from the front
        st.history.append(HistoryEntry(1_000_000 * r, f"app{r % 3}", None if r == 4 else 10.0 + r, float(r), -0.0 if r == 5 else 3.5 * r))
    st.smooth.extend([4, 1, 2, 0])
    st.session_start_us, st.last_ts_us, st.windows_seen, st.last_offset, st.last_partition, st.seen_s = 7, 16_000_000, 17, 99, 2, seen
    return st


def _fields(st: UserState) -> tuple[object, ...]:
    return (list(st.history), list(st.smooth), st.smooth.maxlen, st.session_start_us, st.last_ts_us, st.windows_seen, st.last_offset, st.last_partition, st.seen_s, st.learn, st.asks)


def test_history_keeps_the_last_rows_with_nulls_and_signed_zeros() -> None:
    st = _full()
    rows = list(st.history)
    assert len(rows) == HISTORY_ROWS == len(st.history.ts) == len(st.history.keys)
    assert rows[0] == (2_000_000, "app2", 12.0, 2.0, 7.0) and rows[2] == (4_000_000, "app1", None, 4.0, 14.0)
    assert math.copysign(1.0, rows[3].mouse) == -1.0  # -0.0 stays -0.0
    assert st.history[-1] == (16_000_000, "app1", 26.0, 16.0, 56.0)
    assert st.history.apps[0] is st.history.apps[3]  # interned: one object per app


def test_history_rows_are_the_changelog_rows_and_round_trip_both_paths() -> None:
    st = _full()
    doc = orjson.loads(st.to_bytes())
    assert doc["h"][2] == [4_000_000, "app1", None, 4.0, 14.0] and doc["m"] == [1, 2, 0]
    fast = History.from_rows(doc["h"])
    slow_rows = [[t, a, k, c, (int(m) if m is not None and m == int(m) and m != 0 else m)] for t, a, k, c, m in doc["h"]]  # JSON ints: the row-by-row path
    slow = History.from_rows(slow_rows)
    assert list(fast) == list(slow) == list(st.history)
    assert all(type(e.mouse) is float for e in slow)
    assert History.from_rows(doc["h"] * 2)[0] == st.history[0]  # only the last 15 rows kept


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([[1, "a", 1.0, 2.0]], "list index out of range"),
        ([[2**63, "a", 1.0, 2.0, 3.0]], "timestamp out of range"),
        ("rows", "expected a list of rows, got str"),
    ],
)
def test_history_refuses_malformed_rows(rows: object, message: str) -> None:
    with pytest.raises((TypeError, ValueError, IndexError)) as ei:
        History.from_rows(rows)
    assert message in str(ei.value)


def test_label_ring_drops_from_the_front_like_a_bounded_deque() -> None:
    r = LabelRing([1, 2, 3, 4], 3)
    assert r == [2, 3, 4] and r.maxlen == 3
    r.append(5)
    assert r == [3, 4, 5]
    r.extend([6, 7])
    c = r.copy()
    r.append(8)
    assert c == [5, 6, 7] and c.maxlen == 3 and r == [6, 7, 8]
    assert LabelRing([1, 2], 0).maxlen == 1 and LabelRing([1, 2], 0) == [2]


def test_a_restored_user_is_decoded_on_first_use_into_the_same_state() -> None:
    st = _full()
    value = bytes(st.to_bytes())
    store = StateStore(3)
    got = store.restore("u", value)
    assert got is store.users["u"] and got.deferred
    assert got.seen_s == st.seen_s and got.learn is None and got.deferred  # these need no decode
    assert _fields(got) == _fields(st) and not got.deferred
    assert got.to_bytes() == value and store.unreadable == []


def test_a_deferred_user_keeps_what_was_set_before_its_decode() -> None:
    store = StateStore(5)
    got = store.restore("u", _full(seen=10).to_bytes())
    got.seen_s = 99  # the shard marks it seen (a label span) before anything else reads it
    store.put("u", got)  # no decode to resize: the store's window applies when it decodes
    assert got.deferred
    assert got.smooth.maxlen == 5 and list(got.smooth) == [1, 2, 0] and got.seen_s == 99 and got.windows_seen == 17
    assert type(got) is UserState and not got.deferred  # a plain state again: nothing on the hot path
    other = store.restore("w", _full(seen=10).to_bytes())
    other.windows_seen = 1  # a write of a field it lacks decodes first, then applies
    assert type(other) is UserState and other.windows_seen == 1 and other.last_offset == 99 and len(other.history) == HISTORY_ROWS
    with pytest.raises(AttributeError):
        store.restore("x", _full().to_bytes()).no_such_field  # noqa: B018
    assert store.users["x"].deferred  # an unknown name decodes nothing


def test_an_unreadable_deferred_value_leaves_the_user_empty_and_is_reported() -> None:
    value = _full(seen=42).to_bytes().replace(b'"app0"', b"5", 1)
    store = StateStore(3)
    got = store.restore("u", value)
    assert got.deferred and store.unreadable == []
    assert len(got.history) == 0 and got.windows_seen == 0 and got.last_ts_us is None
    assert got.seen_s == 42 and store.unreadable == ["malformed user state: expected a string, got int"]


def test_formats_other_than_2_and_learning_state_are_decoded_at_once() -> None:
    doc = orjson.loads(_full().to_bytes())
    store = StateStore(3)
    v1 = {k: v for k, v in doc.items() if k not in ("p", "k")} | {"v": 1}
    st = store.restore("v1", orjson.dumps(v1), partition=3, now_s=77)
    assert not st.deferred and (st.last_partition, st.seen_s) == (3, 77)
    assert not store.restore("odd-k", orjson.dumps(doc | {"k": 5.5})).deferred  # not where this build writes it
    assert store.restore("q", orjson.dumps(doc | {"q": {"k": 1}})).deferred  # "q" after "k": still found
    assert store.users["q"].seen_s == doc["k"]
    with pytest.raises(StateFormatError, match="unsupported user state format 9"):
        store.restore("v9", orjson.dumps(doc | {"v": 9}))
    assert "v9" not in store.users
