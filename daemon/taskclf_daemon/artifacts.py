"""Load everything the pipeline needs, once, with the single precedence rule of policy.py."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from taskclf_daemon.errors import ConfigError
from taskclf_daemon.pipeline.batch import InferencePipeline, PipelineConfig
from taskclf_daemon.pipeline.calibration import CalibratorStore
from taskclf_daemon.pipeline.drift import PROFILE_FILE, load_profile
from taskclf_daemon.pipeline.evidence import LearnConfig
from taskclf_daemon.pipeline.learner import Learner
from taskclf_daemon.pipeline.model import ModelBundle
from taskclf_daemon.pipeline.personalize import GateConfig
from taskclf_daemon.pipeline.policy import FROM_POLICY, FromPolicy, ResolvedInference, check_policy_against_model, resolve_inference


def build_pipeline(
    *,
    model_dir: str | Path | None = None,
    calibrator_store: str | Path | None = None,
    policy: str | Path | None = None,
    taxonomy: str | Path | None = None,
    smooth_window: int = 3,
    reject_threshold: float | None | FromPolicy = FROM_POLICY,
    idle_gap_seconds: float = 300.0,
    event_time_policy: str = "skip",
    state_ttl_seconds: float | None = None,
    model_backend: str = "lightgbm",
    model_cache_dir: str | Path | None = None,
) -> tuple[InferencePipeline, dict[str, Any]]:
    """Resolve (flag > policy > default), load and cross-check the artifacts.

    :return: the pipeline and a description of the effective inference settings (for the
        start-up log line)
    :raises ArtifactError: any unusable file, naming it, the field and the fix
    """
    if smooth_window < 1:
        raise ConfigError("smooth_window", f"must be >= 1, got {smooth_window}", "use 1 (off), 3 (taskclf default) or 5")
    if isinstance(reject_threshold, float | int) and not 0.0 <= float(reject_threshold) <= 1.0:
        raise ConfigError("reject_threshold", f"must be in [0, 1], got {reject_threshold}", "use e.g. 0.55, or 'none' to disable rejection")
    resolved: ResolvedInference = resolve_inference(model_dir=model_dir, calibrator_store=calibrator_store, policy_path=policy, reject_threshold=reject_threshold)
    return load_resolved(resolved, LoadOptions(taxonomy, smooth_window, idle_gap_seconds, event_time_policy, state_ttl_seconds, model_backend, model_cache_dir))


@dataclass(frozen=True)
class LoadOptions:
    """What makes the pipeline beside the resolved artifacts (none of it is in the policy)."""

    taxonomy: str | Path | None = None
    smooth_window: int = 3
    idle_gap_seconds: float = 300.0
    event_time_policy: str = "skip"
    state_ttl_seconds: float | None = None
    model_backend: str = "lightgbm"
    model_cache_dir: str | Path | None = None
    #: the learning loop (a :class:`Learner` on the pipeline) when a feedback topic is set
    feedback_topic: str | None = None
    label_wait_s: float = 3600.0
    refit_every: int = 200
    refit_days: float = 7.0
    adopt_lag_windows: int = 10
    evidence_cap: int = 2000
    personal_nll_margin: float = 0.01

    def learner(self) -> Learner | None:
        """The learning loop these options ask for (None: no feedback topic, no learning)."""
        if not self.feedback_topic:
            return None
        learn = LearnConfig(evidence_cap=self.evidence_cap, label_wait_s=self.label_wait_s, refit_every=self.refit_every, refit_days=self.refit_days, adopt_lag=self.adopt_lag_windows)
        return Learner(learn, GateConfig(nll_margin=self.personal_nll_margin))

    @classmethod
    def from_settings(cls, settings: Any) -> LoadOptions:
        """The daemon's settings of the same names."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


def load_resolved(resolved: ResolvedInference, options: LoadOptions) -> tuple[InferencePipeline, dict[str, Any]]:
    """Load and cross-check what ``resolved`` names (a hot reload resolves once in the daemon
    process and has every pipeline worker load exactly those paths)."""
    o = options
    bundle = ModelBundle.load(resolved.model_dir, backend=o.model_backend, cache_dir=o.model_cache_dir)
    if resolved.policy is not None:
        check_policy_against_model(resolved.policy, bundle.schema_hash, bundle.metadata.get("label_set", []))
    store = CalibratorStore.load(resolved.calibrator_store) if resolved.calibrator_store else None
    tax = None
    if o.taxonomy is not None:
        from taskclf_daemon.pipeline.taxonomy import load_taxonomy

        tax = load_taxonomy(o.taxonomy)
    cfg = PipelineConfig(
        smooth_window=o.smooth_window,
        reject_threshold=resolved.reject_threshold,
        per_user_thresholds=resolved.per_user_thresholds,
        idle_gap_seconds=o.idle_gap_seconds,
        event_time_policy=o.event_time_policy,
        state_ttl_seconds=o.state_ttl_seconds or None,
    )
    pipe = InferencePipeline(bundle, store, cfg, tax)
    pipe.reference = load_profile(bundle.path, bundle.schema_hash)
    pipe.attach_learner(o.learner())
    desc = resolved.describe()
    desc.update(bundle.backend_info())
    desc.update(
        model_bundle_id=bundle.bundle_id,
        schema_version=bundle.schema.version,
        schema_hash=bundle.schema_hash,
        calibration_method=store.method if store else "none",
        calibrator_store_id=store.store_id if store else None,
        per_user_calibrators=len(store.user_calibrators) if store else 0,
        taxonomy=str(o.taxonomy) if o.taxonomy else None,
        smooth_window=o.smooth_window,
        smoothing_mode="trailing (taskclf online)",
        event_time_policy=o.event_time_policy,
        state_ttl_seconds=o.state_ttl_seconds or None,
        drift_reference=str(bundle.path / PROFILE_FILE) if pipe.reference is not None else None,
        learning=bool(o.feedback_topic),
    )
    return pipe, desc


def resolve_from_settings(settings: Any) -> ResolvedInference:
    """What the daemon's settings and the policy file (as it is now) select: flag > policy > default."""
    return resolve_inference(model_dir=settings.model_dir, calibrator_store=settings.calibrator_store, policy_path=settings.policy, reject_threshold=settings.reject_threshold)


def pipeline_from_resolved(resolved: ResolvedInference, settings: Any) -> tuple[InferencePipeline, dict[str, Any]]:
    """:func:`load_resolved` with the daemon's other settings (a hot reload)."""
    return load_resolved(resolved, LoadOptions.from_settings(settings))


def pipeline_from_settings(settings: Any) -> tuple[InferencePipeline, dict[str, Any]]:
    """:func:`build_pipeline` with the daemon's settings (``taskclf-daemon run``, its pipeline
    worker processes and every hot reload build the same pipeline from the same settings)."""
    return pipeline_from_resolved(resolve_from_settings(settings), settings)
