"""Taxonomy mapping: core label probabilities -> user-defined buckets (spec section 7).

A taxonomy file is taskclf's YAML format (``configs/user_taxonomy_example.yaml``; see
``config/taxonomy.example.yaml`` in this repository). :func:`load_taxonomy` validates it exactly as
taskclf does (spec 12.47) and turns every problem into an :class:`ArtifactError` naming the file,
the field and the fix. :meth:`Taxonomy.map_batch` reproduces ``TaxonomyResolver.resolve`` row by
row, vectorised over the batch.

Numerical guarantees
--------------------
* Every sum is computed with the exact addition order numpy uses for a 1-D ``ndarray.sum()``
  (pairwise summation with eight accumulators), applied column-wise over the batch. The result for
  a row is therefore bit-for-bit independent of the batch it is in, and equal to taskclf's per-row
  computation. (A BLAS matmul would be faster on paper but its summation order depends on the
  batch shape and the BLAS build.)
* The input arrays are never modified.

Deliberate differences from taskclf
-----------------------------------
* A rejected row maps to ``{reject_label: 1.0}`` instead of ``{}`` (taskclf's empty dict fails its
  own sum-to-1 validator and kills the online loop; spec 13.4).
* Reweight factors must be finite (taskclf accepts NaN/inf, which poisons every probability).
* A bucket may not be named ``"Other"`` while some core label is uncovered (taskclf would emit two
  ``"Other"`` buckets that collapse into one dict key).
* A section written as an empty YAML key (``advanced:`` with everything commented out) means "all
  defaults" instead of a validation error.
* A colour must match ``#RRGGBB`` entirely (``re.fullmatch``; taskclf's ``$`` also lets a trailing
  newline through), and ``version`` must be a string or a number (taskclf would ``str()`` a list).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.labels import LABEL_INDEX, LABELS, MIXED_UNKNOWN, N_LABELS

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_COLOR",
    "FALLBACK_BUCKET",
    "Taxonomy",
    "identity_taxonomy",
    "load_taxonomy",
    "parse_taxonomy",
]

logger = logging.getLogger(__name__)

#: name of the implicit bucket that collects core labels no configured bucket covers
FALLBACK_BUCKET = "Other"
DEFAULT_COLOR = "#808080"
AGGREGATIONS: tuple[str, ...] = ("sum", "max")
DEFAULT_MIN_CONFIDENCE = 0.55

_HEX_COLOR = re.compile(r"#[0-9A-Fa-f]{6}")
_DEFAULT_VIEWS = ("mapped", "core")
_TOP_KEYS = frozenset(
    {"version", "label_schema_version", "user_id", "display", "reject", "buckets", "advanced"}
)
_BUCKET_KEYS = frozenset({"name", "description", "core_labels", "color"})
_LABEL_CHOICES = ", ".join(LABELS)
_EXAMPLE = "see config/taxonomy.example.yaml"
# pydantic's lax bool parsing, which taskclf relies on
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


# ---------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------


def _pairwise_sum(cols: Sequence[np.ndarray]) -> np.ndarray:
    """Sum columns element-wise in numpy's 1-D ``pairwise_sum`` order (no ``+0.0``)."""
    n = len(cols)
    if n < 8:
        res = cols[0].copy()
        for col in cols[1:]:
            res += col
        return res
    if n <= 128:
        acc = [c.copy() for c in cols[:8]]
        i = 8
        while i < n - (n % 8):
            for j in range(8):
                acc[j] += cols[i + j]
            i += 8
        res = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
        while i < n:
            res += cols[i]
            i += 1
        total: np.ndarray = res
        return total
    half = n // 2
    half -= half % 8
    halves: np.ndarray = _pairwise_sum(cols[:half]) + _pairwise_sum(cols[half:])
    return halves


def _row_sum(mat: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    """``mat[r, indices].sum()`` for every row r, bit-identical to numpy's 1-D reduction.

    numpy's add-reduce starts from the identity ``0.0`` and adds the pairwise sum of the values.
    """
    if len(indices) == 0:
        return np.zeros(mat.shape[0], dtype=np.float64)
    return 0.0 + _pairwise_sum([mat[:, i] for i in indices])


def _normalise_rows(mat: np.ndarray) -> None:
    """In place: divide each row by its (numpy-order) sum when that sum is > 0."""
    total = _row_sum(mat, range(mat.shape[1]))
    ok = total > 0
    np.divide(mat, total[:, None], out=mat, where=ok[:, None])


# ---------------------------------------------------------------------------
# the taxonomy
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Taxonomy:
    """A validated taxonomy, ready to map calibrated core probabilities to buckets.

    ``membership[b, j]`` is True when core label ``LABELS[j]`` (alphabetical model order) belongs
    to bucket ``buckets[b]``. ``bucket_indices`` keeps each bucket's label indices in config order
    *including repeats* (taskclf sums a label listed twice in one bucket twice); when omitted it is
    derived from ``membership``. Arrays are made read-only. Equality and hashing ignore ``source``
    and the arrays (they are determined by ``digest`` + ``bucket_indices``).
    """

    version: str
    buckets: tuple[str, ...]
    aggregation: str
    reject_label: str
    weights: np.ndarray | None = field(compare=False)
    membership: np.ndarray = field(compare=False)
    source: str = field(default="<dict>", compare=False)
    digest: str = ""
    bucket_indices: tuple[tuple[int, ...], ...] | None = None
    colors: tuple[str, ...] | None = field(default=None, compare=False)
    user_id: str | None = field(default=None, compare=False)
    label_schema_version: str = field(default="labels_v1", compare=False)
    #: parsed and range-checked but, as in taskclf, never used for mapping
    min_confidence_for_mapping: float = field(default=DEFAULT_MIN_CONFIDENCE, compare=False)
    #: parsed but, as in taskclf, never used for mapping
    include_rejected_in_reports: bool = field(default=False, compare=False)
    #: True when the implicit ``"Other"`` bucket (last) was appended for uncovered core labels
    has_fallback: bool = False

    def __post_init__(self) -> None:
        n_buckets = len(self.buckets)
        if n_buckets == 0:
            raise ValueError("a taxonomy needs at least one bucket")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        membership = np.array(self.membership, dtype=bool, copy=True)
        if membership.shape != (n_buckets, N_LABELS):
            raise ValueError(f"membership must have shape ({n_buckets}, {N_LABELS}), got {membership.shape}")
        membership.setflags(write=False)
        object.__setattr__(self, "membership", membership)
        if self.weights is not None:
            weights = np.array(self.weights, dtype=np.float64, copy=True)
            if weights.shape != (N_LABELS,):
                raise ValueError(f"weights must have shape ({N_LABELS},), got {weights.shape}")
            weights.setflags(write=False)
            object.__setattr__(self, "weights", weights)
        if self.bucket_indices is None:
            derived = tuple(tuple(int(j) for j in np.flatnonzero(row)) for row in membership)
            object.__setattr__(self, "bucket_indices", derived)
        else:
            indices = tuple(tuple(int(j) for j in idx) for idx in self.bucket_indices)
            if len(indices) != n_buckets or any(
                set(idx) != set(np.flatnonzero(row).tolist()) for idx, row in zip(indices, membership)
            ):
                raise ValueError("bucket_indices disagree with membership")
            object.__setattr__(self, "bucket_indices", indices)
        if any(not idx for idx in self.bucket_indices or ()):
            raise ValueError("every bucket needs at least one core label")

    # -- mapping -------------------------------------------------------------

    def scores(self, probs: np.ndarray) -> np.ndarray:
        """Renormalised bucket scores, shape ``(n, n_buckets)``, float64; ignores rejection.

        Row r equals taskclf's ``resolve`` bucket vector for ``probs[r]`` bit for bit, whatever
        the batch size. ``probs`` is not modified.
        """
        p = _as_probs(probs)  # always a private float64 copy
        if self.weights is not None:
            p *= self.weights
            _normalise_rows(p)
        indices = self.bucket_indices or ()
        out = np.empty((p.shape[0], len(self.buckets)), dtype=np.float64)
        for b, idx in enumerate(indices):
            if self.aggregation == "sum":
                out[:, b] = _row_sum(p, idx)
            else:
                out[:, b] = np.max(p[:, list(idx)], axis=1)
        _normalise_rows(out)
        return out

    def map_batch(
        self, probs: np.ndarray, rejected: np.ndarray | Sequence[bool] | None = None
    ) -> tuple[list[str], list[dict[str, float]]]:
        """Map calibrated probabilities ``(n, 8)`` (alphabetical label order) to buckets.

        Returns ``(labels, mapped_probs)``, one entry per row. A rejected row gets
        ``reject_label`` and ``{reject_label: 1.0}``; any other row gets the highest-scoring
        bucket (ties: earliest bucket) and ``{bucket: round(score, 6)}`` in bucket order. For
        finite input with a positive sum the values sum to 1 within ``5e-7 * n_buckets`` (rounding
        error only); an all-zero row stays all zeros. Inputs are not modified.
        """
        p = np.asarray(probs)
        if p.ndim != 2 or p.shape[1] != N_LABELS:
            raise ValueError(f"probs must have shape (n, {N_LABELS}), got {p.shape}")
        n = p.shape[0]
        if rejected is None:
            rej = np.zeros(n, dtype=bool)
        else:
            rej = np.asarray(rejected, dtype=bool)
            if rej.shape != (n,):
                raise ValueError(f"rejected must have shape ({n},), got {rej.shape}")
        scores = self.scores(p)
        best = np.argmax(scores, axis=1) if n else np.zeros(0, dtype=np.intp)
        labels: list[str] = []
        mapped: list[dict[str, float]] = []
        names = self.buckets
        for row, b, is_rej in zip(scores.tolist(), best.tolist(), rej.tolist()):
            if is_rej:
                labels.append(self.reject_label)
                mapped.append({self.reject_label: 1.0})
            else:
                labels.append(names[b])
                mapped.append({name: round(v, 6) for name, v in zip(names, row)})
        return labels, mapped

    def map_one(self, probs: np.ndarray | Sequence[float], rejected: bool = False) -> tuple[str, dict[str, float]]:
        """Single-row convenience wrapper around :meth:`map_batch` (same result bit for bit)."""
        row = np.asarray(probs).reshape(1, -1)
        labels, mapped = self.map_batch(row, np.array([rejected], dtype=bool))
        return labels[0], mapped[0]

    def describe(self) -> dict[str, Any]:
        """Provenance summary for logs and output records (JSON-serialisable)."""
        return {
            "source": self.source,
            "version": self.version,
            "digest": self.digest,
            "buckets": list(self.buckets),
            "aggregation": self.aggregation,
            "reject_label": self.reject_label,
            "reweighted": self.weights is not None,
            "has_fallback": self.has_fallback,
        }


def _as_probs(probs: np.ndarray) -> np.ndarray:
    """A private C-contiguous float64 copy of ``probs`` (2-D)."""
    p = np.array(probs, dtype=np.float64, copy=True, order="C")
    if p.ndim == 1:
        p = p.reshape(1, -1)
    if p.ndim != 2 or p.shape[1] != N_LABELS:
        raise ValueError(f"probs must have shape (n, {N_LABELS}), got {p.shape}")
    return p


# ---------------------------------------------------------------------------
# loading and validation
# ---------------------------------------------------------------------------


def load_taxonomy(path: str | Path) -> Taxonomy:
    """Load and validate a taskclf taxonomy YAML file.

    Raises :class:`ArtifactError` (never a raw OSError / YAMLError) when the file is missing,
    unreadable, not valid YAML, not a mapping at the top level, or fails validation.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(p, "taxonomy file not found", f"create it or pass the correct path ({_EXAMPLE})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(p, f"cannot read taxonomy file ({exc})", "pass a readable UTF-8 YAML file") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ArtifactError(p, f"not valid YAML ({_one_line(exc)})", "fix the YAML syntax at the position shown") from None
    return parse_taxonomy(raw, source=str(p))


def parse_taxonomy(data: Mapping[str, Any], source: str = "<dict>") -> Taxonomy:
    """Validate an already-parsed taxonomy mapping (the YAML document) and build a :class:`Taxonomy`.

    A numeric ``version`` is coerced to ``str``. Unknown keys are ignored (as in taskclf) with a
    warning. Every validation failure raises :class:`ArtifactError` naming ``source`` and the field.
    """
    v = _Validator(source)
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise v.error(None, f"the top level must be a mapping, got {kind}", f"write a YAML mapping with a 'buckets' list ({_EXAMPLE})")
    for key in data:
        if key not in _TOP_KEYS:
            logger.warning("taxonomy %s: ignoring unknown top-level key %r", source, key)

    version = v.version(data.get("version", "1.0"))
    label_schema_version = v.string(data.get("label_schema_version", "labels_v1"), "label_schema_version")
    user_id_raw = data.get("user_id")
    user_id = None if user_id_raw is None else v.string(user_id_raw, "user_id")

    display = v.section(data.get("display"), "display")
    v.boolean(display.get("show_core_labels", False), "display.show_core_labels")
    view = display.get("default_view", "mapped")
    if view not in _DEFAULT_VIEWS:
        raise v.error("display.default_view", f"must be 'mapped' or 'core', got {view!r}", "set default_view to mapped or core")
    v.string(display.get("color_theme", "default"), "display.color_theme")

    reject = v.section(data.get("reject"), "reject")
    reject_label = v.string(reject.get("mixed_label_name", MIXED_UNKNOWN), "reject.mixed_label_name")
    include_rejected = v.boolean(reject.get("include_rejected_in_reports", False), "reject.include_rejected_in_reports")

    names, descriptions, colors, indices = v.buckets(data.get("buckets"))

    advanced = v.section(data.get("advanced"), "advanced")
    aggregation = advanced.get("probability_aggregation", "sum")
    if aggregation not in AGGREGATIONS:
        raise v.error(
            "advanced.probability_aggregation",
            f"must be 'sum' or 'max', got {aggregation!r}",
            "set probability_aggregation to sum or max",
        )
    min_conf = v.number(advanced.get("min_confidence_for_mapping", DEFAULT_MIN_CONFIDENCE), "advanced.min_confidence_for_mapping")
    if not 0.0 <= min_conf <= 1.0:
        raise v.error("advanced.min_confidence_for_mapping", f"must be within [0, 1], got {min_conf!r}", "use a value between 0 and 1")
    reweights = v.reweights(advanced.get("reweight_core_labels"))

    covered = {j for idx in indices for j in idx}
    uncovered = tuple(j for j in range(N_LABELS) if j not in covered)  # alphabetical, like sorted()
    all_names = list(names)
    all_indices = list(indices)
    all_colors = list(colors)
    if uncovered and FALLBACK_BUCKET in names:
        b = names.index(FALLBACK_BUCKET)
        raise v.error(
            f"buckets[{b}].name",
            f"a bucket is named {FALLBACK_BUCKET!r} while core labels "
            f"{[LABELS[j] for j in uncovered]} are in no bucket, so the implicit {FALLBACK_BUCKET!r} "
            "bucket would duplicate it",
            f"add those labels to a bucket or rename the bucket {FALLBACK_BUCKET!r}",
        )
    if uncovered:
        logger.info(
            "taxonomy %s: core labels %s are in no bucket; mapping them to %r",
            source,
            [LABELS[j] for j in uncovered],
            FALLBACK_BUCKET,
        )
        all_names.append(FALLBACK_BUCKET)
        all_indices.append(uncovered)
        all_colors.append(DEFAULT_COLOR)
    membership = np.zeros((len(all_names), N_LABELS), dtype=bool)
    for b, idx in enumerate(all_indices):
        membership[b, list(idx)] = True

    weights: np.ndarray | None = None
    if reweights:
        weights = np.ones(N_LABELS, dtype=np.float64)
        for label, w in reweights.items():
            weights[LABEL_INDEX[label]] = w

    normalised = {
        "version": version,
        "label_schema_version": label_schema_version,
        "user_id": user_id,
        "reject": {"mixed_label_name": reject_label, "include_rejected_in_reports": include_rejected},
        "buckets": [
            {"name": n, "description": d, "core_labels": [LABELS[j] for j in idx], "color": c}
            for n, d, idx, c in zip(names, descriptions, indices, colors)
        ],
        "advanced": {
            "probability_aggregation": aggregation,
            "min_confidence_for_mapping": min_conf,
            "reweight_core_labels": dict(sorted(reweights.items())),
        },
    }
    return Taxonomy(
        version=version,
        buckets=tuple(all_names),
        aggregation=aggregation,
        reject_label=reject_label,
        weights=weights,
        membership=membership,
        source=source,
        digest=_digest(normalised),
        bucket_indices=tuple(all_indices),
        colors=tuple(all_colors),
        user_id=user_id,
        label_schema_version=label_schema_version,
        min_confidence_for_mapping=min_conf,
        include_rejected_in_reports=include_rejected,
        has_fallback=bool(uncovered),
    )


def identity_taxonomy() -> Taxonomy:
    """One bucket per core label, in alphabetical (model column) order; sum aggregation.

    taskclf's ``default_taxonomy()`` lists the buckets in ``CoreLabel`` order instead; the bucket
    scores are the same, only the dict order (and hence argmax ties) can differ.
    """
    data = {"buckets": [{"name": label, "description": f"Core label: {label}", "core_labels": [label]} for label in LABELS]}
    return parse_taxonomy(data, source="<identity>")


def _digest(config: Mapping[str, Any]) -> str:
    """First 12 hex chars of sha256 over the canonical JSON of the normalised config.

    Comments, key order, formatting and spelled-out defaults do not change the digest.
    """
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


class _Validator:
    """Field validators that raise :class:`ArtifactError` bound to one source."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, field_name: str | None, problem: str, fix: str) -> ArtifactError:
        return ArtifactError(self.source, problem, fix, field=field_name)

    def version(self, value: object) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise self.error("version", f"must be a string or a number, got {type(value).__name__}", 'write e.g. version: "1.0"')

    def string(self, value: object, name: str) -> str:
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, got {_show(value)}", f"quote the value of {name}")
        return value

    def boolean(self, value: object, name: str) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise self.error(name, f"must be true or false, got {_show(value)}", f"set {name} to true or false")

    def number(self, value: object, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(name, f"must be a number, got {_show(value)}", f"set {name} to a number")
        return float(value)

    def section(self, value: object, name: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(name, f"must be a mapping, got {_show(value)}", f"write {name} as a YAML mapping ({_EXAMPLE}) or remove it")
        return value

    def buckets(
        self, value: object
    ) -> tuple[list[str], list[str], list[str], list[tuple[int, ...]]]:
        if value is None:
            raise self.error("buckets", "no buckets defined", f"add a 'buckets' list with at least one bucket ({_EXAMPLE})")
        if not isinstance(value, list):
            raise self.error("buckets", f"must be a list of buckets, got {_show(value)}", "write buckets as a YAML list ('- name: ...')")
        if not value:
            raise self.error("buckets", "the bucket list is empty", "define at least one bucket")
        names: list[str] = []
        descriptions: list[str] = []
        colors: list[str] = []
        indices: list[tuple[int, ...]] = []
        seen: dict[str, int] = {}
        for b, bucket in enumerate(value):
            where = f"buckets[{b}]"
            if not isinstance(bucket, Mapping):
                raise self.error(where, f"must be a mapping, got {_show(bucket)}", "give each bucket name, core_labels and optionally description and color")
            for key in bucket:
                if key not in _BUCKET_KEYS:
                    logger.warning("taxonomy %s: ignoring unknown key %r in %s", self.source, key, where)
            if "name" not in bucket:
                raise self.error(f"{where}.name", "missing bucket name", "give the bucket a unique, non-empty name")
            name = self.string(bucket["name"], f"{where}.name")
            if not name:
                raise self.error(f"{where}.name", "empty bucket name", "give the bucket a unique, non-empty name")
            if name in seen:
                raise self.error(
                    f"{where}.name",
                    f"duplicate bucket name {name!r} (also buckets[{seen[name]}])",
                    "give every bucket a unique name, or merge their core_labels",
                )
            seen[name] = b
            description = self.string(bucket.get("description", ""), f"{where}.description")
            color = bucket.get("color", DEFAULT_COLOR)
            if not isinstance(color, str) or not _HEX_COLOR.fullmatch(color):
                hint = " (an unquoted # starts a YAML comment)" if color is None else ""
                raise self.error(
                    f"{where}.color",
                    f"invalid colour {color!r} in bucket {name!r}; expected #RRGGBB{hint}",
                    'write a quoted 6-digit hex colour, e.g. color: "#2E86DE"',
                )
            labels = bucket.get("core_labels")
            if labels is None or (isinstance(labels, list) and not labels):
                raise self.error(f"{where}.core_labels", f"bucket {name!r} has no core labels", f"list at least one of {_LABEL_CHOICES}")
            if not isinstance(labels, list):
                raise self.error(f"{where}.core_labels", f"must be a list, got {_show(labels)}", "write core_labels as a YAML list, e.g. [Build, Debug]")
            idx: list[int] = []
            for k, label in enumerate(labels):
                if not isinstance(label, str) or label not in LABEL_INDEX:
                    raise self.error(
                        f"{where}.core_labels[{k}]",
                        f"unknown core label {label!r} in bucket {name!r}",
                        f"use one of {_LABEL_CHOICES} (case-sensitive)",
                    )
                idx.append(LABEL_INDEX[label])
            names.append(name)
            descriptions.append(description)
            colors.append(color)
            indices.append(tuple(idx))
        return names, descriptions, colors, indices

    def reweights(self, value: object) -> dict[str, float]:
        name = "advanced.reweight_core_labels"
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(name, f"must be a mapping of core label to factor, got {_show(value)}", "write e.g. reweight_core_labels: {Build: 1.5}")
        out: dict[str, float] = {}
        for label, w in value.items():
            where = f"{name}.{label}"
            if not isinstance(label, str) or label not in LABEL_INDEX:
                raise self.error(where, f"unknown core label {label!r}", f"use one of {_LABEL_CHOICES} (case-sensitive)")
            if isinstance(w, bool) or not isinstance(w, (int, float)):
                raise self.error(where, f"reweight must be a number, got {_show(w)}", "use a finite number > 0 (1.0 = unchanged)")
            factor = float(w)
            if not math.isfinite(factor) or factor <= 0:
                raise self.error(where, f"reweight for {label!r} must be finite and > 0, got {w!r}", "use a finite number > 0 (1.0 = unchanged)")
            out[label] = factor
        return out


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
