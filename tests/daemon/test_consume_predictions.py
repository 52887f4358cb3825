"""``scripts/consume_predictions.py`` against the broker: duplicates dropped, offsets committed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_daemon import REPO

pytestmark = pytest.mark.broker

SCRIPT = REPO / "scripts" / "consume_predictions.py"


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    from confluent_kafka import Producer

    # murmur2, as the daemon partitions its outputs: every user in one partition
    p = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5, "log_level": 3})
    errors: list[object] = []
    for key, value in records:
        p.produce(topic, key=key, value=value, on_delivery=lambda err, _m: errors.append(err) if err else None)
    assert p.flush(30) == 0 and not errors, errors[:3]


def _run(bootstrap: str, topic: str, group: str, out: Path, *extra: str) -> dict[str, int]:
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--bootstrap-servers", bootstrap, "--topic", topic, "--group-id", group, "--output", str(out), *extra],
        capture_output=True, timeout=120, check=False,
    )
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return json.loads(r.stderr.decode().strip().splitlines()[-1])


def test_the_example_consumer_deduplicates_and_commits(golden, kafka_bootstrap, topic_factory, unique_group, tmp_path):
    lines = [ln for ln in (golden / "expected_w3.jsonl").read_bytes().splitlines() if ln.strip()][:300]
    recs = [(json.loads(ln)["user_id"].encode(), ln) for ln in lines]
    # a run, then a restart that re-produces a suffix (byte-identical), then new records; one non-prediction
    stream = recs[:200] + recs[150:200] + recs[200:] + [(b"x", b"not a prediction")]
    topic = topic_factory(3)
    _produce(kafka_bootstrap, topic, stream)
    out = tmp_path / "predictions.jsonl"
    stats = _run(kafka_bootstrap, topic, unique_group, out, "--max-records", str(len(stream)), "--timeout", "60")
    assert stats == {"read": 351, "written": 300, "duplicates": 50, "invalid": 1}
    got = out.read_bytes().splitlines()
    assert sorted(got) == sorted(lines) and len(set(got)) == 300
    for user in {u for u, _v in recs}:  # each user's records in their order (one partition each)
        assert [g for g in got if json.loads(g)["user_id"] == user.decode()] == [v for u, v in recs if u == user]
    # the offsets were committed: the same group reads nothing again
    again = _run(kafka_bootstrap, topic, unique_group, out, "--timeout", "5")
    assert again == {"read": 0, "written": 0, "duplicates": 0, "invalid": 0}
    assert len(out.read_bytes().splitlines()) == 300
