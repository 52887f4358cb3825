"""Event-time hygiene and idempotent replays in the pipeline (issue 4, no broker)."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from helpers_rows import golden_pipeline_windows
from taskclf_daemon.state import StateFormatError, UserState


@pytest.fixture(scope="module")
def golden_windows():
    return golden_pipeline_windows()


def _run(pipe, windows, states=None):
    states = states or pipe.new_state_store()
    res = pipe.process(windows, states)
    return res, states


def _copy(w, **changes):
    return dataclasses.replace(w, values=dict(w.values), **changes)


def test_duplicate_and_late_windows_are_skipped_and_change_nothing(golden_windows):
    pipe, ws = golden_windows
    user = ws[0].user_id
    mine = [w for w in ws if w.user_id == user][:40]
    clean, _ = _run(pipe, mine)
    # the same stream with a duplicate of window 10 and a late copy of window 5 after window 20
    noisy = mine[:21] + [_copy(mine[10], source=None), _copy(mine[5], source=None)] + mine[21:]
    res, states = _run(pipe, noisy)
    kinds = sorted(o for _, o in res.skipped)
    assert kinds == ["late", "late"]  # both are older than the last applied window (20)
    assert [p.value for p in res.predictions] == [p.value for p in clean.predictions]
    # an exact duplicate of the last applied window is a "duplicate"
    res2, _ = _run(pipe, [_copy(mine[-1], source=None)], states)
    assert [o for _, o in res2.skipped] == ["duplicate"] and res2.predictions == []


def test_process_policy_applies_late_windows_like_taskclf(golden_windows):
    pipe, ws = golden_windows
    from taskclf_daemon.pipeline.batch import InferencePipeline

    p2 = InferencePipeline(pipe.bundle, pipe.store, dataclasses.replace(pipe.config, event_time_policy="process"))
    user = ws[0].user_id
    mine = [w for w in ws if w.user_id == user][:10]
    res, _ = _run(p2, mine + [_copy(mine[3], source=None)])
    assert res.skipped == [] and len(res.predictions) == 11


def test_replayed_offsets_are_not_applied_twice(golden_windows):
    pipe, ws = golden_windows
    first, states = _run(pipe, ws[:1000])
    # crash after a checkpoint: the input is re-read from an older committed offset (500)
    snap = {u: UserState.from_bytes(s.to_bytes(), 3) for u, s in states.users.items()}
    restored = pipe.new_state_store()
    for u, s in snap.items():
        restored.put(u, s)
    res, _ = _run(pipe, ws[500:1500], restored)
    assert len(res.skipped) == 500 and {o for _, o in res.skipped} == {"replayed"}
    uninterrupted, _ = _run(pipe, ws[:1500])
    assert [p.value for p in first.predictions] + [p.value for p in res.predictions] == [p.value for p in uninterrupted.predictions]


def test_ttl_resets_a_user_idle_longer_than_the_ttl(golden_windows):
    pipe, ws = golden_windows
    from taskclf_daemon.pipeline.batch import InferencePipeline

    user = ws[0].user_id
    mine = [w for w in ws if w.user_id == user][:30]
    p_ttl = InferencePipeline(pipe.bundle, pipe.store, dataclasses.replace(pipe.config, state_ttl_seconds=3600))
    later = _copy(mine[20], source=None, ts_us=mine[19].ts_us + 2 * 3600 * 1_000_000)
    later.values["bucket_start_ts"] = later.ts_us
    res, states = _run(p_ttl, mine[:20] + [later])
    rec = orjson.loads(res.predictions[-1].value)
    fresh, _ = _run(p_ttl, [later])
    assert res.predictions[-1].value == fresh.predictions[0].value  # as if the user were new
    assert states.users[user].windows_seen == 1
    assert rec["user_id"] == user
    # without a TTL the history carries over (taskclf's behaviour) and the record differs
    res_no, _ = _run(pipe, mine[:20] + [later])
    assert res_no.predictions[-1].value != fresh.predictions[0].value


def test_ttl_boundary_is_exact_to_the_microsecond_and_per_user(golden_windows):
    """TTL 3600 s: a gap of exactly 3600 s keeps the history, 3600 s + 1 us starts it empty --
    two users in one batch, each decided by its own gap only."""
    pipe, ws = golden_windows
    from taskclf_daemon.pipeline.batch import InferencePipeline

    a, b = ws[0].user_id, next(w.user_id for w in ws if w.user_id != ws[0].user_id)
    hist = {u: [_copy(w, source=None) for w in ws if w.user_id == u][:20] for u in (a, b)}

    def after(u: str, gap_us: int) -> object:
        w = _copy(hist[u][-1], ts_us=hist[u][-1].ts_us + gap_us)
        w.values["bucket_start_ts"] = w.ts_us
        w.values["bucket_end_ts"] = w.ts_us + 60_000_000
        return w

    ttl_us = 3600 * 1_000_000
    a_at, b_past = after(a, ttl_us), after(b, ttl_us + 1)
    p_ttl = InferencePipeline(pipe.bundle, pipe.store, dataclasses.replace(pipe.config, state_ttl_seconds=3600))
    batch = [w for pair in zip(hist[a], hist[b]) for w in pair] + [a_at, b_past]
    res, states = _run(p_ttl, batch)
    assert states.take_dirty() == {a, b}
    out = {orjson.loads(p.value)["user_id"]: p.value for p in res.predictions[-2:]}
    # without a TTL both carry their history; a user seen for the first time has none
    kept, _ = _run(pipe, batch)
    kept_out = {orjson.loads(p.value)["user_id"]: p.value for p in kept.predictions[-2:]}
    cold = {u: _run(p_ttl, [w])[0].predictions[0].value for u, w in ((a, a_at), (b, b_past))}
    assert cold[a] != kept_out[a] and cold[b] != kept_out[b]  # the history shows in the record
    assert out[a] == kept_out[a] and states.users[a].windows_seen == 21  # exactly the TTL: kept
    assert out[b] == cold[b] and states.users[b].windows_seen == 1  # 1 us more: reset, b only
    assert states.users[b].last_ts_us == b_past.ts_us and len(states.users[b].history) == 1
    # another user's window far later in between does not reset a (no shared clock)
    res2, states2 = _run(p_ttl, [*hist[a], after(b, 10 * ttl_us), after(a, ttl_us)])
    assert states2.users[a].windows_seen == 21
    assert orjson.loads(res2.predictions[-1].value) == orjson.loads(out[a])


def test_user_state_roundtrip_is_exact_and_versioned(golden_windows):
    pipe, ws = golden_windows
    _, states = _run(pipe, ws[:2000])
    for st in states.users.values():
        b = st.to_bytes()
        assert UserState.from_bytes(b, 3).to_bytes() == b
        assert len(b) < 2000
    # the changelog format (2; 3 adds L only for users with learning state) is a contract: exactly these keys
    d = orjson.loads(b)
    assert list(d) == ["v", "h", "s", "m", "w", "t", "n", "o", "p", "k"]
    assert d["v"] == 2 and d["w"] == 3 and d["n"] == st.windows_seen and d["o"] == st.last_offset and d["p"] == st.last_partition
    # a version-1 value (no partition, no last-seen time) is still read: the caller's stand in
    v1 = dict(d, v=1)
    del v1["p"], v1["k"]
    old = UserState.from_bytes(orjson.dumps(v1), 3, partition=7, now_s=123)
    assert (old.last_partition, old.seen_s, old.last_offset) == (7, 123, st.last_offset)
    with pytest.raises(StateFormatError, match=r"^unsupported user state format 99 \(this build reads 1, 2, 3\)$"):
        UserState.from_bytes(b'{"v": 99}', 3)
    with pytest.raises(StateFormatError, match=r"^unsupported user state format 'list' "):
        UserState.from_bytes(b"[1]", 3)
    with pytest.raises(StateFormatError, match="^malformed user state: "):
        UserState.from_bytes(b"not json", 3)
    with pytest.raises(StateFormatError, match="^malformed user state: .*'h'"):
        UserState.from_bytes(b'{"v": 1}', 3)


def test_restored_state_continues_byte_identically(golden_windows):
    """Snapshot every user's state mid-stream, restore it into a fresh store, continue: same bytes."""
    pipe, ws = golden_windows
    whole, _ = _run(pipe, ws)
    head, st = _run(pipe, ws[:1234])
    fresh = pipe.new_state_store()
    for u, s in st.users.items():
        fresh.put(u, UserState.from_bytes(s.to_bytes(), pipe.config.smooth_window))
    tail, _ = _run(pipe, ws[1234:], fresh)
    assert [p.value for p in head.predictions + tail.predictions] == [p.value for p in whole.predictions]


def test_process_bookkeeping_per_user(golden_windows):
    pipe, ws = golden_windows
    res, states = _run(pipe, ws[:100])
    # each prediction carries its input's position (the daemon's taskclf-source header)
    assert [p.source for p in res.predictions] == [w.source for w in ws[:100]]
    per_user = {}
    for w in ws[:100]:
        per_user[w.user_id] = per_user.get(w.user_id, 0) + 1
    assert {u: s.windows_seen for u, s in states.users.items()} == per_user
    assert states.take_dirty() == set(per_user)  # every user the batch touched, nothing else
    last = {}
    for w in ws[:100]:
        last[w.user_id] = (w.ts_us, w.source.offset)
    assert {u: (s.last_ts_us, s.last_offset) for u, s in states.users.items()} == last
    # a batch that skips everything (replayed) marks nobody dirty
    res2, _ = _run(pipe, ws[:100], states)
    assert len(res2.skipped) == 100 and states.take_dirty() == set()


def test_process_policy_keeps_the_newest_time_after_a_late_window(golden_windows):
    pipe, ws = golden_windows
    from taskclf_daemon.pipeline.batch import InferencePipeline

    p2 = InferencePipeline(pipe.bundle, pipe.store, dataclasses.replace(pipe.config, event_time_policy="process"))
    mine = [w for w in ws if w.user_id == ws[0].user_id][:10]
    _, states = _run(p2, mine + [_copy(mine[3], source=None)])
    st = states.users[ws[0].user_id]
    assert st.last_ts_us == mine[-1].ts_us and st.windows_seen == 11


def test_idle_gap_setting_reaches_the_overlay(golden_windows):
    # consecutive windows 60 s apart: a 30 s idle gap starts a new session at every window
    pipe, ws = golden_windows
    from taskclf_daemon.pipeline.batch import InferencePipeline

    mine = [w for w in ws if w.user_id == ws[0].user_id][:5]
    assert all(b.ts_us - a.ts_us == 60_000_000 for a, b in zip(mine, mine[1:]))
    short = InferencePipeline(pipe.bundle, pipe.store, dataclasses.replace(pipe.config, idle_gap_seconds=30.0))
    _, s_default = _run(pipe, [_copy(w, source=None) for w in mine])
    _, s_short = _run(short, [_copy(w, source=None) for w in mine])
    assert s_default.users[mine[0].user_id].session_start_us == mine[0].ts_us
    assert s_short.users[mine[0].user_id].session_start_us == mine[-1].ts_us
