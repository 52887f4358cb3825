"""taskclf's drift statistics (spec 10) and the reference profile a bundle carries.

The statistics, as taskclf's ``core/drift.py`` defines them:

* **PSI** of each of the 16 numerical features (:data:`DRIFT_FEATURES`): non-finite values
  dropped; fewer than 2 values on either side => 0.0; bin edges = the unique reference
  percentiles at 0, 10, ..., 100; fewer than 2 edges (a constant feature) => 0.0; both sides
  histogrammed on those edges as ``np.histogram`` does (``[e_i, e_i+1)``, the last bin closed,
  values outside the reference range dropped; nothing left on a side => 0.0); shares clipped
  at 1e-8; ``PSI = sum((cur - ref) * ln(cur / ref))``.
* **reject rate**: the share of windows whose post-reject label is Mixed/Unknown.
* **mean entropy** of the calibrated probabilities, ``-sum(p ln p)`` with ``p`` clipped to
  ``[1e-8, 1]``.
* **class shares** of the post-reject labels (the 8 labels and Mixed/Unknown).

A :class:`ReferenceProfile` keeps of a reference set of windows exactly what these need -- per
feature the edges and the reference count per bin (not the values), the class counts, the mean
entropy -- so a current window's statistics come from bin counts alone (streaming, see
:mod:`taskclf_daemon.pipeline.drift_window`) and equal the batch computation on the same values.
It is stored in the bundle directory as :data:`PROFILE_FILE` (taskclf ignores files it does not
know, so the bundle stays loadable by taskclf).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.labels import LABELS, MIXED_UNKNOWN

#: taskclf's ``NUMERICAL_FEATURES`` (``core/telemetry.py``), in its order
DRIFT_FEATURES: tuple[str, ...] = (
    "app_switch_count_last_5m",
    "app_foreground_time_ratio",
    "app_change_count",
    "hour_of_day",
    "session_length_so_far",
    "keys_per_min",
    "backspace_ratio",
    "shortcut_rate",
    "clicks_per_min",
    "scroll_events_per_min",
    "mouse_distance",
    "active_seconds_keyboard",
    "active_seconds_mouse",
    "active_seconds_any",
    "max_idle_run_seconds",
    "event_density",
)
#: the post-reject classes: the 8 labels (alphabetical, model column order), then Mixed/Unknown
CLASS_NAMES: tuple[str, ...] = (*LABELS, MIXED_UNKNOWN)
REJECT_CLASS = len(LABELS)
PSI_BINS = 10  # taskclf's DEFAULT_PSI_BINS
EPS = 1e-8
# taskclf's alert thresholds (core/defaults.py), used by deploy/prometheus/rules.yml (a test
# ties the rules to these): PSI > 0.2 warning, > 2 x 0.2 critical; reject rate up by >= 0.10
# critical; mean entropy > 2 x the reference warning; a class share moved by > 0.15 warning
PSI_THRESHOLD = 0.2
REJECT_RATE_INCREASE_THRESHOLD = 0.10
ENTROPY_SPIKE_MULTIPLIER = 2.0
CLASS_SHIFT_THRESHOLD = 0.15
PROFILE_FILE = "drift_reference.json"
PROFILE_FORMAT = "taskclf-daemon/drift-reference"
PROFILE_VERSION = 1
REBUILD_FIX = "rebuild it: taskclf-daemon reference --model-dir <bundle> --windows <windows.jsonl> (or delete it to run without drift metrics)"

# ------------------------------------------------------------------------------ the statistics


def finite(values: Any) -> np.ndarray:
    """The finite values of a 1-D array (None/NaN/inf dropped), as float64."""
    a = np.asarray(values, dtype=np.float64)
    return a[np.isfinite(a)]


def quantile_edges(reference: np.ndarray) -> np.ndarray:
    """The unique percentiles 0, 10, ..., 100 of the (finite) reference values."""
    return np.unique(np.percentile(reference, np.linspace(0, 100, PSI_BINS + 1)))


def psi_from_counts(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """PSI from the per-bin counts of both sides (values outside the edges already dropped)."""
    ref_total = ref_counts.sum()
    cur_total = cur_counts.sum()
    if ref_total == 0 or cur_total == 0:
        return 0.0
    ref_pct = np.clip(ref_counts.astype(np.float64) / ref_total, EPS, None)
    cur_pct = np.clip(cur_counts.astype(np.float64) / cur_total, EPS, None)
    return float(np.sum((cur_pct - ref_pct) * np.log(cur_pct / ref_pct)))


def psi(reference: Any, current: Any) -> float:
    """PSI of two samples computed directly, in one batch, as spec 10 says (the definition the
    streaming value is tested against)."""
    ref = finite(reference)
    cur = finite(current)
    if len(ref) < 2 or len(cur) < 2:
        return 0.0
    edges = quantile_edges(ref)
    if len(edges) < 2:
        return 0.0
    return psi_from_counts(np.histogram(ref, bins=edges)[0], np.histogram(cur, bins=edges)[0])


def entropy(probs: np.ndarray) -> np.ndarray:
    """Row entropy ``-sum(p ln p)`` of a probability matrix, ``p`` clipped to ``[1e-8, 1]``."""
    p = np.clip(probs, EPS, 1.0)
    out: np.ndarray = -np.sum(p * np.log(p), axis=1)
    return out


# ---------------------------------------------------------------------------- the profile


@dataclass(frozen=True, slots=True)
class FeatureReference:
    """One feature of the reference: bin edges, reference count per bin, finite and null counts.

    ``edges`` has fewer than 2 entries (and ``counts`` none) for a constant or (nearly) empty
    feature, whose PSI is always 0."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    values: int  # finite values (before dropping anything outside the edges: all are inside)
    nulls: int  # None / non-finite

    @property
    def bins(self) -> int:
        return len(self.counts)


@dataclass(frozen=True, slots=True)
class ReferenceProfile:
    """What drift is measured against: a reference set of windows, summarised."""

    features: Mapping[str, FeatureReference]
    class_counts: tuple[int, ...]  # per CLASS_NAMES
    mean_entropy: float
    windows: int
    schema_hash: str
    model_bundle_id: str
    source: str
    created_at: str

    @property
    def class_shares(self) -> tuple[float, ...]:
        n = sum(self.class_counts) or 1
        return tuple(c / n for c in self.class_counts)

    @property
    def reject_rate(self) -> float:
        return self.class_shares[REJECT_CLASS]

    def null_rate(self, feature: str) -> float:
        f = self.features[feature]
        n = f.values + f.nulls
        return f.nulls / n if n else 0.0

    @property
    def key(self) -> str:
        """Identifies the profile (a window binned on another profile's edges is not comparable)."""
        return f"{self.model_bundle_id}@{self.created_at}"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "model_bundle_id": self.model_bundle_id,
            "schema_hash": self.schema_hash,
            "source": self.source,
            "created_at": self.created_at,
            "windows": self.windows,
            "psi_bins": PSI_BINS,
            "features": {
                name: {"edges": list(f.edges), "counts": list(f.counts), "values": f.values, "nulls": f.nulls, "null_rate": self.null_rate(name)}
                for name, f in self.features.items()
            },
            "class_counts": dict(zip(CLASS_NAMES, self.class_counts)),
            "class_shares": dict(zip(CLASS_NAMES, self.class_shares)),
            "reject_rate": self.reject_rate,
            "mean_entropy": self.mean_entropy,
        }


def build_profile(values: np.ndarray, classes: np.ndarray, entropies: np.ndarray, *, schema_hash: str, model_bundle_id: str, source: str, created_at: str) -> ReferenceProfile:
    """The profile of reference windows: ``values`` (n, 16) in :data:`DRIFT_FEATURES` order with
    NaN for null, ``classes`` (n,) post-reject class ids, ``entropies`` (n,) row entropies."""
    n = len(classes)
    if n == 0 or values.shape != (n, len(DRIFT_FEATURES)) or entropies.shape != (n,):
        raise ValueError(f"reference needs n >= 1 windows with {len(DRIFT_FEATURES)} features, got values {values.shape}, classes {classes.shape}, entropies {entropies.shape}")
    feats: dict[str, FeatureReference] = {}
    for j, name in enumerate(DRIFT_FEATURES):
        ref = finite(values[:, j])
        edges = quantile_edges(ref) if len(ref) >= 2 else np.empty(0)
        counts = np.histogram(ref, bins=edges)[0] if len(edges) >= 2 else np.empty(0, dtype=np.int64)
        feats[name] = FeatureReference(tuple(edges.tolist()), tuple(int(c) for c in counts), len(ref), n - len(ref))
    class_counts = np.bincount(classes.astype(np.int64), minlength=len(CLASS_NAMES))
    return ReferenceProfile(feats, tuple(int(c) for c in class_counts), float(np.mean(entropies)), n, schema_hash, model_bundle_id, source, created_at)


# ---------------------------------------------------------------------------- reading it back


def _need(cond: bool, path: Path, field: str, problem: str) -> None:
    if not cond:
        raise ArtifactError(path, problem, REBUILD_FIX, field=field)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _feature(name: str, raw: Any, path: Path) -> FeatureReference:
    where = f"features.{name}"
    _need(isinstance(raw, dict), path, where, "not an object")
    edges, counts, nv, nn = raw.get("edges"), raw.get("counts"), raw.get("values"), raw.get("nulls")
    _need(isinstance(edges, list) and all(isinstance(e, int | float) and not isinstance(e, bool) and math.isfinite(e) for e in edges), path, f"{where}.edges", "edges must be a list of finite numbers")
    _need(all(a < b for a, b in zip(edges, edges[1:])), path, f"{where}.edges", "edges must be strictly increasing")
    _need(isinstance(counts, list) and all(_count(c) for c in counts), path, f"{where}.counts", "counts must be a list of non-negative integers")
    _need(len(counts) == (len(edges) - 1 if len(edges) >= 2 else 0), path, f"{where}.counts", f"{len(counts)} counts for {len(edges)} edges")
    _need(len(counts) <= PSI_BINS, path, f"{where}.counts", f"more than {PSI_BINS} bins")
    _need(_count(nv) and _count(nn), path, f"{where}.values", "values and nulls must be non-negative integers")
    return FeatureReference(tuple(float(e) for e in edges), tuple(counts), nv, nn)


def parse_profile(data: Any, path: Path) -> ReferenceProfile:
    """A profile from its JSON document; anything malformed raises ArtifactError naming the field."""
    _need(isinstance(data, dict), path, "(document)", "not a JSON object")
    _need(data.get("format") == PROFILE_FORMAT, path, "format", f"format is {data.get('format')!r}, expected {PROFILE_FORMAT!r}")
    _need(data.get("version") == PROFILE_VERSION, path, "version", f"version {data.get('version')!r} is not supported (this daemon reads version {PROFILE_VERSION})")
    _need(data.get("psi_bins") == PSI_BINS, path, "psi_bins", f"psi_bins is {data.get('psi_bins')!r}, expected {PSI_BINS}")
    feats = data.get("features")
    _need(isinstance(feats, dict) and sorted(feats) == sorted(DRIFT_FEATURES), path, "features", f"expected exactly taskclf's {len(DRIFT_FEATURES)} numerical features")
    classes = data.get("class_counts")
    _need(isinstance(classes, dict) and sorted(classes) == sorted(CLASS_NAMES) and all(_count(v) for v in classes.values()), path, "class_counts", f"expected a count for each of {list(CLASS_NAMES)}")
    windows = data.get("windows")
    _need(_count(windows) and windows > 0 and sum(classes.values()) == windows, path, "windows", "windows must be the (positive) sum of class_counts")
    ent = data.get("mean_entropy")
    _need(isinstance(ent, int | float) and not isinstance(ent, bool) and math.isfinite(ent) and ent >= 0, path, "mean_entropy", "must be a finite number >= 0")
    for k in ("schema_hash", "model_bundle_id", "source", "created_at"):
        _need(isinstance(data.get(k), str), path, k, "must be a string")
    features = {name: _feature(name, feats[name], path) for name in DRIFT_FEATURES}
    for name, f in features.items():
        _need(f.values + f.nulls == windows, path, f"features.{name}.values", f"values + nulls = {f.values + f.nulls}, but the profile has {windows} windows")
    return ReferenceProfile(
        features,
        tuple(classes[c] for c in CLASS_NAMES),
        float(ent),
        windows,
        data["schema_hash"],
        data["model_bundle_id"],
        data["source"],
        data["created_at"],
    )


def load_profile(bundle_dir: str | Path, schema_hash: str) -> ReferenceProfile | None:
    """The bundle's reference profile, None when it has none.

    :raises ArtifactError: unreadable or malformed, or made for another feature schema"""
    path = Path(bundle_dir) / PROFILE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(path, f"cannot read the drift reference: {exc}", REBUILD_FIX) from None
    prof = parse_profile(data, path)
    _need(prof.schema_hash == schema_hash, path, "schema_hash", f"profile made for schema hash {prof.schema_hash!r}, the bundle's is {schema_hash!r}")
    return prof


def write_profile(profile: ReferenceProfile, path: str | Path) -> Path:
    """Write the profile (atomically: a temporary file renamed into place)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(profile.to_json(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(p)
    return p


def class_ids(names: Sequence[str]) -> np.ndarray:
    """Post-reject class ids of label names (offline helpers and tests)."""
    index = {c: i for i, c in enumerate(CLASS_NAMES)}
    return np.asarray([index[n] for n in names], dtype=np.int64)
