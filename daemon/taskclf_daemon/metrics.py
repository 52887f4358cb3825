"""Every Prometheus metric of the daemon, built once on an injected registry.

Names follow Prometheus conventions: ``taskclf_`` prefix, base units, ``_total`` counters.
No metric carries a user id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


def observe_many(hist: Any, values: Sequence[float]) -> None:
    """Observe many values in one go: one bucket increment per bucket instead of per value.

    Uses prometheus_client's per-bucket counters (non-cumulative, ``_buckets``/``_sum``) when
    present, else falls back to ``observe`` per value; the exposition is the same either way.
    """
    if not len(values):
        return
    bounds = getattr(hist, "_upper_bounds", None)
    buckets = getattr(hist, "_buckets", None)
    total = getattr(hist, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for v in values:
            hist.observe(v)
        return
    arr = np.asarray(values, dtype=np.float64)
    idx = np.searchsorted(np.asarray(bounds, dtype=np.float64), arr, side="left")  # first bound >= v
    counts = np.bincount(idx, minlength=len(bounds))
    for i, c in enumerate(counts.tolist()):
        if c:
            buckets[i].inc(c)
    total.inc(float(arr.sum()))

_STAGE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class Metrics:
    """The daemon's metrics; methods are named for what happened."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        # Counter: input records fetched, per source partition.
        self.records_consumed = Counter("taskclf_records_consumed_total", "Input records fetched", ["topic", "partition"], registry=r)
        # Counter: records by outcome (emitted, dlq, dropped_revoked, duplicate, late).
        self.records_processed = Counter("taskclf_records_processed_total", "Input records by outcome", ["outcome"], registry=r)
        # Counter: predictions by emitted label and calibrator scope.
        self.predictions = Counter("taskclf_predictions_total", "Predictions emitted", ["label", "calibrator"], registry=r)
        # Counter: rejected windows (confidence below threshold).
        self.rejected = Counter("taskclf_rejected_total", "Windows rejected as Mixed/Unknown", registry=r)
        # Histogram: calibrated confidence (0.55 = taskclf's reject threshold is an edge).
        self.confidence = Histogram("taskclf_prediction_confidence", "Calibrated max probability", buckets=_CONFIDENCE_BUCKETS, registry=r)
        # Histogram: seconds per pipeline stage per micro-batch.
        self.stage_duration = Histogram("taskclf_stage_duration_seconds", "Seconds per stage per micro-batch", ["stage"], buckets=_STAGE_BUCKETS, registry=r)
        # Histogram: records per model call.
        self.batch_size = Histogram("taskclf_predict_batch_size_records", "Records per model call", buckets=_BATCH_BUCKETS, registry=r)
        # Histogram: input record timestamp (broker) to output ack, seconds.
        self.e2e_latency = Histogram("taskclf_end_to_end_latency_seconds", "Input record timestamp to output acknowledged", buckets=_LATENCY_BUCKETS, registry=r)
        # Gauge: records behind the fetch high-watermark, per assigned partition.
        self.consumer_lag = Gauge("taskclf_consumer_lag_records", "High-watermark minus next offset to process", ["topic", "partition"], registry=r)
        # Counter: partition assignments and revocations.
        self.rebalances = Counter("taskclf_rebalances_total", "Rebalance callbacks", ["kind"], registry=r)
        # Gauge: users with state in memory.
        self.state_users = Gauge("taskclf_state_users", "Users with in-memory state", registry=r)
        # Histogram: seconds to restore a partition's state.
        self.restore_duration = Histogram("taskclf_state_restore_duration_seconds", "Seconds to restore one partition's state", buckets=_LATENCY_BUCKETS, registry=r)
        # Counter: dead-lettered records by reason.
        self.dlq = Counter("taskclf_dlq_records_total", "Records sent to the dead-letter topic", ["reason"], registry=r)
        # Gauge (info): the loaded model.
        self.model_info = Gauge("taskclf_model_info", "Loaded model bundle (value 1)", ["model_bundle_id", "schema_hash", "calibration_method"], registry=r)
        # Gauge (info): the prediction backend in force (lightgbm until a background compile is swapped in).
        self.model_backend = Gauge("taskclf_model_backend_info", "Prediction backend in force (value 1; outputs are bit-identical across backends)", ["backend"], registry=r)
        # Counter: model reloads by result.
        self.model_reloads = Counter("taskclf_model_reloads_total", "Model/calibrator reloads", ["result"], registry=r)
        # Counter: offset commits by result (ok, failed).
        self.commits = Counter("taskclf_offset_commits_total", "Offset commits", ["result"], registry=r)
        # Gauge: outputs produced but not yet acknowledged by the broker.
        self.in_flight = Gauge("taskclf_in_flight_records", "Outputs awaiting broker acknowledgement", registry=r)
        # Counter: times partitions were paused because too much was in flight.
        self.backpressure = Counter("taskclf_backpressure_pauses_total", "Pauses of fetching due to in-flight limit", registry=r)
        # Gauge: bytes of serialized per-user state held in memory (as last checkpointed).
        self.state_bytes = Gauge("taskclf_state_bytes", "Estimated heap bytes of the user state in memory (docs/state.md)", registry=r)
        # Counter: users forgotten (state dropped and tombstoned) by reason: idle (no window for
        # state_retention_s), capacity (beyond max_state_users), oversize (state too large to write).
        self.state_evictions = Counter("taskclf_state_evictions_total", "Users forgotten by reason", ["reason"], registry=r)
        # Counter: changelog records written (update, tombstone).
        self.changelog_records = Counter("taskclf_changelog_records_total", "State changelog records produced", ["kind"], registry=r)
        # Counter: changelog records that could not be read at restore (those users start empty).
        self.state_unreadable = Counter("taskclf_state_unreadable_total", "Changelog values found unreadable (at restore, or when a restored user is first used)", registry=r)
        # Counter: taskclf LabelRequest records produced (windows worth a label).
        self.label_requests = Counter("taskclf_label_requests_total", "Label requests produced (unsure windows, within the per-user daily budget)", registry=r)
        # The learning loop: refits by outcome, adoptions and refused candidates by kind, the
        # held-out gain of adopted models, users on a personal model (never a user_id label).
        self.personal_refits = Counter("taskclf_personal_refits_total", "Personal refits by outcome (adopted, kept: no candidate passed the gate, reverted: back to global)", ["outcome"], registry=r)
        self.personal_adoptions = Counter("taskclf_personal_adoptions_total", "Personal models adopted by kind (temperature, isotonic, head)", ["kind"], registry=r)
        self.personal_refused = Counter("taskclf_personal_candidates_refused_total", "Personal candidates that did not pass the gate, by kind", ["kind"], registry=r)
        self.personal_gain = Histogram(
            "taskclf_personal_heldout_gain_nats", "Held-out NLL gain of adopted personal models over the model in force (nats)", buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0), registry=r
        )
        self.personal_users = Gauge("taskclf_personal_users", "Users served by a personal model (this instance)", registry=r)
        # Counter: feedback partitions assigned without their input twin (left paused).
        self.feedback_orphans = Counter("taskclf_feedback_orphan_partitions_total", "Feedback partitions assigned without their input partition (group not on the range assignor)", registry=r)
        # Counter: changelog records read while restoring partitions.
        self.restored_records = Counter("taskclf_state_restored_records_total", "Changelog records applied during restore", registry=r)
        # Counter: checkpoints (outputs acked -> changelog -> commit) by result.
        self.checkpoints = Counter("taskclf_checkpoints_total", "Checkpoints", ["result"], registry=r)
        # Gauge: 1 when the last broker probe succeeded.
        self.broker_up = Gauge("taskclf_broker_up", "1 when the Kafka cluster answered the last probe", registry=r)
        # Gauge: 1 when ready (assigned, restored, model loaded).
        self.ready = Gauge("taskclf_ready", "1 when the daemon is ready", registry=r)
        # --- drift (spec 10; only with a reference profile in the bundle, see drift_monitor.py):
        # the instance's sliding window of its last drift_window_size windows vs the reference.
        self.drift_windows = Gauge("taskclf_drift_window_windows", "Windows in the drift sliding window", registry=r)
        self.feature_psi = Gauge("taskclf_feature_psi", "PSI of a numerical feature, window vs reference", ["feature"], registry=r)
        self.feature_null_rate = Gauge("taskclf_feature_null_rate", "Share of windows with the feature null (window)", ["feature"], registry=r)
        self.reference_null_rate = Gauge("taskclf_reference_feature_null_rate", "Share of windows with the feature null (reference)", ["feature"], registry=r)
        self.class_share = Gauge("taskclf_class_share", "Share of post-reject labels (window)", ["label"], registry=r)
        self.reference_class_share = Gauge("taskclf_reference_class_share", "Share of post-reject labels (reference)", ["label"], registry=r)
        self.reject_rate = Gauge("taskclf_reject_rate", "Share of windows rejected as Mixed/Unknown (window)", registry=r)
        self.reference_reject_rate = Gauge("taskclf_reference_reject_rate", "Share of windows rejected as Mixed/Unknown (reference)", registry=r)
        self.mean_entropy = Gauge("taskclf_mean_entropy", "Mean entropy of the calibrated probabilities (window)", registry=r)
        self.reference_mean_entropy = Gauge("taskclf_reference_mean_entropy", "Mean entropy of the calibrated probabilities (reference)", registry=r)
        # Counters since start: null values per numerical feature; categorical values outside the
        # bundle's vocabulary per column (the column name only, never the value).
        self.feature_nulls = Counter("taskclf_feature_nulls_total", "Null values of a numerical feature", ["feature"], registry=r)
        self.unseen_categories = Counter("taskclf_unseen_categories_total", "Categorical values not in the bundle's vocabulary", ["feature"], registry=r)

    # --- recorders -------------------------------------------------------------------------
    def record_consumed(self, topic: str, partition: int, n: int) -> None:
        self.records_consumed.labels(topic, str(partition)).inc(n)

    def record_dead_letter(self, reason: str) -> None:
        self.dlq.labels(reason).inc()
        self.records_processed.labels("dlq").inc()

    def record_batch(self, tally: dict[tuple[str, str], int], confidences: Sequence[float], rejected: int, stage_timings: dict[str, float], batch_records: int) -> None:
        """Count a batch's predictions from a shard's summary: one metric update per distinct
        (label, calibrator scope), not per record."""
        for (label, scope), n in tally.items():
            self.predictions.labels(label, scope).inc(n)
        observe_many(self.confidence, confidences)
        if rejected:
            self.rejected.inc(rejected)
        self.records_processed.labels("emitted").inc(sum(tally.values()))
        for stage, sec in stage_timings.items():
            self.stage_duration.labels(stage).observe(sec)
        self.batch_size.observe(batch_records)

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        self.consumer_lag.labels(topic, str(partition)).set(lag)

    def forget_partition(self, topic: str, partition: int) -> None:
        for m in (self.consumer_lag,):
            try:
                m.remove(topic, str(partition))
            except KeyError:
                pass

    def set_model(self, bundle_id: str, schema_hash: str, method: str) -> None:
        self.model_info.clear()
        self.model_info.labels(bundle_id, schema_hash, method).set(1)

    def set_backend(self, backend: str) -> None:
        self.model_backend.clear()
        self.model_backend.labels(backend).set(1)

    def set_drift(self, v: Any) -> None:
        """The drift gauges from a :class:`~taskclf_daemon.pipeline.drift_window.DriftValues`."""
        self.drift_windows.set(v.windows)
        for f, x in v.psi.items():
            self.feature_psi.labels(f).set(x)
            self.feature_null_rate.labels(f).set(v.null_rate[f])
            self.reference_null_rate.labels(f).set(v.ref_null_rate[f])
        for label, x in v.class_share.items():
            self.class_share.labels(label).set(x)
            self.reference_class_share.labels(label).set(v.ref_class_share[label])
        self.reject_rate.set(v.reject_rate)
        self.reference_reject_rate.set(v.ref_reject_rate)
        self.mean_entropy.set(v.mean_entropy)
        self.reference_mean_entropy.set(v.ref_mean_entropy)

    def count_drift_inputs(self, nulls: dict[str, int], unseen: dict[str, int]) -> None:
        """Add new null values per feature and unseen categories per column."""
        for f, n in nulls.items():
            if n > 0:
                self.feature_nulls.labels(f).inc(n)
        for c, n in unseen.items():
            if n > 0:
                self.unseen_categories.labels(c).inc(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
