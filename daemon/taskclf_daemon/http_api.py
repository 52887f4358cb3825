"""The JSON bodies of the HTTP API (``GET /v1/model``, ``/v1/users/{user_id}``): built from the
loaded pipeline and from a shard's :class:`~taskclf_daemon.shard_data.UserInfo`. No I/O beyond
reading the bundle's ``metrics.json`` once; the routes themselves are in ``health.py`` and the
wiring (which partition owns a user, which shard to ask) in ``daemon.py``."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import orjson

from taskclf_daemon.labels import LABELS
from taskclf_daemon.pipeline.batch import InferencePipeline
from taskclf_daemon.shard_data import UserInfo

#: the inference settings of the start-up description shown as ``policy`` by ``/v1/model``
POLICY_KEYS = (
    "policy",
    "precedence",
    "sources",
    "reject_threshold",
    "per_user_thresholds",
    "smooth_window",
    "smoothing_mode",
    "event_time_policy",
    "state_ttl_seconds",
    "taxonomy",
)


def feature_importance(pipeline: InferencePipeline) -> list[dict[str, Any]]:
    """LightGBM split gain per feature, normalised to sum 1, largest first (ties by name)."""
    bundle = pipeline.bundle
    gains = [float(g) for g in bundle.booster.feature_importance(importance_type="gain")]
    total = sum(gains)
    rows = [(c, g / total if total > 0 else 0.0) for c, g in zip(bundle.schema.feature_columns, gains)]
    rows.sort(key=lambda r: (-r[1], r[0]))
    return [{"feature": c, "gain": round(g, 9)} for c, g in rows]


def training_metrics(pipeline: InferencePipeline) -> dict[str, Any] | None:
    """The bundle's ``metrics.json`` (written by ``train``), else metadata's ``metrics``."""
    bundle = pipeline.bundle
    path = bundle.path / "metrics.json"
    m: Any = None
    if path.is_file():
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            m = None
    if m is None:
        m = bundle.metadata.get("metrics")
    return m if isinstance(m, dict) else None


def model_document(pipeline: InferencePipeline, description: dict[str, Any]) -> dict[str, Any]:
    """The body of ``GET /v1/model`` (computed once: nothing in it changes while running)."""
    bundle, store = pipeline.bundle, pipeline.store
    calibration = None
    if store is not None:
        calibration = {
            "store_id": store.store_id,
            "method": store.method,
            "per_user_calibrators": len(store.user_calibrators),
            "path": store.path,
            "model_bundle_id": store.model_bundle_id,
            "created_at": store.created_at,
        }
    label_set = bundle.metadata.get("label_set")
    return {
        "bundle_id": bundle.bundle_id,
        "schema": {"version": bundle.schema.version, "hash": bundle.schema_hash},
        "label_set": [str(x) for x in label_set] if isinstance(label_set, list) else list(LABELS),
        "backend": bundle.backend_info(),
        "training_metrics": training_metrics(pipeline),
        "feature_importance": feature_importance(pipeline),
        "calibration": calibration,
        "policy": {k: description.get(k) for k in POLICY_KEYS},
        "last_reload": None,
    }


def user_document(info: UserInfo) -> dict[str, Any]:
    """The body of ``GET /v1/users/{user_id}``."""
    return {
        "user_id": info.user_id,
        "partition": info.partition,
        "windows_seen": info.windows_seen,
        "last_window_ts": info.last_window_ts,
        "calibrator": {"scope": info.calibrator_scope, "kind": info.calibrator_kind, "method": info.calibration_method},
        "recent_labels": {"windows": len(info.recent_labels), "labels": dict(Counter(info.recent_labels).most_common())},
        "last_prediction": None if info.last_prediction is None else orjson.loads(info.last_prediction),
    }
