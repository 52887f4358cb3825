"""Hostile-but-valid records through the running daemon and a real broker (issue 9).

Every hostile record ends in the output or the dead-letter topic (none lost), the daemon stays
up, and every other user's output is exactly taskclf's."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from fixtures_daemon import compare_files, keyed_lines, produce_values, read_topic, write_values

pytestmark = pytest.mark.broker


def _policy_args(golden: Path) -> list[str]:
    return ["--policy", str(golden / "models" / "inference_policy.json")]


def _hostile(base: dict) -> list[tuple[str, bytes | None, bytes | None]]:
    """(expected outcome, key, value); outcome ``dlq:<reason>`` or ``out``."""

    def row(user: str, ts: object = "2026-04-06T10:00:00Z", **kw: object) -> bytes:
        r = dict(base, user_id=user, bucket_start_ts=ts, **kw)
        r.pop("bucket_end_ts", None)
        return orjson.dumps(r)

    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:00Z")
    huge_user = "u" * 600_000
    out = [
        ("dlq:bad_timestamp", b"evil-ts", row("evil-ts", "9999-12-31T23:59:00-05:00")),
        ("dlq:bad_timestamp", b"evil-ts", row("evil-ts", 1e16)),
        ("dlq:bad_timestamp", b"evil-ts", row("evil-ts", "0001-01-01T00:00:00+01:00")),
        ("dlq:bad_timestamp", b"evil-ts", row("evil-ts", "9999-01-01T00:00:00Z")),
        ("dlq:event_time_ahead", b"evil-future", row("evil-future", soon)),
        ("dlq:event_time_ahead", b"evil-future", row("evil-future", "2199-01-01T00:00:00Z")),
        ("dlq:key_mismatch", b"somebody-else", row("evil-key")),
        ("dlq:key_mismatch", None, row("evil-key")),
        ("dlq:out_of_range", huge_user.encode(), row(huge_user)),
        ("dlq:out_of_range", b"evil-app", row("evil-app", app_id="a" * 5000)),
        ("dlq:invalid_json", b"K" * 900_000, b"\xff" * 300_000),
    ]
    # a user backfilling a year back, interleaved with live users: valid, emitted
    for m in range(20):
        out.append(("out", b"evil-backfill", row("evil-backfill", f"2025-04-06T10:{m:02d}:00Z")))
    return out


def test_hostile_records_interleaved_in_the_golden_stream(golden, kafka_bootstrap, topic_factory, unique_group, daemon_factory, tmp_path):
    tin, tout, tdlq = topic_factory(3), topic_factory(3), topic_factory(1)
    good = list(keyed_lines(golden / "inputs.jsonl"))
    hostile = _hostile(json.loads(good[0][1]))
    stream: list[tuple[bytes | None, bytes | None]] = []
    expected: Counter = Counter()
    j = 0
    for i, rec in enumerate(good):
        stream.append(rec)
        if i % 50 == 7 and j < len(hostile):
            outcome, k, v = hostile[j]
            stream.append((k, v))
            expected[outcome] += 1
            j += 1
    for outcome, k, v in hostile[j:]:
        stream.append((k, v))
        expected[outcome] += 1
    produce_values(kafka_bootstrap, tin, stream)
    n_dlq = sum(n for o, n in expected.items() if o.startswith("dlq:"))
    # frequent checkpoints: outputs must not depend on them
    d = daemon_factory(tin, tout, tdlq, unique_group, *_policy_args(golden), env={"TASKCLF_COMMIT_INTERVAL_MS": "50", "TASKCLF_MAX_BATCH_RECORDS": "64"})
    d.wait_ready()
    out = read_topic(kafka_bootstrap, tout, expect=3030 + expected["out"], timeout=120)
    dlq = read_topic(kafka_bootstrap, tdlq, expect=n_dlq, timeout=60)
    time.sleep(1.0)
    assert d.proc.poll() is None, d.log_tail()  # still up
    assert len(read_topic(kafka_bootstrap, tout, timeout=10, idle=1.0)) == 3030 + expected["out"]
    golden_users = {json.loads(v)["user_id"] for _k, v in good}
    mine = [m for m in out if json.loads(m.value())["user_id"] in golden_users]
    assert len(mine) == 3030 and len(out) - len(mine) == expected["out"]
    # every other user's output is exactly taskclf's
    assert compare_files(golden / "expected_w3.jsonl", write_values(mine, tmp_path / "out.jsonl"), "--fail-on-extra", "--tol", "1e-12") == 0
    got = Counter("dlq:" + dict(m.headers())["taskclf-dlq-reason"].decode() for m in dlq)
    assert got == Counter({o: n for o, n in expected.items() if o.startswith("dlq:")})
    for m in dlq:  # a dead letter is never itself too large to produce, and says when it was cut
        h = dict(m.headers())
        size = len(m.key() or b"") + len(m.value() or b"") + sum(len(k) + len(v) for k, v in m.headers())
        assert size <= 1_000_000
        if h["taskclf-dlq-reason"] == b"invalid_json":
            assert h["taskclf-dlq-truncated"] == b"key,value" and len(m.key()) < 900_000
    rc, _ = d.terminate()
    assert rc == 0


@pytest.mark.slow
def test_a_hung_worker_cannot_hold_sigterm_past_the_shutdown_timeout(golden, kafka_bootstrap, topic_factory, unique_group, daemon_factory):
    tin, tout, tdlq = topic_factory(2), topic_factory(2), topic_factory(1)
    d = daemon_factory(tin, tout, tdlq, unique_group, *_policy_args(golden), env={"TASKCLF_PIPELINE_WORKERS": "2", "TASKCLF_SHUTDOWN_TIMEOUT_S": "6"})
    d.wait_ready()
    pids = next(e["pids"] for e in d.log_events() if e.get("event") == "pipeline_workers_started")
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGSTOP)  # worker 0 stops answering mid-stream
    try:
        produce_values(kafka_bootstrap, tin, keyed_lines(golden / "inputs.jsonl"))
        time.sleep(3.0)
        rc, took = d.terminate(timeout=30)
    finally:
        try:
            os.kill(pids[0], signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert took < 6 + 3, took
    assert rc == 0


def test_an_invalid_flood_commits_its_dead_letters_so_a_restart_goes_on(golden, kafka_bootstrap, topic_factory, unique_group, daemon_factory):
    tin, tout, tdlq = topic_factory(1), topic_factory(1), topic_factory(1)
    good = list(keyed_lines(golden / "inputs.jsonl"))[:200]
    produce_values(kafka_bootstrap, tin, [(b"k", b"garbage %d" % i) for i in range(60)] + good)
    env = {"TASKCLF_INVALID_WINDOW": "50", "TASKCLF_MAX_INVALID_RATIO": "0.5", "TASKCLF_MAX_BATCH_RECORDS": "10"}
    d1 = daemon_factory(tin, tout, tdlq, unique_group, *_policy_args(golden), env=env)
    assert d1.proc.wait(90) == 3
    assert any(e.get("event") == "invalid_input_flood" for e in d1.log_events())
    first_dlq = len(read_topic(kafka_bootstrap, tdlq, timeout=10, idle=1.0))
    assert 50 <= first_dlq <= 60
    d2 = daemon_factory(tin, tout, tdlq, unique_group, *_policy_args(golden), env=env)
    d2.wait_ready()
    out = read_topic(kafka_bootstrap, tout, expect=200, timeout=60)
    assert len(out) == 200  # the restart went on past the committed garbage
    assert len(read_topic(kafka_bootstrap, tdlq, timeout=10, idle=1.0)) == 60  # no dead letter twice
    rc, _ = d2.terminate()
    assert rc == 0
