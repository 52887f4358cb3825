"""One micro-batch through the whole pipeline, across users, in input order.

    overlay (per user, sequential) -> encode -> ONE model call -> calibration (vectorised)
    -> reject (vectorised) -> smoothing (per user, sequential) -> taxonomy -> WindowPrediction

Per-user order is the input order; rows of different users interleave freely. The output value
of a window is a pure function of (model, calibrators, config, that user's window history): no
clock, no batch composition, no other user enters it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import orjson

from taskclf_daemon.labels import (
    DEFAULT_IDLE_GAP_SECONDS,
    DEFAULT_REJECT_THRESHOLD,
    DEFAULT_SMOOTH_WINDOW,
    LABEL_VERSION,
    LABELS,
    MIXED_UNKNOWN,
    REJECT_ID,
)
from taskclf_daemon.pipeline.calibration import CalibratorStore
from taskclf_daemon.pipeline.decision import reject_mask, smooth_trailing, thresholds_for
from taskclf_daemon.pipeline.features import push_window
from taskclf_daemon.pipeline.model import ModelBundle
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.state import StateStore
from taskclf_daemon.timeutil import format_ts_us

_NAMES = LABELS + (MIXED_UNKNOWN,)


@dataclass(frozen=True)
class PipelineConfig:
    smooth_window: int = DEFAULT_SMOOTH_WINDOW
    reject_threshold: float | None = DEFAULT_REJECT_THRESHOLD
    per_user_thresholds: Mapping[str, float] = field(default_factory=dict)
    idle_gap_seconds: float = DEFAULT_IDLE_GAP_SECONDS


@dataclass(slots=True)
class Prediction:
    """One output: the encoded ``WindowPrediction`` plus what metrics need."""

    user_id: str
    ts_us: int
    label: str  # mapped_label_name
    core_label_id: int
    confidence: float
    is_rejected: bool
    calibrator_scope: str
    value: bytes


@dataclass(slots=True)
class BatchResult:
    predictions: list[Prediction]
    timings: dict[str, float]  # stage -> seconds for the whole batch


class InferencePipeline:
    """The loaded artifacts and settings; :meth:`process` is the only entry point."""

    def __init__(self, bundle: ModelBundle, store: CalibratorStore | None = None, config: PipelineConfig | None = None, taxonomy: Any = None) -> None:
        self.bundle = bundle
        self.store = store
        self.config = config or PipelineConfig()
        self.taxonomy = taxonomy
        if store is not None:
            store.check_binding(bundle.schema_hash, bundle.bundle_id)
        self._const = {
            "model_version": bundle.schema_hash,
            "schema_version": bundle.schema.tag,
            "label_version": LABEL_VERSION,
            "model_bundle_id": bundle.bundle_id,
        }

    def new_state_store(self) -> StateStore:
        return StateStore(self.config.smooth_window)

    def process(self, windows: Sequence[FeatureWindow], states: StateStore) -> BatchResult:
        """Run a batch of validated windows; mutates the users' states in ``states``."""
        cfg = self.config
        t0 = time.perf_counter()
        overlays = [push_window(states.get(w.user_id), w, cfg.idle_gap_seconds) for w in windows]
        t1 = time.perf_counter()
        X = self.bundle.encode(windows, overlays)
        t2 = time.perf_counter()
        raw = self.bundle.predict_proba(X)
        t3 = time.perf_counter()
        uids = [w.user_id for w in windows]
        if self.store is not None:
            probs, scopes = self.store.calibrate_batch(raw, uids)
        else:
            probs, scopes = raw, ["none"] * len(uids)
        t4 = time.perf_counter()
        conf = probs.max(axis=1) if len(windows) else np.empty(0)
        arg = probs.argmax(axis=1) if len(windows) else np.empty(0, dtype=np.int64)
        rejected = reject_mask(conf, thresholds_for(uids, cfg.reject_threshold, cfg.per_user_thresholds))
        w_ = cfg.smooth_window
        post = np.where(rejected, REJECT_ID, arg).tolist()
        smoothed = []
        get = states.get
        for i, w in enumerate(windows):
            st = get(w.user_id)
            smoothed.append(smooth_trailing(st.smooth, post[i], w_))
            st.last_ts_us = w.ts_us
            st.windows_seen += 1
        if self.taxonomy is not None:
            mapped_labels, mapped_probs = self.taxonomy.map_batch(probs, rejected)
        else:
            mapped_labels = [_NAMES[s] for s in smoothed]
            mapped_probs = [dict(zip(LABELS, row)) for row in probs.tolist()]
        t5 = time.perf_counter()
        core = np.round(probs, 6).tolist()
        conf_r = np.round(conf, 6).tolist()
        arg_l = arg.tolist()
        rej_l = rejected.tolist()
        const = self._const
        out: list[Prediction] = []
        for i, w in enumerate(windows):
            rec = {
                "user_id": w.user_id,
                "bucket_start_ts": format_ts_us(w.ts_us),
                "core_label_id": arg_l[i],
                "core_label_name": LABELS[arg_l[i]],
                "core_probs": core[i],
                "confidence": conf_r[i],
                "is_rejected": rej_l[i],
                "mapped_label_name": mapped_labels[i],
                "mapped_probs": mapped_probs[i],
                **const,
                "smoothed_label_name": _NAMES[smoothed[i]],
                "calibrator_scope": scopes[i],
            }
            out.append(Prediction(w.user_id, w.ts_us, mapped_labels[i], arg_l[i], conf_r[i], rej_l[i], scopes[i], orjson.dumps(rec)))
        t6 = time.perf_counter()
        return BatchResult(out, {"features": t1 - t0, "encode": t2 - t1, "predict": t3 - t2, "calibrate": t4 - t3, "decide": t5 - t4, "serialize": t6 - t5})
