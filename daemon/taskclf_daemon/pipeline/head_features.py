"""The features of the per-user head: the base model's log-probabilities + 8 of the user's extras.

Per window, taken from what the pipeline computed anyway (no second pass over the input):

* ``logp_<Label>`` (8): ``ln(max(p_raw, 1e-12))`` of the raw (uncalibrated) model probabilities;
* :data:`HEAD_EXTRAS` (8): from the user's history overlay (``pipeline/features.py``) --
  ``ln(1 + x)`` of the app switches in the last 15 minutes, the rolling 5- and 15-row means of
  keys/min and of mouse distance, and the session length so far (null -> 0); and the hour of
  day of the encoded model row as ``sin``/``cos`` of ``2 pi h / 24``.

Evidence stores the raw probabilities and the extras (float32); the log-probabilities are
derived at fit and apply time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from taskclf_daemon.labels import LABELS
from taskclf_daemon.schema import OVERLAY_COLUMNS

_LOG1P_OVERLAY = ("app_switch_count_last_15m", "keys_per_min_rolling_5", "keys_per_min_rolling_15", "mouse_distance_rolling_5", "mouse_distance_rolling_15", "session_length_so_far")
HEAD_EXTRAS: tuple[str, ...] = tuple(f"log1p_{c}" for c in _LOG1P_OVERLAY) + ("hour_sin", "hour_cos")
HEAD_FEATURES: tuple[str, ...] = tuple(f"logp_{name}" for name in LABELS) + HEAD_EXTRAS
N_EXTRAS = len(HEAD_EXTRAS)
_OVERLAY_IDX = tuple(OVERLAY_COLUMNS.index(c) for c in _LOG1P_OVERLAY)
_FLOOR = 1e-12


def extras_batch(overlays: Sequence[tuple[float | None, ...]], hours: np.ndarray | None) -> np.ndarray:
    """(n, 8) head extras of a batch: ``overlays`` as the pipeline computed them, ``hours`` the
    encoded ``hour_of_day`` column (None when the schema has none: 0, 0)."""
    n = len(overlays)
    out = np.zeros((n, N_EXTRAS), dtype=np.float64)
    if n:
        log1p = math.log1p
        cols = [[log1p(v) if v is not None and v > 0 else 0.0 for v in col] for col in [[ov[j] for ov in overlays] for j in _OVERLAY_IDX]]
        out[:, : len(_OVERLAY_IDX)] = np.array(cols, dtype=np.float64).T
    if hours is not None and n:
        ang = np.asarray(hours, dtype=np.float64) * (2.0 * math.pi / 24.0)
        out[:, -2] = np.sin(ang)
        out[:, -1] = np.cos(ang)
    return out


def matrix_columns(feature_columns: Sequence[str]) -> tuple[int, ...] | None:
    """Where the model row holds the overlay values the extras are made of (None: not all)."""
    cols = list(feature_columns)
    return tuple(cols.index(c) for c in _LOG1P_OVERLAY) if all(c in cols for c in _LOG1P_OVERLAY) else None


def extras_from_matrix(X: np.ndarray, columns: Sequence[int], hours: np.ndarray | None) -> np.ndarray:
    """:func:`extras_batch` from the encoded model rows ``X`` (an overlay value there is the
    overlay's float, ``None`` is 0.0, so ``ln(1 + x)`` of the positive ones is the same; numpy's
    ``log1p``, which may differ from ``math.log1p`` in the last bit), vectorised."""
    n = X.shape[0]
    out = np.zeros((n, N_EXTRAS), dtype=np.float64)
    if n:
        v = X[:, list(columns)]
        pos = v > 0
        out[:, : len(columns)] = np.log1p(np.where(pos, v, 0.0)) * pos
        if hours is not None:
            ang = np.asarray(hours, dtype=np.float64) * (2.0 * math.pi / 24.0)
            out[:, -2] = np.sin(ang)
            out[:, -1] = np.cos(ang)
    return out


def head_matrix(raw: np.ndarray, extras: np.ndarray) -> np.ndarray:
    """(n, 16) head features: ``[ln raw probs, extras]``."""
    return np.concatenate([np.log(np.clip(np.asarray(raw, dtype=np.float64), _FLOOR, None)), np.asarray(extras, dtype=np.float64)], axis=1)
