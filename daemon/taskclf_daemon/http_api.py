"""The JSON bodies of the HTTP API (``GET /v1/model``, ``/v1/users/{user_id}``): built from the
loaded pipeline and from a shard's :class:`~taskclf_daemon.shard_data.UserInfo`. No I/O beyond
reading the bundle's ``metrics.json`` once; the routes themselves are in ``health.py`` and the
wiring (which partition owns a user, which shard to ask) in ``daemon.py``."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from taskclf_daemon import kafka_io as kio
from taskclf_daemon.config import Settings
from taskclf_daemon.health import Api
from taskclf_daemon.labels import LABELS
from taskclf_daemon.pipeline.batch import InferencePipeline
from taskclf_daemon.scheduler import Scheduler
from taskclf_daemon.shard_data import UserInfo
from taskclf_daemon.workers import ShardHost

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
    """The body of ``GET /v1/model`` (computed once per pipeline in force; ``last_reload`` is
    filled in per request)."""
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


class ApiHandlers:
    """The handlers behind the HTTP API routes, over the daemon's parts. ``consumer`` and
    ``rebalancer`` are attached once the daemon consumes; until then user routes answer 503."""

    def __init__(self, settings: Settings, pipeline: InferencePipeline, description: dict[str, Any], shards: Sequence[ShardHost], scheduler: Scheduler) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.description = description
        self.shards = shards
        self.scheduler = scheduler
        self.consumer: Any = None
        self.rebalancer: Any = None
        #: the last hot reload attempt (``reload.Outcome.document``), None before any
        self.last_reload: Callable[[], dict[str, Any] | None] = lambda: None
        self._model_doc: dict[str, Any] | None = None

    def set_pipeline(self, pipeline: InferencePipeline, description: dict[str, Any]) -> None:
        """A hot reload swapped the artifacts in: describe the new ones."""
        self.pipeline, self.description, self._model_doc = pipeline, description, None

    async def model(self) -> tuple[int, Any]:
        if self._model_doc is None:
            self._model_doc = model_document(self.pipeline, self.description)
        return 200, {**self._model_doc, "last_reload": self.last_reload()}

    async def _find_user(self, user_id: str) -> UserInfo | tuple[int, dict[str, Any]]:
        """The user's info from the shard that owns its partition, or the 404/503 answer.

        The owner is the partition Kafka's default (murmur2) partitioner gives the user id key
        over the input topic's partitions: producers must key by user id with that partitioner
        (the Java client's and aiokafka's default; librdkafka: ``partitioner=murmur2_random``)."""
        n = kio.known_partitions(self.consumer, self.settings.input_topic) if self.consumer is not None else 0
        if not n or self.rebalancer is None:
            return 503, {"error": "not consuming yet"}
        p = kio.key_partition(user_id.encode("utf-8", "surrogatepass"), n)
        if (self.settings.input_topic, p) not in self.rebalancer.assigned:
            if self.rebalancer.restoring:  # it may be one of the partitions being restored here
                return 503, {"error": "restoring state", "partition": p}
            return 404, {"error": "not owned here", "partition": p}
        info = await self.shards[self.scheduler.shard_of(p)].user_info(user_id)
        if info is None or info.partition != p:
            return 404, {"error": "unknown user", "partition": p}
        return info

    async def user(self, user_id: str) -> tuple[int, Any]:
        found = await self._find_user(user_id)
        return found if isinstance(found, tuple) else (200, user_document(found))

    async def prediction(self, user_id: str) -> tuple[int, Any]:
        found = await self._find_user(user_id)
        if isinstance(found, tuple):
            return found
        if found.last_prediction is None:
            return 404, {"error": "no prediction yet", "partition": found.partition}
        return 200, orjson.loads(found.last_prediction)

    def api(self) -> Api:
        users = self.settings.http_user_routes
        return Api(model=self.model, user=self.user if users else None, prediction=self.prediction if users else None, auth_token=self.settings.http_auth_token)
