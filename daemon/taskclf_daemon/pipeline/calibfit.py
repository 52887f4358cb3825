"""taskclf's calibrator fitters (spec 4), pure: used offline (``calibrate``) and by the learning loop.

* temperature: minimise mean NLL over a grid -- incumbent ``T = 1.0``; coarse
  ``np.arange(0.1, 5.05, 0.1)``; fine ``np.arange(max(0.01, T* - 0.1), T* + 0.1 + 0.005, 0.01)``;
  a grid value replaces the incumbent only on a *strictly* lower NLL; result rounded to 4 dp;
* isotonic: one ``IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip")`` per class on
  ``(p[:, c], y == c)``, kept as :class:`IsotonicCurve`.
"""

from __future__ import annotations

import numpy as np

from taskclf_daemon.pipeline.calibration import IsotonicCalibrator, IsotonicCurve

_EPS = 1e-12


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (probabilities floored at 1e-12)."""
    p = np.asarray(probs, dtype=np.float64)
    yy = np.asarray(y, dtype=np.int64)
    sel = p[np.arange(len(yy)), yy]
    return -float(np.mean(np.log(np.clip(sel, _EPS, None))))


def _check(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    yy = np.asarray(y, dtype=np.int64)
    if p.ndim != 2 or yy.ndim != 1 or p.shape[0] != yy.shape[0] or p.shape[0] == 0:
        raise ValueError(f"need probs (n, K) and y (n,) with n > 0, got {p.shape} and {yy.shape}")
    if yy.min() < 0 or yy.max() >= p.shape[1]:
        raise ValueError("labels must be class indices in [0, K)")
    return p, yy


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """taskclf's two-pass grid search for the NLL-minimising temperature.

    Guarantees: the result lies in [0.01, 5.1] and has at most 4 decimals; it is exactly 1.0
    when no grid value strictly beats ``T = 1``.
    """
    p, yy = _check(probs, y)
    logits = np.log(np.clip(p, _EPS, None))
    rows = np.arange(len(yy))

    def score(t: float) -> float:
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        q = e / e.sum(axis=1, keepdims=True)
        return -float(np.mean(np.log(np.clip(q[rows, yy], _EPS, None))))

    best_t = 1.0
    best = score(1.0)
    for t in np.arange(0.1, 5.05, 0.1):
        s = score(float(t))
        if s < best:
            best, best_t = s, float(t)
    lo = max(0.01, best_t - 0.1)
    hi = best_t + 0.1
    for t in np.arange(lo, hi + 0.005, 0.01):
        s = score(float(t))
        if s < best:
            best, best_t = s, float(t)
    return round(best_t, 4)


def fit_isotonic(probs: np.ndarray, y: np.ndarray) -> IsotonicCalibrator:
    """One sklearn ``IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip")`` per class,
    kept as :class:`IsotonicCurve` (its ``X_thresholds_``, ``y_thresholds_``, ``X_min_``,
    ``X_max_``, ``increasing_``); applying the curve equals sklearn's ``predict``."""
    from sklearn.isotonic import IsotonicRegression

    p, yy = _check(probs, y)
    curves = []
    for c in range(p.shape[1]):
        reg = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        reg.fit(p[:, c], (yy == c).astype(np.float64))
        curves.append(IsotonicCurve(np.asarray(reg.X_thresholds_, dtype=np.float64), np.asarray(reg.y_thresholds_, dtype=np.float64), float(reg.X_min_), float(reg.X_max_), bool(reg.increasing_)))
    return IsotonicCalibrator(tuple(curves))
