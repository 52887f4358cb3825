"""The learning loop's test data: synthetic personas in phases, and the bytes the shards
produce for them offline (shared by the shard test and the Kafka tests)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from taskclf_daemon.artifacts import LoadOptions, build_pipeline
from taskclf_daemon.offline import personas
from taskclf_daemon.shard import PipelineShard, RawBatch, ShardLimits
from taskclf_daemon.timeutil import parse_ts_us

SEED, USERS, DAYS = 3, 6, 8
PHASE_US = 3 * 3_600_000_000
PARTS = 4


def phases() -> tuple[list[list[tuple[bytes, bytes]]], list[list[tuple[bytes, bytes]]], dict[str, str]]:
    """Per phase: the spans (key, value) and the windows (key, value), in produce order."""
    windows, spans, kinds = personas.generate(seed=SEED, n_users=USERS, days=DAYS, start="2026-03-09")
    by_phase_w: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    by_phase_s: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    for w in windows:
        by_phase_w[parse_ts_us(w["bucket_start_ts"]) // PHASE_US].append((w["user_id"].encode(), orjson.dumps(w)))
    for s in spans:
        by_phase_s[parse_ts_us(s["start_ts"]) // PHASE_US].append((s["user_id"].encode(), orjson.dumps(s)))
    phases = sorted(set(by_phase_w) | set(by_phase_s))
    return [by_phase_s[p] for p in phases], [by_phase_w[p] for p in phases], kinds


def learning_options() -> LoadOptions:
    return LoadOptions(feedback_topic="labels")  # the daemon's learning defaults


def raw_batches(data: Any, batch: int) -> Iterator[RawBatch]:
    """Per phase: one batch of its spans (topic ``labels``), then its windows in batches of
    ``batch`` (topic ``in``) -- any batching: per-user order is what counts."""
    spans, windows = data[0], data[1]
    off = 0
    for phase_spans, phase_windows in zip(spans, windows, strict=True):
        fb = RawBatch("labels")
        for k, v in phase_spans:
            fb.add(0, off, v, k)
            off += 1
        yield fb
        for i in range(0, len(phase_windows), batch):
            b = RawBatch("in")
            for k, v in phase_windows[i : i + batch]:
                b.add(0, off, v, k)
                off += 1
            yield b


def expected_bytes(bundle: Path, data: Any, batch: int = 97) -> tuple[dict[tuple[str, str], bytes], dict[tuple[str, str], bytes], dict[tuple[str, str], bytes]]:
    """What the daemon must write, computed by the shards offline: outputs with learning, label
    requests, and the outputs of the same windows without learning (the global model)."""
    spans, windows, _ = data
    pipe, _ = build_pipeline(model_dir=bundle)
    pipe.attach_learner(learning_options().learner())
    shard = PipelineShard(pipe, ShardLimits(label_requests=True, max_event_ahead_s=0))
    plain = PipelineShard(build_pipeline(model_dir=bundle)[0], ShardLimits(max_event_ahead_s=0))
    out: dict[tuple[str, str], bytes] = {}
    req: dict[tuple[str, str], bytes] = {}
    glob: dict[tuple[str, str], bytes] = {}
    for b in raw_batches((spans, windows), batch):
        if b.topic == "labels":
            assert not shard.feedback(b).dead
            continue
        res = shard.process(b)
        assert not res.dead
        for v in res.outputs.values:
            r = orjson.loads(v)
            out[(r["user_id"], r["bucket_start_ts"])] = v
        for v in res.requests.values:
            r = orjson.loads(v)
            req[(r["user_id"], r["bucket_start_ts"])] = v
        for v in plain.process(b).outputs.values:
            r = orjson.loads(v)
            glob[(r["user_id"], r["bucket_start_ts"])] = v
    return out, req, glob


