"""Streaming drift: a sliding window of the most recent windows, kept as bin counts.

Per micro-batch (:meth:`DriftTap.observe`, vectorised, a few numpy calls per batch):

* :class:`DriftObserver` takes from the batch what the statistics need -- the 16 numerical
  features (null -> NaN; ``session_length_so_far`` as overlaid, i.e. what the model saw), the
  post-reject class, the row entropy of the calibrated probabilities, and per categorical
  column how many windows carry a value outside the bundle's vocabulary;
* :class:`DriftWindow` writes them into a ring of the last ``capacity`` windows (a copy).

:meth:`DriftWindow.counts` (off the hot path, every ``drift_refresh_s``) turns each feature
value of the ring into a *slot* -- null, outside the reference range, or its reference bin --
and sums the ring into :class:`DriftCounts` (slot counts per feature, class counts, entropy
sum): small, picklable, and additive across shards
(:func:`merge_counts`). :func:`drift_values` turns them into taskclf's statistics against the
reference profile; the PSI of a window equals :func:`taskclf_daemon.pipeline.drift.psi` over
the same values exactly (the slots reproduce ``np.histogram``'s bins on the reference edges).

Nothing here changes an output: the tap only reads the batch's arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import NamedTuple

import numpy as np

from taskclf_daemon.pipeline.drift import CLASS_NAMES, DRIFT_FEATURES, PSI_BINS, REJECT_CLASS, ReferenceProfile, entropy, psi_from_counts
from taskclf_daemon.pipeline.model import ModelBundle
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.schema import OVERLAY_COLUMNS

NULL_SLOT = 0  # None / non-finite
OUT_SLOT = 1  # finite but outside the reference edges (np.histogram drops it)
SLOTS = PSI_BINS + 2  # then bin i at slot 2 + i
_NF = len(DRIFT_FEATURES)
_NC = len(CLASS_NAMES)
#: required, non-nullable fields of the FeatureRow contract (the decoder refuses a null): read
#: from the model matrix, where they are exact; the nullable ones from the window's values
NEVER_NULL = frozenset({"app_switch_count_last_5m", "app_foreground_time_ratio", "app_change_count", "hour_of_day"})


class BatchArrays(NamedTuple):
    """What a micro-batch hands to the drift tap: the applied windows, the model matrix, the
    calibrated probabilities and the post-reject class ids (Mixed/Unknown = 8), row-aligned."""

    windows: Sequence[FeatureWindow]
    X: np.ndarray
    probs: np.ndarray
    classes: np.ndarray


class DriftObserver:
    """Reads one bundle's batches: where each statistic's input is."""

    def __init__(self, bundle: ModelBundle) -> None:
        cols = bundle.schema.feature_columns
        self.bundle = bundle
        # overlaid features as the model saw them, and never-null ones: the matrix column
        from_x = OVERLAY_COLUMNS + tuple(NEVER_NULL)
        self._direct = [j for j, f in enumerate(DRIFT_FEATURES) if f not in from_x]
        self._get = itemgetter(*(DRIFT_FEATURES[j] for j in self._direct))
        self._from_x = [j for j, f in enumerate(DRIFT_FEATURES) if f in from_x]
        self._x_cols = [cols.index(DRIFT_FEATURES[j]) for j in self._from_x]
        self.categorical: list[tuple[str, int, int]] = [
            (c, cols.index(c), enc.unknown) for c in bundle.schema.categorical_columns if (enc := bundle.encoders.get(c)) is not None
        ]

    def values(self, windows: Sequence[FeatureWindow], X: np.ndarray) -> np.ndarray:
        """(n, 16) float64 in DRIFT_FEATURES order, NaN where null."""
        out = np.empty((len(windows), _NF), dtype=np.float64)
        get = self._get
        out[:, self._direct] = np.array([get(w.values) for w in windows], dtype=np.float64)
        out[:, self._from_x] = X[:, self._x_cols]
        return out

    def unseen(self, X: np.ndarray) -> dict[str, int]:
        """Per categorical column: windows coded as ``__unknown__`` (or -1), i.e. not in the vocabulary."""
        return {c: int(np.count_nonzero(X[:, j] == code)) for c, j, code in self.categorical}


@dataclass(slots=True)
class DriftCounts:
    """A sliding window summarised (additive across shards with the same profile)."""

    profile: ReferenceProfile
    slots: np.ndarray  # (16, SLOTS) int64
    classes: np.ndarray  # (9,) int64
    entropy_sum: float
    windows: int
    #: since start, never reset: nulls per feature, unseen categories per categorical column
    nulls_total: np.ndarray = field(default_factory=lambda: np.zeros(_NF, dtype=np.int64))
    unseen_total: dict[str, int] = field(default_factory=dict)
    #: why collecting stopped (the shard went on without drift), None while it works
    error: str | None = None


class DriftWindow:
    """The ring of the last ``capacity`` windows' feature values, classes and entropies, for one
    profile (~150 bytes per window)."""

    def __init__(self, profile: ReferenceProfile, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.profile = profile
        self.capacity = capacity
        feats = [profile.features[f] for f in DRIFT_FEATURES]
        # edges padded with +inf (never <= a finite value); bins per feature; last edge (NaN: none)
        self._edges = np.full((_NF, PSI_BINS + 1), np.inf)
        for j, f in enumerate(feats):
            if f.bins:
                self._edges[j, : len(f.edges)] = f.edges
        self._bins = np.array([f.bins for f in feats], dtype=np.int64)
        self._last = np.array([f.edges[-1] if f.bins else np.nan for f in feats])
        self._offsets = np.arange(_NF, dtype=np.int64) * SLOTS
        self._values = np.zeros((capacity, _NF), dtype=np.float64)
        self._classes = np.zeros(capacity, dtype=np.uint8)
        self._entropy = np.zeros(capacity, dtype=np.float64)
        self._pos = 0
        self.filled = 0

    def slots(self, values: np.ndarray) -> np.ndarray:
        """(n, 16) slot per value: NULL_SLOT, OUT_SLOT, or 2 + its bin as np.histogram bins it
        on the reference edges (``[e_i, e_i+1)``, the last bin closed)."""
        fin = np.isfinite(values)
        below_or_at = (values[:, :, None] >= self._edges[None, :, :]).sum(axis=2)  # edges <= v
        idx = np.where(values == self._last, self._bins - 1, below_or_at - 1)
        inside = (idx >= 0) & (idx < self._bins)
        return np.where(fin, np.where(inside, idx + 2, OUT_SLOT), NULL_SLOT).astype(np.uint8)

    def add(self, values: np.ndarray, classes: np.ndarray, entropies: np.ndarray) -> None:
        n = len(classes)
        cap = self.capacity
        if n > cap:
            values, classes, entropies = values[-cap:], classes[-cap:], entropies[-cap:]
            n = cap
        end = self._pos + n
        first = min(end, cap) - self._pos
        self._values[self._pos : self._pos + first] = values[:first]
        self._classes[self._pos : self._pos + first] = classes[:first]
        self._entropy[self._pos : self._pos + first] = entropies[:first]
        rest = n - first
        if rest:
            self._values[:rest] = values[first:]
            self._classes[:rest] = classes[first:]
            self._entropy[:rest] = entropies[first:]
        self._pos = end % cap
        self.filled = min(cap, self.filled + n)

    def counts(self) -> DriftCounts:
        k = self.filled
        slots = np.bincount((self.slots(self._values[:k]).astype(np.int64) + self._offsets).ravel(), minlength=_NF * SLOTS).reshape(_NF, SLOTS)
        classes = np.bincount(self._classes[:k], minlength=_NC).astype(np.int64)
        return DriftCounts(self.profile, slots, classes, float(self._entropy[:k].sum()), k)


class DriftTap:
    """A shard's drift collector: the observer and window of the bundle/profile in force
    (both replaced, the window emptied, when either changes) and since-start counters."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.window: DriftWindow | None = None
        self.observer: DriftObserver | None = None
        self.nulls_total = np.zeros(_NF, dtype=np.int64)
        self.unseen_total: dict[str, int] = {}
        self.error: str | None = None

    def observe(self, bundle: ModelBundle, profile: ReferenceProfile | None, arrays: BatchArrays | None) -> None:
        if profile is None or arrays is None or self.error is not None or not len(arrays.classes):
            return
        try:
            win, obs = self.window, self.observer
            if win is None or win.profile is not profile:
                win = self.window = DriftWindow(profile, self.capacity)
            if obs is None or obs.bundle is not bundle:
                obs = self.observer = DriftObserver(bundle)
            values = obs.values(arrays.windows, arrays.X)
            win.add(values, arrays.classes, entropy(arrays.probs))
            self.nulls_total += np.count_nonzero(~np.isfinite(values), axis=0)
            for c, n in obs.unseen(arrays.X).items():
                self.unseen_total[c] = self.unseen_total.get(c, 0) + n
        except Exception as exc:  # noqa: BLE001 - drift must never stop the line: stop collecting, report why
            self.error = f"{type(exc).__name__}: {exc}"

    def counts(self) -> DriftCounts | None:
        if self.window is None:
            return None
        c = self.window.counts()
        c.nulls_total = self.nulls_total.copy()
        c.unseen_total = dict(self.unseen_total)
        c.error = self.error
        return c


def merge_counts(parts: Sequence[DriftCounts | None]) -> DriftCounts | None:
    """The instance's window: the shards' counts added up. Shards on different profiles (a
    reload in progress) are not comparable: the profile covering the most windows wins."""
    present = [p for p in parts if p is not None]
    if not present:
        return None
    by_key: dict[str, list[DriftCounts]] = {}
    for p in present:
        by_key.setdefault(p.profile.key, []).append(p)
    group = max(by_key.values(), key=lambda g: sum(p.windows for p in g))
    unseen: dict[str, int] = {}
    for p in present:
        for c, n in p.unseen_total.items():
            unseen[c] = unseen.get(c, 0) + n
    return DriftCounts(
        group[0].profile,
        np.sum([p.slots for p in group], axis=0),
        np.sum([p.classes for p in group], axis=0),
        float(sum(p.entropy_sum for p in group)),
        sum(p.windows for p in group),
        np.sum([p.nulls_total for p in present], axis=0),
        unseen,
        next((p.error for p in present if p.error), None),
    )


@dataclass(frozen=True, slots=True)
class DriftValues:
    """taskclf's drift statistics of a window, next to the reference's."""

    windows: int
    psi: dict[str, float]
    null_rate: dict[str, float]
    ref_null_rate: dict[str, float]
    class_share: dict[str, float]
    ref_class_share: dict[str, float]
    reject_rate: float
    ref_reject_rate: float
    mean_entropy: float
    ref_mean_entropy: float


def feature_psi(profile: ReferenceProfile, feature: str, slot_counts: np.ndarray) -> float:
    """PSI of one feature from its slot counts in the window (spec 10's rules for too few values)."""
    ref = profile.features[feature]
    finite = int(slot_counts.sum() - slot_counts[NULL_SLOT])
    if ref.values < 2 or finite < 2 or ref.bins == 0:
        return 0.0
    return psi_from_counts(np.asarray(ref.counts, dtype=np.int64), slot_counts[2 : 2 + ref.bins])


def drift_values(c: DriftCounts) -> DriftValues:
    prof, n = c.profile, c.windows
    share = (c.classes / n).tolist() if n else [0.0] * _NC
    return DriftValues(
        windows=n,
        psi={f: feature_psi(prof, f, c.slots[j]) for j, f in enumerate(DRIFT_FEATURES)},
        null_rate={f: (int(c.slots[j, NULL_SLOT]) / n if n else 0.0) for j, f in enumerate(DRIFT_FEATURES)},
        ref_null_rate={f: prof.null_rate(f) for f in DRIFT_FEATURES},
        class_share=dict(zip(CLASS_NAMES, share)),
        ref_class_share=dict(zip(CLASS_NAMES, prof.class_shares)),
        reject_rate=share[REJECT_CLASS],
        ref_reject_rate=prof.reject_rate,
        mean_entropy=c.entropy_sum / n if n else 0.0,
        ref_mean_entropy=prof.mean_entropy,
    )


def sample_profile_inputs(observer: DriftObserver, arrays: BatchArrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, classes, entropies) of a batch, as :func:`build_profile` takes them."""
    return observer.values(arrays.windows, arrays.X), np.asarray(arrays.classes), entropy(arrays.probs)


__all__ = [
    "NULL_SLOT",
    "OUT_SLOT",
    "SLOTS",
    "BatchArrays",
    "DriftCounts",
    "DriftObserver",
    "DriftTap",
    "DriftValues",
    "DriftWindow",
    "drift_values",
    "feature_psi",
    "merge_counts",
    "sample_profile_inputs",
]
