"""Calibrators and the calibrator store (spec 4; items 17-20, 22-25; 13.12 unsafe user ids)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers_rows import golden_dir
from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.pipeline.calibration import (
    CalibratorStore,
    IdentityCalibrator,
    IsotonicCalibrator,
    IsotonicCurve,
    TemperatureCalibrator,
    calibrator_from_json,
    user_file_name,
)

P18 = np.array([0.5, 0.2, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025])


def _rand_probs(n: int, seed: int = 0, k: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(k, 0.7), size=n)


def _iso(seed: int = 1, k: int = 8) -> IsotonicCalibrator:
    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(k):
        x = np.sort(rng.uniform(0.0, 1.0, 6))
        y = np.sort(rng.uniform(0.0, 1.0, 6))
        curves.append(IsotonicCurve(x, y, float(x[0]), float(x[-1])))
    return IsotonicCalibrator(tuple(curves))


def _roundtrip(cal: Any) -> Any:
    return calibrator_from_json(json.loads(json.dumps(cal.to_json())))


# ---------------------------------------------------------------- temperature: items 17-20


def test_t1_is_bit_identical() -> None:
    p = _rand_probs(50)
    out = TemperatureCalibrator(1.0).apply(p)
    assert out is p
    assert TemperatureCalibrator(1.0).apply(P18) is P18


def test_t2_values() -> None:
    out = TemperatureCalibrator(2.0).apply(P18)
    expected = [0.287723, 0.181972, 0.128674, 0.090986, 0.090986, 0.090986, 0.064337, 0.064337]
    np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)
    # equivalent form p^(1/T) / sum p^(1/T)
    ref = np.sqrt(P18) / np.sqrt(P18).sum()
    np.testing.assert_allclose(out, ref, atol=1e-15, rtol=0)


def test_t_half_max() -> None:
    out = TemperatureCalibrator(0.5).apply(P18)
    assert abs(out.max() - 0.809717) < 1e-6
    assert out.argmax() == 0


@pytest.mark.parametrize("t", [0.0, -1.0, -0.001, float("nan"), float("inf")])
def test_non_positive_temperature_refused(t: float) -> None:
    with pytest.raises(ValueError, match="^temperature must be positive$"):
        TemperatureCalibrator(t)


@pytest.mark.parametrize("t", [0, -2.5, "1.5", None, True])
def test_bad_temperature_json_refused(t: Any) -> None:
    with pytest.raises(ArtifactError) as ei:
        calibrator_from_json({"type": "temperature", "temperature": t}, "cal.json")
    assert ei.value.field == "temperature" and "cal.json" in str(ei.value)


def test_temperature_flattens_or_sharpens_and_keeps_argmax() -> None:
    P = _rand_probs(200, seed=3)
    for t in (0.3, 0.7, 1.38, 2.0, 5.0):
        out = TemperatureCalibrator(t).apply(P)
        assert out.shape == P.shape
        np.testing.assert_array_equal(out.argmax(axis=1), P.argmax(axis=1))
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
        if t > 1:
            assert np.all(out.max(axis=1) <= P.max(axis=1) + 1e-15)
            assert np.any(out.max(axis=1) < P.max(axis=1) - 1e-3)
        else:
            assert np.all(out.max(axis=1) >= P.max(axis=1) - 1e-15)
            assert np.any(out.max(axis=1) > P.max(axis=1) + 1e-3)


def test_uniform_stays_uniform() -> None:
    u = np.full(8, 0.125)
    for t in (0.25, 2.0, 5.0):
        np.testing.assert_allclose(TemperatureCalibrator(t).apply(u), u, atol=1e-15)
        np.testing.assert_allclose(TemperatureCalibrator(t).apply(np.vstack([u, u])), np.vstack([u, u]), atol=1e-15)


def test_temperature_1d_and_2d_agree() -> None:
    cal = TemperatureCalibrator(1.7)
    P = _rand_probs(5, seed=9)
    out2 = cal.apply(P)
    for i in range(5):
        out1 = cal.apply(P[i])
        assert out1.shape == (8,)
        np.testing.assert_allclose(out1, out2[i], atol=1e-15)
        assert abs(out1.sum() - 1.0) < 1e-6


def test_temperature_handles_zero_probabilities() -> None:
    p = np.array([0.0, 1.0, 0, 0, 0, 0, 0, 0])
    out = TemperatureCalibrator(2.0).apply(p)
    assert np.all(np.isfinite(out)) and out.argmax() == 1
    # clip at 1e-12: zeros become (1e-12)^(1/2) relative weight
    np.testing.assert_allclose(out[0] / out[1], 1e-6, rtol=1e-9)


# ---------------------------------------------------------------- isotonic: item 22


def _iso3() -> IsotonicCalibrator:
    return IsotonicCalibrator((
        IsotonicCurve(np.array([0.2, 0.6]), np.array([0.0, 0.8]), 0.2, 0.6),
        IsotonicCurve(np.array([0.0, 1.0]), np.array([0.5, 0.5]), 0.0, 1.0),
        IsotonicCurve(np.array([0.0, 1.0]), np.array([0.0, 1.0]), 0.0, 1.0),
    ))  # fmt: skip


def test_isotonic_interpolates_clamps_floors_and_renormalises() -> None:
    cal = _iso3()
    # class 0: 0.1 is below X_min -> clamped to y(0.2)=0.0 -> floored at 1e-12
    out = cal.apply(np.array([0.1, 0.3, 0.6]))
    assert out.shape == (3,)
    s = 1e-12 + 0.5 + 0.6
    np.testing.assert_allclose(out, [1e-12 / s, 0.5 / s, 0.6 / s], rtol=1e-12, atol=0)
    assert out[0] > 0
    # class 0: 0.4 interpolates to 0.4; total 0.4 + 0.5 + 0.3 = 1.2
    np.testing.assert_allclose(cal.apply(np.array([0.4, 0.3, 0.3])), [1 / 3, 5 / 12, 1 / 4], rtol=1e-12)
    # class 0 above X_max clamps to 0.8
    np.testing.assert_allclose(cal.apply(np.array([0.9, 0.05, 0.05])), np.array([0.8, 0.5, 0.05]) / 1.35, rtol=1e-12)


def test_isotonic_1d_and_2d() -> None:
    cal = _iso(seed=4)
    P = _rand_probs(30, seed=5)
    out = cal.apply(P)
    assert out.shape == (30, 8)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(out >= 1e-12 / 8)
    for i in range(30):
        one = cal.apply(P[i])
        assert one.shape == (8,)
        assert abs(one.sum() - 1.0) < 1e-6
        np.testing.assert_allclose(one, out[i], atol=1e-15)


def test_isotonic_empty_regressors_refused() -> None:
    with pytest.raises(ValueError, match="^regressors list must not be empty$"):
        IsotonicCalibrator(())
    with pytest.raises(ArtifactError) as ei:
        calibrator_from_json({"type": "isotonic", "regressors": []}, "iso.json")
    assert ei.value.field == "regressors"


def test_isotonic_bad_regressor_refused() -> None:
    bad = {"type": "isotonic", "regressors": [{"X_thresholds_": [0.0, 1.0], "y_thresholds_": [0.0]}]}
    with pytest.raises(ArtifactError) as ei:
        calibrator_from_json(bad, "iso.json")
    assert ei.value.field == "regressors[0]" and "iso.json" in str(ei.value)
    with pytest.raises(ArtifactError):
        calibrator_from_json({"type": "isotonic", "regressors": [{"y_thresholds_": [0.0]}]})


def _curve_json(x: list[float], y: list[float], **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"X_thresholds_": x, "y_thresholds_": y, "X_min_": x[0], "X_max_": x[-1], "increasing_": True, "out_of_bounds": "clip"}
    d.update(kw)
    return d


@pytest.mark.parametrize("n_regressors", [7, 9, 1])
def test_isotonic_regressor_count_must_match_classes(n_regressors: int) -> None:
    # one regressor per class (8): a mismatched calibrator must fail loudly (taskclf's own output
    # would have the wrong width and fail its record validator), never emit made-up columns
    js = {"type": "isotonic", "regressors": [_curve_json([0.0, 1.0], [0.0, 1.0])] * n_regressors}
    with pytest.raises(ArtifactError) as ei:
        calibrator_from_json(js, "iso.json")
    assert ei.value.field == "regressors" and "iso.json" in str(ei.value) and f"has {n_regressors} regressors" in str(ei.value)
    assert ei.value.problem == f"isotonic calibrator has {n_regressors} regressors, expected one per label (8)"
    assert ei.value.fix == "refit with `taskclf-daemon calibrate --method isotonic`"
    # built directly (not from JSON), the calibrator refuses probabilities of another width
    cal = IsotonicCalibrator((IsotonicCurve(np.array([0.0, 1.0]), np.array([0.0, 1.0]), 0.0, 1.0),) * n_regressors)
    P = _rand_probs(4, seed=30)
    with pytest.raises(ValueError, match=f"{n_regressors} regressors but the probabilities have 8 classes"):
        cal.apply(P)
    with pytest.raises(ValueError):
        cal.apply(P[0])


@pytest.mark.parametrize("bad", [{"X_min_": float("nan")}, {"X_max_": float("nan")}, {"X_min_": float("-inf"), "X_max_": float("inf")}])
def test_isotonic_non_finite_bounds_never_yield_nan(bad: dict[str, float]) -> None:
    # taskclf rebuilds the regressor by refitting on the thresholds (X_min_/X_max_ recomputed), so
    # the stored bounds are ignored: a corrupt bound loads and never turns probabilities into NaN
    good = {"type": "isotonic", "regressors": [_curve_json([0.0, 0.5, 1.0], [0.0, 0.4, 1.0])] + [_curve_json([0.0, 1.0], [0.0, 1.0])] * 7}
    js = {"type": "isotonic", "regressors": [_curve_json([0.0, 0.5, 1.0], [0.0, 0.4, 1.0], **bad)] + good["regressors"][1:]}
    text = json.dumps(js)  # Python's json writes/reads NaN and Infinity literals
    cal = calibrator_from_json(json.loads(text), "iso.json")
    assert isinstance(cal, IsotonicCalibrator)
    assert (cal.curves[0].x_min, cal.curves[0].x_max) == (0.0, 1.0)  # the first and last threshold
    P = _rand_probs(20, seed=31)
    out = cal.apply(P)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, calibrator_from_json(good).apply(P))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-9)


# ---------------------------------------------------------------- JSON: item 23


def test_json_round_trip_identity() -> None:
    cal = _roundtrip(IdentityCalibrator())
    assert isinstance(cal, IdentityCalibrator)
    assert IdentityCalibrator().to_json() == {"type": "identity"}


@pytest.mark.parametrize("t", [1.38, 0.7301, 5.1, 0.01, 2.0])
def test_json_round_trip_temperature_exact(t: float) -> None:
    cal = _roundtrip(TemperatureCalibrator(t))
    assert isinstance(cal, TemperatureCalibrator) and cal.temperature == t
    assert TemperatureCalibrator(t).to_json() == {"type": "temperature", "temperature": t}


def test_json_round_trip_isotonic() -> None:
    orig = _iso(seed=7)
    js = orig.to_json()
    assert js["type"] == "isotonic" and len(js["regressors"]) == 8
    assert set(js["regressors"][0]) == {"X_thresholds_", "y_thresholds_", "X_min_", "X_max_", "increasing_", "out_of_bounds"}
    cal = _roundtrip(orig)
    assert isinstance(cal, IsotonicCalibrator)
    P = _rand_probs(100, seed=8)
    # JSON floats round-trip exactly (repr), so the curves and every output are bit-identical
    for a, b in zip(cal.curves, orig.curves):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
        assert (a.x_min, a.x_max, a.increasing) == (b.x_min, b.x_max, b.increasing)
    np.testing.assert_array_equal(cal.apply(P), orig.apply(P))


def test_json_missing_type_is_identity() -> None:
    assert isinstance(calibrator_from_json({}), IdentityCalibrator)
    assert isinstance(calibrator_from_json({"temperature": 3.0}), IdentityCalibrator)


def test_json_unknown_type_refused() -> None:
    with pytest.raises(ArtifactError) as ei:
        calibrator_from_json({"type": "platt"}, "cal.json")
    assert ei.value.field == "type" and "platt" in str(ei.value) and "cal.json" in str(ei.value)
    with pytest.raises(ArtifactError):
        calibrator_from_json(["identity"], "cal.json")


# ---------------------------------------------------------------- store lookup: item 24


def test_store_lookup_alice_vs_bob() -> None:
    t5 = TemperatureCalibrator(5.0)
    store = CalibratorStore(IdentityCalibrator(), {"alice": t5})
    cal, scope = store.get("alice")
    assert cal is t5 and scope == "user"
    cal, scope = store.get("bob")
    assert isinstance(cal, IdentityCalibrator) and scope == "global"
    P = np.vstack([P18, P18])
    out, scopes = store.calibrate_batch(P, ["alice", "bob"])
    assert scopes == ["user", "global"]
    assert np.array_equal(out[1], P18)
    assert not np.allclose(out[0], P18)
    np.testing.assert_array_equal(out[0], t5.apply(P18))
    # the input is not mutated
    assert np.array_equal(P, np.vstack([P18, P18]))


def _mixed_store(global_cal: Any) -> CalibratorStore:
    return CalibratorStore(
        global_cal,
        {
            "t-low": TemperatureCalibrator(0.7),
            "t-high": TemperatureCalibrator(2.5),
            "t-one": TemperatureCalibrator(1.0),
            "t-golden": TemperatureCalibrator(1.38),
            "iso-a": _iso(seed=11),
            "iso-b": _iso(seed=12),
            "ident": IdentityCalibrator(),
        },
    )


@pytest.mark.parametrize("global_cal", [TemperatureCalibrator(1.38), IdentityCalibrator(), _iso(seed=13)], ids=["temperature", "identity", "isotonic"])
def test_calibrate_batch_equals_per_row_apply_bit_for_bit(global_cal: Any) -> None:
    store = _mixed_store(global_cal)
    users = ["t-low", "t-high", "t-one", "t-golden", "iso-a", "iso-b", "ident", "stranger-1", "stranger-2"]
    rng = np.random.default_rng(21)
    uids = [users[i] for i in rng.integers(0, len(users), 400)]
    P = _rand_probs(400, seed=22)
    # rows with exact zeros and values around the 1e-12 floor
    P[::9, 3] = 0.0
    P[1::9, 5] = 1e-13
    P[2::9, 6] = 3e-11
    P = P / P.sum(axis=1, keepdims=True)
    kinds: list[str] = []
    out, scopes = store.calibrate_batch(P, uids, kinds)
    assert out.shape == P.shape and len(kinds) == len(uids)
    for i, uid in enumerate(uids):
        cal, scope = store.get(uid)
        assert scopes[i] == scope and kinds[i] == cal.kind
        expected = cal.apply(P[i])
        assert np.array_equal(out[i], expected), (i, uid)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    # the result of a row does not depend on the rest of the batch
    for lo, hi in ((0, 1), (5, 12), (100, 400)):
        part, _ = store.calibrate_batch(P[lo:hi], uids[lo:hi])
        assert np.array_equal(part, out[lo:hi])


def test_calibrate_batch_names_each_rows_calibrator_kind() -> None:
    # the kinds go out as calibrator_kind on every output: the user's own calibrator, else the global one
    store = _mixed_store(_iso(seed=13))
    kinds: list[str] = []
    store.calibrate_batch(_rand_probs(5, seed=23), ["t-one", "ident", "iso-a", "stranger", "t-low"], kinds)
    assert kinds == ["temperature", "identity", "isotonic", "isotonic", "temperature"]
    _mixed_store(IdentityCalibrator()).calibrate_batch(_rand_probs(1, seed=24), ["stranger"], kinds)
    assert kinds[5:] == ["identity"]  # appended to the caller's list


def test_calibrate_batch_empty() -> None:
    out, scopes = _mixed_store(IdentityCalibrator()).calibrate_batch(np.empty((0, 8)), [])
    assert out.shape == (0, 8) and scopes == []


def test_golden_store_lookup() -> None:
    store = CalibratorStore.load(golden_dir() / "artifacts" / "calibrator_store")
    assert store.method == "temperature"
    assert store.model_schema_hash == "4077fe0dba70"
    assert store.model_bundle_id == "2026-04-06_000000_run-0001"
    assert isinstance(store.global_calibrator, TemperatureCalibrator) and store.global_calibrator.temperature == 1.38
    assert len(store.user_ids) == 5
    cal, scope = store.get("36329fc1-cfbb-42f2-87da-c965fcbd3ef3")
    assert scope == "user" and cal.temperature == 1.27
    cal, scope = store.get("c7b87b7a-4540-4759-86ea-2e661738950e")  # unseen user -> global
    assert scope == "global" and cal.temperature == 1.38
    store.check_binding("4077fe0dba70")


# ---------------------------------------------------------------- store layout: item 25


def test_store_layout_on_save(tmp_path: Path) -> None:
    store = CalibratorStore(
        TemperatureCalibrator(1.2),
        {"zed": TemperatureCalibrator(2.0), "amy": TemperatureCalibrator(0.9)},
        method="temperature",
        model_bundle_id="run-x",
        model_schema_hash="4077fe0dba70",
        created_at="2026-04-06T00:00:00+00:00",
    )
    d = store.save(tmp_path / "store")
    meta = json.loads((d / "store.json").read_text())
    assert meta == {
        "method": "temperature",
        "user_count": 2,
        "user_ids": ["amy", "zed"],
        "model_bundle_id": "run-x",
        "model_schema_hash": "4077fe0dba70",
        "created_at": "2026-04-06T00:00:00+00:00",
    }
    assert json.loads((d / "global.json").read_text()) == {"type": "temperature", "temperature": 1.2}
    assert json.loads((d / "users" / "amy.json").read_text()) == {"type": "temperature", "temperature": 0.9}
    assert sorted(p.name for p in (d / "users").iterdir()) == ["amy.json", "zed.json"]
    assert sorted(p.name for p in d.iterdir()) == ["global.json", "store.json", "users"]
    loaded = CalibratorStore.load(d)
    assert loaded.user_ids == ["amy", "zed"]
    assert loaded.get("zed")[0].temperature == 2.0 and loaded.get("nobody")[0].temperature == 1.2
    assert (loaded.model_bundle_id, loaded.model_schema_hash, loaded.created_at) == ("run-x", "4077fe0dba70", "2026-04-06T00:00:00+00:00")


def test_store_files_are_taskclfs_json(tmp_path: Path) -> None:
    # taskclf writes json.dumps(obj, indent=2); isotonic regressors carry out_of_bounds "clip"
    store = CalibratorStore(_iso(seed=3), {"amy": TemperatureCalibrator(0.9)}, method="isotonic")
    d = store.save(tmp_path / "store")
    for f in (d / "store.json", d / "global.json", d / "users" / "amy.json"):
        text = f.read_text(encoding="utf-8")
        assert text == json.dumps(json.loads(text), indent=2), f
    g = json.loads((d / "global.json").read_text())
    assert [r["out_of_bounds"] for r in g["regressors"]] == ["clip"] * 8
    assert all(r["increasing_"] is True for r in g["regressors"])


def test_save_into_new_nested_directory_and_again(tmp_path: Path) -> None:
    store = CalibratorStore(TemperatureCalibrator(1.2), {"amy": TemperatureCalibrator(0.9), "bob": TemperatureCalibrator(2.0)})
    target = tmp_path / "a" / "b" / "store"
    d = store.save(target)
    assert d == target and store.path == str(target)
    assert store.store_id.startswith("store@")
    # saving again into the same directory (it and users/ exist) works; users no longer in the
    # store lose their file, other files are left alone
    (d / "users" / "notes.txt").write_text("kept")
    smaller = CalibratorStore(TemperatureCalibrator(1.2), {"amy": TemperatureCalibrator(1.1)})
    smaller.save(target)
    assert sorted(p.name for p in (d / "users").iterdir()) == ["amy.json", "notes.txt"]
    loaded = CalibratorStore.load(target)
    assert loaded.user_ids == ["amy"] and loaded.get("amy")[0].temperature == 1.1
    assert loaded.get("bob") == (loaded.global_calibrator, "global")


def test_utc_now_iso_is_whole_seconds_utc() -> None:
    import re

    from taskclf_daemon.pipeline.calibration import utc_now_iso

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", utc_now_iso())


def test_isotonic_apply_computes_in_float64() -> None:
    cal = _iso(seed=5)
    P = _rand_probs(10, seed=6)
    want = cal.apply(P)
    np.testing.assert_array_equal(cal.apply(P.astype(np.float32)), cal.apply(P.astype(np.float32).astype(np.float64)))
    assert cal.apply(P.astype(np.float32)).dtype == np.float64
    # probabilities given as a list of lists (e.g. parsed JSON) work the same
    np.testing.assert_array_equal(cal.apply(P.tolist()), want)
    # an integer (one-hot) row is not truncated to integers
    onehot = np.eye(8, dtype=np.int64)[:2]
    out = cal.apply(onehot)
    assert out.dtype == np.float64 and np.allclose(out.sum(axis=1), 1.0) and (out > 0).all()


def test_store_without_users_or_binding(tmp_path: Path) -> None:
    d = CalibratorStore(IdentityCalibrator(), {}, method="isotonic").save(tmp_path / "s")
    assert not (d / "users").exists()
    meta = json.loads((d / "store.json").read_text())
    assert meta == {"method": "isotonic", "user_count": 0, "user_ids": []}  # binding fields omitted when None
    loaded = CalibratorStore.load(d)
    assert loaded.method == "isotonic" and loaded.user_ids == []


def test_legacy_store_loads_with_none_binding(tmp_path: Path) -> None:
    d = tmp_path / "legacy"
    (d / "users").mkdir(parents=True)
    (d / "store.json").write_text(json.dumps({"user_count": 1, "user_ids": ["u1"]}))
    (d / "global.json").write_text(json.dumps({"type": "temperature", "temperature": 1.5}))
    (d / "users" / "u1.json").write_text(json.dumps({"type": "temperature", "temperature": 3.0}))
    store = CalibratorStore.load(d)
    assert store.model_bundle_id is None and store.model_schema_hash is None and store.created_at is None
    assert store.method == "temperature"
    assert store.get("u1")[0].temperature == 3.0
    store.check_binding("a15f4751a947")  # an unbound store passes any model


def test_listed_user_without_file_gets_global(tmp_path: Path) -> None:
    d = tmp_path / "s"
    d.mkdir()
    (d / "store.json").write_text(json.dumps({"method": "temperature", "user_count": 1, "user_ids": ["ghost"]}))
    (d / "global.json").write_text(json.dumps({"type": "identity"}))
    store = CalibratorStore.load(d)
    assert store.get("ghost") == (store.global_calibrator, "global")


@pytest.mark.parametrize("missing", ["store.json", "global.json"])
def test_store_missing_file_refused(tmp_path: Path, missing: str) -> None:
    d = CalibratorStore(IdentityCalibrator(), {"a": TemperatureCalibrator(2.0)}).save(tmp_path / "s")
    (d / missing).unlink()
    with pytest.raises(ArtifactError) as ei:
        CalibratorStore.load(d)
    assert missing in str(ei.value)


def test_store_unreadable_user_file_refused(tmp_path: Path) -> None:
    d = CalibratorStore(IdentityCalibrator(), {"a": TemperatureCalibrator(2.0)}).save(tmp_path / "s")
    (d / "users" / "a.json").write_text("{broken")
    with pytest.raises(ArtifactError) as ei:
        CalibratorStore.load(d)
    assert "a.json" in str(ei.value)
    assert ei.value.problem.startswith("cannot parse JSON: ") and ei.value.fix == "recreate the store"
    (d / "users" / "a.json").write_text("{}")
    (d / "store.json").write_text("[1,")
    with pytest.raises(ArtifactError) as ei:
        CalibratorStore.load(d)
    assert ei.value.path == str(d / "store.json") and ei.value.problem.startswith("cannot parse JSON: ")
    assert ei.value.fix == "run `taskclf-daemon calibrate` to create the store"


def test_calibrator_json_without_source_is_named_json() -> None:
    with pytest.raises(ArtifactError) as ei:
        calibrator_from_json({"type": "platt"})
    assert ei.value.path == "<json>"


def test_very_low_temperature_stays_finite() -> None:
    # T = 0.001 puts ln(p)/T near -700: softmax must shift by the row maximum (not add it),
    # or exp() underflows to 0 everywhere and the row becomes 0/0
    p = np.array([[0.5, 0.3, 0.1, 0.05, 0.03, 0.01, 0.005, 0.005]])
    out = TemperatureCalibrator(0.001).apply(p)
    assert np.isfinite(out).all() and out[0, 0] == 1.0 and out.sum() == 1.0
    store = CalibratorStore(TemperatureCalibrator(0.001), {})
    np.testing.assert_array_equal(store.calibrate_batch(p, ["u"])[0], out)


def test_save_leaves_no_temp_files(tmp_path: Path) -> None:
    d = _mixed_store(TemperatureCalibrator(1.1)).save(tmp_path / "s")
    names = [p.name for p in d.rglob("*")]
    assert not [n for n in names if n.endswith(".tmp")]


# ---------------------------------------------------------------- binding


def test_check_binding_refuses_other_schema_hash() -> None:
    store = CalibratorStore(IdentityCalibrator(), {}, model_schema_hash="4077fe0dba70", path="/x/store")
    store.check_binding("4077fe0dba70")
    with pytest.raises(ArtifactError) as ei:
        store.check_binding("a15f4751a947")
    assert ei.value.field == "model_schema_hash"
    assert "store.json" in str(ei.value) and "a15f4751a947" in str(ei.value)


# ---------------------------------------------------------------- unsafe user ids


UNSAFE_IDS = ["../escape", "a/b", "nul\x00id", ".hidden", "..", "ok-user", "x" * 300, "/abs/path", "..\\win", "ü-ünïcode", "a" * 150 + "/"]


def _all_files(root: Path) -> list[Path]:
    return [Path(dp) / f for dp, _dn, fn in os.walk(root) for f in fn]


def test_unsafe_user_ids_stay_inside_store(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    users = {uid: TemperatureCalibrator(round(0.5 + 0.1 * i, 2)) for i, uid in enumerate(UNSAFE_IDS)}
    CalibratorStore(TemperatureCalibrator(9.0), users).save(store_dir)
    # nothing written outside the store directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    users_dir = (store_dir / "users").resolve()
    files = _all_files(store_dir)
    user_files = [f for f in files if f.parent.name == "users"]
    assert len(user_files) == len(UNSAFE_IDS)  # one file per id, no collisions
    for f in files:
        r = f.resolve()
        assert r.parent in (store_dir.resolve(), users_dir), f
        assert len(f.name) <= 255
    assert [d for d in (store_dir / "users").iterdir() if d.is_dir()] == []
    assert (store_dir / "users" / "ok-user.json").is_file()  # safe ids stay verbatim (taskclf compatible)
    loaded = CalibratorStore.load(store_dir)
    assert loaded.user_ids == sorted(UNSAFE_IDS)
    for uid, cal in users.items():
        got, scope = loaded.get(uid)
        assert scope == "user" and got.temperature == cal.temperature, uid


def test_user_file_names_are_distinct_and_plain() -> None:
    ids = UNSAFE_IDS + ["ok", "OK", "ok.", "ok\n", "ok\r", "tab\there", "~6f6b", "h" * 300, "x" * 301]
    names = [user_file_name(u) for u in ids]
    assert len(set(names)) == len(ids)
    for uid, n in zip(ids, names):
        assert n.endswith(".json")
        assert "/" not in n and "\\" not in n and "\x00" not in n, uid
        assert not n.startswith("."), uid
        # no control characters (newline, CR, tab...) in a file name
        assert all(ch.isprintable() for ch in n), repr(uid)


def test_store_json_listing_traversal_id_without_file(tmp_path: Path) -> None:
    d = tmp_path / "s"
    (d / "users").mkdir(parents=True)
    (d / "store.json").write_text(json.dumps({"method": "temperature", "user_count": 1, "user_ids": ["../../etc/passwd"]}))
    (d / "global.json").write_text(json.dumps({"type": "temperature", "temperature": 1.5}))
    # a calibrator planted where the verbatim taskclf path would point (outside the store)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd.json").write_text(json.dumps({"type": "temperature", "temperature": 4.0}))
    (d / "passwd.json").write_text(json.dumps({"type": "temperature", "temperature": 4.0}))
    store = CalibratorStore.load(d)
    cal, scope = store.get("../../etc/passwd")
    assert scope == "global" and cal.temperature == 1.5


def _symlinked_user_store(tmp_path: Path) -> tuple[Path, str]:
    """A store whose ``users/<id>.json`` is a symlink to a calibrator outside the store."""
    d = tmp_path / "s"
    (d / "users").mkdir(parents=True)
    uid = "mallory"
    (d / "store.json").write_text(json.dumps({"method": "temperature", "user_count": 1, "user_ids": [uid]}))
    (d / "global.json").write_text(json.dumps({"type": "temperature", "temperature": 1.5}))
    outside = tmp_path / "elsewhere" / "planted.json"
    outside.parent.mkdir()
    outside.write_text(json.dumps({"type": "temperature", "temperature": 4.0}))
    (d / "users" / user_file_name(uid)).symlink_to(outside)
    assert (d / "users" / "mallory.json").is_file()  # the link resolves: only containment stops it
    return d, uid


def test_user_file_symlinked_outside_the_store_is_refused(tmp_path: Path) -> None:
    # not a silent fallback to the global calibrator: the store is broken, say which file
    d, uid = _symlinked_user_store(tmp_path)
    with pytest.raises(ArtifactError) as ei:
        CalibratorStore.load(d)
    msg = str(ei.value)
    assert str(d / "users" / "mallory.json") in msg and "outside the store's users/ directory" in msg
    assert ei.value.field == "user_ids"
    assert ei.value.fix == "replace the link with the user's calibrator file, or recreate the store"
    # the planted calibrator is never read: removing the link makes the store load, user on global
    (d / "users" / "mallory.json").unlink()
    store = CalibratorStore.load(d)
    cal, scope = store.get(uid)
    assert scope == "global" and cal.temperature == 1.5
    P = _rand_probs(3, seed=40)
    out, scopes = store.calibrate_batch(P, [uid] * 3)
    assert scopes == ["global"] * 3
    np.testing.assert_array_equal(out, TemperatureCalibrator(1.5).apply(P))


def test_user_file_symlinked_inside_the_store_is_loaded(tmp_path: Path) -> None:
    # containment is about where the file is, not about links: a link within users/ is fine
    d, uid = _symlinked_user_store(tmp_path)
    (d / "users" / "shared-target.json").write_text(json.dumps({"type": "temperature", "temperature": 2.5}))
    (d / "users" / "mallory.json").unlink()
    (d / "users" / "mallory.json").symlink_to(d / "users" / "shared-target.json")
    cal, scope = CalibratorStore.load(d).get(uid)
    assert scope == "user" and cal.temperature == 2.5


# ---------------------------------------------------------------- every refusal: file, field, problem, fix

_REFIT = "refit with `taskclf-daemon calibrate`"
_REFIT_ISO = "refit with `taskclf-daemon calibrate --method isotonic`"


@pytest.mark.parametrize(
    "obj, field, problem, fix",
    [
        (["identity"], None, "calibrator JSON must be an object", 'write {"type": "identity"|"temperature"|"isotonic", ...}'),
        ({"type": "temperature", "temperature": -1}, "temperature", "temperature must be a positive number, got -1", _REFIT),
        ({"type": "isotonic", "regressors": []}, "regressors", "regressors list must not be empty", _REFIT_ISO),
        ({"type": "isotonic", "regressors": {"a": 1}}, "regressors", "regressors list must not be empty", _REFIT_ISO),
        ({"type": "isotonic", "regressors": [{"X_thresholds_": [0.0, float("nan")], "y_thresholds_": [0.0, 1.0]}] * 8}, "regressors[0]",
         "bad isotonic regressor: X_thresholds_/y_thresholds_ must be equal-length finite lists", _REFIT_ISO),
        ({"type": "isotonic", "regressors": [{"X_thresholds_": [0.0, 1.0], "y_thresholds_": [0.0, float("inf")]}] * 8}, "regressors[0]",
         "bad isotonic regressor: X_thresholds_/y_thresholds_ must be equal-length finite lists", _REFIT_ISO),
        ({"type": "isotonic", "regressors": [{"X_thresholds_": [1.0, 0.0], "y_thresholds_": [0.0, 1.0]}] * 8}, "regressors[0]",
         "bad isotonic regressor: X_thresholds_ must be sorted ascending", _REFIT_ISO),
        ({"type": "isotonic", "regressors": [{"X_thresholds_": ["0.0", "1.0"], "y_thresholds_": [0.0, 1.0]}] * 8}, "regressors[0]",
         "bad isotonic regressor: X_thresholds_ must be a list of numbers", _REFIT_ISO),
        ({"type": "isotonic", "regressors": [{"X_thresholds_": [0.0, 1.0], "y_thresholds_": [False, True]}] * 8}, "regressors[0]",
         "bad isotonic regressor: y_thresholds_ must be a list of numbers", _REFIT_ISO),
        ({"type": "isotonic", "regressors": [{"X_thresholds_": 0.5, "y_thresholds_": 0.5}] * 8}, "regressors[0]",
         "bad isotonic regressor: X_thresholds_ must be a list of numbers", _REFIT_ISO),
        ({"type": "platt"}, "type", "Unknown calibrator type 'platt'", "use identity, temperature or isotonic"),
    ],
)
def test_every_calibrator_refusal_names_file_field_problem_and_fix(obj: Any, field: str | None, problem: str, fix: str) -> None:
    with pytest.raises(ArtifactError) as ei:
        calibrator_from_json(obj, "cal.json")
    e = ei.value
    assert (e.path, e.field, e.problem, e.fix) == ("cal.json", field, problem, fix)


def _store_dir(tmp_path: Path, meta: Any, glob: Any = None) -> Path:
    d = tmp_path / "s"
    d.mkdir()
    (d / "store.json").write_text(json.dumps(meta))
    (d / "global.json").write_text(json.dumps(glob if glob is not None else {"type": "identity"}))
    return d


@pytest.mark.parametrize(
    "case, file, field, problem, fix",
    [
        ("no_dir", None, None, "calibrator store directory does not exist", "pass --calibrator-store DIR (holding store.json and global.json) or omit it"),
        ("no_store_json", "store.json", None, "file is missing", "run `taskclf-daemon calibrate` to create the store"),
        ("no_global_json", "global.json", None, "file is missing", "recreate the store"),
        ("store_not_object", "store.json", None, "store.json is not a JSON object", "recreate the store"),
        ("user_ids_string", "store.json", "user_ids", "user_ids must be a list of strings", "recreate the store"),
        ("user_ids_numbers", "store.json", "user_ids", "user_ids must be a list of strings", "recreate the store"),
        ("bad_global", "global.json", "type", "Unknown calibrator type 'platt'", "use identity, temperature or isotonic"),
        ("bad_user", "users/amy.json", "temperature", "temperature must be a positive number, got 0", _REFIT),
    ],
)
def test_every_store_refusal_names_file_field_problem_and_fix(tmp_path: Path, case: str, file: str | None, field: str | None, problem: str, fix: str) -> None:
    meta: Any = {"method": "temperature", "user_ids": ["amy"]}
    glob: Any = None
    if case == "store_not_object":
        meta = ["amy"]
    elif case == "user_ids_string":
        meta = {"user_ids": "amy"}
    elif case == "user_ids_numbers":
        meta = {"user_ids": ["amy", 3]}
    elif case == "bad_global":
        glob = {"type": "platt"}
    d = _store_dir(tmp_path, meta, glob)
    (d / "users").mkdir()
    (d / "users" / "amy.json").write_text(json.dumps({"type": "temperature", "temperature": 0 if case == "bad_user" else 2.0}))
    if case == "no_dir":
        d = tmp_path / "absent"
    elif case in ("no_store_json", "no_global_json"):
        (d / file).unlink()
    with pytest.raises(ArtifactError) as ei:
        CalibratorStore.load(d)
    e = ei.value
    where = d if file is None else (d / "users").resolve() / "amy.json" if file.startswith("users/") else d / file
    assert (e.path, e.field, e.problem, e.fix) == (str(where), field, problem, fix)


def test_store_without_user_ids_key_has_no_users(tmp_path: Path) -> None:
    d = _store_dir(tmp_path, {"method": "temperature"}, {"type": "temperature", "temperature": 2.0})
    store = CalibratorStore.load(d)
    assert store.user_calibrators == {} and store.get("anyone")[1] == "global"
    assert store.path == str(d) and store.store_id.startswith("s@")


def test_users_after_an_unloadable_one_still_load(tmp_path: Path) -> None:
    # users/<id>.json missing for one listed user (or outside the store): the others still load
    d = _store_dir(tmp_path, {"method": "temperature", "user_ids": ["a-missing", "b-present"]})
    (d / "users").mkdir()
    (d / "users" / "b-present.json").write_text(json.dumps({"type": "temperature", "temperature": 3.0}))
    store = CalibratorStore.load(d)
    assert list(store.user_calibrators) == ["b-present"] and store.get("b-present")[0].temperature == 3.0


def test_user_file_names_of_unusual_ids() -> None:
    import hashlib

    # 100 bytes -> 200 hex digits: the longest id still spelled out in hex
    assert user_file_name("/" * 100) == "~" + "2f" * 100 + ".json"
    longer = "/" * 101
    assert user_file_name(longer) == "~h" + hashlib.sha256(longer.encode()).hexdigest() + ".json"
    # lone surrogates (possible in a decoded JSON string) are encoded, not an error
    assert user_file_name("\ud800x") == "~" + "\ud800x".encode("utf-8", "surrogatepass").hex() + ".json"
    lone_long = "\udfff" * 80
    assert user_file_name(lone_long) == "~h" + hashlib.sha256(lone_long.encode("utf-8", "surrogatepass")).hexdigest() + ".json"


def test_isotonic_thresholds_may_tie_or_be_a_single_point() -> None:
    flat = [_curve_json([0.0, 1.0], [0.0, 1.0])] * 7
    tie = calibrator_from_json({"type": "isotonic", "regressors": [_curve_json([0.0, 0.5, 0.5, 1.0], [0.0, 0.2, 0.6, 1.0])] + flat})
    single = calibrator_from_json({"type": "isotonic", "regressors": [_curve_json([0.5], [0.3])] + flat})
    assert isinstance(tie, IsotonicCalibrator) and isinstance(single, IsotonicCalibrator)
    np.testing.assert_array_equal(single.curves[0](np.array([0.0, 0.5, 1.0])), [0.3, 0.3, 0.3])


def test_isotonic_thresholds_written_as_integers_are_numbers_like_floats() -> None:
    # JSON has one number type: 0 and 0.0, or an integer beyond int64, read as the same float64
    flat = [_curve_json([0.0, 1.0], [0.0, 1.0])] * 7
    P = _rand_probs(10, seed=41)
    for ints, floats in (([0, 1], [0.0, 1.0]), ([0, 2**64], [0.0, float(2**64)])):
        a = calibrator_from_json({"type": "isotonic", "regressors": [_curve_json(ints, [0, 1])] + flat}, "iso.json")
        b = calibrator_from_json({"type": "isotonic", "regressors": [_curve_json(floats, [0.0, 1.0])] + flat}, "iso.json")
        assert isinstance(a, IsotonicCalibrator) and a.curves[0].x.dtype == np.float64
        assert a.to_json() == b.to_json() and a.curves[0].x[-1] == floats[-1]
        np.testing.assert_array_equal(a.apply(P), b.apply(P))


def test_isotonic_increasing_flag_is_kept() -> None:
    flat = [_curve_json([0.0, 1.0], [0.0, 1.0])] * 7
    dec = _curve_json([0.0, 1.0], [1.0, 0.0], increasing_=False)
    cal = calibrator_from_json({"type": "isotonic", "regressors": [dec] + flat})
    assert cal.curves[0].increasing is False and cal.to_json()["regressors"][0]["increasing_"] is False
    no_flag = {k: v for k, v in _curve_json([0.0, 1.0], [0.0, 1.0]).items() if k != "increasing_"}
    cal = calibrator_from_json({"type": "isotonic", "regressors": [no_flag] + flat})
    assert cal.curves[0].increasing is True  # sklearn's default


def test_check_binding_names_file_problem_and_fix() -> None:
    for path, where in ((None, "<store>/store.json"), ("/x/store", "/x/store/store.json")):
        with pytest.raises(ArtifactError) as ei:
            CalibratorStore(IdentityCalibrator(), {}, model_schema_hash="4077fe0dba70", path=path).check_binding("a15f4751a947")
        e = ei.value
        assert (e.path, e.field) == (where, "model_schema_hash")
        assert e.problem == "store is bound to schema hash '4077fe0dba70' but the model has 'a15f4751a947'"
        assert e.fix == "refit the store for this model with `taskclf-daemon calibrate --model-dir <bundle>`"
