"""One micro-batch through the whole pipeline, across users, in input order.

    overlay (per user, sequential) -> encode -> ONE model call -> calibration (vectorised)
    -> reject (vectorised) -> smoothing (per user, sequential) -> taxonomy -> WindowPrediction

Per-user order is the input order; rows of different users interleave freely. The output value
of a window is a pure function of (model, calibrators, config, that user's window history): no
clock, no batch composition, no other user enters it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from taskclf_daemon.labels import (
    DEFAULT_IDLE_GAP_SECONDS,
    DEFAULT_REJECT_THRESHOLD,
    DEFAULT_SMOOTH_WINDOW,
    LABEL_VERSION,
    LABELS,
    MIXED_UNKNOWN,
    REJECT_ID,
)
from taskclf_daemon.pipeline import features
from taskclf_daemon.pipeline.calibration import CalibratorStore
from taskclf_daemon.pipeline.decision import reject_mask, smooth_trailing, thresholds_for
from taskclf_daemon.pipeline.drift import ReferenceProfile
from taskclf_daemon.pipeline.drift_window import BatchArrays
from taskclf_daemon.pipeline.features import push_window_py
from taskclf_daemon.pipeline.model import ModelBundle
from taskclf_daemon.pipeline.output import OutputEncoder
from taskclf_daemon.records import FeatureWindow, SourceRef
from taskclf_daemon.state import StateStore

if TYPE_CHECKING:
    from taskclf_daemon.pipeline.learner import Learner

_NAMES = LABELS + (MIXED_UNKNOWN,)


#: what to do with a window not newer than the user's last applied window
EVENT_TIME_POLICIES = ("skip", "process")


@dataclass(frozen=True)
class PipelineConfig:
    smooth_window: int = DEFAULT_SMOOTH_WINDOW
    reject_threshold: float | None = DEFAULT_REJECT_THRESHOLD
    per_user_thresholds: Mapping[str, float] = field(default_factory=dict)
    idle_gap_seconds: float = DEFAULT_IDLE_GAP_SECONDS
    #: ``skip`` (default): a duplicate (same bucket_start_ts) or late (older) window is not applied
    #: and yields no output; ``process``: applied like any window, as taskclf does
    event_time_policy: str = "skip"
    #: a user idle (in event time) for longer than this starts from empty state; None = never
    state_ttl_seconds: float | None = None


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
    source: SourceRef | None = None
    #: the user had enough evidence for a personal model right after this window (learning only)
    eligible: bool = False


@dataclass(slots=True)
class PredictionColumns:
    """A batch's outputs as columns (one list per :class:`Prediction` field, in input order):
    the shard turns them into output records without one object per window."""

    user_ids: list[str] = field(default_factory=list)
    ts_us: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    core_ids: list[int] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    rejected: list[bool] = field(default_factory=list)
    scopes: list[str] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    sources: list[SourceRef | None] = field(default_factory=list)
    eligible: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)

    def rows(self) -> list[Prediction]:
        return list(map(Prediction, *(getattr(self, f) for f in _COLUMNS)))

    def select(self, rows: list[int]) -> PredictionColumns:
        """The columns of ``rows`` only, in that order."""
        return PredictionColumns(*([getattr(self, f)[j] for j in rows] for f in _COLUMNS))

    def extend(self, other: PredictionColumns) -> None:
        for f in _COLUMNS:
            getattr(self, f).extend(getattr(other, f))


_COLUMNS = ("user_ids", "ts_us", "labels", "core_ids", "confidences", "rejected", "scopes", "values", "sources", "eligible")


@dataclass(slots=True)
class BatchResult:
    columns: PredictionColumns
    timings: dict[str, float]  # stage -> seconds for the whole batch
    #: windows not applied, with the reason: ``replayed`` (input offset already applied to the
    #: user's state), ``duplicate`` (same bucket_start_ts as the last applied), ``late`` (older)
    skipped: list[tuple[FeatureWindow, str]] = field(default_factory=list)
    #: the batch's arrays for the drift tap (references, nothing copied); None when the batch
    #: was re-run one window at a time
    arrays: BatchArrays | None = None

    @property
    def predictions(self) -> list[Prediction]:
        """The outputs as :class:`Prediction` rows (built on each access)."""
        return self.columns.rows()


class InferencePipeline:
    """The loaded artifacts and settings; :meth:`process` is the only entry point."""

    def __init__(self, bundle: ModelBundle, store: CalibratorStore | None = None, config: PipelineConfig | None = None, taxonomy: Any = None) -> None:
        self.bundle = bundle
        self.store = store
        self.config = config or PipelineConfig()
        self.taxonomy = taxonomy
        #: the bundle's drift reference profile (``drift_reference.json``), None = no drift metrics
        self.reference: ReferenceProfile | None = None
        if store is not None:
            store.check_binding(bundle.schema_hash, bundle.bundle_id)
        self._const: dict[str, str | None] = {
            "model_version": bundle.schema_hash,
            "schema_version": bundle.schema.tag,
            "label_version": LABEL_VERSION,
            "model_bundle_id": bundle.bundle_id,
            "calibrator_store_id": store.store_id if store is not None else None,
        }
        self._encoder = OutputEncoder(self._const)
        #: the learning loop's hook (:meth:`attach_learner`); None = no learning, no cost
        self.learner: Learner | None = None

    def attach_learner(self, learner: Learner | None) -> None:
        """Run ``learner`` after calibration in every batch: it sees each applied window's raw
        probabilities, encoded row and overlay (its evidence) and replaces the calibrated
        probabilities of users with a personal model (scope ``user``)."""
        if learner is not None:
            learner.bind(self.store, self.bundle.schema.feature_columns)
        self.learner = learner

    def new_state_store(self) -> StateStore:
        return StateStore(self.config.smooth_window)

    def process(self, windows: Sequence[FeatureWindow], states: StateStore) -> BatchResult:
        """Run a batch of validated windows; mutates the users' states in ``states``.

        Windows are applied in order; a window the user's state already holds is skipped as
        ``replayed`` (idempotent restarts: same input partition, offset not past the last one
        applied, and not newer in event time than the last one -- so a recreated topic or a
        window arriving on another partition is never mistaken for a replay), and with the
        ``skip`` event-time policy a window not newer than the user's last one is skipped as
        ``duplicate``/``late``. Skipped windows change no state and produce no output.

        Idle reset: a window more than ``state_ttl_seconds`` (event time) after the user's last
        one starts from empty state -- decided from that user's own history only.
        """
        cfg = self.config
        t0 = time.perf_counter()
        ttl_us = None if cfg.state_ttl_seconds is None else int(cfg.state_ttl_seconds * 1_000_000)
        skip_old = cfg.event_time_policy == "skip"
        gap = cfg.idle_gap_seconds
        get = states.get
        dirty = states.dirty
        applied: list[FeatureWindow] = []
        overlays: list[tuple[float | None, ...]] = []
        skipped: list[tuple[FeatureWindow, str]] = []
        native = features.NATIVE_PUSH  # features.push_window without its Python frame
        for w in windows:
            st = get(w.user_id)
            src = w.source
            last = st.last_ts_us
            if src is not None and src.offset <= st.last_offset and src.partition == st.last_partition and last is not None and w.ts_us <= last:
                skipped.append((w, "replayed"))
                continue
            if last is not None:
                if ttl_us is not None and w.ts_us - last > ttl_us:
                    st = states.reset(w.user_id)
                    last = None
                elif skip_old and w.ts_us <= last:
                    skipped.append((w, "duplicate" if w.ts_us == last else "late"))
                    continue
            ov = NotImplemented if native is None else native(st, w, gap)
            overlays.append(push_window_py(st, w, gap) if ov is NotImplemented else ov)
            st.last_ts_us = w.ts_us if last is None else max(last, w.ts_us)
            if src is not None:
                st.last_offset = src.offset
                st.last_partition = src.partition
            st.windows_seen += 1
            dirty.add(w.user_id)
            applied.append(w)
        windows = applied
        t1 = time.perf_counter()
        X = self.bundle.encode(windows, overlays)
        t2 = time.perf_counter()
        raw = self.bundle.predict_proba(X)
        t3 = time.perf_counter()
        uids = [w.user_id for w in windows]
        kinds: list[str] = []
        versions: list[str | None] = [None] * len(uids)
        if self.store is not None:
            probs, scopes = self.store.calibrate_batch(raw, uids, kinds)
        else:
            probs, scopes, kinds = raw, ["none"] * len(uids), ["identity"] * len(uids)
        if self.learner is not None and windows:
            probs, scopes, _ = self.learner.personalise(windows, raw, X, overlays, probs, scopes, states)
            for i, model in self.learner.served:
                kinds[i], versions[i] = model.kind, model.version
        t4 = time.perf_counter()
        conf = probs.max(axis=1) if len(windows) else np.empty(0)
        arg = probs.argmax(axis=1) if len(windows) else np.empty(0, dtype=np.int64)
        rejected = reject_mask(conf, thresholds_for(uids, cfg.reject_threshold, cfg.per_user_thresholds))
        w_ = cfg.smooth_window
        post_ids = np.where(rejected, REJECT_ID, arg)
        post = post_ids.tolist()
        smoothed = []
        for i, w in enumerate(windows):
            smoothed.append(smooth_trailing(get(w.user_id).smooth, post[i], w_))
        smoothed_names = [_NAMES[s] for s in smoothed]
        mapped_probs: list[dict[str, float]] | None = None
        if self.taxonomy is not None:
            mapped_labels, mapped_probs = self.taxonomy.map_batch(probs, rejected)
        else:
            mapped_labels = smoothed_names
        t5 = time.perf_counter()
        core = np.round(probs, 6).tolist()
        conf_r = np.round(conf, 6).tolist()
        arg_l = arg.tolist()
        rej_l = rejected.tolist()
        ts_us = [w.ts_us for w in windows]
        values = self._encoder.encode(
            uids,
            ts_us,
            arg_l,
            core,
            conf_r,
            rej_l,
            mapped_labels,
            probs.tolist() if mapped_probs is None else None,
            mapped_probs,
            smoothed_names,
            scopes,
            kinds,
            versions,
        )
        learner = self.learner
        eligible = learner.eligible_at if learner is not None and len(learner.eligible_at) == len(windows) else [False] * len(windows)
        out = PredictionColumns(uids, ts_us, list(mapped_labels), arg_l, conf_r, rej_l, list(scopes), values, [w.source for w in windows], list(eligible))
        t6 = time.perf_counter()
        timings = {"features": t1 - t0, "encode": t2 - t1, "predict": t3 - t2, "calibrate": t4 - t3, "decide": t5 - t4, "serialize": t6 - t5}
        return BatchResult(out, timings, skipped, BatchArrays(windows, X, probs, post_ids))
