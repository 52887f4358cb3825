"""Calibration fitting (taskclf grid / isotonic), eligibility and the calibrator store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from taskclf_daemon.offline.calibrate import (
    calibrate_store,
    eligibility,
    fit_isotonic,
    fit_temperature,
    nll,
    raw_probabilities,
)
from taskclf_daemon.offline.synthetic import PERSONA_ORDER, generate_labelled, user_ids
from taskclf_daemon.offline.train import fill_overlay, train_bundle
from taskclf_daemon.pipeline.calibration import CalibratorStore, IsotonicCalibrator, TemperatureCalibrator
from taskclf_daemon.pipeline.model import ModelBundle

SEED = 1
N_USERS = 6


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _overconfident(n: int = 4000, sharpen: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from p, reported probabilities p**sharpen (renormalised): over-confident."""
    rng = np.random.default_rng(seed)
    p = _softmax(rng.normal(0.0, 1.5, (n, 8)))
    y = np.asarray([rng.choice(8, p=row) for row in p])
    return _softmax(np.log(p) * sharpen), y


# ------------------------------------------------------------------------------------------
# temperature / isotonic
# ------------------------------------------------------------------------------------------


def test_fit_temperature_overconfident_gives_t_above_one() -> None:
    probs, y = _overconfident()
    t = fit_temperature(probs, y)
    assert 1.6 < t < 2.4  # the data were sharpened with exponent 2
    assert 0.01 <= t <= 5.1 and round(t, 4) == t
    assert nll(TemperatureCalibrator(t).apply(probs), y) < nll(probs, y)


def test_fit_temperature_underconfident_gives_t_below_one() -> None:
    probs, y = _overconfident(sharpen=0.5, seed=1)
    t = fit_temperature(probs, y)
    assert 0.3 < t < 0.7 and round(t, 4) == t


def test_fit_temperature_is_exactly_one_when_nothing_strictly_beats_it() -> None:
    # every row has p = [0.8, 0.2/7, ...] and the labels occur with exactly those frequencies,
    # so the NLL minimiser of p**(1/T) is T = 1 and every other grid value is strictly worse
    p = np.full((350, 8), 10 / 350)
    p[:, 0] = 0.8
    y = np.asarray([0] * 280 + [k for k in range(1, 8) for _ in range(10)])
    assert fit_temperature(p, y) == 1.0
    # uniform probabilities: NLL is the same for every T, so the incumbent 1.0 stays
    assert fit_temperature(np.full((40, 8), 0.125), np.arange(40) % 8) == 1.0


def test_fit_temperature_bounds_on_extreme_data() -> None:
    probs, y = _overconfident(n=500, sharpen=30.0, seed=2)
    t = fit_temperature(probs, y)
    assert 4.9 <= t <= 5.1 and round(t, 4) == t
    probs, y = _overconfident(n=500, sharpen=0.02, seed=3)
    t = fit_temperature(probs, y)
    assert 0.01 <= t <= 0.2 and round(t, 4) == t
    with pytest.raises(ValueError):
        fit_temperature(np.empty((0, 8)), np.empty(0, dtype=int))


def test_fit_isotonic_rows_sum_to_one_and_match_sklearn() -> None:
    from sklearn.isotonic import IsotonicRegression

    probs, y = _overconfident(n=1500, seed=4)
    cal = fit_isotonic(probs, y)
    assert isinstance(cal, IsotonicCalibrator) and len(cal.curves) == 8
    out = cal.apply(probs)
    assert out.shape == probs.shape and np.allclose(out.sum(axis=1), 1.0, atol=1e-6)
    one = cal.apply(probs[0])
    assert one.shape == (8,) and abs(one.sum() - 1.0) < 1e-6
    reg = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(probs[:, 3], (y == 3).astype(float))
    test = np.linspace(-0.1, 1.1, 57)
    assert np.allclose(cal.curves[3](test), reg.predict(test), atol=1e-12)
    js = cal.to_json()
    assert js["type"] == "isotonic" and set(js["regressors"][0]) == {"X_thresholds_", "y_thresholds_", "X_min_", "X_max_", "increasing_", "out_of_bounds"}
    assert nll(out, y) < nll(probs, y)


# ------------------------------------------------------------------------------------------
# eligibility
# ------------------------------------------------------------------------------------------


def _rows(uid: str, n: int, days: int, labels: int) -> list[dict]:
    names = ["Build", "Debug", "Write", "Meet"][:labels]
    return [
        {"user_id": uid, "bucket_start_ts": f"2026-03-{2 + i % days:02d}T10:{i % 60:02d}:00Z", "label": names[i % labels]}
        for i in range(n)
    ]


def test_eligibility_boundaries() -> None:
    rows = (
        _rows("ok", 250, 5, 4) + _rows("w199", 199, 3, 3) + _rows("w200", 200, 3, 3)
        + _rows("d2", 250, 2, 3) + _rows("d3", 250, 3, 3) + _rows("l2", 250, 5, 2) + _rows("l3", 250, 5, 3)
    )
    rep = eligibility(rows, user_ids=["ghost"])
    assert list(rep) == sorted(rep)
    assert rep["ok"] == {"labeled_windows": 250, "labeled_days": 5, "distinct_labels": 4, "is_eligible": True}
    assert not rep["w199"]["is_eligible"] and rep["w199"]["labeled_windows"] == 199
    assert rep["w200"]["is_eligible"]
    assert not rep["d2"]["is_eligible"] and rep["d2"]["labeled_days"] == 2
    assert rep["d3"]["is_eligible"]
    assert not rep["l2"]["is_eligible"] and rep["l2"]["distinct_labels"] == 2
    assert rep["l3"]["is_eligible"]
    assert rep["ghost"] == {"labeled_windows": 0, "labeled_days": 0, "distinct_labels": 0, "is_eligible": False}


def test_eligibility_days_are_utc_dates() -> None:
    # 23:30 UTC and 00:30 UTC are two dates even though they are an hour apart
    rows = [
        {"user_id": "u", "bucket_start_ts": ts, "label": lab}
        for ts, lab in [("2026-03-02T23:30:00Z", "Build"), ("2026-03-03T00:30:00+00:00", "Debug"), ("2026-03-03T01:30:00+01:00", "Meet")]
    ]
    assert eligibility(rows)["u"]["labeled_days"] == 2
    items = fill_overlay(generate_labelled(seed=SEED, n_users=2, days=2), "v1")
    assert eligibility(items) == eligibility(generate_labelled(seed=SEED, n_users=2, days=2))


# ------------------------------------------------------------------------------------------
# the store
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("taskclf_home")


@pytest.fixture(scope="module")
def bundle(home: Path) -> Path:
    return train_bundle(generate_labelled(seed=SEED, n_users=N_USERS, days=5), home / "models", seed=SEED, num_boost_round=40, data_provenance="synthetic")


@pytest.fixture(scope="module")
def calibration_rows() -> list[dict]:
    # the same users, the following week
    return generate_labelled(seed=SEED, n_users=N_USERS, days=5, start="2026-03-09")


@pytest.fixture(scope="module")
def heldout_rows() -> list[dict]:
    return generate_labelled(seed=SEED, n_users=N_USERS, days=5, start="2026-03-16")


@pytest.fixture(scope="module")
def temp_store(bundle: Path, home: Path, calibration_rows: list[dict]) -> tuple[CalibratorStore, Path, list]:
    events: list[tuple] = []
    out = home / "artifacts" / "calibrator_store"
    store = calibrate_store(bundle, calibration_rows, method="temperature", out_dir=out, progress=lambda s, d, t: events.append((s, d, t)))
    return store, out, events


def test_store_layout_binding_and_eligible_users_only(bundle: Path, temp_store: tuple, calibration_rows: list[dict]) -> None:
    store, out, events = temp_store
    meta = json.loads((out / "store.json").read_text())
    assert list(meta) == ["method", "user_count", "user_ids", "model_bundle_id", "model_schema_hash", "created_at"]
    assert meta["method"] == "temperature"
    assert meta["user_ids"] == sorted(meta["user_ids"]) and meta["user_count"] == len(meta["user_ids"])
    assert meta["model_bundle_id"] == bundle.name and meta["model_schema_hash"] == "4077fe0dba70"
    assert meta["created_at"].endswith("+00:00")
    rep = eligibility(calibration_rows)
    eligible = sorted(u for u, r in rep.items() if r["is_eligible"])
    assert meta["user_ids"] == eligible and 0 < len(eligible) < len(rep)
    assert sorted(p.stem for p in (out / "users").glob("*.json")) == eligible
    persona = {u: PERSONA_ORDER[i] for i, u in enumerate(user_ids(SEED, N_USERS))}
    assert {persona[u] for u in set(rep) - set(eligible)} == {"occasional", "two_label_dev"}
    elig = json.loads((out / "eligibility.json").read_text())
    assert [e["user_id"] for e in elig] == sorted(rep)
    assert all(set(e) == {"user_id", "labeled_windows", "labeled_days", "distinct_labels", "is_eligible"} for e in elig)
    assert {e["user_id"]: e["is_eligible"] for e in elig} == {u: r["is_eligible"] for u, r in rep.items()}
    g = json.loads((out / "global.json").read_text())
    assert g["type"] == "temperature" and round(g["temperature"], 4) == g["temperature"]
    for uid in eligible:
        t = json.loads((out / "users" / f"{uid}.json").read_text())["temperature"]
        assert 0.01 <= t <= 5.1
    assert ("fit", len(eligible) + 1, len(eligible) + 1) in events and any(e[0] == "predict" for e in events)
    assert not list(out.glob(".*tmp"))
    # policy written by train is left alone
    policy = json.loads((bundle.parent / "inference_policy.json").read_text())
    assert policy["calibrator_store_dir"] is None and policy["source"] == "retrain"


def test_store_loads_back(bundle: Path, temp_store: tuple) -> None:
    store, out, _ = temp_store
    loaded = CalibratorStore.load(out)
    assert loaded.user_ids == store.user_ids and loaded.method == "temperature"
    assert loaded.model_bundle_id == bundle.name and loaded.model_schema_hash == ModelBundle.load(bundle).schema_hash
    assert loaded.global_calibrator == store.global_calibrator
    assert {u: c.temperature for u, c in loaded.user_calibrators.items()} == {u: c.temperature for u, c in store.user_calibrators.items()}  # type: ignore[attr-defined]
    loaded.check_binding(ModelBundle.load(bundle).schema_hash)


def test_store_improves_heldout_nll_and_personalisation_matters(bundle: Path, temp_store: tuple, heldout_rows: list[dict]) -> None:
    store, _, _ = temp_store
    mb = ModelBundle.load(bundle)
    items = fill_overlay(heldout_rows, mb.schema)
    P = raw_probabilities(mb, items, chunk=1000)
    y = np.asarray([it[2] for it in items])
    uids = [it[0].user_id for it in items]
    raw = nll(P, y)
    glob = nll(store.global_calibrator.apply(P), y)
    per_user, _ = store.calibrate_batch(P, uids)
    assert glob < raw
    assert nll(per_user, y) < glob
    # personas built to be over-/under-confident get temperatures on either side of the global one
    persona = {u: PERSONA_ORDER[i] for i, u in enumerate(user_ids(SEED, N_USERS))}
    temps = {persona[u]: c.temperature for u, c in store.user_calibrators.items()}  # type: ignore[attr-defined]
    t_global = store.global_calibrator.temperature  # type: ignore[attr-defined]
    assert temps["sre_nightshift"] > t_global > temps["writer"]


def test_raw_probabilities_chunking_is_exact(bundle: Path, calibration_rows: list[dict]) -> None:
    mb = ModelBundle.load(bundle)
    items = fill_overlay(calibration_rows[:2500], mb.schema)
    a = raw_probabilities(mb, items)
    b = raw_probabilities(mb, items, chunk=333)
    assert np.array_equal(a, b) and a.shape == (len(items), 8)


def test_isotonic_store(bundle: Path, home: Path, calibration_rows: list[dict]) -> None:
    out = home / "iso_store"
    store = calibrate_store(bundle, calibration_rows, method="isotonic", out_dir=out)
    assert isinstance(store.global_calibrator, IsotonicCalibrator)
    assert all(isinstance(c, IsotonicCalibrator) for c in store.user_calibrators.values())
    loaded = CalibratorStore.load(out)
    assert loaded.method == "isotonic" and loaded.user_ids == store.user_ids
    mb = ModelBundle.load(bundle)
    items = fill_overlay(calibration_rows[:500], mb.schema)
    P = raw_probabilities(mb, items)
    uids = [it[0].user_id for it in items]
    a, _ = store.calibrate_batch(P, uids)
    b, _ = loaded.calibrate_batch(P, uids)
    assert np.allclose(a, b, atol=1e-9) and np.allclose(a.sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="method"):
        calibrate_store(bundle, calibration_rows, method="platt", out_dir=home / "x")  # type: ignore[arg-type]


def test_refit_into_same_directory_drops_stale_user_files(bundle: Path, home: Path, calibration_rows: list[dict]) -> None:
    out = home / "refit_store"
    first = calibrate_store(bundle, calibration_rows, out_dir=out)
    assert len(first.user_ids) >= 2
    keep = first.user_ids[0]
    fewer = [r for r in calibration_rows if r["user_id"] == keep or r["user_id"] not in first.user_ids]
    second = calibrate_store(bundle, fewer, out_dir=out)
    assert second.user_ids == [keep]
    assert sorted(p.stem for p in (out / "users").glob("*.json")) == [keep]
    assert CalibratorStore.load(out).user_ids == [keep]
