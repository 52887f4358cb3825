"""The HTTP API of a running daemon (subprocess, two pipeline worker processes) after the golden
stream: /v1/model, a golden user's info and latest prediction equal to what was produced, 404
with the owning partition for an unknown user, the bearer token required on user routes only."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from fixtures_daemon import keyed_lines, produce_values, read_topic
from taskclf_daemon import kafka_io as kio

pytestmark = pytest.mark.broker
TOKEN = "golden-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_http_api_after_the_golden_stream(golden, kafka_bootstrap, topic_factory, unique_group, daemon_factory, tmp_path):
    tin, tout, tdlq = topic_factory(4), topic_factory(4), topic_factory(1)
    # keyed by user id with Kafka's default (murmur2) partitioner, as the API assumes
    n = produce_values(kafka_bootstrap, tin, keyed_lines(golden / "inputs.jsonl"), config={"partitioner": "murmur2_random"})
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    d = daemon_factory(tin, tout, tdlq, unique_group, "--policy", str(Path(golden) / "models" / "inference_policy.json"), env={"TASKCLF_HTTP_AUTH_TOKEN_FILE": str(token_file)})
    d.wait_ready()
    msgs = read_topic(kafka_bootstrap, tout, expect=n, timeout=90)
    assert len(msgs) == n
    per_user: dict[str, list[bytes]] = defaultdict(list)
    for m in sorted(msgs, key=lambda m: (m.partition(), m.offset())):
        per_user[m.key().decode()].append(m.value())
    deadline = time.monotonic() + 10  # the outputs are read back; the shards are done with them
    while d.metric("taskclf_records_processed_total", 'outcome="emitted"') < n and time.monotonic() < deadline:
        time.sleep(0.2)

    status, body = d.get("/v1/model")  # open, no token
    assert status == 200
    model = json.loads(body)
    assert model["bundle_id"] == "2026-04-06_000000_run-0001" and model["last_reload"] is None
    assert model["feature_importance"][0]["gain"] >= model["feature_importance"][-1]["gain"]
    assert d.get("/openapi.json")[0] == 200 and d.get("/metrics")[0] == 200

    uid = max(per_user, key=lambda u: len(per_user[u]))
    path = "/v1/users/" + quote(uid, safe="")
    assert d.get(path)[0] == 401 and d.get(path + "/prediction", {"Authorization": "Bearer nope"})[0] == 401
    status, body = d.get(path, AUTH)
    assert status == 200, body
    info = json.loads(body)
    last = [orjson.loads(v) for v in per_user[uid]]
    assert info["user_id"] == uid and info["partition"] == kio.key_partition(uid.encode(), 4)
    assert info["windows_seen"] == len(last)
    assert info["last_window_ts"] == last[-1]["bucket_start_ts"]
    assert info["last_prediction"] == last[-1]
    mix: dict[str, int] = defaultdict(int)
    for r in last[-20:]:
        mix[r["mapped_label_name"]] += 1
    assert info["recent_labels"] == {"windows": min(20, len(last)), "labels": info["recent_labels"]["labels"]} and info["recent_labels"]["labels"] == mix
    assert info["calibrator"]["scope"] == last[-1]["calibrator_scope"]
    status, body = d.get(path + "/prediction", AUTH)
    assert status == 200 and json.loads(body) == last[-1]

    stranger = "nobody at all/ü"
    status, body = d.get("/v1/users/" + quote(stranger, safe=""), AUTH)
    assert (status, json.loads(body)) == (404, {"error": "unknown user", "partition": kio.key_partition(stranger.encode(), 4)})
    rc, _ = d.terminate()
    assert rc == 0
    dump = next(e for e in d.log_events() if e["event"] == "daemon_starting")["config"]
    assert dump["http_auth_token"] == "***" and TOKEN not in d.log_path.read_text()
