"""Reject decision and smoothing (spec 5, 6; items 27-35)."""

from __future__ import annotations

import random
from collections import deque
from typing import Any

import numpy as np
import orjson
import pytest

from helpers_rows import golden_dir, make_window
from taskclf_daemon.labels import DEFAULT_REJECT_THRESHOLD, LABELS, MIXED_UNKNOWN, REJECT_ID
from taskclf_daemon.pipeline.batch import InferencePipeline, PipelineConfig
from taskclf_daemon.pipeline.calibration import CalibratorStore, IdentityCalibrator, TemperatureCalibrator
from taskclf_daemon.pipeline.decision import reject_mask, rolling_majority, smooth_trailing, thresholds_for
from taskclf_daemon.pipeline.model import ModelBundle


def _rej(conf: list[float], uids: list[str], global_t: float | None, per_user: dict[str, float] | None = None) -> list[bool]:
    return reject_mask(np.asarray(conf, dtype=np.float64), thresholds_for(uids, global_t, per_user or {})).tolist()


# ---------------------------------------------------------------- items 27-29: thresholds


def test_default_threshold_is_055() -> None:
    assert DEFAULT_REJECT_THRESHOLD == 0.55
    assert PipelineConfig().reject_threshold == 0.55
    assert PipelineConfig().smooth_window == 3


def test_reject_is_strict_at_055() -> None:
    assert _rej([0.5499, 0.55, 0.5500001, 0.0, 1.0], ["u"] * 5, 0.55) == [True, False, False, True, False]


def test_threshold_none_rejects_nothing() -> None:
    assert _rej([0.0, 0.1, 0.5499, 1.0], ["u"] * 4, None) == [False] * 4


def test_threshold_one_rejects_all_below_one() -> None:
    assert _rej([0.999999, 0.5, 1.0], ["u"] * 3, 1.0) == [True, True, False]


def test_per_user_thresholds() -> None:
    uids = ["u", "v", "u", "w"]
    assert _rej([0.9, 0.9, 0.2, 0.1], uids, 0.0, {"u": 1.0}) == [True, False, True, False]
    # users absent from the map use the global threshold
    assert _rej([0.5, 0.5, 0.5], ["u", "v", "w"], 0.55, {"u": 0.3}) == [False, True, True]
    # per-user thresholds still apply when the global threshold is disabled
    assert _rej([0.5, 0.5], ["u", "v"], None, {"u": 0.6}) == [True, False]


def test_thresholds_for_values() -> None:
    t = thresholds_for(["a", "b"], 0.55, {"a": 0.3})
    assert t.tolist() == [0.3, 0.55]
    assert np.isnan(thresholds_for(["a"], None, {})).all()
    assert thresholds_for([], 0.55, {"a": 0.1}).shape == (0,)


# ---------------------------------------------------------------- items 30-31 through the pipeline


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ModelBundle.load(golden_dir() / "models" / "2026-04-06_000000_run-0001")


def _run(bundle: ModelBundle, windows: list[Any], store: CalibratorStore | None = None, **cfg: Any) -> list[dict[str, Any]]:
    pipe = InferencePipeline(bundle, store, PipelineConfig(**cfg))
    return [orjson.loads(p.value) for p in pipe.process(windows, pipe.new_state_store()).predictions]


def test_calibrated_confidence_drives_reject(bundle: ModelBundle) -> None:
    w = make_window()
    (plain,) = _run(bundle, [w])
    assert plain["confidence"] >= 0.55 and not plain["is_rejected"]  # precondition: raw argmax is confident
    (hot,) = _run(bundle, [make_window()], CalibratorStore(TemperatureCalibrator(5.0)))
    assert hot["confidence"] < 0.55 and hot["is_rejected"]
    assert hot["core_label_id"] == plain["core_label_id"]  # argmax preserved
    assert hot["calibrator_scope"] == "global"
    # the confidence is the max of the calibrated vector
    assert hot["confidence"] == round(max(hot["mapped_probs"].values()), 6)
    # per-user calibrator only affects that user
    store = CalibratorStore(IdentityCalibrator(), {"hot-user": TemperatureCalibrator(5.0)})
    a, b = _run(bundle, [make_window(user_id="hot-user"), make_window(user_id="cool-user")], store)
    assert a["is_rejected"] and not b["is_rejected"]
    assert (a["calibrator_scope"], b["calibrator_scope"]) == ("user", "global")


def test_rejected_window_is_smoothed_as_mixed_unknown(bundle: ModelBundle) -> None:
    (rec,) = _run(bundle, [make_window()], reject_threshold=1.0)
    assert rec["is_rejected"] is True
    argmax = int(np.argmax(rec["core_probs"]))
    assert rec["core_label_id"] == argmax and rec["core_label_name"] == LABELS[argmax] == "Build"
    assert rec["mapped_label_name"] == MIXED_UNKNOWN
    assert rec["smoothed_label_name"] == MIXED_UNKNOWN


def test_fully_rejected_stream_is_all_mixed_unknown(bundle: ModelBundle) -> None:
    ws = [make_window(bucket_start_ts=f"2026-04-06T10:{m:02d}:00Z", _drop=("bucket_end_ts",)) for m in range(6)]
    recs = _run(bundle, ws, reject_threshold=1.0, smooth_window=5)
    assert all(r["is_rejected"] for r in recs)
    assert {r["mapped_label_name"] for r in recs} == {MIXED_UNKNOWN}
    assert {r["core_label_name"] for r in recs} == {"Build"}


def test_per_user_threshold_through_pipeline(bundle: ModelBundle) -> None:
    ws = [make_window(user_id="strict"), make_window(user_id="lax")]
    a, b = _run(bundle, ws, reject_threshold=0.0, per_user_thresholds={"strict": 1.0})
    assert a["is_rejected"] and not b["is_rejected"]
    a, b = _run(bundle, ws, reject_threshold=None)
    assert not a["is_rejected"] and not b["is_rejected"]


def test_rejected_window_in_w5_stream_can_carry_previous_label(bundle: ModelBundle) -> None:
    # Build, Build, <rejected>: with w=5 the last 3 labels are B, B, MU -> smoothed Build
    ws = [make_window(bucket_start_ts=f"2026-04-06T10:{m:02d}:00Z", _drop=("bucket_end_ts",)) for m in range(3)]
    recs = _run(bundle, ws, smooth_window=5, per_user_thresholds={})
    assert [r["mapped_label_name"] for r in recs] == ["Build"] * 3
    pipe = InferencePipeline(bundle, None, PipelineConfig(smooth_window=5, reject_threshold=0.55))
    states = pipe.new_state_store()
    pipe.process(ws[:2], states)
    strict = InferencePipeline(bundle, None, PipelineConfig(smooth_window=5, reject_threshold=1.0))  # same user state
    (r,) = [orjson.loads(p.value) for p in strict.process(ws[2:], states).predictions]
    assert r["is_rejected"] and r["mapped_label_name"] == "Build" and r["smoothed_label_name"] == "Build"


# ---------------------------------------------------------------- items 32-34: centred rolling majority


def test_centred_w3_removes_single_outlier() -> None:
    assert rolling_majority(["Build", "Build", "BreakIdle", "Build", "Build"], 3) == ["Build"] * 5


def test_ties_keep_original() -> None:
    assert rolling_majority(["X", "A", "B"], 3)[1] == "A"
    assert rolling_majority(["X", "A", "B"], 3) == ["X", "A", "B"]
    assert rolling_majority(["A", "B"], 3) == ["A", "B"]


def test_default_window_is_taskclfs_3() -> None:
    seq = ["A", "B", "B", "A", "A"]
    assert rolling_majority(seq) == rolling_majority(seq, 3) == seq  # w3 at the first row: a 1-1 tie keeps A
    assert rolling_majority(seq, 4)[0] == "B"  # a wider default would change it


def test_window_one_and_empty() -> None:
    seq = ["A", "B", "A", "C"]
    assert rolling_majority(seq, 1) == seq
    assert rolling_majority([], 3) == []
    assert rolling_majority([], 1) == []


def test_centred_w5_leftmost_winner() -> None:
    assert rolling_majority(["A", "A", "C", "B", "B"], 5)[2] == "A"
    assert rolling_majority(["B", "B", "C", "A", "A"], 5)[2] == "B"


def test_rolling_majority_does_not_mutate() -> None:
    seq = ["A", "B", "A"]
    rolling_majority(seq, 3)
    assert seq == ["A", "B", "A"]


def _ref_rolling_majority(labels: list[Any], w: int) -> list[Any]:
    # independent restatement of taskclf's rolling_majority (Counter.most_common tie order)
    from collections import Counter

    n = len(labels)
    out = []
    for i in range(n):
        sl = labels[max(0, i - w // 2): min(n, i + w // 2 + 1)]
        c = Counter(sl)
        winner, cnt = c.most_common(1)[0]
        out.append(labels[i] if cnt == c[labels[i]] else winner)
    return out


def test_rolling_majority_matches_reference_on_random_sequences() -> None:
    rng = random.Random(5)
    for _ in range(300):
        seq = [rng.choice("ABC") for _ in range(rng.randint(0, 12))]
        w = rng.randint(1, 7)
        assert rolling_majority(seq, w) == _ref_rolling_majority(seq, w), (seq, w)


# ---------------------------------------------------------------- item 35: trailing (taskclf online)


def _trail(seq: list[int], w: int) -> list[int]:
    buf: deque[int] = deque(maxlen=max(w, 1))
    return [smooth_trailing(buf, x, w) for x in seq]


def test_trailing_w3_never_changes_label() -> None:
    rng = random.Random(7)
    for _ in range(300):
        seq = [rng.randint(0, REJECT_ID) for _ in range(rng.randint(1, 30))]
        assert _trail(seq, 3) == seq
        assert _trail(seq, 1) == seq
        assert _trail(seq, 2) == seq


def test_trailing_w5_stream() -> None:
    A, B = 0, 1
    assert _trail([A, A, B, A, A, B, B, A], 5) == [A, A, A, A, A, A, B, B]


def test_trailing_w7_uses_last_four() -> None:
    A, B = 0, 1
    assert _trail([A, A, A, B], 7)[-1] == A
    assert _trail([A, A, B, B], 7)[-1] == B  # 2-2 tie keeps the current label
    assert _trail([B, A, A, A, B], 7)[-1] == A


def test_trailing_equals_last_of_rolling_majority_over_deque() -> None:
    rng = random.Random(11)
    for _ in range(300):
        w = rng.randint(1, 8)
        seq = [rng.randint(0, 3) for _ in range(rng.randint(1, 25))]
        buf: deque[int] = deque(maxlen=max(w, 1))
        ref_buf: deque[int] = deque(maxlen=max(w, 1))
        for x in seq:
            got = smooth_trailing(buf, x, w)
            ref_buf.append(x)
            assert got == _ref_rolling_majority(list(ref_buf), w)[-1], (seq, w)
        assert list(buf) == list(ref_buf)


def test_trailing_with_reject_id() -> None:
    A = 1
    assert _trail([A, A, REJECT_ID], 5) == [A, A, A]
    assert _trail([REJECT_ID, REJECT_ID, A], 5) == [REJECT_ID, REJECT_ID, REJECT_ID]


def test_pipeline_smoothing_is_per_user(bundle: ModelBundle) -> None:
    # user "r" is always rejected; user "a" never: interleaving them must not leak Mixed/Unknown into "a"
    ws = []
    for m in range(6):
        ts = f"2026-04-06T10:{m:02d}:00Z"
        ws.append(make_window(user_id="r", bucket_start_ts=ts, _drop=("bucket_end_ts",)))
        ws.append(make_window(user_id="a", bucket_start_ts=ts, _drop=("bucket_end_ts",)))
    recs = _run(bundle, ws, smooth_window=5, reject_threshold=0.0, per_user_thresholds={"r": 1.0})
    assert [r["mapped_label_name"] for r in recs if r["user_id"] == "a"] == ["Build"] * 6
    assert [r["mapped_label_name"] for r in recs if r["user_id"] == "r"] == [MIXED_UNKNOWN] * 6
