"""Acceptance core: the whole pipeline reproduces taskclf's golden predictions (spec 9, README; items 53-55)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from golden_compare import compare
from helpers_rows import golden_dir, make_row, validator
from taskclf_daemon.codec import decode_window
from taskclf_daemon.errors import InvalidRecord
from taskclf_daemon.labels import LABELS, MIXED_UNKNOWN
from taskclf_daemon.pipeline.batch import InferencePipeline, PipelineConfig
from taskclf_daemon.pipeline.calibration import CalibratorStore
from taskclf_daemon.pipeline.model import ModelBundle
from taskclf_daemon.pipeline.policy import resolve_inference
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.state import StateStore

V1 = validator("v1")


@pytest.fixture(scope="module")
def g() -> Path:
    return golden_dir()


@pytest.fixture(scope="module")
def bundle(g: Path) -> ModelBundle:
    return ModelBundle.load(g / "models" / "2026-04-06_000000_run-0001")


@pytest.fixture(scope="module")
def store(g: Path) -> CalibratorStore:
    return CalibratorStore.load(g / "artifacts" / "calibrator_store")


@pytest.fixture(scope="module")
def lines(g: Path) -> list[bytes]:
    return [ln for ln in (g / "inputs.jsonl").read_bytes().splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def windows(lines: list[bytes]) -> list[FeatureWindow]:
    return [decode_window(ln, V1) for ln in lines]


def _pipe(bundle: ModelBundle, store: CalibratorStore | None, w: int) -> InferencePipeline:
    # the golden configuration: global threshold 0.55, no per-user thresholds, no taxonomy
    return InferencePipeline(bundle, store, PipelineConfig(smooth_window=w, reject_threshold=0.55))


def _run_values(pipe: InferencePipeline, windows: list[FeatureWindow], batch: int | None = None) -> list[bytes]:
    states = pipe.new_state_store()
    n = len(windows)
    step = batch or max(n, 1)
    out: list[bytes] = []
    for i in range(0, n, step):
        out.extend(p.value for p in pipe.process(windows[i:i + step], states).predictions)
    return out


_cache: dict[int, list[bytes]] = {}


def _golden_run(bundle: ModelBundle, store: CalibratorStore, windows: list[FeatureWindow], w: int) -> list[bytes]:
    if w not in _cache:
        _cache[w] = _run_values(_pipe(bundle, store, w), windows)
    return _cache[w]


# ---------------------------------------------------------------- golden acceptance


@pytest.mark.parametrize("w", [3, 5])
def test_golden_predictions_pass_compare_tool(w: int, g: Path, bundle: ModelBundle, store: CalibratorStore, windows: list[FeatureWindow], tmp_path: Path) -> None:
    values = _golden_run(bundle, store, windows, w)
    out = tmp_path / f"daemon_w{w}.jsonl"
    out.write_bytes(b"".join(v + b"\n" for v in values))
    report = compare(g / f"expected_w{w}.jsonl", out, fail_on_extra=True, tol=1e-12)
    assert report.ok, str(report)
    assert report.matched == 3030 and report.max_abs_diff <= 1e-12  # README: 2.2e-16, not the tool's default 1e-5
    # the check is able to fail: the other window's golden differs
    assert not compare(g / f"expected_w{8 - w}.jsonl", out).ok


@pytest.mark.parametrize("w", [3, 5])
def test_golden_predictions_row_by_row(w: int, g: Path, bundle: ModelBundle, store: CalibratorStore, windows: list[FeatureWindow]) -> None:
    values = _golden_run(bundle, store, windows, w)
    expected = [json.loads(ln) for ln in (g / f"expected_w{w}.jsonl").read_text().splitlines() if ln.strip()]
    assert len(values) == len(expected) == 3030
    for i, (v, e) in enumerate(zip(values, expected)):
        a = orjson.loads(v)
        # output is in input order
        assert (a["user_id"], a["bucket_start_ts"]) == (e["user_id"], e["bucket_start_ts"]), i
        for f in ("core_label_id", "core_label_name", "mapped_label_name", "is_rejected", "model_version", "schema_version", "label_version"):
            assert a[f] == e[f], (i, f, a[f], e[f])
        # taskclf rounds core_probs/confidence to 6 decimals: equal to the digit; the unrounded
        # mapped_probs agree to the last bits (README: max difference 2.2e-16)
        assert a["core_probs"] == e["core_probs"], i
        assert a["confidence"] == e["confidence"], i
        assert list(a["mapped_probs"]) == list(e["mapped_probs"])
        assert max(abs(a["mapped_probs"][k] - e["mapped_probs"][k]) for k in e["mapped_probs"]) <= 1e-12, i


def test_golden_summary_counts(bundle: ModelBundle, store: CalibratorStore, windows: list[FeatureWindow]) -> None:
    # README: reject rate (w3) 592 rows; w5: 351 rows differ from the post-reject label
    recs3 = [orjson.loads(v) for v in _golden_run(bundle, store, windows, 3)]
    recs5 = [orjson.loads(v) for v in _golden_run(bundle, store, windows, 5)]
    assert sum(r["is_rejected"] for r in recs3) == 592
    post = [MIXED_UNKNOWN if r["is_rejected"] else r["core_label_name"] for r in recs5]
    assert sum(p != r["mapped_label_name"] for p, r in zip(post, recs5)) == 351
    assert all(p == r["mapped_label_name"] for p, r in zip((MIXED_UNKNOWN if r["is_rejected"] else r["core_label_name"] for r in recs3), recs3))
    scopes = {r["user_id"]: r["calibrator_scope"] for r in recs3}
    assert sum(s == "user" for s in scopes.values()) == 5 and sum(s == "global" for s in scopes.values()) == 5


def test_golden_via_policy_resolution(g: Path, windows: list[FeatureWindow]) -> None:
    # the oracle resolved everything from models/inference_policy.json
    r = resolve_inference(policy_path=g / "models" / "inference_policy.json")
    pipe = InferencePipeline(ModelBundle.load(r.model_dir), CalibratorStore.load(r.calibrator_store), PipelineConfig(smooth_window=3, reject_threshold=r.reject_threshold, per_user_thresholds=r.per_user_thresholds))
    values = _run_values(pipe, windows[:300])
    expected = [json.loads(ln) for ln in (g / "expected_w3.jsonl").read_text().splitlines()[:300]]
    for v, e in zip(values, expected):
        a = orjson.loads(v)
        assert (a["mapped_label_name"], a["is_rejected"]) == (e["mapped_label_name"], e["is_rejected"])
        assert (a["core_probs"], a["confidence"]) == (e["core_probs"], e["confidence"])


# ---------------------------------------------------------------- determinism


def test_batch_size_does_not_change_output(bundle: ModelBundle, store: CalibratorStore, windows: list[FeatureWindow]) -> None:
    pipe = _pipe(bundle, store, 5)
    whole = _golden_run(bundle, store, windows, 5)
    for size in (1, 7, 512):
        assert _run_values(pipe, windows, size) == whole, f"batch size {size}"


@pytest.mark.parametrize("native", ["off", "declining"])
def test_the_python_overlay_serves_where_the_c_one_is_absent_or_declines(
    native: str, monkeypatch: pytest.MonkeyPatch, bundle: ModelBundle, store: CalibratorStore, windows: list[FeatureWindow]
) -> None:
    """``push_window_py`` (the reference) runs where the C overlay is not built, and for each window
    it declines, with the pipeline's idle gap: the same outputs as with the C overlay either way."""
    from taskclf_daemon.pipeline import features

    # an idle gap other than the default (the overlay's session length depends on it): both runs
    # with it, the reference before the patch (with the C overlay)
    cfg = PipelineConfig(smooth_window=5, reject_threshold=0.55, idle_gap_seconds=90.0)
    want = _run_values(InferencePipeline(bundle, store, cfg), windows)
    assert want != _golden_run(bundle, store, windows, 5)  # the gap shows in the outputs
    real = features.NATIVE_PUSH
    calls: list[FeatureWindow] = []
    if native == "off":
        monkeypatch.setattr(features, "NATIVE_PUSH", None)
    else:
        assert real is not None

        def declining(st: Any, w: FeatureWindow, gap: float) -> Any:
            calls.append(w)
            return NotImplemented if len(calls) % 2 else real(st, w, gap)

        monkeypatch.setattr(features, "NATIVE_PUSH", declining)
    assert _run_values(InferencePipeline(bundle, store, cfg), windows) == want
    assert len(calls) == (0 if native == "off" else len(windows))


def test_identical_inputs_identical_outputs(bundle: ModelBundle, store: CalibratorStore, windows: list[FeatureWindow]) -> None:
    a = _run_values(_pipe(bundle, store, 3), windows[:500])
    b = _run_values(_pipe(bundle, store, 3), windows[:500])
    assert a == b
    assert a == _golden_run(bundle, store, windows, 3)[:500]


def test_user_output_independent_of_other_users(bundle: ModelBundle, store: CalibratorStore, windows: list[FeatureWindow]) -> None:
    whole = _golden_run(bundle, store, windows, 5)
    for uid in ("25f4c16a-eb80-47ff-8c2f-67b84814bcee", "074817d0-708c-4894-b20c-8e3fb2b62c46"):
        idx = [i for i, w in enumerate(windows) if w.user_id == uid]
        alone = _run_values(_pipe(bundle, store, 5), [windows[i] for i in idx], 64)
        assert alone == [whole[i] for i in idx], uid


# ---------------------------------------------------------------- items 53, 54: record shape


def test_record_contract(bundle: ModelBundle, store: CalibratorStore, windows: list[FeatureWindow]) -> None:
    for w in (3, 5):
        for v in _golden_run(bundle, store, windows, w):
            r = orjson.loads(v)
            cp = r["core_probs"]
            assert len(cp) == 8 and abs(sum(cp) - 1.0) <= 1e-4
            assert all(0.0 <= x <= 1.0 for x in cp)
            assert all(round(x, 6) == x for x in cp)
            assert 0 <= r["core_label_id"] <= 7 and r["core_label_name"] == LABELS[r["core_label_id"]]
            assert 0.0 <= r["confidence"] <= 1.0 and r["confidence"] == max(cp)
            assert r["label_version"] == "labels_v1"
            assert r["schema_version"] == "features_v1"
            assert r["model_version"] == "4077fe0dba70"
            assert isinstance(r["is_rejected"], bool)
            assert r["is_rejected"] == (r["confidence"] < 0.55) or abs(r["confidence"] - 0.55) < 1e-6
            # without taxonomy: 8 label keys, unrounded calibrated probs, label = smoothed post-reject label
            mp = r["mapped_probs"]
            assert list(mp) == list(LABELS)
            assert abs(sum(mp.values()) - 1.0) <= 1e-4
            assert max(abs(mp[k] - cp[i]) for i, k in enumerate(LABELS)) <= 5e-7
            assert r["mapped_label_name"] == r["smoothed_label_name"]
            assert r["mapped_label_name"] in LABELS or r["mapped_label_name"] == MIXED_UNKNOWN
            if w == 3:
                assert r["mapped_label_name"] == (MIXED_UNKNOWN if r["is_rejected"] else r["core_label_name"])
            assert len(r["bucket_start_ts"]) == 20 and r["bucket_start_ts"].endswith("Z")


def test_mapped_probs_are_not_rounded(bundle: ModelBundle, store: CalibratorStore, windows: list[FeatureWindow]) -> None:
    recs = [orjson.loads(v) for v in _golden_run(bundle, store, windows, 3)[:50]]
    assert any(round(p, 6) != p for r in recs for p in r["mapped_probs"].values())


def test_prediction_metadata_matches_record(bundle: ModelBundle, store: CalibratorStore, windows: list[FeatureWindow]) -> None:
    pipe = _pipe(bundle, store, 3)
    t0 = time.perf_counter()
    res = pipe.process(windows[:40], pipe.new_state_store())
    wall = time.perf_counter() - t0
    assert set(res.timings) == {"features", "encode", "predict", "calibrate", "decide", "serialize"}
    # each stage's duration, together no more than the call took
    assert all(v >= 0.0 for v in res.timings.values()) and sum(res.timings.values()) <= wall
    assert pipe.reference is None  # no drift profile until the loader sets one
    for p, w in zip(res.predictions, windows[:40]):
        r = orjson.loads(p.value)
        # the golden store: temperature calibrators, named by the store's id
        assert (r["calibrator_store_id"], r["calibrator_kind"], r["calibrator_version"]) == (store.store_id, "temperature", None)
        assert r["calibrator_store_id"] == "calibrator_store@" + store.store_id.split("@")[1] and p.eligible is False
        assert (p.user_id, p.ts_us) == (w.user_id, w.ts_us)
        assert p.label == r["mapped_label_name"] and p.core_label_id == r["core_label_id"]
        assert p.confidence == r["confidence"] and p.is_rejected == r["is_rejected"] and p.calibrator_scope == r["calibrator_scope"]


def test_prediction_columns_select_and_extend_keep_every_column(bundle: ModelBundle, store: CalibratorStore, windows: list[FeatureWindow]) -> None:
    """The shard's re-run path (a batch that raised, run one window at a time) joins results with
    ``extend``; ``select`` picks rows: both carry every column, row for row."""
    pipe = _pipe(bundle, store, 3)
    states = pipe.new_state_store()
    a = pipe.process(windows[:6], states).columns
    b = pipe.process(windows[6:10], states).columns
    rows_a, rows_b = a.rows(), b.rows()
    assert len(rows_a) == 6 and len(rows_b) == 4 and len({r.value for r in rows_a + rows_b}) == 10
    picked = a.select([4, 0, 4])
    assert picked.rows() == [rows_a[4], rows_a[0], rows_a[4]] and len(picked) == 3
    assert a.select([]).rows() == [] and len(a) == 6  # a selection copies: the source is unchanged
    a.extend(b)
    assert a.rows() == rows_a + rows_b and len(a) == 10
    assert b.rows() == rows_b  # the other side is not consumed


def test_pipeline_refuses_store_bound_to_other_schema(bundle: ModelBundle) -> None:
    from taskclf_daemon.errors import ArtifactError
    from taskclf_daemon.pipeline.calibration import IdentityCalibrator

    with pytest.raises(ArtifactError) as ei:
        InferencePipeline(bundle, CalibratorStore(IdentityCalibrator(), {}, model_schema_hash="a15f4751a947"))
    assert ei.value.field == "model_schema_hash"
    InferencePipeline(bundle, CalibratorStore(IdentityCalibrator(), {}))  # unbound store passes


def test_empty_batch(bundle: ModelBundle, store: CalibratorStore) -> None:
    pipe = _pipe(bundle, store, 3)
    states = pipe.new_state_store()
    assert pipe.process([], states).predictions == []
    assert len(states) == 0


def test_no_store_means_raw_probabilities(bundle: ModelBundle, g: Path, windows: list[FeatureWindow]) -> None:
    pipe = InferencePipeline(bundle, None, PipelineConfig(smooth_window=3))
    recs = [orjson.loads(p.value) for p in pipe.process(windows[:100], pipe.new_state_store()).predictions]
    raw = [json.loads(ln) for ln in (g / "expected_raw.jsonl").read_text().splitlines()[:100]]
    for r, e in zip(recs, raw):
        assert (r["calibrator_scope"], r["calibrator_store_id"], r["calibrator_kind"], r["calibrator_version"]) == ("none", None, "identity", None)
        assert max(abs(r["mapped_probs"][k] - e["raw_probs"][i]) for i, k in enumerate(LABELS)) <= 1e-12


def test_the_drift_tap_gets_the_applied_rows(bundle: ModelBundle, store: CalibratorStore, windows: list[FeatureWindow]) -> None:
    # row-aligned with the outputs: the applied windows (skipped ones left out), the model's
    # input matrix, the calibrated probabilities and the post-reject class (8 = Mixed/Unknown)
    for cal in (store, None):
        pipe = _pipe(bundle, cal, 3)
        res = pipe.process(windows[:120] + windows[:3], pipe.new_state_store())
        a = res.arrays
        assert a is not None and len(res.skipped) == 3
        assert list(a.windows) == windows[:120] and a.X.shape == (120, len(bundle.schema.feature_columns))
        recs = [orjson.loads(p.value) for p in res.predictions]
        assert a.probs.round(6).tolist() == [r["core_probs"] for r in recs]
        assert a.classes.tolist() == [8 if r["is_rejected"] else r["core_label_id"] for r in recs]
        assert 0 < sum(r["is_rejected"] for r in recs) < 120
        if cal is None:  # no calibration: the probabilities are the model's on exactly that matrix
            np.testing.assert_array_equal(bundle.predict_proba(a.X), a.probs)


# ---------------------------------------------------------------- the learner hook


class _Served:
    kind, version = "head", "h3-17"


class _StubLearner:
    """Serves a fixed distribution to one user and calls every second window eligible."""

    def __init__(self, user: str) -> None:
        self.user, self.bound, self.seen = user, None, []
        self.served: list[tuple[int, _Served]] = []
        self.eligible_at: list[bool] = []

    def bind(self, store: Any, feature_columns: Any) -> None:
        self.bound = (store, tuple(feature_columns))

    def personalise(self, windows: Any, raw: Any, X: Any, overlays: Any, probs: Any, scopes: list[str], states: Any) -> tuple[Any, list[str], Any]:
        self.seen.append(([w.ts_us for w in windows], raw.shape, X.shape, len(overlays), probs.copy()))
        rows = [i for i, w in enumerate(windows) if w.user_id == self.user]
        probs = probs.copy()
        probs[rows] = [0.05, 0.05, 0.65, 0.05, 0.05, 0.05, 0.05, 0.05]
        for i in rows:
            scopes[i] = "user"
        self.served = [(i, _Served()) for i in rows]
        self.eligible_at = [i % 2 == 1 for i in range(len(windows))]
        return probs, scopes, None


def test_the_learner_sees_applied_windows_and_its_models_name_the_outputs(bundle: ModelBundle, store: CalibratorStore, windows: list[FeatureWindow]) -> None:
    pipe = _pipe(bundle, store, 1)
    user = windows[0].user_id
    other = [w for w in windows if w.user_id != user][:15]
    ws = [w for pair in zip(windows[:15], other) for w in pair]  # two users, interleaved
    plain = pipe.process(ws, pipe.new_state_store()).predictions
    learner = _StubLearner(user)
    pipe.attach_learner(learner)  # type: ignore[arg-type]
    try:
        assert learner.bound == (store, tuple(bundle.schema.feature_columns)) and pipe.learner is learner
        states = pipe.new_state_store()
        res = pipe.process(ws + ws[:2], states)  # the last two: not newer than their users' last, skipped
        assert pipe.process([], states).predictions == []  # an empty batch never reaches the learner
    finally:
        pipe.attach_learner(None)
    assert pipe.learner is None
    ((ts, raw_shape, x_shape, n_overlays, calibrated),) = learner.seen
    assert ts == [w.ts_us for w in ws] and len(res.skipped) == 2 and raw_shape == (30, 8) and x_shape[0] == 30 and n_overlays == 30
    np.testing.assert_array_equal(calibrated.round(6).tolist(), [orjson.loads(p.value)["core_probs"] for p in plain])
    mine = [w.user_id == user for w in ws]
    for i, (p, q, m) in enumerate(zip(res.predictions, plain, mine)):
        r = orjson.loads(p.value)
        assert p.eligible is (i % 2 == 1)
        if m:
            assert (r["calibrator_scope"], r["calibrator_kind"], r["calibrator_version"]) == ("user", "head", "h3-17") == (p.calibrator_scope, "head", "h3-17")
            assert (r["core_label_id"], r["confidence"], r["is_rejected"], r["smoothed_label_name"]) == (2, 0.65, False, LABELS[2])
        else:
            assert p.value == q.value and r["calibrator_version"] is None


# ---------------------------------------------------------------- bad rows never disturb state


def _state_snapshot(states: StateStore) -> dict[str, Any]:
    return {u: (list(s.history), s.session_start_us, list(s.smooth), s.last_ts_us, s.windows_seen) for u, s in states.users.items()}


def test_bad_rows_never_disturb_state(bundle: ModelBundle, store: CalibratorStore, lines: list[bytes], windows: list[FeatureWindow]) -> None:
    n = 600
    victim = windows[10].user_id
    bad_lines = [
        orjson.dumps(make_row(user_id=victim, bucket_start_ts="2026-04-06T02:00:00Z", hour_of_day=24)),  # existing user, out of range
        orjson.dumps(make_row(user_id="intruder", app_id=None)),  # new user, wrong type
        orjson.dumps(make_row(user_id=victim, raw_window_title="secret")),
        orjson.dumps(make_row(user_id=victim, schema_version="v2")),
        orjson.dumps(make_row(user_id=victim, keys_per_min="fast")),
        lines[20][:-30],  # truncated real row
        b"[1, 2]",
        b"",
    ]
    mixed: list[bytes] = []
    for i, ln in enumerate(lines[:n]):
        if i % 70 == 5:
            mixed.append(bad_lines[(i // 70) % len(bad_lines)])
        mixed.append(ln)
    assert len(mixed) > n

    pipe = _pipe(bundle, store, 5)
    states = pipe.new_state_store()
    good_values: list[bytes] = []
    refused: list[str] = []
    batch: list[FeatureWindow] = []
    for ln in mixed:
        try:
            batch.append(decode_window(ln, V1))
        except InvalidRecord as exc:
            refused.append(exc.reason)
        if len(batch) == 32:
            good_values.extend(p.value for p in pipe.process(batch, states).predictions)
            batch = []
    good_values.extend(p.value for p in pipe.process(batch, states).predictions)

    assert len(refused) == len(mixed) - n and len(set(refused)) >= 5
    ref_pipe = _pipe(bundle, store, 5)
    ref_states = ref_pipe.new_state_store()
    ref_values = [p.value for p in ref_pipe.process(windows[:n], ref_states).predictions]
    assert good_values == ref_values
    assert "intruder" not in states.users
    assert _state_snapshot(states) == _state_snapshot(ref_states)


def test_validation_rejects_before_any_state_exists(bundle: ModelBundle) -> None:
    # through replay (decode, then the pipeline, one state store for the file): the refused row
    # is reported and the same user's next good row is that user's first window -- the bad row
    # left no trace (same output as a file without it)
    import io

    from taskclf_daemon.offline.replay import replay

    pipe = _pipe(bundle, None, 5)
    bad = orjson.dumps(make_row(user_id="fresh", hour_of_day=99, bucket_start_ts="2026-04-06T09:59:00Z", bucket_end_ts="2026-04-06T10:00:00Z"))
    good = [
        orjson.dumps(make_row(user_id="fresh", bucket_start_ts=f"2026-04-06T10:0{i}:00Z", bucket_end_ts=f"2026-04-06T10:0{i + 1}:00Z", keys_per_min=10.0 * i))
        for i in range(3)
    ]
    refused: list[str] = []
    with_bad, without = io.BytesIO(), io.BytesIO()
    s1 = replay(pipe, io.BytesIO(b"\n".join([bad, *good])), with_bad, batch_size=1, on_bad=lambda n, e: refused.append(e.reason))
    s2 = replay(pipe, io.BytesIO(b"\n".join(good)), without, batch_size=1)
    assert refused == ["out_of_range"] and (s1.bad, s1.ok) == (1, 3) and (s2.bad, s2.ok) == (0, 3)
    assert with_bad.getvalue() == without.getvalue()
    # and in a state store: the user's state comes from its good rows only
    states = pipe.new_state_store()
    with pytest.raises(InvalidRecord):
        decode_window(bad, V1)
    (p,) = pipe.process([decode_window(good[0], V1)], states).predictions
    st = states.users["fresh"]
    assert list(states.users) == ["fresh"]
    assert st.windows_seen == 1 and len(st.history) == 1 and st.session_start_us == p.ts_us
    assert np.isfinite(p.confidence)
