"""The daemon's HTTP API handlers without a broker: the owner partition of a user id (Kafka's
default murmur2 partitioner), 404 with that partition when it is not assigned here, the shard
that owns it answering, and /v1/model from the golden bundle -- each body checked against the
OpenAPI document."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import orjson
import pytest

from helpers_rows import GOLDEN_DIR
from taskclf_daemon import kafka_io as kio
from taskclf_daemon.artifacts import pipeline_from_settings
from taskclf_daemon.config import load_settings
from taskclf_daemon.daemon import Daemon
from taskclf_daemon.shard import RawBatch

DOC = json.loads((Path(__file__).resolve().parents[2] / "docs" / "openapi.json").read_bytes())
POLICY = GOLDEN_DIR / "models" / "inference_policy.json"
PARTS = 4
TOPIC = "in"


def valid(name: str, body: object) -> None:
    jsonschema.Draft202012Validator({"components": DOC["components"], "$ref": f"#/components/schemas/{name}"}).validate(body)


class FakeConsumer:
    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(PARTS)) if topic == TOPIC else None


@pytest.fixture(scope="module")
def daemon_with_state() -> tuple[Daemon, list[bytes]]:
    s = load_settings(None, env={}, flags={"policy": str(POLICY), "pipeline_workers": 0, "input_topic": TOPIC, "http_auth_token": "t", "model_backend": "lightgbm"})
    pipe, desc = pipeline_from_settings(s)
    d = Daemon(s, pipe, desc)
    lines = [ln for ln in (GOLDEN_DIR / "inputs.jsonl").read_bytes().splitlines() if ln.strip()][:400]
    b = RawBatch(TOPIC)
    offs = [0] * PARTS
    for ln in lines:  # partitioned as a murmur2 producer would
        key = orjson.loads(ln)["user_id"].encode()
        p = kio.key_partition(key, PARTS)
        b.add(p, offs[p], ln, key)
        offs[p] += 1
    d.shards[0].shard.process(b)  # type: ignore[attr-defined]
    d.api.consumer = FakeConsumer()
    return d, lines


def test_key_partition_is_kafkas_murmur2() -> None:
    # the Java client's reference vector (Utils.toPositive(Utils.murmur2(key)) % 1000), as
    # kafka-python's compatibility test has it
    keys = (b"", b"a", b"ab", b"abc", b"123456789", b"\x00 ")
    assert [kio.key_partition(k, 1000) for k in keys] == [681, 524, 434, 107, 566, 742]


def test_user_owned_here_elsewhere_unknown(daemon_with_state) -> None:
    d, lines = daemon_with_state
    uid = orjson.loads(lines[0])["user_id"]
    p = kio.key_partition(uid.encode(), PARTS)

    async def run() -> None:
        assert await d.api.user(uid) == (503, {"error": "not consuming yet"})  # no rebalancer yet
        d.api.rebalancer = SimpleNamespace(assigned={(TOPIC, q) for q in range(PARTS)}, restoring=0)  # type: ignore[assignment]
        status, body = await d.api.user(uid)
        assert status == 200 and body["user_id"] == uid and body["partition"] == p
        valid("User", body)
        assert body["last_prediction"]["user_id"] == uid and body["recent_labels"]["windows"] >= 1
        status, pred = await d.api.prediction(uid)
        assert status == 200 and pred == body["last_prediction"]
        valid("WindowPrediction", pred)
        # another instance owns the user's partition
        d.api.rebalancer = SimpleNamespace(assigned={(TOPIC, q) for q in range(PARTS) if q != p}, restoring=0)  # type: ignore[assignment]
        assert await d.api.user(uid) == (404, {"error": "not owned here", "partition": p})
        assert await d.api.prediction(uid) == (404, {"error": "not owned here", "partition": p})
        d.api.rebalancer.restoring = 1  # maybe it is being restored here right now: retry
        assert await d.api.user(uid) == (503, {"error": "restoring state", "partition": p})
        d.api.rebalancer = SimpleNamespace(assigned={(TOPIC, q) for q in range(PARTS)}, restoring=0)  # type: ignore[assignment]
        status, body = await d.api.user("no such user ü/x")
        assert (status, body) == (404, {"error": "unknown user", "partition": kio.key_partition("no such user ü/x".encode(), PARTS)})
        valid("Error", body)

    asyncio.run(run())


def test_model_document(daemon_with_state) -> None:
    d, _ = daemon_with_state
    status, body = asyncio.run(d.api.model())
    assert status == 200
    valid("Model", body)
    assert body["bundle_id"] == "2026-04-06_000000_run-0001" and body["schema"] == {"version": "v1", "hash": "4077fe0dba70"}
    assert body["training_metrics"]["macro_f1"] == pytest.approx(0.794)
    gains = [f["gain"] for f in body["feature_importance"]]
    assert gains == sorted(gains, reverse=True) and sum(gains) == pytest.approx(1.0) and len(gains) == len(d.pipeline.bundle.schema.feature_columns)
    assert body["calibration"]["method"] == d.pipeline.store.method and body["calibration"]["store_id"] == d.pipeline.store.store_id
    assert body["policy"]["precedence"] == "flag > policy > default" and body["last_reload"] is None
    json.dumps(body)  # plain JSON


def test_api_wiring_follows_the_settings(daemon_with_state) -> None:
    d, _ = daemon_with_state
    api = d.api.api()
    assert api.auth_token == "t" and api.user is not None and api.model is not None
    off = Daemon(d.s.replace(http_user_routes=False), d.pipeline, d.description)
    assert off.api.api().user is None and off.api.api().prediction is None
