"""The learning loop through the running daemon (issue 12): label spans on the feedback topic,
windows on the input topic, personal models adopted live -- and still byte-identical outputs.

Synthetic personas (``offline/personas.py``): users whose labels differ systematically from the
global model (``swap``), users whose labels are noise, normal users. The stream is produced in
phases of three hours of event time: a phase's label spans first (labels known before their
windows), then its windows. The expected bytes come from the same shards offline
(:class:`PipelineShard` with the same settings: the feedback batch, then the windows), so the
daemon must equal them exactly -- also under a SIGKILL crash loop, every duplicate
byte-identical to its first copy.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from fixtures_daemon import dedup_identical, produce_values, read_topic
from helpers_learning import PARTS, SEED, USERS, expected_bytes, phases
from taskclf_daemon.offline.synthetic import generate_labelled
from taskclf_daemon.offline.train import train_bundle
from taskclf_daemon.pipeline.labelspan import project, span_from_obj
from taskclf_daemon.pipeline.scoring import macro_f1
from taskclf_daemon.timeutil import parse_ts_us

pytestmark = [pytest.mark.broker]

@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("learn_kafka")
    return train_bundle(generate_labelled(seed=SEED, n_users=USERS, days=5), home / "models", seed=SEED, num_boost_round=40, data_provenance="synthetic")


@pytest.fixture(scope="module")
def data() -> Any:
    return phases()


@pytest.fixture(scope="module")
def expected(bundle: Path, data: Any) -> Any:
    return expected_bytes(bundle, data)


def _wait_keys(bootstrap: str, topic: str, want: int, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    msgs: list[Any] = []
    while time.monotonic() < deadline:
        msgs = read_topic(bootstrap, topic, timeout=10, idle=0.5)
        if len(dedup_identical(msgs)[0]) >= want:
            return msgs
        time.sleep(0.3)
    return msgs


def _gains(outputs: dict[tuple[str, str], bytes], glob: dict[tuple[str, str], bytes], data: Any) -> dict[str, tuple[float, float, int]]:
    """Per user: macro-F1 of the served vs the global outputs against the user's own labels, on
    the windows after the user's first personal output."""
    spans_kv = [v for phase in data[0] for _, v in phase]
    spans = [span_from_obj(orjson.loads(v)) for v in spans_kv]
    first_personal: dict[str, str] = {}
    for (u, ts), v in sorted(outputs.items(), key=lambda kv: kv[0][1]):
        if orjson.loads(v)["calibrator_scope"] == "user":
            first_personal.setdefault(u, ts)
    out = {}
    for u, since in first_personal.items():
        keys = sorted(k for k in outputs if k[0] == u and k[1] >= since)
        labels = project([s for s in spans if s.user_id == u], u, [parse_ts_us(ts) for _, ts in keys])
        rows = [(lab, orjson.loads(outputs[k])["core_label_id"], orjson.loads(glob[k])["core_label_id"]) for k, lab in zip(keys, labels, strict=True) if lab is not None]
        y = [r[0] for r in rows]
        out[u] = (macro_f1(np.asarray(y), np.asarray([r[1] for r in rows])), macro_f1(np.asarray(y), np.asarray([r[2] for r in rows])), len(rows))
    return out


def _learning_env(feedback: str, requests: str) -> dict[str, str]:
    return {"TASKCLF_FEEDBACK_TOPIC": feedback, "TASKCLF_LABEL_REQUESTS_TOPIC": requests, "TASKCLF_MAX_EVENT_AHEAD_S": "0"}


def test_personal_models_are_adopted_live_where_they_help_and_outputs_equal_the_offline_shards(bundle, data, expected, kafka_bootstrap, topic_factory, unique_group, daemon_factory):
    spans, windows, kinds = data
    exp_out, exp_req, glob = expected
    tin, tout, tdlq, tfb, treq = topic_factory(PARTS), topic_factory(PARTS), topic_factory(1), topic_factory(PARTS), topic_factory(PARTS)
    d = daemon_factory(tin, tout, tdlq, unique_group, "--model-dir", str(bundle), env=_learning_env(tfb, treq))
    d.wait_ready(timeout=90)
    n_spans = n_windows = 0
    for phase_spans, phase_windows in zip(spans, windows, strict=True):
        # the phase's labels first, consumed, then its windows, processed
        n_spans += produce_values(kafka_bootstrap, tfb, phase_spans)
        deadline = time.monotonic() + 60
        while d.metric("taskclf_records_processed_total", 'outcome="span_accepted"') + d.metric("taskclf_records_processed_total", 'outcome="span_ignored"') < n_spans:
            assert time.monotonic() < deadline, d.log_tail()
            time.sleep(0.05)
        n_windows += produce_values(kafka_bootstrap, tin, phase_windows)
        deadline = time.monotonic() + 60
        while d.metric("taskclf_records_processed_total", 'outcome="emitted"') < n_windows:
            assert time.monotonic() < deadline, d.log_tail()
            time.sleep(0.05)
    msgs = _wait_keys(kafka_bootstrap, tout, len(exp_out), timeout=60)
    got, _ = dedup_identical(msgs)
    # the learning loop ran in the daemon: refits, adoptions, users on a personal model
    adopted = d.metric("taskclf_personal_adoptions_total")
    personal_users = d.metric("taskclf_personal_users")
    refits = d.metric("taskclf_personal_refits_total")
    swap_user = next(u for u, k in kinds.items() if k == "swap")
    status, body = d.get(f"/v1/users/{swap_user}")
    rc, _ = d.terminate()
    requests = read_topic(kafka_bootstrap, treq, expect=len(exp_req), timeout=30, idle=2.0)
    assert rc == 0
    assert read_topic(kafka_bootstrap, tdlq, timeout=5, idle=0.5) == []
    # byte for byte the offline shards' outputs and label requests
    assert len(got) == len(exp_out) == n_windows == 7886
    assert got == exp_out
    got_req, _ = dedup_identical(requests)
    assert got_req == exp_req and len(exp_req) > 100
    assert refits >= 10 and adopted >= 2 and personal_users >= 2
    # what the user endpoint shows about a swap user: eligible, a personal model, the decision
    assert status == 200
    prof = json.loads(body)["personalisation"]
    assert prof["evidence"]["is_eligible"] is True and prof["in_force"]["scope"] == "user"
    assert prof["last_decision"]["candidates"] and json.loads(body)["calibrator"]["scope"] == "user"
    # where it helps: swap users gain >= 0.05 macro-F1 on their later windows; noise users are
    # never served a personal model; nobody is worse than global by more than 0.02
    gains = _gains(got, glob, data)
    for u, k in kinds.items():
        if k == "swap":
            personal, global_, n = gains[u]
            assert n > 200 and personal >= global_ + 0.05, (u, gains[u])
        if k == "noise":
            assert u not in gains, (u, gains.get(u))
    assert all(p >= g - 0.02 for p, g, _ in gains.values()), gains
    print("learning: gains (personal, global, n) " + json.dumps({kinds[u] + ":" + u[:8]: [round(p, 3), round(g, 3), n] for u, (p, g, n) in gains.items()}))


@pytest.mark.slow
def test_crash_loop_with_labels_flowing_reemits_identical_bytes(bundle, data, expected, kafka_bootstrap, topic_factory, unique_group, daemon_factory):
    spans, windows, _ = data
    exp_out, exp_req, _ = expected
    rng = random.Random(20261130)
    tin, tout, tdlq, tfb, treq = topic_factory(PARTS), topic_factory(PARTS), topic_factory(1), topic_factory(PARTS), topic_factory(PARTS)
    env = {**_learning_env(tfb, treq), "TASKCLF_MAX_BATCH_RECORDS": "50", "TASKCLF_COMMIT_INTERVAL_MS": "100"}
    kill_at = set(rng.sample(range(len(windows)), 6))
    d = daemon_factory(tin, tout, tdlq, unique_group, "--model-dir", str(bundle), env=env)
    d.wait_ready(timeout=90)
    n_windows = kills = 0

    def spans_seen() -> float:
        return d.metric("taskclf_records_processed_total", 'outcome="span_accepted"') + d.metric("taskclf_records_processed_total", 'outcome="span_ignored"')

    for i, (phase_spans, phase_windows) in enumerate(zip(spans, windows, strict=True)):
        # the phase's labels first, consumed (labels ahead of their windows: the determinism the
        # daemon promises is for spans known before their windows are finalised) ...
        before = spans_seen()
        produce_values(kafka_bootstrap, tfb, phase_spans)
        deadline = time.monotonic() + 60
        while spans_seen() < before + len(phase_spans):
            assert time.monotonic() < deadline, d.log_tail()
            time.sleep(0.05)
        # ... then its windows, and in some phases a SIGKILL while they are processed
        n_windows += produce_values(kafka_bootstrap, tin, phase_windows)
        if i in kill_at:
            time.sleep(rng.uniform(0.0, 0.5))
            d.kill()  # no drain, no checkpoint: the restart replays the uncommitted tail
            kills += 1
            d = daemon_factory(tin, tout, tdlq, unique_group, "--model-dir", str(bundle), env=env)
            d.wait_ready(timeout=90)
        # the phase is done (every window has an output) before the next phase's labels
        msgs = _wait_keys(kafka_bootstrap, tout, n_windows, timeout=120)
        assert len(dedup_identical(msgs)[0]) >= n_windows, d.log_tail()
    rc, _ = d.terminate()
    assert rc == 0 and kills == 6
    got, dups = dedup_identical(read_topic(kafka_bootstrap, tout, timeout=10, idle=1.0))
    assert got == exp_out
    got_req, _ = dedup_identical(read_topic(kafka_bootstrap, treq, timeout=10, idle=1.0))
    assert got_req == exp_req
    print(f"learning crash loop: {kills} kills, {len(got)} outputs, {dups} identical duplicates")
