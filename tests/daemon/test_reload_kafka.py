"""Hot reload of the running daemon (subprocess, two pipeline worker processes) against the
broker: a policy switch mid-stream under load (no window lost, no restart, state kept, outputs
of each bundle equal to that bundle's predictions on the continuing per-user history), a broken
bundle (the daemon keeps serving, the error is counted), SIGHUP."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from fixtures_daemon import keyed_lines, produce_values, read_topic
from helpers_reload import GOLDEN_RUN, NEW_RUN, broken_bundle, make_home, policy_path, write_policy
from taskclf_daemon.artifacts import build_pipeline
from taskclf_daemon.codec import RowValidator, decode_window

pytestmark = pytest.mark.broker
NEW_POLICY = {"model_dir": f"models/{NEW_RUN}", "calibrator_store_dir": None, "reject_threshold": 0.4}


def _wait(what: Any, timeout: float = 60.0, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def _per_user(msgs: list[Any]) -> dict[str, list[bytes]]:
    """Output values per user in output order (one user's outputs share a partition)."""
    out: dict[str, list[bytes]] = defaultdict(list)
    for m in sorted(msgs, key=lambda m: (m.partition(), m.offset())):
        out[m.key().decode()].append(m.value())
    return out


def _expected(lines: list[bytes], old: Path, new: Path, switch_at: dict[str, int], *, keep_state: bool = True) -> dict[str, list[bytes]]:
    """Each user's outputs computed offline with the pure pipelines on that user's whole history:
    the old artifacts for the user's first ``switch_at[user]`` outputs, the new ones after, one
    state store throughout (the state the daemon keeps; ``keep_state=False``: a fresh state at
    the switch, as a restart without the changelog would have)."""
    old_pipe, _ = build_pipeline(policy=old)
    new_pipe, _ = build_pipeline(policy=new)
    v = RowValidator(old_pipe.bundle.schema)
    states, fresh = old_pipe.new_state_store(), new_pipe.new_state_store()
    out: dict[str, list[bytes]] = defaultdict(list)
    for ln in lines:
        w = decode_window(ln, v)
        u = w.user_id
        before = len(out[u]) < switch_at.get(u, 1 << 30)
        pipe, st = (old_pipe, states) if before else (new_pipe, states if keep_state else fresh)
        out[u] += [p.value for p in pipe.process([w], st).predictions]
    return out


def test_policy_switch_mid_stream_keeps_state_and_loses_nothing(golden, kafka_bootstrap, topic_factory, unique_group, daemon_factory, tmp_path):
    home = make_home(tmp_path)
    old_policy = home / "models" / "old_inference_policy.json"  # same TASKCLF_HOME
    old_policy.write_bytes(policy_path(home).read_bytes())
    tin, tout, tdlq = topic_factory(4), topic_factory(4), topic_factory(1)
    lines = [v for _k, v in keyed_lines(golden / "inputs.jsonl")]
    n = len(lines)
    first = n // 3
    produce_values(kafka_bootstrap, tin, ((orjson.loads(v)["user_id"].encode(), v) for v in lines[:first]))
    d = daemon_factory(tin, tout, tdlq, unique_group, "--policy", str(policy_path(home)), env={"TASKCLF_RELOAD_INTERVAL_S": "0.2", "TASKCLF_MAX_BATCH_RECORDS": "50"})
    d.wait_ready()
    pid = d.proc.pid
    _wait(lambda: d.metric("taskclf_records_processed_total", 'outcome="emitted"') >= first // 2)

    # the rest of the stream keeps coming (in small paced chunks) while the policy changes
    def produce_rest() -> None:
        for i in range(first, n, 100):
            produce_values(kafka_bootstrap, tin, ((orjson.loads(v)["user_id"].encode(), v) for v in lines[i : i + 100]))
            time.sleep(0.1)

    producer = threading.Thread(target=produce_rest)
    producer.start()
    time.sleep(0.3)
    write_policy(home, **NEW_POLICY)
    producer.join()
    msgs = read_topic(kafka_bootstrap, tout, expect=n, timeout=120)
    assert d.proc.poll() is None and d.proc.pid == pid  # no restart
    assert d.metric("taskclf_model_reloads_total", 'result="ok"') == 1
    assert d.metric("taskclf_model_reloads_total", 'result="error"') == d.metric("taskclf_model_reloads_total", 'result="refused"') == 0
    # no window lost, none twice
    assert len(msgs) == n and len({(m.key(), orjson.loads(m.value())["bucket_start_ts"]) for m in msgs}) == n
    per_user = _per_user(msgs)
    switch_at: dict[str, int] = {}
    for u, values in per_user.items():
        bundles = [orjson.loads(v)["model_bundle_id"] for v in values]
        k = bundles.index(NEW_RUN) if NEW_RUN in bundles else len(bundles)
        assert bundles == [GOLDEN_RUN] * k + [NEW_RUN] * (len(bundles) - k), u  # one switch, never back
        switch_at[u] = k
    # mid-stream: both bundles produced a good share, and users switched in the middle of their history
    old_n = sum(switch_at.values())
    assert n // 5 < old_n < n - n // 5, switch_at
    assert sum(0 < k < len(per_user[u]) for u, k in switch_at.items()) >= 3, switch_at
    expected = _expected(lines, old_policy, policy_path(home), switch_at)
    assert {u: len(v) for u, v in expected.items()} == {u: len(v) for u, v in per_user.items()}
    for u in per_user:
        assert per_user[u] == expected[u], u  # byte-identical, on each side of the switch
    recs = [orjson.loads(v) for vs in per_user.values() for v in vs]
    assert {(r["calibrator_store_id"], r["calibrator_scope"]) for r in recs if r["model_bundle_id"] == NEW_RUN} == {(None, "none")}
    old_store = {r["calibrator_store_id"] for r in recs if r["model_bundle_id"] == GOLDEN_RUN}
    assert len(old_store) == 1 and next(iter(old_store)).startswith("calibrator_store@")
    # the kept state matters: from a fresh state at the switch the new bundle predicts otherwise
    reset = _expected(lines, old_policy, policy_path(home), switch_at, keep_state=False)
    assert sum(a != b for u in per_user for a, b in zip(per_user[u], reset[u])) > 10
    model = json.loads(d.get("/v1/model")[1])
    assert model["bundle_id"] == NEW_RUN and model["calibration"] is None and model["policy"]["reject_threshold"] == 0.4
    assert model["last_reload"]["result"] == "ok" and model["last_reload"]["trigger"] == "file" and model["last_reload"]["model_bundle_id"] == NEW_RUN
    assert f'model_bundle_id="{NEW_RUN}"' in d.get("/metrics")[1].decode()
    events = d.log_events()
    assert [e["event"] for e in events].count("daemon_started") == 1
    done = next(e for e in events if e["event"] == "model_reloaded")
    assert (done["previous_bundle_id"], done["model_bundle_id"], done["result"]) == (GOLDEN_RUN, NEW_RUN, "ok")
    rc, _ = d.terminate()
    assert rc == 0


def test_a_broken_bundle_keeps_serving_and_sighup_reloads(golden, kafka_bootstrap, topic_factory, unique_group, daemon_factory, tmp_path):
    home = make_home(tmp_path)
    tin, tout, tdlq = topic_factory(2), topic_factory(2), topic_factory(1)
    lines = [(k, v) for k, v in keyed_lines(golden / "inputs.jsonl")]
    thirds = [lines[: 1000], lines[1000:2000], lines[2000:]]
    d = daemon_factory(tin, tout, tdlq, unique_group, "--policy", str(policy_path(home)), env={"TASKCLF_RELOAD_INTERVAL_S": "0"})
    d.wait_ready()
    produce_values(kafka_bootstrap, tin, thirds[0])
    write_policy(home, model_dir=broken_bundle(home))
    assert len(read_topic(kafka_bootstrap, tout, expect=1000, timeout=60)) == 1000
    time.sleep(0.5)
    assert d.metric("taskclf_model_reloads_total") == 0  # reload_interval_s = 0: the file is not watched

    os.killpg(d.proc.pid, signal.SIGHUP)  # the whole process group: the workers ignore it
    _wait(lambda: d.metric("taskclf_model_reloads_total", 'result="error"') == 1)
    produce_values(kafka_bootstrap, tin, thirds[1])
    msgs = read_topic(kafka_bootstrap, tout, expect=2000, timeout=60)
    assert len(msgs) == 2000 and {orjson.loads(m.value())["model_bundle_id"] for m in msgs} == {GOLDEN_RUN}
    assert d.get("/readyz")[0] == 200 and d.proc.poll() is None
    last = json.loads(d.get("/v1/model")[1])["last_reload"]
    assert (last["result"], last["trigger"], last["model_bundle_id"]) == ("error", "sighup", GOLDEN_RUN) and "model.txt" in last["error"]
    failed = next(e for e in d.log_events() if e["event"] == "model_reload_failed")
    assert failed["result"] == "error" and "model.txt" in failed["error"] and failed["level"] == "warning"

    write_policy(home, **NEW_POLICY)
    d.proc.send_signal(signal.SIGHUP)
    _wait(lambda: d.metric("taskclf_model_reloads_total", 'result="ok"') == 1)
    produce_values(kafka_bootstrap, tin, thirds[2])
    msgs = read_topic(kafka_bootstrap, tout, expect=len(lines), timeout=60)
    assert len(msgs) == len(lines)
    third_keys = {(k, orjson.loads(v)["bucket_start_ts"]) for k, v in thirds[2]}
    late = [orjson.loads(m.value()) for m in msgs if (m.key(), orjson.loads(m.value())["bucket_start_ts"]) in third_keys]
    assert len(late) == len(thirds[2]) and {r["model_bundle_id"] for r in late} == {NEW_RUN}
    assert d.metric("taskclf_model_reloads_total", 'result="error"') == 1 and d.proc.poll() is None
    rc, _ = d.terminate()
    assert rc == 0
