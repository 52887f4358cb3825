"""Scores of class probabilities against labels: NLL, accuracy, macro-F1, ECE, reliability bins.

* NLL: mean ``-ln(max(p_true, 1e-12))`` (taskclf's calibration objective);
* macro-F1: unweighted mean of per-class F1 over the classes present in the labels or the
  predictions (sklearn's ``f1_score(average="macro")`` with its default label set; a class with
  no true and no predicted window does not count; 0/0 precision or recall counts as 0);
* ECE: ``sum_b (n_b / n) * |accuracy_b - confidence_b|`` over ``bins`` equal-width bins of the
  top-class probability (a confidence of exactly 1.0 falls in the last bin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from taskclf_daemon.pipeline.calibfit import nll

DEFAULT_ECE_BINS = 10


@dataclass(frozen=True)
class Scores:
    n: int
    nll: float
    accuracy: float
    macro_f1: float
    ece: float

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "nll": round(self.nll, 6), "accuracy": round(self.accuracy, 6), "macro_f1": round(self.macro_f1, 6), "ece": round(self.ece, 6)}


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    yy = np.asarray(y, dtype=np.int64)
    pp = np.asarray(pred, dtype=np.int64)
    classes = np.union1d(yy, pp)
    if classes.size == 0:
        return 0.0
    f1s = []
    for c in classes.tolist():
        tp = float(np.sum((yy == c) & (pp == c)))
        fp = float(np.sum((yy != c) & (pp == c)))
        fn = float(np.sum((yy == c) & (pp != c)))
        denom = 2 * tp + fp + fn
        f1s.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1s))


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = DEFAULT_ECE_BINS) -> list[tuple[int, float, float]]:
    """Per confidence bin: (count, mean confidence, accuracy); empty bins as (0, nan, nan)."""
    p = np.asarray(probs, dtype=np.float64)
    conf = p.max(axis=1)
    hit = (p.argmax(axis=1) == np.asarray(y, dtype=np.int64)).astype(np.float64)
    idx = np.minimum((conf * bins).astype(np.int64), bins - 1)
    out: list[tuple[int, float, float]] = []
    for b in range(bins):
        m = idx == b
        k = int(m.sum())
        out.append((k, float(conf[m].mean()) if k else float("nan"), float(hit[m].mean()) if k else float("nan")))
    return out


def ece(probs: np.ndarray, y: np.ndarray, bins: int = DEFAULT_ECE_BINS) -> float:
    n = len(y)
    if n == 0:
        return 0.0
    return float(sum(k / n * abs(acc - c) for k, c, acc in reliability(probs, y, bins) if k))


def score(probs: np.ndarray, y: np.ndarray) -> Scores:
    """All four scores of (n, K) probabilities against class indices ``y`` (n > 0)."""
    p = np.asarray(probs, dtype=np.float64)
    yy = np.asarray(y, dtype=np.int64)
    pred = p.argmax(axis=1)
    return Scores(len(yy), nll(p, yy), float(np.mean(pred == yy)), macro_f1(yy, pred), ece(p, yy))
