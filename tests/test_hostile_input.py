"""Hostile-but-valid input: no single record can stop a shard, evict other users, or make an
output depend on checkpoint timing (issue 9). No broker: the shard and the daemon's rebalance
callbacks directly. Every test here failed on the code before the fix."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from helpers_rows import GOLDEN_DIR
from taskclf_daemon import daemon as dmod, wire
from taskclf_daemon.artifacts import build_pipeline
from taskclf_daemon.checkpoint import Checkpointer
from taskclf_daemon.config import load_settings
from taskclf_daemon.errors import ConfigError
from taskclf_daemon.memory_kafka import MemoryBroker, MemoryConsumer, MemorySink, MemoryTP
from taskclf_daemon.rebalance import Rebalancer
from taskclf_daemon.shard import PipelineShard, RawBatch, ShardLimits
from taskclf_daemon.timeutil import format_ts_us, parse_ts_us

POLICY = GOLDEN_DIR / "models" / "inference_policy.json"
DAY_MS = 86_400_000
#: Kafka timestamp of the records below: 2026-04-07T00:00:00Z
KTS = 1_775_520_000_000


@pytest.fixture(scope="module")
def pipe():
    p, _ = build_pipeline(policy=POLICY, state_ttl_seconds=3600)
    return p


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return orjson.loads((GOLDEN_DIR / "inputs.jsonl").read_bytes().splitlines()[0])


def _row(base: dict[str, Any], user: str, minute: int, day: str = "2026-04-06", **kw: Any) -> dict[str, Any]:
    h, m = divmod(minute, 60)
    r = dict(base, user_id=user, bucket_start_ts=f"{day}T{h:02d}:{m:02d}:00Z", bucket_end_ts=f"{day}T{h:02d}:{m:02d}:59Z")
    r.update(kw)
    return r


def _at(row: dict[str, Any], ts: Any) -> dict[str, Any]:
    """``row`` starting at ``ts``, without an end timestamp (optional)."""
    r = dict(row, bucket_start_ts=ts)
    del r["bucket_end_ts"]
    return r


def _batch(rows: list[Any], partition: int = 0, first_offset: int = 0, kts: int = KTS) -> RawBatch:
    b = RawBatch("in")
    for i, r in enumerate(rows):
        if isinstance(r, dict):
            b.add(partition, first_offset + i, orjson.dumps(r), str(r["user_id"]).encode(), kts)
        else:
            b.add(partition, first_offset + i, r, b"k", kts)
    return b


def _values(res) -> list[bytes]:
    return [v for _k, v, _s in res.outputs]


# --- 1. poison pills ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ts",
    ["9999-12-31T23:59:00-05:00", 1e16, "0001-01-01T00:00:00+01:00", "9999-01-01T00:00:00Z", -1, "2200-01-01T00:00:00Z", " " * 80 + "2026-04-06T10:00:00Z"],
)
def test_timestamps_outside_the_sane_range_are_dead_lettered_and_the_batch_goes_on(pipe, base, ts):
    rows = [_row(base, "a", 0), _at(_row(base, "evil", 0), ts), _row(base, "b", 0)]
    res = PipelineShard(pipe).process(_batch(rows))
    assert [(d.position, d.reason) for d in res.dead] == [(1, "bad_timestamp")]
    assert [orjson.loads(v)["user_id"] for v in _values(res)] == ["a", "b"]


def test_an_exception_inside_the_pipeline_dead_letters_only_its_record(pipe, base, monkeypatch):
    """Whatever a stage raises for one window: that window is dead-lettered (processing_error, the
    exception type, no traceback), every other window's output and state are exactly as without it."""
    rows = [_row(base, u, m) for m in range(4) for u in ("a", "b", "c")]
    clean = PipelineShard(pipe)
    expected = _values(clean.process(_batch(rows)))
    shard = PipelineShard(pipe)
    real = pipe.bundle.encode

    def exploding_encode(windows, overlays):
        if any(w.user_id == "b" and w.ts_us % 3_600_000_000 == 2 * 60_000_000 for w in windows):
            raise ZeroDivisionError("boom\nTraceback (most recent call last)")
        return real(windows, overlays)

    monkeypatch.setattr(pipe.bundle, "encode", exploding_encode)
    res = shard.process(_batch(rows))
    monkeypatch.undo()
    bad = 2 * 3 + 1  # user b, minute 2
    assert [(d.position, d.reason) for d in res.dead] == [(bad, "processing_error")]
    assert res.dead[0].detail.startswith("ZeroDivisionError: boom") and "\n" not in res.dead[0].detail
    got = {(orjson.loads(v)["user_id"], orjson.loads(v)["bucket_start_ts"]): v for v in _values(res)}
    want = {(orjson.loads(v)["user_id"], orjson.loads(v)["bucket_start_ts"]): v for v in expected}
    for key, v in got.items():
        if key[0] != "b":
            assert v == want[key]  # other users: byte-identical
    assert len(got) == len(rows) - 1
    # user b's state is as if minute 2 never came: its next window matches a run without it
    ref = PipelineShard(pipe)
    ref_vals = _values(ref.process(_batch([r for r in rows if not (r["user_id"] == "b" and r["bucket_start_ts"].endswith("02:00Z"))])))
    assert sorted(_values(res)) == sorted(ref_vals)


# --- 2. event time no single user controls ------------------------------------------------------
def test_a_window_far_ahead_of_its_kafka_timestamp_is_dead_lettered(pipe, base):
    rows = [_row(base, "a", 0), _row(base, "evil", 0, day="2199-01-01"), _row(base, "b", 0, day="2026-04-07")]
    res = PipelineShard(pipe).process(_batch(rows))
    assert [(d.position, d.reason) for d in res.dead] == [(1, "event_time_ahead")]
    assert len(res.outputs) == 2  # 2026-04-07T00:00 is exactly the Kafka timestamp: fine
    off = PipelineShard(pipe, ShardLimits(max_event_ahead_s=0)).process(_batch(rows))
    assert off.dead == [] and len(off.outputs) == 3


def test_one_far_future_window_evicts_nobody(pipe, base):
    shard = PipelineShard(pipe, ShardLimits(state_retention_s=3600, max_event_ahead_s=0))
    users = [f"u{i}" for i in range(20)]
    shard.process(_batch([_row(base, u, 0) for u in users]), now_s=1000)
    shard.process(_batch([_row(base, "evil", 0, day="2199-01-01")], first_offset=20), now_s=1000)
    shard.checkpoint(now_s=1000)
    cp = shard.checkpoint(now_s=1000 + 120)
    assert cp.tombstones == [] and cp.state_users == 21
    # and the users' next windows continue their own history (not reset)
    res = shard.process(_batch([_row(base, u, 1) for u in users], first_offset=21), now_s=1200)
    assert all(orjson.loads(v)["user_id"] in users for v in _values(res)) and len(res.outputs) == 20
    assert all(shard.states.users[u].windows_seen == 2 for u in users)  # history kept


def test_outputs_do_not_depend_on_when_checkpoints_fall(pipe, base):
    """A backfilling user (event time a year behind) beside live users on one partition: the same
    input gives the same outputs with one checkpoint or one every two records."""
    rows = []
    for m in range(30):
        rows.append(_row(base, "live", m))
        rows.append(_row(base, "backfill", m, day="2025-04-06"))

    def run(every: int) -> list[bytes]:
        shard = PipelineShard(pipe, ShardLimits(state_retention_s=7 * 86400, max_event_ahead_s=0))
        out: list[bytes] = []
        for i in range(0, len(rows), every):
            out += _values(shard.process(_batch(rows[i : i + every], first_offset=i), now_s=10_000 + i))
            shard.checkpoint(now_s=10_000 + i)
        return out

    once, often = run(len(rows)), run(2)
    assert len(once) == len(rows) and once == often


def test_idle_reset_is_decided_by_the_users_own_gap(pipe, base):
    """TTL 3600 s: a window exactly 3600 s after the user's last continues the history, 3601 s
    later starts empty -- another user's far-later window in between changes nothing."""
    def nxt_row(gap_s: int) -> dict[str, Any]:
        t = parse_ts_us(_row(base, "u", 4)["bucket_start_ts"]) + gap_s * 1_000_000
        return _at(_row(base, "u", 4), format_ts_us(t))

    def outputs(gap_s: int, other: bool) -> tuple[bytes, int]:
        shard = PipelineShard(pipe)
        rows = [_row(base, "u", m, keys_per_min=10.0 * m, app_id=f"app{m % 2}") for m in range(5)]
        if other:
            rows.append(_row(base, "x", 0, day="2026-05-30"))
        shard.process(_batch(rows, kts=-1))
        out = _values(shard.process(_batch([nxt_row(gap_s)], first_offset=10, kts=-1)))[0]
        return out, shard.states.users["u"].windows_seen

    def cold(gap_s: int) -> bytes:
        return _values(PipelineShard(pipe).process(_batch([nxt_row(gap_s)], kts=-1)))[0]

    (at, n_at), (past, n_past) = outputs(3600, False), outputs(3601, False)
    assert past == cold(3601) and n_past == 1  # reset: exactly like a first window
    assert n_at == 6  # kept
    assert outputs(3600, True) == (at, 6) and outputs(3601, True) == (past, 1)


# --- 3. identity and size -------------------------------------------------------------------------
def test_replays_are_tied_to_partition_and_event_time(pipe, base):
    shard = PipelineShard(pipe)
    rows = [_row(base, "u", m) for m in range(10)]
    assert len(shard.process(_batch(rows[:5], partition=1, first_offset=100)).outputs) == 5
    # the same user's next windows on another partition, at lower offsets: applied, not "replayed"
    res = shard.process(_batch(rows[5:8], partition=2, first_offset=3))
    assert len(res.outputs) == 3 and res.skipped == {}
    # a recreated topic: partition 2 from offset 0 again, newer windows: applied
    res = shard.process(_batch(rows[8:], partition=2, first_offset=0))
    assert len(res.outputs) == 2 and res.skipped == {}
    # a true replay (same partition, old offset, old event time) is still skipped
    assert shard.process(_batch(rows[8:], partition=2, first_offset=0)).skipped == {"replayed": 2}


def test_the_record_key_must_be_the_user_id(pipe, base):
    b = RawBatch("in")
    r = _row(base, "ü-user", 0)
    b.add(0, 0, orjson.dumps(r), "ü-user".encode(), KTS)
    b.add(0, 1, orjson.dumps(_row(base, "ü-user", 1)), b"someone-else", KTS)
    b.add(0, 2, orjson.dumps(_row(base, "ü-user", 2)), None, KTS)
    res = PipelineShard(pipe).process(b)
    assert [(d.position, d.reason) for d in res.dead] == [(1, "key_mismatch"), (2, "key_mismatch")]
    assert len(res.outputs) == 1 and res.outputs.keys[0] == "ü-user".encode()


def test_huge_user_ids_and_strings_are_refused_at_decode(pipe, base):
    rows = [_row(base, "x" * 600_000, 0), _row(base, "y" * 257, 0), _row(base, "z" * 256, 0), _row(base, "a", 0, app_id="q" * 1025), _row(base, "a", 1, app_id="q" * 1024)]
    res = PipelineShard(pipe, ShardLimits(max_record_bytes=1 << 21)).process(_batch(rows))
    assert [(d.position, d.reason) for d in res.dead] == [(0, "out_of_range"), (1, "out_of_range"), (3, "out_of_range")]
    assert "user_id" in res.dead[0].detail and "limit 256" in res.dead[0].detail
    assert len(res.outputs) == 2


def test_an_output_over_max_produce_bytes_is_dead_lettered_not_produced(pipe, base):
    rows = [_row(base, "a", 0), _row(base, "b" * 200, 0)]
    res = PipelineShard(pipe, ShardLimits(max_produce_bytes=4096)).process(_batch(rows))
    size = len(res.outputs.values[0])
    tight = PipelineShard(pipe, ShardLimits(max_produce_bytes=size + 512 + 10)).process(_batch(rows))
    assert [(d.position, d.reason) for d in tight.dead] == [(1, "output_too_large")]
    assert len(tight.outputs) == 1


def test_dead_letters_are_cut_to_fit_and_say_so():
    fit = wire.fit_dead_letter
    assert fit(b"k", b"v" * 10, 100) == (b"k", b"v" * 10, "")
    k, v, cut = fit(b"k", b"v" * 1000, 100)
    assert (k, len(v), cut) == (b"k", 99, "value")
    k, v, cut = fit(b"K" * 600_000, b"v" * 600_000, 1000)
    assert (len(k), len(v), cut) == (500, 500, "key,value")
    assert fit(None, None, 10) == (None, None, "")  # a tombstone stays a tombstone


# --- 4. loud failures -----------------------------------------------------------------------------
def test_a_failed_restore_stops_the_daemon_and_turns_healthz_red(pipe, monkeypatch):
    """The daemon wires ``Daemon.fail`` as the rebalancer's ``on_failure``: a restore that times
    out inside the assignment callback stops it (exit 1) and turns /healthz red at once."""
    s = load_settings(None, env={}, flags={"policy": str(POLICY), "pipeline_workers": 0, "http_port": 0})
    d = dmod.Daemon(s, pipe)
    broker = MemoryBroker()
    broker.create("in", 1)

    async def too_slow(keys):
        raise TimeoutError("restore did not finish in 120s")

    async def run() -> None:
        consumer = MemoryConsumer(broker)
        cp = Checkpointer(hosts=d.shards, tracker=d.tracker, sink=MemorySink(broker), consumer=consumer, changelog_topic="state", metrics=d.metrics, finish=d._finish_all, shard_users=d.shard_users)
        rb = Rebalancer(
            hosts=d.shards, scheduler=d.scheduler, checkpointer=cp, lock=asyncio.Lock(), consumer=consumer, reader=consumer, changelog_topic="state",
            restore_timeout_s=120.0, revoke_budget_s=1.0, metrics=d.metrics, on_failure=d.fail, group="g",
        )
        d._started = True
        monkeypatch.setattr(rb, "_restore", too_slow)
        consumer.assign([MemoryTP("in", 0)])
        await rb.on_assigned([MemoryTP("in", 0)])
        for sh in d.shards:
            await sh.stop()

    assert d.health()[0] is True
    asyncio.run(run())
    ok, detail = d.health()
    assert ok is False and "restore" in detail["fatal"] and "TimeoutError" in detail["fatal"]
    assert d.exit_code == dmod.EXIT_FATAL and d._stop.is_set()


def test_a_non_string_secret_is_not_echoed_in_the_config_error():
    with pytest.raises(ConfigError) as ei:
        load_settings(None, env={}, flags={"sasl_password": 123456789, "policy": "x"})
    assert "123456789" not in str(ei.value) and "sasl_password" in str(ei.value)
