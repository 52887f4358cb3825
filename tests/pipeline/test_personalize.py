"""Candidates and the gate (pipeline/personalize.py) and the personal model (pipeline/personal_model.py)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.pipeline.calibfit import fit_temperature
from taskclf_daemon.pipeline.calibration import IdentityCalibrator, TemperatureCalibrator
from taskclf_daemon.pipeline.head_features import N_EXTRAS
from taskclf_daemon.pipeline.personal_model import PersonalModel
from taskclf_daemon.pipeline.personalize import Evidence, GateConfig, decide, eligibility

DAY = 86_400_000_000
T0 = 1_773_014_400_000_000  # 2026-03-09T00:00:00Z
GLOBAL = PersonalModel.from_calibrator(IdentityCalibrator(), "global")
PERM = np.array([0, 3, 2, 1, 4, 6, 5, 7])  # the user's word for what the model calls k


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _evidence(kind: str, n: int = 800, days: int = 4, seed: int = 0) -> Evidence:
    """Raw probabilities of a calibrated model that is right ~80% of the time, and the
    user's labels: as the model's truth (normal), permuted (swap) or uniform noise."""
    rng = np.random.default_rng(seed)
    mode = rng.choice(8, size=n, p=[0.1, 0.25, 0.1, 0.2, 0.1, 0.1, 0.1, 0.05])
    z = rng.normal(0.0, 1.0, (n, 8))
    z[np.arange(n), mode] += 3.5
    raw = _softmax(z)
    # the truth is drawn from the raw probabilities: the model is calibrated for a normal user
    truth = (raw.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1).clip(0, 7)
    y = {"normal": truth, "swap": PERM[truth], "noise": rng.integers(0, 8, n)}[kind]
    ts = T0 + np.sort(rng.integers(0, days * DAY, n)) // 60_000_000 * 60_000_000
    return Evidence(ts.astype(np.int64), y.astype(np.int64), raw, rng.normal(0.0, 1.0, (n, N_EXTRAS)))


def test_eligibility_is_taskclfs_thresholds() -> None:
    ev = _evidence("normal", n=200, days=3)
    assert eligibility(ev).to_json() == {"labeled_windows": 200, "labeled_days": 3, "distinct_labels": 8, "is_eligible": True}
    assert not eligibility(ev.take(slice(0, 199))).is_eligible
    two_days = Evidence(ev.ts_us % (2 * DAY) + T0, ev.y, ev.raw, ev.extras)
    assert eligibility(two_days).labeled_days == 2 and not eligibility(two_days).is_eligible
    two_labels = Evidence(ev.ts_us, ev.y % 2, ev.raw, ev.extras)
    assert eligibility(two_labels).distinct_labels == 2 and not eligibility(two_labels).is_eligible
    d = decide(two_labels, GLOBAL, T0)
    assert d.adopted is None and d.reason == "not eligible" and d.candidates == ()


def test_swapped_labels_adopt_a_head_that_fixes_them() -> None:
    ev = _evidence("swap")
    d = decide(ev, GLOBAL, int(ev.ts_us[-1]))
    assert (d.n_fit, d.n_holdout) == (560, 240)
    by = {c.kind: c for c in d.candidates}
    assert list(by) == ["temperature", "isotonic", "head"]
    assert d.adopted is not None and d.adopted.kind == "head" and by["head"].qualifies
    assert d.in_force_scores is not None and d.in_force_scores.macro_f1 < 0.45
    assert by["head"].scores.macro_f1 > d.in_force_scores.macro_f1 + 0.3
    assert by["head"].scores.nll < d.in_force_scores.nll - 1.0
    assert not by["temperature"].qualifies  # argmax-preserving: cannot undo a permutation
    assert d.adopted.version.startswith("h1-") and d.adopted.fitted_at_us == int(ev.ts_us[-1])
    js = d.to_json()
    assert js["adopted"] == {"kind": "head", "version": d.adopted.version} and len(js["candidates"]) == 3


def test_noise_labels_are_refused() -> None:
    d = decide(_evidence("noise", seed=3), GLOBAL, T0)
    assert d.adopted is None and d.eligibility.is_eligible
    assert d.baseline_nll is not None and all(not c.qualifies for c in d.candidates)
    # temperature does lower the NLL of noise labels (it flattens), but not below the label baseline
    temp = next(c for c in d.candidates if c.kind == "temperature")
    assert d.in_force_scores is not None and temp.scores.nll < d.in_force_scores.nll - 0.5
    assert "label-frequency baseline" in temp.why


def test_well_calibrated_normal_user_keeps_global_and_a_bad_personal_model_is_dropped() -> None:
    ev = _evidence("normal", seed=4)
    d = decide(ev, GLOBAL, T0)
    assert d.adopted is None and not d.revert_to_global
    bad = PersonalModel("user", "temperature", 1, TemperatureCalibrator(0.2))
    d2 = decide(ev, bad, T0, global_model=GLOBAL)
    assert d2.in_force_scores is not None and d2.global_scores is not None
    assert d2.global_scores.nll < d2.in_force_scores.nll
    # no candidate beats the (well calibrated) global calibrator by the margin: back to global
    assert d2.adopted is None and d2.revert_to_global and "back to global" in d2.reason
    assert d2.in_force_scores.nll > 2.5 and d2.global_scores.nll < 0.95


def test_overconfident_user_gets_a_flatter_calibrator_with_taskclfs_temperature() -> None:
    ev = _evidence("normal", seed=5)
    sharp = Evidence(ev.ts_us, ev.y, _softmax(np.log(ev.raw) * 3.0), ev.extras)
    d = decide(sharp, GLOBAL, T0, GateConfig(candidates=("temperature",)))
    assert d.adopted is not None and d.adopted.kind == "temperature"
    t = d.adopted.calibrator.temperature  # type: ignore[attr-defined]
    assert t == fit_temperature(sharp.raw[:560], sharp.y[:560]) and 2.0 < t < 4.0


def test_same_evidence_same_bytes_and_json_round_trip() -> None:
    ev = _evidence("swap", seed=6)
    a = decide(ev, GLOBAL, T0).adopted
    b = decide(ev, GLOBAL, T0).adopted
    assert a is not None and b is not None and a.to_bytes() == b.to_bytes()
    back = PersonalModel.from_json(orjson.loads(a.to_bytes()))
    assert back.to_bytes() == a.to_bytes() and back.version == a.version
    assert np.array_equal(back.apply(ev.raw, ev.extras), a.apply(ev.raw, ev.extras))
    # row-independent: each row alone gives the same bits as in the batch
    full = a.apply(ev.raw, ev.extras)
    for i in (0, 17, 500):
        assert np.array_equal(a.apply(ev.raw[i : i + 1], ev.extras[i : i + 1])[0], full[i])
    tampered = dict(orjson.loads(a.to_bytes()), version="h1-00000000")
    with pytest.raises(ArtifactError, match="does not match the parameters"):
        PersonalModel.from_json(tampered)
    with pytest.raises(ArtifactError, match="not a personal model"):
        PersonalModel.from_json({"type": "temperature", "temperature": 1.5})
