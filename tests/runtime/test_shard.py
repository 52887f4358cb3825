"""PipelineShard (the state-owning half of the daemon) and where shards run (workers.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import zlib

import orjson
import pytest

from helpers_rows import GOLDEN_DIR
from taskclf_daemon.artifacts import build_pipeline
from taskclf_daemon.codec import RowValidator, decode_window
from taskclf_daemon.config import load_settings
from taskclf_daemon.shard import PipelineShard, RawBatch, ShardLimits
from taskclf_daemon.state import USER_HEAP_BYTES
from taskclf_daemon.workers import LocalShard, ProcessShard, WorkerError

POLICY = GOLDEN_DIR / "models" / "inference_policy.json"
PARTS = 4


@pytest.fixture(scope="module")
def pipe():
    p, _ = build_pipeline(policy=POLICY)
    return p


@pytest.fixture(scope="module")
def lines() -> list[bytes]:
    return [ln for ln in (GOLDEN_DIR / "inputs.jsonl").read_bytes().splitlines() if ln.strip()]


def _part(line: bytes) -> int:
    return zlib.crc32(orjson.loads(line)["user_id"].encode()) % PARTS


def _batches(lines: list[bytes], size: int = 200, start_offset: int = 0) -> list[RawBatch]:
    """Golden lines as Kafka-like batches: partition by user, offsets counting per partition."""
    next_off = [start_offset] * PARTS
    out = []
    for i in range(0, len(lines), size):
        b = RawBatch("in")
        for line in lines[i : i + size]:
            p = _part(line)
            b.add(p, next_off[p], line, orjson.loads(line)["user_id"].encode())
            next_off[p] += 1
        out.append(b)
    return out


def _values(results) -> list[bytes]:
    return [v for r in results for _k, v, _s in r.outputs]


def test_shard_outputs_equal_the_pipeline_and_dead_letter_by_index(pipe, lines):
    v = RowValidator(pipe.bundle.schema)
    st = pipe.new_state_store()
    expected = [p.value for p in pipe.process([decode_window(ln, v) for ln in lines], st).predictions]
    shard = PipelineShard(pipe)
    got = _values(shard.process(b) for b in _batches(lines))
    assert got == expected and len(got) == len(lines)
    bad = RawBatch("in")
    bad.add(0, 10_000, b"{nope")
    bad.add(1, 10_000, lines[0].replace(b'"v1"', b'"v9"'))
    bad.add(2, 10_000, None)
    bad.add(3, 10_000, b"x" * 5000)
    res = PipelineShard(pipe, ShardLimits(max_record_bytes=4096)).process(bad)
    assert [(d.position, d.reason) for d in res.dead] == [(0, "invalid_json"), (1, "schema_mismatch"), (2, "not_an_object"), (3, "oversize")]
    # each dead letter carries its own record: nothing is joined back by index later
    assert [(d.source.partition, d.source.offset, d.value) for d in res.dead] == [(i, 10_000, bad.values[i]) for i in range(4)]
    assert len(res.dead) == 4 and len(res.outputs) == 0
    assert sum(res.tally.values()) == 0


def test_checkpoint_hands_out_each_changed_user_once_and_again_after_a_failure(pipe, lines):
    shard = PipelineShard(pipe)
    first = _batches(lines[:300])
    for b in first:
        shard.process(b)
    users = {orjson.loads(ln)["user_id"] for ln in lines[:300]}
    cp = shard.checkpoint()
    assert {k.decode() for _p, k, _v in cp.updates} == users
    assert all(p == _part(next(ln for ln in lines if orjson.loads(ln)["user_id"] == k.decode())) for p, k, _v in cp.updates)
    # the gauge's estimate: a full user's heap each (no learning state here), not the value bytes
    assert cp.state_users == len(users) and cp.state_bytes == len(users) * USER_HEAP_BYTES
    assert shard.checkpoint().updates == []
    shard.process(_batches(lines[300:310], start_offset=10_000)[0])
    cp2 = shard.checkpoint()
    shard.checkpoint_failed()
    cp3 = shard.checkpoint()
    assert sorted(cp3.updates) == sorted(cp2.updates) and cp2.updates


def test_restored_state_continues_byte_identically(pipe, lines):
    """Adopt a checkpoint into a fresh shard: the rest of the stream gives the same outputs."""
    batches = _batches(lines)
    k = len(batches) // 2
    whole = PipelineShard(pipe)
    expected = _values(whole.process(b) for b in batches)
    a = PipelineShard(pipe)
    head = _values(a.process(b) for b in batches[:k])
    cp = a.checkpoint()
    b = PipelineShard(pipe)
    n, errors = b.adopt(cp.updates + [(0, b"broken-user", b"{not state")])
    assert n == len(cp.updates) and len(errors) == 1 and "partition 0" in errors[0]
    # a replay of the last batch before the checkpoint is skipped, not applied twice
    assert b.process(batches[k - 1]).skipped == {"replayed": len(batches[k - 1])}
    tail = _values(b.process(x) for x in batches[k:])
    assert head + tail == expected


def test_adopt_applies_changelog_chunks_in_order_later_values_and_tombstones_win(pipe, lines):
    """A restore installs the changelog chunk by chunk: a user's later value replaces the
    earlier one, a tombstone in a later chunk forgets a user an earlier chunk installed."""
    a = PipelineShard(pipe)
    batches = _batches(lines[:800])
    for x in batches[:3]:
        a.process(x)
    old = {k: (p, v) for p, k, v in a.checkpoint().updates}
    a.process(batches[3])
    new = {k: (p, v) for p, k, v in a.checkpoint().updates}
    kept = sorted(set(old) & set(new))  # changed by the second batch
    gone = next(k for k in old if k not in new)
    assert kept and all(old[k][1] != new[k][1] for k in kept)
    b = PipelineShard(pipe)
    assert b.adopt([(p, k, v) for k, (p, v) in old.items()]) == (len(old), [])
    assert b.adopt([(old[gone][0], gone, None)] + [(new[k][0], k, new[k][1]) for k in kept]) == (len(kept), [])
    assert gone.decode() not in b.states.users and b.stats().state_users == len(old) - 1
    assert all(b.states.users[k.decode()].to_bytes() == new[k][1] for k in kept)
    assert b.adopt([(0, b"never-seen", None)]) == (0, [])  # a tombstone of nobody: nothing


def test_a_deferred_value_found_unreadable_on_first_use_is_reported_by_the_next_checkpoint(pipe, lines):
    """Adopt defers decoding: a value that looks like format 2 but is malformed inside is only
    found out when its user's next window comes; that user starts empty and the error (no
    user id in it) is handed out once, with the next checkpoint, for the metric and the log."""
    a = PipelineShard(pipe)
    batches = _batches(lines[:200])
    for b in batches:
        a.process(b)
    cp = a.checkpoint()
    part, key, value = cp.updates[0]
    broken = value.replace(b'"h":[[', b'"h":[["x",', 1)
    b = PipelineShard(pipe)
    assert b.adopt([(part, key, broken)] + cp.updates[1:]) == (len(cp.updates), [])  # nothing decoded yet
    assert b.states.users[key.decode()].deferred and b.checkpoint().unreadable == []
    res = b.process(next(x for x in _batches(lines[200:]) if key in x.keys))
    assert not res.dead
    got = b.checkpoint().unreadable
    assert len(got) == 1 and got[0].startswith("malformed user state: ") and key.decode() not in got[0]
    st = b.states.users[key.decode()]
    assert st.windows_seen == sum(1 for k in next(x for x in _batches(lines[200:]) if key in x.keys).keys if k == key)  # started empty
    assert b.checkpoint().unreadable == []  # reported once


def test_release_parks_durable_state_and_reuse_adopts_it_back(pipe, lines):
    shard = PipelineShard(pipe)
    for b in _batches(lines[:400]):
        shard.process(b)
    shard.checkpoint()
    before = shard.stats().state_users
    per_part = {p: 0 for p in range(PARTS)}
    for u in {orjson.loads(ln)["user_id"] for ln in lines[:400]}:
        per_part[zlib.crc32(u.encode()) % PARTS] += 1
    assert per_part[0] > 0 and per_part[2] > 0
    parked = shard.release([0, 2], durable=True)
    assert parked == per_part[0] + per_part[2]
    assert shard.stats().state_users == before - parked
    assert shard.stats().parked_partitions == [0, 2]
    assert shard.reuse([2, 3]) == [2]  # partition 0 went elsewhere: its parked state is dropped
    assert shard.stats().state_users == before - per_part[0]
    assert shard.stats().parked_partitions == []
    assert shard.release([2], durable=False) == 0  # not durable: nothing is parked
    assert shard.reuse([2]) == []


def test_retention_forgets_users_by_their_own_last_sight_not_by_anyone_elses_event_time(pipe, lines):
    """Users not seen for state_retention_s (processing time) are tombstoned: exactly those."""
    shard = PipelineShard(pipe, ShardLimits(state_retention_s=3600))
    batches = _batches(lines)
    for b in batches[:-1]:
        shard.process(b, now_s=1_000)
    late = {orjson.loads(ln)["user_id"] for ln in lines[-200:]}
    shard.process(batches[-1], now_s=1_000 + 3_600)
    assert shard.checkpoint(now_s=1_000 + 3_600).tombstones == []  # 3600 s is not *more* than the retention
    cp = shard.checkpoint(now_s=1_000 + 3_601 + 60)
    users = {orjson.loads(ln)["user_id"] for ln in lines}
    assert {k.decode() for _p, k in cp.tombstones} == users - late
    assert cp.evicted == {"idle": len(users - late)} and cp.state_users == len(late)
    # that changelog was not acknowledged: the next checkpoint writes the tombstones again
    # (else the forgotten users would come back from the changelog on a restore) -- but not for
    # a user seen again meanwhile (its new state is written instead), nor once released
    back = sorted(users - late)[0]
    back_line = next(ln for ln in lines if orjson.loads(ln)["user_id"] == back)
    shard.checkpoint_failed()
    shard.process(_batches([back_line], start_offset=50_000)[0], now_s=1_000 + 3_700)
    cp2 = shard.checkpoint(now_s=1_000 + 3_700)
    assert {k.decode() for _p, k in cp2.tombstones} == users - late - {back}
    assert [k.decode() for _p, k, _v in cp2.updates] == [back]
    assert cp2.evicted == {}  # counted once, when forgotten
    shard.checkpoint_failed()  # cp2 failed too: its tombstones are due again...
    parts = sorted({p for p, _k in cp2.tombstones})
    shard.release(parts[:1], durable=False)  # ...except those of a partition given away
    cp3 = shard.checkpoint(now_s=1_000 + 3_700)
    assert sorted(cp3.tombstones) == sorted(t for t in cp2.tombstones if t[0] != parts[0]) and cp3.tombstones
    assert shard.checkpoint(now_s=1_000 + 3_700).tombstones == []  # acknowledged: once


def test_capacity_forgets_the_least_recently_seen_clean_users(pipe, lines):
    shard = PipelineShard(pipe, ShardLimits(max_state_users=5))
    order: list[str] = []
    for t, b in enumerate(_batches(lines, size=1)):
        shard.process(b, now_s=t)
        u = orjson.loads(b.values[0])["user_id"]
        if u in order:
            order.remove(u)
        order.append(u)
        if len(order) == 10:
            break
    assert shard.checkpoint(now_s=100).tombstones == []  # every user is dirty: written, not evicted
    cp = shard.checkpoint(now_s=100)
    assert cp.evicted == {"capacity": 6} and cp.state_users == 4  # down to 90% of the cap
    assert {k.decode() for _p, k in cp.tombstones} == set(order[:6])


def test_state_too_large_to_produce_is_dropped_and_tombstoned_not_written(pipe, lines):
    shard = PipelineShard(pipe, ShardLimits(max_produce_bytes=4096))
    row = orjson.loads(lines[0])
    for i in range(15):
        row.update(app_id="a" * 1000 + str(i), bucket_start_ts=f"2026-04-06T10:{i:02d}:00Z", bucket_end_ts=f"2026-04-06T10:{i:02d}:59Z")
        b = RawBatch("in")
        b.add(0, i, orjson.dumps(row), row["user_id"].encode())
        assert len(shard.process(b).outputs) == 1
    cp = shard.checkpoint()
    assert cp.updates == [] and cp.tombstones == [(0, row["user_id"].encode())] and cp.evicted == {"oversize": 1}


def _settings(**kw):
    return load_settings(None, env={}, flags={"policy": str(POLICY), "pipeline_workers": 1, **kw})


def test_worker_process_gives_the_same_bytes_and_reports_failures(pipe, lines):
    async def run() -> tuple[list[bytes], list[bytes]]:
        local = LocalShard(PipelineShard(pipe))
        remote = ProcessShard(_settings(), "pipeline-test")
        info = await remote.start()
        assert info.pid != os.getpid() and not info.in_process
        try:
            a, b = [], []
            for batch in _batches(lines):
                a += _values([await local.process(batch, 0)])
                b += _values([await remote.process(batch, 0)])
            with pytest.raises(WorkerError, match="release failed: TypeError"):
                await remote.release(None, True)  # type: ignore[arg-type]
            assert (await remote.stats()).state_users > 0  # still serving after an error
            os.kill(info.pid, signal.SIGKILL)
            with pytest.raises(WorkerError, match="died"):
                await remote.stats()
            return a, b
        finally:
            await remote.stop(timeout=2.0)
            await local.stop()

    a, b = asyncio.run(run())
    assert a == b and len(a) == len(lines)


def test_worker_that_cannot_load_its_artifacts_fails_start_naming_the_problem(tmp_path):
    async def run() -> None:
        w = ProcessShard(_settings(policy=None, model_dir=str(tmp_path)), "pipeline-bad")
        try:
            await w.start()
        finally:
            await w.stop(timeout=2.0)

    with pytest.raises(WorkerError, match="failed to start.*model"):
        asyncio.run(run())


def test_user_info_last_prediction_and_label_mix(pipe, lines):
    from taskclf_daemon.shard import RECENT_WINDOWS

    shard = PipelineShard(pipe)
    results = [shard.process(b) for b in _batches(lines)]
    outs = [(k.decode(), v) for r in results for k, v, _s in r.outputs]
    uid = outs[0][0]
    mine = [orjson.loads(v) for u, v in outs if u == uid]
    info = shard.user_info(uid)
    assert info is not None and info.user_id == uid and info.partition == _part(lines[0])
    assert info.last_prediction == [v for u, v in outs if u == uid][-1]
    assert info.windows_seen == len(mine)
    assert info.last_window_ts == max(m["bucket_start_ts"] for m in mine)
    assert info.recent_labels == tuple(m["mapped_label_name"] for m in mine[-RECENT_WINDOWS:])
    assert (info.calibrator_scope, info.calibration_method) == (mine[-1]["calibrator_scope"], pipe.store.method)
    assert info.calibrator_kind == pipe.store.get(uid)[0].kind
    assert shard.user_info("nobody") is None
    # forgetting the user's partition forgets what the API shows, too; a restore brings the
    # state back but not the last prediction or the label mix (memory only)
    data = shard.checkpoint()
    shard.release([info.partition], durable=False)
    assert shard.user_info(uid) is None
    shard.adopt([(p, k, v) for p, k, v in data.updates if p == info.partition])
    again = shard.user_info(uid)
    assert again is not None and again.windows_seen == info.windows_seen and again.last_prediction is None and again.recent_labels == ()
    # off (http_user_routes = false): nothing kept
    off = PipelineShard(pipe, ShardLimits(keep_recent=False))
    for b in _batches(lines[:200]):
        off.process(b)
    u0 = orjson.loads(lines[0])["user_id"]
    got = off.user_info(u0)
    assert got is not None and got.last_prediction is None and got.recent_labels == () and got.windows_seen > 0


def test_user_info_through_a_worker_process(lines):
    s = _settings()

    async def run() -> None:
        host = ProcessShard(s, "pipeline-t")
        await host.start()
        try:
            await host.process(_batches(lines[:100])[0], 0)
            uid = orjson.loads(lines[0])["user_id"]
            info = await host.user_info(uid)
            assert info is not None and info.user_id == uid and info.last_prediction is not None
            assert await host.user_info("nobody") is None
        finally:
            await host.stop()

    asyncio.run(run())
