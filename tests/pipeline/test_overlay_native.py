"""The C overlay (``taskclf_daemon._overlay``) against the Python reference (``push_window_py``).

Every overlay value (type, sign of zero, each bit of each float) and every state change must be
the same, on the golden inputs and on random histories built to reach the edges: late and equal
timestamps, idle gaps, nulls, ints, half-way roundings, huge and tiny numbers, app ids that are
equal but not one object, restored histories, histories shorter than the rolling windows. What
the C version declines (NotImplemented) must leave the state untouched.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from helpers_rows import golden_pipeline_windows, make_window
from taskclf_daemon.pipeline import features
from taskclf_daemon.pipeline.features import push_window, push_window_py
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.state import History, UserState

try:
    from taskclf_daemon._overlay import push_window as native_push
except ImportError:  # pragma: no cover - the install builds it wherever a C compiler is at hand
    pytest.fail("taskclf_daemon._overlay is not built: `pip install -e .` compiles it (needs gcc and the Python headers)")


def _bits(ov: tuple[Any, ...]) -> str:
    """Types and exact values: repr tells 1 from 1.0, -0.0 from 0.0, and round-trips floats."""
    return repr([(type(v).__name__, v) for v in ov])


def _state_bits(s: UserState) -> str:
    h = s.history
    return repr((s.session_start_us, h.ts.tolist(), h.apps, [x.hex() for x in h.keys], [x.hex() for x in h.clicks], [x.hex() for x in h.mouse]))


def _twin_run(windows: list[FeatureWindow], gap: float = 300.0, state: UserState | None = None) -> int:
    """Each window through both versions on twin states; returns how many the C version took."""
    a = state if state is not None else UserState(3)
    b = copy.deepcopy(a)
    taken = 0
    for w in windows:
        want = push_window_py(a, w, gap)
        got = native_push(b, w, gap)
        if got is NotImplemented:
            got = push_window_py(b, w, gap)
        else:
            taken += 1
        assert _bits(got) == _bits(want), (w.ts_us, w.values)
        assert _state_bits(b) == _state_bits(a)
        # the apps are the interned objects the Python version keeps
        assert all(x is y for x, y in zip(a.history.apps, b.history.apps))
    return taken


def test_golden_inputs_give_the_same_overlays_and_states() -> None:
    _, ws = golden_pipeline_windows()
    by_user: dict[str, list[FeatureWindow]] = {}
    for w in ws:
        by_user.setdefault(w.user_id, []).append(w)
    taken = sum(_twin_run(v) for v in by_user.values())
    assert taken == len(ws)  # the plain case is every golden window


#: 2026-04-06T00:00:00Z
BASE_US = 1_775_433_600_000_000

_HALVES = [0.00005, 0.00015, 1.00005, 2.50005, -0.00005, 0.12345, 1e-5, 4.99995, 0.000049999]


def _value(rnd: random.Random) -> Any:
    r = rnd.random()
    if r < 0.15:
        return None
    if r < 0.3:
        return rnd.randint(0, 500)
    if r < 0.45:
        return rnd.choice(_HALVES) * rnd.choice([1, 3, 7, 10, 1000])
    if r < 0.5:
        return rnd.choice([0.0, -0.0, 1e15, 3.3e12, 123456789.123456, 1e-300, 5e-324])
    return round(rnd.uniform(0, 300), rnd.choice([0, 1, 2, 3, 6, 12]))


@pytest.mark.parametrize("seed", range(6))
def test_random_histories_give_the_same_overlays_and_states(seed: int) -> None:
    rnd = random.Random(seed)
    apps = ["code", "slack", "chrome", "term", "mail", "a" * 40]
    for _user in range(40):
        ts_min = 600  # minutes after 10:00 on a fixed day
        ws = []
        for _ in range(rnd.randint(1, 40)):
            step = rnd.choice([1, 1, 1, 1, 2, 0, -1, -3, 7, 16, 30, 400])
            ts_min = max(0, ts_min + step)
            app = "".join(rnd.choice(apps))  # equal to a pool entry, often another object
            w = make_window(bucket_start_ts="2026-04-06T10:00:00Z", _drop=("bucket_end_ts",), app_id=app)
            w.ts_us = BASE_US + ts_min * 60_000_000 + rnd.choice([0, 0, 0, 30_000_000, 1])
            for k in ("keys_per_min", "clicks_per_min", "mouse_distance"):
                w.values[k] = _value(rnd)
            ws.append(w)
        gap = rnd.choice([300.0, 300, 60.5, 0.0, 1e9])
        _twin_run(ws, gap)


def test_a_restored_history_continues_the_same() -> None:
    rows = [[1_775_469_600_000_000 + i * 60_000_000, "code" if i % 3 else "x" + "y", None if i % 4 == 0 else i * 0.1, 2.0, None] for i in range(15)]
    st = UserState(3)
    st.history = History.from_rows(orjson_roundtrip(rows))
    st.session_start_us = rows[0][0]
    ws = [make_window(bucket_start_ts=f"2026-04-06T10:{15 + i:02d}:00Z", _drop=("bucket_end_ts",), keys_per_min=float(i)) for i in range(20)]
    assert _twin_run(ws, state=st) == 20


def orjson_roundtrip(rows: list[list[Any]]) -> Any:
    import orjson

    return orjson.loads(orjson.dumps(rows))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("keys_per_min", True),  # a bool: float(True) in Python
        ("keys_per_min", "3"),  # the Python version raises
        ("mouse_distance", 1 << 60),  # an int no double holds exactly
        ("app_id", 7),
    ],
)
def test_unusual_values_are_declined_with_nothing_changed(field: str, value: Any) -> None:
    st = UserState(3)
    for i in range(3):
        push_window_py(st, make_window(bucket_start_ts=f"2026-04-06T10:0{i}:00Z", _drop=("bucket_end_ts",)))
    before = _state_bits(st)
    w = make_window(bucket_start_ts="2026-04-06T10:05:00Z", _drop=("bucket_end_ts",))
    w.values[field] = value
    assert native_push(st, w, 300.0) is NotImplemented
    assert _state_bits(st) == before
    twin = copy.deepcopy(st)
    try:
        want: Any = push_window_py(twin, w, 300.0)
    except Exception as exc:  # noqa: BLE001 - the dispatcher must raise the same
        with pytest.raises(type(exc)):
            push_window(st, w, 300.0)
    else:
        assert _bits(push_window(st, w, 300.0)) == _bits(want)


def test_missing_values_and_odd_histories_are_declined() -> None:
    st = UserState(3)
    w = make_window(bucket_start_ts="2026-04-06T10:00:00Z", _drop=("bucket_end_ts",))
    del w.values["clicks_per_min"]
    assert native_push(st, w, 300.0) is NotImplemented
    st.history.keys.append(1.0)  # columns of different lengths
    w2 = make_window(bucket_start_ts="2026-04-06T10:00:00Z", _drop=("bucket_end_ts",))
    assert native_push(st, w2, 300.0) is NotImplemented
    assert len(st.history.ts) == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    vals=st.lists(
        st.tuples(
            st.integers(-5, 40),
            st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False), st.integers(-1000, 1000)),
            st.one_of(st.none(), st.floats(0, 1e3, allow_nan=False)),
            st.one_of(st.none(), st.floats(-1e300, 1e300, allow_nan=False, allow_infinity=False)),
            st.sampled_from(["a", "b", "c"]),
        ),
        min_size=1,
        max_size=30,
    ),
    gap=st.one_of(st.floats(0, 1e5, allow_nan=False), st.integers(0, 10**6)),
)
def test_any_values_give_the_same(vals: list[tuple[int, Any, Any, Any, str]], gap: float) -> None:
    ws = []
    t = 600
    for step, k, c, m, app in vals:
        t = max(0, t + step)
        w = make_window(bucket_start_ts="2026-04-06T10:00:00Z", _drop=("bucket_end_ts",), app_id=app)
        w.ts_us = BASE_US + t * 60_000_000
        w.values.update(keys_per_min=k, clicks_per_min=c, mouse_distance=m)
        ws.append(w)
    _twin_run(ws, gap)


def test_the_dispatcher_takes_the_c_result_or_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    def spy(state: UserState, w: FeatureWindow, gap: float) -> Any:
        calls.append(w)
        return native_push(state, w, gap)

    monkeypatch.setattr(features, "NATIVE_PUSH", spy)
    st = UserState(3)
    w = make_window(bucket_start_ts="2026-04-06T10:00:00Z", _drop=("bucket_end_ts",))
    assert push_window(st, w)[8] == 0.0 and calls == [w]
    w2 = make_window(bucket_start_ts="2026-04-06T10:01:00Z", _drop=("bucket_end_ts",))
    w2.values["keys_per_min"] = True  # declined: the Python version answers (float(True))
    assert push_window(st, w2)[5] == 1.0 - 78.0 and len(calls) == 2  # keys 78.0 before


def test_an_undone_batch_takes_back_an_in_place_push() -> None:
    """Once the history is full the C push shifts its columns in place: a snapshot taken before
    must hold copies, and restoring it (twice: restore copies again) gives the state back."""
    st = UserState(3)
    ws = [make_window(bucket_start_ts=f"2026-04-06T10:{i:02d}:00Z", _drop=("bucket_end_ts",), keys_per_min=float(i)) for i in range(16)]
    for w in ws[:15]:
        assert native_push(st, w, 300.0) is not NotImplemented
    before = _state_bits(st)
    snap = st.snapshot()
    for _ in range(2):
        assert native_push(st, ws[15], 300.0) is not NotImplemented  # full: shifted in place
        assert _state_bits(st) != before
        st.restore(snap)
        assert _state_bits(st) == before
