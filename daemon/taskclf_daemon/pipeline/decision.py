"""Reject decision and taskclf-compatible rolling-majority smoothing (spec 5, 6).

* Reject: ``confidence = max(calibrated)``; rejected iff a threshold applies and
  ``confidence < threshold`` (strict: equality is accepted). Per-user thresholds beat the global
  one; a ``None`` global threshold disables rejection for users without their own.
* Smoothing, taskclf online mode ("trailing"): the post-reject label (``Mixed/Unknown`` when
  rejected) is appended to the user's buffer of the last ``w`` labels, and taskclf's centred
  ``rolling_majority`` is evaluated at the last position: the majority of the last ``w//2 + 1``
  labels, the leftmost winner on count ties, and the current label kept when it ties the winner.
  With ``w <= 3`` the label never changes (as in taskclf).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableSequence, Sequence

import numpy as np


def thresholds_for(user_ids: Sequence[str], global_threshold: float | None, per_user: Mapping[str, float]) -> np.ndarray:
    """Per-row thresholds; NaN where no threshold applies."""
    g = np.nan if global_threshold is None else float(global_threshold)
    if not per_user:
        return np.full(len(user_ids), g, dtype=np.float64)
    return np.fromiter((per_user.get(u, g) for u in user_ids), dtype=np.float64, count=len(user_ids))


def reject_mask(confidence: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``confidence < threshold`` (strict); NaN thresholds never reject."""
    with np.errstate(invalid="ignore"):
        return confidence < thresholds


def rolling_majority(labels: Sequence[object], window: int = 3) -> list[object]:
    """taskclf's centred rolling majority (batch form): ties with the original keep the original."""
    n = len(labels)
    if window <= 1 or n == 0:
        return list(labels)
    half = window // 2
    out = []
    for i in range(n):
        out.append(_majority_at(labels[max(0, i - half): min(n, i + half + 1)], labels[i]))
    return out


def _majority_at(window_slice: Sequence[object], current: object) -> object:
    counts: dict[object, int] = {}
    for lab in window_slice:
        counts[lab] = counts.get(lab, 0) + 1
    winner, best = current, -1
    for lab, c in counts.items():  # insertion order: leftmost wins count ties
        if c > best:
            winner, best = lab, c
    return current if counts[current] == best else winner


def smooth_trailing(buffer: MutableSequence[int], label: int, window: int) -> int:
    """Append ``label`` to the user's smoothing buffer and return the smoothed label (taskclf online).

    ``buffer`` keeps its own last labels (``state.LabelRing`` or a ``deque`` with ``maxlen``)."""
    buffer.append(label)
    n = len(buffer)
    if window <= 3 or n == 1:
        # the last w//2+1 <= 2 labels: a 1-1 tie keeps the current label, so nothing changes
        return label
    k = min(window // 2 + 1, n)
    tail = [buffer[i] for i in range(n - k, n)]
    return _majority_at(tail, label)  # type: ignore[return-value]
