"""StateStore and UserState bookkeeping: creation, reset, drop, dirty tracking, smoothing resize."""

from __future__ import annotations

from taskclf_daemon.state import StateStore, UserState


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
