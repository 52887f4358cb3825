"""StateStore and UserState bookkeeping: creation, reset, drop, dirty tracking, smoothing resize,
snapshot/restore, and the changelog value's exact types."""

from __future__ import annotations

import orjson
import pytest

from taskclf_daemon.labels import HISTORY_ROWS
from taskclf_daemon.state import HistoryEntry, StateFormatError, StateStore, UserState


def test_get_creates_once_with_the_store_window() -> None:
    s = StateStore(5)
    a = s.get("a")
    assert s.get("a") is a and len(s) == 1 and a.smooth.maxlen == 5
    assert s.dirty == set()  # reading is not a change


def test_reset_replaces_the_state_and_marks_it_dirty() -> None:
    s = StateStore(3)
    old = s.get("a")
    old.windows_seen = 7
    new = s.reset("a")
    assert new is not old and s.users["a"] is new and new.windows_seen == 0
    assert s.take_dirty() == {"a"} and s.take_dirty() == set()


def test_drop_forgets_the_user_and_its_pending_change() -> None:
    s = StateStore(3)
    s.get("a")
    s.reset("a")
    s.get("b")
    s.drop("a")
    assert "a" not in s.users and s.dirty == set() and list(s.users) == ["b"]
    s.drop("never-seen")  # no error
    assert len(s) == 1


def _with_labels(window: int, labels: list[int]) -> UserState:
    st = UserState(window)
    st.smooth.extend(labels)
    return st


def test_put_resizes_the_smoothing_buffer_to_the_store_window() -> None:
    # restored state written with another window: keep the newest labels, new capacity
    s = StateStore(5)
    s.put("grow", _with_labels(3, [1, 2, 3]))
    assert s.users["grow"].smooth.maxlen == 5 and list(s.users["grow"].smooth) == [1, 2, 3]
    s.users["grow"].smooth.extend([4, 5, 6])
    assert list(s.users["grow"].smooth) == [2, 3, 4, 5, 6]

    s3 = StateStore(3)
    s3.put("shrink", _with_labels(5, [1, 2, 3, 4, 5]))
    assert s3.users["shrink"].smooth.maxlen == 3 and list(s3.users["shrink"].smooth) == [3, 4, 5]

    s1 = StateStore(1)
    s1.put("one", _with_labels(3, [1, 2, 3]))
    assert s1.users["one"].smooth.maxlen == 1 and list(s1.users["one"].smooth) == [3]
    s1.put("two", _with_labels(2, [1, 2]))
    assert s1.users["two"].smooth.maxlen == 1 and list(s1.users["two"].smooth) == [2]

    same = _with_labels(3, [1, 2])
    buf = same.smooth
    s3.put("same", same)
    assert s3.users["same"].smooth is buf  # already the right size: untouched


def test_window_below_one_is_one() -> None:
    assert UserState(0).smooth.maxlen == 1
    st = _with_labels(3, [1, 2])
    st.resize_smoothing(0)
    assert st.smooth.maxlen == 1 and list(st.smooth) == [2]


def test_snapshot_restore_undoes_every_change() -> None:
    st = UserState(3)
    st.history.append(HistoryEntry(1, "app", 1.0, None, 2.0))
    st.smooth.extend([1, 2])
    st.session_start_us, st.last_ts_us, st.windows_seen, st.last_offset, st.last_partition, st.seen_s = 5, 6, 7, 8, 9, 10
    before = st.to_bytes()
    snap = st.snapshot()
    st.history.append(HistoryEntry(2, "other", None, None, None))
    st.smooth.append(3)
    st.session_start_us, st.last_ts_us, st.windows_seen, st.last_offset, st.last_partition, st.seen_s = 50, 60, 70, 80, 90, 100
    assert st.to_bytes() != before
    st.restore(snap)
    assert st.to_bytes() == before and (st.last_partition, st.seen_s) == (9, 10)
    assert list(st.smooth) == [1, 2] and st.smooth.maxlen == 3 and st.history.maxlen == HISTORY_ROWS


def _doc(**changes: object) -> bytes:
    d: dict[str, object] = {"v": 2, "h": [[1, "app", 1.5, None, 2]], "s": None, "m": [1], "w": 3, "t": 7, "n": 1, "o": 4, "p": 0, "k": 9}
    d.update(changes)
    return orjson.dumps(d)


def test_from_bytes_keeps_types_exact() -> None:
    st = UserState.from_bytes(_doc(), 3)
    h = st.history[0]
    assert h == (1, "app", 1.5, None, 2.0) and type(h.mouse) is float  # a JSON int becomes a float
    assert (st.session_start_us, st.last_ts_us, st.windows_seen, st.last_offset, st.last_partition, st.seen_s) == (None, 7, 1, 4, 0, 9)
    assert UserState.from_bytes(_doc(s=5, t=None), 3).session_start_us == 5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"h": [[1, 5, None, None, None]]}, "expected a string, got int"),
        ({"h": [[1, "app", "1.5", None, None]]}, "expected a number or null, got str"),
        ({"h": [[1, "app", None, True, None]]}, "expected a number or null, got bool"),
        ({"h": [[1, "app", None, None, [1]]]}, "expected a number or null, got list"),
        ({"s": 1.5}, "expected an integer or null, got float"),
        ({"t": True}, "expected an integer or null, got bool"),
        ({"t": "7"}, "expected an integer or null, got str"),
    ],
)
def test_from_bytes_refuses_wrong_types(changes: dict[str, object], message: str) -> None:
    with pytest.raises(StateFormatError) as ei:
        UserState.from_bytes(_doc(**changes), 3)
    assert str(ei.value) == f"malformed user state: {message}"


def test_a_new_state_is_this_exact_changelog_document() -> None:
    """Nothing applied yet: no offset/partition (-1), never seen (0) -- the changelog format."""
    assert UserState(3).to_bytes() == b'{"v":2,"h":[],"s":null,"m":[],"w":3,"t":null,"n":0,"o":-1,"p":-1,"k":0}'


def test_a_version_1_value_without_stand_ins_has_no_partition_and_was_never_seen() -> None:
    v1 = orjson.loads(_doc(v=1))
    del v1["p"], v1["k"]
    st = UserState.from_bytes(orjson.dumps(v1), 3)
    assert (st.last_partition, st.seen_s, st.last_offset) == (-1, 0, 4)
    # the store's restore has the same defaults (the shard passes its partition and clock)
    store = StateStore(3)
    st = store.restore("a", orjson.dumps(v1))
    assert store.users["a"] is st and (st.last_partition, st.seen_s, st.last_offset) == (-1, 0, 4)
    st = store.restore("b", orjson.dumps(v1), 2, 1_700_000_000)
    assert (st.last_partition, st.seen_s) == (2, 1_700_000_000)


def _learning_user(window: int = 3) -> UserState:
    from taskclf_daemon.pipeline.evidence import LearnConfig, UserLearning
    from taskclf_daemon.pipeline.label_requests import AskBudget

    cfg = LearnConfig()
    st = UserState(window)
    st.learn = UserLearning(cfg)
    for k in range(3):
        st.learn.add_window("u", (k + 1) * 60_000_000, bytes([k]) * 64, cfg)
    st.asks = AskBudget(20_400, 2)
    return st


def test_snapshot_restore_undoes_learning_and_asks_too() -> None:
    """An undone batch takes back what it did to the user's learning state (ring, window count,
    through the learning state's journal) and label-request budget, not only the overlay."""
    from taskclf_daemon.pipeline.evidence import LearnConfig

    st = _learning_user()
    learn, asks = st.learn, st.asks
    assert learn is not None and asks is not None
    before = (list(learn.ring), learn.windows, learn.last_ts_us)
    snap = st.snapshot()
    learn.add_window("u", 4 * 60_000_000, b"\x09" * 64, LearnConfig())
    asks.day, asks.asked = 20_401, 1  # the budget object is changed in place by the shard
    assert (len(learn.ring), learn.windows) == (4, 4)
    st.restore(snap)
    assert st.learn is learn and (list(learn.ring), learn.windows, learn.last_ts_us) == before
    assert st.asks is not None and (st.asks.day, st.asks.asked) == (20_400, 2)
    # a second undo needs a new snapshot (the journal was played back and closed)
    snap2 = st.snapshot()
    st.restore(snap2)
    assert (list(learn.ring), learn.windows) == before[:2]


def test_reset_keeps_what_the_user_taught() -> None:
    s = StateStore(3)
    s.users["a"] = old = _learning_user()
    old.windows_seen = 9
    new = s.reset("a")
    assert new is not old and new.windows_seen == 0 and len(new.history) == 0
    assert new.learn is old.learn and new.asks is old.asks  # the learning state and asks stay
    fresh = s.reset("b")  # a user never seen: just a new state
    assert fresh.learn is None and fresh.asks is None and s.take_dirty() == {"a", "b"}


def test_a_learning_state_is_format_3_and_never_deferred() -> None:
    st = _learning_user()
    data = st.to_bytes()
    assert data.startswith(b'{"v":3,') and b'"L":' in data
    store = StateStore(3)
    assert UserState.deferred_from(data, store) is None  # the shard needs its learning state at once
    # a format-2 prefix with a learning state (what a build that mislabelled it would write): decoded now too
    assert UserState.deferred_from(b'{"v":2,' + data[len(b'{"v":3,') :], store) is None
    assert UserState.deferred_from(_doc(), store) is not None


def test_from_bytes_turns_whole_float_smoothing_labels_into_ints() -> None:
    st = UserState.from_bytes(_doc(m=[1.0, 2, 7.0]), 3)
    assert list(st.smooth) == [1, 2, 7] and [type(x) for x in st.smooth] == [int, int, int]
    assert st.to_bytes() == UserState.from_bytes(_doc(m=[1, 2, 7]), 3).to_bytes()
