"""The drift reference profile of a bundle (spec 10), from a file of windows or from training.

``taskclf-daemon reference`` runs a JSONL file of FeatureRows through the daemon's own pipeline
(the same code as ``replay``: overlay, model, calibration, reject) and summarises the windows
with :func:`taskclf_daemon.pipeline.drift.build_profile`: features as the model saw them, class
shares, reject rate and mean entropy as the served configuration (bundle, calibrator store,
policy threshold) produces them. ``train`` writes one from its validation split.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO

import numpy as np

from taskclf_daemon.errors import ArtifactError, InvalidRecord
from taskclf_daemon.offline.replay import ReplaySummary, replay
from taskclf_daemon.pipeline.batch import BatchResult, InferencePipeline
from taskclf_daemon.pipeline.calibration import utc_now_iso
from taskclf_daemon.pipeline.drift import ReferenceProfile, build_profile
from taskclf_daemon.pipeline.drift_window import DriftObserver, sample_profile_inputs
from taskclf_daemon.pipeline.model import ModelBundle

Sample = tuple[np.ndarray, np.ndarray, np.ndarray]


def profile_of_samples(bundle: ModelBundle, parts: list[Sample], *, model_bundle_id: str, source: str) -> ReferenceProfile:
    """The profile of the windows of some batches, each reduced by :func:`sample_profile_inputs`."""
    if not parts:
        raise ArtifactError(source, "no valid window to build a drift reference from", "pass a file of FeatureRows of the bundle's schema (one JSON object per line)")
    values, classes, ents = (np.concatenate(x) for x in zip(*parts, strict=True))
    return build_profile(values, classes, ents, schema_hash=bundle.schema_hash, model_bundle_id=model_bundle_id, source=source, created_at=utc_now_iso())


def profile_from_windows(
    pipeline: InferencePipeline,
    src: IO[bytes],
    *,
    source: str,
    batch_size: int = 512,
    on_bad: Callable[[int, InvalidRecord], None] | None = None,
) -> tuple[ReferenceProfile, ReplaySummary]:
    """Replay ``src`` through ``pipeline`` (outputs discarded) and profile every predicted window."""
    observer = DriftObserver(pipeline.bundle)
    parts: list[Sample] = []

    def keep(res: BatchResult) -> None:  # only what the profile needs, not the windows
        if res.arrays is not None and len(res.arrays.classes):
            parts.append(sample_profile_inputs(observer, res.arrays))

    with open(os.devnull, "wb") as sink:
        summary = replay(pipeline, src, sink, batch_size=batch_size, on_bad=on_bad, observe=keep)
    bundle = pipeline.bundle
    return profile_of_samples(bundle, parts, model_bundle_id=bundle.bundle_id, source=source), summary
