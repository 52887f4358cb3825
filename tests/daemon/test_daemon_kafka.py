"""The streaming daemon against a real Kafka-protocol broker (issue 3 acceptance)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from fixtures_daemon import compare_files, keyed_lines, produce_values, read_topic, write_values

pytestmark = pytest.mark.broker


def _policy_args(golden: Path) -> list[str]:
    return ["--policy", str(golden / "models" / "inference_policy.json")]


def test_golden_stream_through_kafka_matches_taskclf(golden, kafka_bootstrap, topic_factory, unique_group, daemon_factory, tmp_path):
    tin, tout, tdlq = topic_factory(4), topic_factory(4), topic_factory(1)
    n = produce_values(kafka_bootstrap, tin, keyed_lines(golden / "inputs.jsonl"))
    assert n == 3030
    d = daemon_factory(tin, tout, tdlq, unique_group, *_policy_args(golden))
    d.wait_ready()
    msgs = read_topic(kafka_bootstrap, tout, expect=3030, timeout=90)
    assert len(msgs) == 3030
    assert compare_files(golden / "expected_w3.jsonl", write_values(msgs, tmp_path / "out.jsonl"), "--fail-on-extra", "--tol", "1e-12") == 0
    # output keyed by user_id; provenance headers; value is the record (no processing time in it)
    for m in msgs[:50]:
        rec = orjson.loads(m.value())
        assert m.key().decode() == rec["user_id"]
        hdr = dict(m.headers())
        assert hdr["taskclf-source"].decode().startswith(tin + ":")
        assert int(hdr["taskclf-processed-ms"]) > 0
        assert rec["model_bundle_id"] == "2026-04-06_000000_run-0001"
        assert rec["calibrator_scope"] in ("user", "global")
    # metrics: every record accounted for, no user ids anywhere in /metrics
    deadline = time.monotonic() + 10
    while d.metric("taskclf_records_processed_total", 'outcome="emitted"') < 3030 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert d.metric("taskclf_records_processed_total", 'outcome="emitted"') == 3030
    assert d.metric("taskclf_records_consumed_total") == 3030
    assert d.metric("taskclf_rejected_total") == 592  # the fixture's reject count
    status, body = d.get("/metrics")
    assert status == 200 and b"36329fc1" not in body
    assert d.metric("taskclf_predict_batch_size_records_count") < 3030  # micro-batched: fewer model calls than records
    rc, took = d.terminate()
    assert rc == 0
    assert took < 30
    events = [e["event"] for e in d.log_events()]
    assert events[0] == "daemon_starting" and events[-1] == "daemon_stopped"
    start = d.log_events()[0]
    assert start["inference"]["model_bundle_id"] == "2026-04-06_000000_run-0001"
    assert start["inference"]["precedence"] == "flag > policy > default"


def _bad_records(golden_line: bytes) -> list[tuple[str, bytes | None, bytes | None]]:
    """(expected reason, key, value): at least 10 kinds of malformed input."""
    base = json.loads(golden_line)

    def variant(**changes: object) -> bytes:
        d = dict(base)
        for k, v in changes.items():
            if v is _DROP:
                d.pop(k)
            else:
                d[k] = v
        return json.dumps(d).encode()

    key = base["user_id"].encode()
    return [
        ("invalid_json", key, b"{this is not json"),
        ("invalid_json", key, golden_line.replace(b'"keys_per_min":', b'"keys_per_min":NaN,"x":', 1)),
        ("not_an_object", key, b"[1, 2, 3]"),
        ("not_an_object", key, b'"a string"'),
        ("not_an_object", key, None),
        ("missing_field", key, variant(app_id=_DROP)),
        ("wrong_type", key, variant(keys_per_min="fast")),
        ("wrong_type", key, variant(is_browser=1)),
        ("out_of_range", key, variant(hour_of_day=25)),
        ("out_of_range", key, variant(user_id="")),
        ("bad_timestamp", key, variant(bucket_start_ts="yesterday")),
        ("schema_mismatch", key, variant(schema_version="v2")),
        ("schema_mismatch", key, variant(schema_hash="deadbeef0000")),
        ("privacy_raw_field", key, variant(raw_window_title="Secret plans - Notes")),
        ("oversize", key, variant(padding="x" * 70_000)),
    ]


_DROP = object()


def test_mixed_stream_dead_letters_exactly_the_bad_records(golden, kafka_bootstrap, topic_factory, unique_group, daemon_factory, tmp_path):
    tin, tout, tdlq = topic_factory(3), topic_factory(3), topic_factory(1)
    good = list(keyed_lines(golden / "inputs.jsonl"))
    bad = _bad_records(good[0][1])
    assert len(bad) >= 10 and len({r for r, _, _ in bad}) >= 9  # 15 kinds, 9 distinct reasons
    stream: list[tuple[bytes | None, bytes | None]] = []
    expected_reasons: Counter = Counter()
    for i, rec in enumerate(good):
        stream.append(rec)
        if i % 97 == 5:  # sprinkle every kind of bad record through the stream, several times
            reason, k, v = bad[(i // 97) % len(bad)]
            stream.append((k, v))
            expected_reasons[reason] += 1
    assert sum(expected_reasons.values()) >= 30
    produce_values(kafka_bootstrap, tin, stream)
    d = daemon_factory(tin, tout, tdlq, unique_group, *_policy_args(golden), env={"TASKCLF_MAX_RECORD_BYTES": "65536"})
    d.wait_ready()
    out = read_topic(kafka_bootstrap, tout, expect=3030, timeout=90)
    dlq = read_topic(kafka_bootstrap, tdlq, expect=sum(expected_reasons.values()), timeout=30)
    time.sleep(1.0)
    assert len(read_topic(kafka_bootstrap, tout, timeout=10, idle=1.0)) == 3030  # nothing extra
    # the good rows' predictions are exactly taskclf's: bad rows disturbed no user's state
    assert compare_files(golden / "expected_w3.jsonl", write_values(out, tmp_path / "out.jsonl"), "--fail-on-extra", "--tol", "1e-12") == 0
    got = Counter(dict(m.headers())["taskclf-dlq-reason"].decode() for m in dlq)
    assert got == expected_reasons
    # each dead letter is its input record: original key and value, headers pointing at it
    inputs = {(m.partition(), m.offset()): m for m in read_topic(kafka_bootstrap, tin, expect=len(stream), timeout=30)}
    assert len(inputs) == len(stream)
    reason_of = {v: r for r, _k, v in bad}
    bad_positions = {pos for pos, m in inputs.items() if m.value() in reason_of}
    dlq_positions = []
    for m in dlq:
        h = dict(m.headers())
        assert h["taskclf-source-topic"].decode() == tin
        pos = (int(h["taskclf-source-partition"]), int(h["taskclf-source-offset"]))
        dlq_positions.append(pos)
        src = inputs[pos]
        assert m.key() == src.key()
        reason = h["taskclf-dlq-reason"].decode()
        assert reason == reason_of[src.value()], (pos, reason)
        assert h["taskclf-dlq-detail"]
        if src.value() is None:
            assert m.value() is None  # a tombstone is dead-lettered as a tombstone (the original value)
        else:  # whole, the oversize one too: it fits max_produce_bytes (cut only beyond, test_hostile_kafka)
            assert m.value() == src.value(), pos
            assert "taskclf-dlq-truncated" not in h
            assert reason != "oversize" or len(src.value()) > 65536
    assert sorted(dlq_positions) == sorted(bad_positions)  # every bad record once, no good one
    for reason, n in expected_reasons.items():
        assert d.metric("taskclf_dlq_records_total", f'reason="{reason}"') == n
    rc, _ = d.terminate()
    assert rc == 0


def test_invalid_flood_is_a_loud_failure(kafka_bootstrap, topic_factory, unique_group, daemon_factory, golden):
    tin, tout, tdlq = topic_factory(1), topic_factory(1), topic_factory(1)
    produce_values(kafka_bootstrap, tin, [(b"k", b"garbage %d" % i) for i in range(200)])
    d = daemon_factory(tin, tout, tdlq, unique_group, *_policy_args(golden), env={"TASKCLF_INVALID_WINDOW": "50", "TASKCLF_MAX_INVALID_RATIO": "0.5"})
    rc = d.proc.wait(90)
    assert rc == 3
    assert any(e.get("event") == "invalid_input_flood" for e in d.log_events())


def test_sigterm_mid_stream_then_restart_loses_no_window(golden, kafka_bootstrap, topic_factory, unique_group, daemon_factory, tmp_path):
    tin, tout, tdlq = topic_factory(4), topic_factory(4), topic_factory(1)
    produce_values(kafka_bootstrap, tin, keyed_lines(golden / "inputs.jsonl"))
    # small batches so that SIGTERM lands mid-stream
    env = {"TASKCLF_MAX_BATCH_RECORDS": "20"}
    d1 = daemon_factory(tin, tout, tdlq, unique_group, *_policy_args(golden), env=env)
    assert d1.get("/readyz")[0] != 200  # not ready before it has joined and been assigned
    d1.wait_ready()
    deadline = time.monotonic() + 60
    while d1.metric("taskclf_records_processed_total", 'outcome="emitted"') < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    rc, took = d1.terminate()
    assert rc == 0 and took < 30
    first = read_topic(kafka_bootstrap, tout, timeout=20, idle=1.5)
    assert 300 <= len(first) < 3030, len(first)
    d2 = daemon_factory(tin, tout, tdlq, unique_group, *_policy_args(golden), env=env)
    d2.wait_ready()
    msgs = read_topic(kafka_bootstrap, tout, expect=3030, timeout=90)
    keys = {(json.loads(m.value())["user_id"], json.loads(m.value())["bucket_start_ts"]) for m in msgs}
    expected = {(json.loads(ln)["user_id"], json.loads(ln)["bucket_start_ts"]) for ln in (golden / "expected_w3.jsonl").read_bytes().splitlines()}
    assert keys == expected  # no window lost
    # a clean stop commits what it produced: the restart re-emits little or nothing
    assert len(msgs) - 3030 <= 20 * 4
    rc, _ = d2.terminate()
    assert rc == 0
