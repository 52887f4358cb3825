"""The learning loop in a shard (no Kafka): label spans in through ``feedback``, windows through
``process``; outputs and label requests are the same bytes whatever the batching, bad spans are
dead letters with the reason, and the refits reach the shard's result for the metrics."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from helpers_learning import expected_bytes, learning_options, phases
from taskclf_daemon.artifacts import build_pipeline
from taskclf_daemon.offline.synthetic import generate_labelled
from taskclf_daemon.offline.train import train_bundle
from taskclf_daemon.shard import PipelineShard, RawBatch, ShardLimits


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("learn_shard")
    return train_bundle(generate_labelled(seed=3, n_users=6, days=5), home / "models", seed=3, num_boost_round=40, data_provenance="synthetic")


def test_outputs_and_label_requests_do_not_depend_on_the_batching(bundle: Path) -> None:
    data = phases()
    out7, req7, glob7 = expected_bytes(bundle, data, batch=7)
    out_big, req_big, glob_big = expected_bytes(bundle, data, batch=1000)
    assert len(out7) == 7886 and out7 == out_big and glob7 == glob_big
    # measured: 309 requests; at most 20 per user per UTC day, 5 once the user is eligible
    assert req7 == req_big and len(req7) == 309
    per_day: dict[tuple[str, str], int] = {}
    for (u, ts) in req7:
        per_day[(u, ts[:10])] = per_day.get((u, ts[:10]), 0) + 1
    assert max(per_day.values()) == 20
    for (u, ts), v in req7.items():
        r = orjson.loads(v)
        assert r["confidence"] < 0.55 and orjson.loads(out7[(u, ts)])["confidence"] == r["confidence"]
    # personal models were served: some outputs carry the user scope, the global run never does
    scopes = {orjson.loads(v)["calibrator_scope"] for v in out7.values()}
    assert scopes == {"none", "user"} and {orjson.loads(v)["calibrator_scope"] for v in glob7.values()} == {"none"}


def test_bad_spans_are_dead_letters_with_the_reason_and_refits_reach_the_result(bundle: Path) -> None:
    pipe, _ = build_pipeline(model_dir=bundle)
    pipe.attach_learner(learning_options().learner())
    shard = PipelineShard(pipe, ShardLimits(label_requests=True, max_event_ahead_s=0))
    fb = RawBatch("labels")
    good = {"start_ts": "2026-03-09T09:00:00Z", "end_ts": "2026-03-09T10:00:00Z", "label": "Build", "provenance": "manual", "user_id": "u1"}
    fb.add(0, 0, orjson.dumps(good), b"u1")
    fb.add(0, 1, orjson.dumps(good), b"u1")  # a duplicate: ignored
    fb.add(0, 2, orjson.dumps(good), b"u2")  # key is not the span's user
    fb.add(0, 3, orjson.dumps({**good, "label": "Coding"}), b"u1")
    fb.add(0, 4, orjson.dumps({**good, "end_ts": "2026-03-09T10:00:00"}), b"u1")  # naive timestamp
    fb.add(0, 5, None, b"u1")
    fb.add(0, 6, b"{not json", b"u1")
    res = shard.feedback(fb)
    assert res.skipped == {"span_accepted": 1, "span_ignored": 1}
    assert [(d.position, d.reason) for d in res.dead] == [(2, "key_mismatch"), (3, "unknown_label"), (4, "bad_timestamp"), (5, "not_an_object"), (6, "invalid_json")]
    assert res.outputs.keys == [] and res.state_users == 1
    # the user's state holds the span and is written at the next checkpoint (format 3)
    cp = shard.checkpoint()
    assert [(k, orjson.loads(v)["v"]) for _p, k, v in cp.updates] == [(b"u1", 3)]
    # the refits of a full run reach the shard results (what the metrics count)
    data = phases()
    refits = []
    learner = shard.pipeline.learner
    assert learner is not None
    applied = []
    apply = learner._apply
    learner._apply = lambda u, learn: (applied.append(u), apply(u, learn))[1]  # type: ignore[method-assign]
    off = 100
    for spans, windows in zip(data[0], data[1], strict=True):
        b = RawBatch("labels")
        for k, v in spans:
            b.add(0, off, v, k)
            off += 1
        shard.feedback(b)
        w = RawBatch("in")
        for k, v in windows:
            w.add(0, off, v, k)
            off += 1
        r = shard.process(w)
        refits += r.refits
        personal = r.personal_users
    outcomes = [o for o, _k, _g, _c in refits]
    assert len(refits) == len(applied) >= 10  # every decision, also several in one batch
    assert outcomes.count("adopted") >= 2 and "kept" in outcomes
    assert all(g is not None and g > 0 for o, _k, g, _c in refits if o == "adopted")
    assert personal >= 2
