"""taskclf's drift statistics (spec 10): the batch definition, the reference profile, and the
streaming window whose values must equal the batch computation on the same windows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.pipeline.drift import (
    CLASS_NAMES,
    DRIFT_FEATURES,
    PROFILE_FILE,
    build_profile,
    entropy,
    load_profile,
    parse_profile,
    psi,
    write_profile,
)
from taskclf_daemon.pipeline.drift_window import NEVER_NULL, NULL_SLOT, OUT_SLOT, DriftWindow, drift_values, feature_psi, merge_counts

NF = len(DRIFT_FEATURES)
KPM = DRIFT_FEATURES.index("keys_per_min")


def _profile(values: np.ndarray, classes: np.ndarray | None = None, ent: np.ndarray | None = None):
    n = len(values)
    classes = np.zeros(n, dtype=np.int64) if classes is None else classes
    ent = np.zeros(n) if ent is None else ent
    return build_profile(values, classes, ent, schema_hash="4077fe0dba70", model_bundle_id="b1", source="test", created_at="2026-01-01T00:00:00Z")


def _column(col: np.ndarray, j: int = KPM) -> np.ndarray:
    """(n, 16) all-NaN except feature ``j``."""
    out = np.full((len(col), NF), np.nan)
    out[:, j] = col
    return out


# ------------------------------------------------------------------------------- batch PSI


def test_psi_of_a_hand_computed_example():
    # reference 0..10: edges 0,1,...,10, ten bins [i, i+1) with one value each, the last [9, 10]
    # holding two; current: five values in bin 0, five in bin 9, the other eight bins empty
    ref = np.arange(11.0)
    cur = [0.5] * 5 + [9.5] * 5
    expected = (0.5 - 1 / 11) * math.log(0.5 * 11) + (0.5 - 2 / 11) * math.log(0.5 / (2 / 11)) + 8 * (1e-8 - 1 / 11) * math.log(1e-8 * 11)
    assert psi(ref, cur) == pytest.approx(expected, rel=1e-14)
    assert psi(ref, cur) == pytest.approx(12.672203570466214, rel=1e-14)


def test_psi_rules_for_degenerate_inputs():
    ref = np.arange(11.0)
    assert psi(ref, ref) == 0.0
    assert psi([1.0], [1.0, 2.0]) == 0.0  # < 2 reference values
    assert psi(ref, [3.0, np.nan, np.inf]) == 0.0  # < 2 finite current values
    assert psi([5.0] * 20, [1.0, 9.0]) == 0.0  # constant reference: one edge
    assert psi(ref, [-5.0, 50.0, 11.0]) == 0.0  # every current value outside the reference range
    # outside values are dropped (not counted), NaN too: same as without them
    assert psi(ref, [0.5, 0.5, 9.5, -1.0, 99.0, np.nan]) == psi(ref, [0.5, 0.5, 9.5])


def test_entropy_clips_like_taskclf():
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    e = entropy(p)
    assert e[0] == pytest.approx(-2 * 1e-8 * math.log(1e-8), rel=1e-12)  # zeros count as 1e-8
    assert e[1] == pytest.approx(math.log(2) - 1e-8 * math.log(1e-8), rel=1e-12)
    assert e[2] == pytest.approx(math.log(3), rel=1e-12)


# ------------------------------------------------------------------- streaming == batch


def test_slots_reproduce_np_histogram_bins():
    prof = _profile(_column(np.arange(11.0)))
    win = DriftWindow(prof, 100)
    v = np.array([-0.1, 0.0, 0.99, 1.0, 8.5, 9.0, 9.99, 10.0, 10.01, np.nan])
    s = win.slots(_column(v))[:, KPM]
    assert s.tolist() == [OUT_SLOT, 2, 2, 3, 10, 11, 11, 11, OUT_SLOT, NULL_SLOT]
    # a feature without reference values has no bins: every finite value is outside, NaN null
    assert prof.features["app_switch_count_last_5m"].bins == 0
    assert win.slots(np.array([[3.0] * NF, [np.nan] * NF]))[:, 0].tolist() == [OUT_SLOT, NULL_SLOT]


@pytest.mark.parametrize("seed", range(6))
def test_streaming_psi_equals_the_batch_psi_of_the_window(seed):
    rng = np.random.default_rng(seed)
    n_ref = int(rng.integers(50, 3000))
    ref = np.empty((n_ref, NF))
    for j in range(NF):  # continuous, discrete (ties -> fewer edges), and nullable columns
        kind = j % 4
        if kind == 0:
            ref[:, j] = rng.lognormal(2.0, 1.0, n_ref)
        elif kind == 1:
            ref[:, j] = rng.integers(0, 24, n_ref)
        elif kind == 2:
            ref[:, j] = rng.integers(0, 3, n_ref)
        else:
            ref[:, j] = np.where(rng.random(n_ref) < 0.3, np.nan, rng.normal(0, 1, n_ref))
    prof = _profile(ref)
    cap = int(rng.integers(20, 800))
    win = DriftWindow(prof, cap)
    seen = []
    for _ in range(int(rng.integers(1, 12))):  # batches of varying size, wrapping the ring
        n = int(rng.integers(1, 400))
        cur = ref[rng.integers(0, n_ref, n)] * rng.uniform(0.7, 1.6) + rng.normal(0, 0.5, (n, NF))
        cur[rng.random((n, NF)) < 0.05] = np.nan
        win.add(cur, np.zeros(n, dtype=np.int64), np.zeros(n))
        seen.append(cur)
    window = np.concatenate(seen)[-cap:]
    counts = win.counts()
    assert counts.windows == len(window)
    for j, f in enumerate(DRIFT_FEATURES):
        assert feature_psi(prof, f, counts.slots[j]) == psi(ref[:, j], window[:, j]), f  # exactly


def test_class_shares_reject_rate_and_entropy_of_the_window():
    ref_classes = np.array([0, 0, 1, 8, 8, 8, 2, 2])
    ref_ent = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    prof = _profile(_column(np.arange(8.0)), ref_classes, ref_ent)
    assert prof.reject_rate == 3 / 8
    assert prof.mean_entropy == pytest.approx(0.45, rel=1e-15)
    win = DriftWindow(prof, 4)
    win.add(_column(np.arange(6.0)), np.array([1, 1, 8, 1, 3, 8]), np.array([9.0, 9.0, 1.0, 2.0, 3.0, 4.0]))
    v = drift_values(win.counts())  # the window: the last 4 rows
    assert v.windows == 4
    assert v.class_share["Mixed/Unknown"] == 0.5 == v.reject_rate
    assert v.class_share["Build"] == 0.25 and v.class_share["Debug"] == 0.25 and v.class_share["BreakIdle"] == 0.0
    assert v.ref_class_share["BreakIdle"] == 0.25 and v.ref_reject_rate == 3 / 8
    assert v.mean_entropy == 2.5 and v.ref_mean_entropy == pytest.approx(0.45)
    assert v.null_rate["hour_of_day"] == 1.0 and v.null_rate["keys_per_min"] == 0.0
    assert v.ref_null_rate["hour_of_day"] == 1.0


def test_merge_adds_shards_of_one_profile_and_prefers_the_larger_profile():
    ref = _column(np.arange(100.0))
    prof, other = _profile(ref), build_profile(ref, np.zeros(100, dtype=np.int64), np.zeros(100), schema_hash="h", model_bundle_id="b2", source="t", created_at="x")
    a, b, c = DriftWindow(prof, 50), DriftWindow(prof, 50), DriftWindow(other, 50)
    a.add(_column(np.arange(0.0, 30.0)), np.zeros(30, dtype=np.int64), np.ones(30))
    b.add(_column(np.arange(30.0, 50.0)), np.full(20, 8), np.full(20, 2.0))
    c.add(_column(np.arange(10.0)), np.zeros(10, dtype=np.int64), np.ones(10))
    m = merge_counts([a.counts(), None, c.counts(), b.counts()])
    assert m is not None and m.profile is prof and m.windows == 50
    v = drift_values(m)
    assert v.reject_rate == 20 / 50 and v.mean_entropy == (30 + 40) / 50
    assert v.psi["keys_per_min"] == psi(np.arange(100.0), np.arange(50.0))
    assert merge_counts([None]) is None


# --------------------------------------------------------------------------- the profile file


def test_profile_records_edges_counts_and_rates():
    ref = _column(np.concatenate([np.arange(11.0), [np.nan] * 9]))
    prof = _profile(ref, np.array([0] * 15 + [8] * 5))
    f = prof.features["keys_per_min"]
    assert f.edges == tuple(float(i) for i in range(11)) and f.counts == (1,) * 9 + (2,)
    assert (f.values, f.nulls) == (11, 9) and prof.null_rate("keys_per_min") == 0.45
    assert prof.features["hour_of_day"].edges == () and prof.features["hour_of_day"].nulls == 20
    assert prof.reject_rate == 0.25 and prof.windows == 20
    assert dict(zip(CLASS_NAMES, prof.class_shares))["BreakIdle"] == 0.75


def test_profile_round_trips_through_json(tmp_path):
    rng = np.random.default_rng(3)
    prof = _profile(rng.lognormal(1, 1, (500, NF)), rng.integers(0, 9, 500), rng.random(500))
    write_profile(prof, tmp_path / PROFILE_FILE)
    back = load_profile(tmp_path, "4077fe0dba70")
    assert back == prof  # edges survive JSON exactly (floats are written with repr)
    assert load_profile(tmp_path / "elsewhere", "4077fe0dba70") is None


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(version=99), "version"),
        (lambda d: d["features"].pop("keys_per_min"), "features"),
        (lambda d: d["features"]["keys_per_min"].update(edges=[3.0, 2.0, 4.0]), "features.keys_per_min.edges"),
        (lambda d: d["features"]["keys_per_min"]["counts"].append(1), "features.keys_per_min.counts"),
        (lambda d: d["features"]["keys_per_min"].update(nulls=-1), "features.keys_per_min.values"),
        (lambda d: d["class_counts"].update(Build=10**6), "windows"),
        (lambda d: d.update(mean_entropy="high"), "mean_entropy"),
        (lambda d: d.update(schema_hash="a15f4751a947"), "schema_hash"),
    ],
)
def test_a_malformed_profile_fails_naming_the_field(tmp_path, mutate, field):
    prof = _profile(np.random.default_rng(0).random((50, NF)))
    doc = prof.to_json()
    mutate(doc)
    (tmp_path / PROFILE_FILE).write_text(json.dumps(doc))
    with pytest.raises(ArtifactError) as ei:
        load_profile(tmp_path, "4077fe0dba70")
    assert ei.value.field == field
    assert "taskclf-daemon reference" in str(ei.value)


def test_parse_rejects_what_is_not_a_profile(tmp_path):
    with pytest.raises(ArtifactError, match="format"):
        parse_profile({"format": "something else"}, tmp_path / PROFILE_FILE)


def test_features_read_from_the_model_matrix_are_never_null_in_the_decoder():
    from taskclf_daemon.codec import _FIELDS

    assert NEVER_NULL < set(DRIFT_FEATURES)
    for f in DRIFT_FEATURES:
        check, required, _default = _FIELDS[f]
        never_null = required and not check._contract["nullable"]
        assert never_null == (f in NEVER_NULL), f


def test_counts_cross_the_worker_pipe_intact():
    import pickle

    prof = _profile(_column(np.arange(100.0)))
    win = DriftWindow(prof, 50)
    win.add(_column(np.arange(20.0)), np.full(20, 3), np.full(20, 0.5))
    c = win.counts()
    back = pickle.loads(pickle.dumps(c))
    assert back.profile == prof and back.windows == 20 and back.entropy_sum == 10.0
    assert np.array_equal(back.slots, c.slots) and np.array_equal(back.classes, c.classes)
    assert drift_values(back) == drift_values(c)
