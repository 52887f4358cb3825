"""taskclf's ``inference_policy.json`` and the daemon's single resolution rule (spec 8).

Precedence, one rule for every setting: **flag > policy > default**.

* model bundle: ``--model-dir`` > policy ``model_dir``; one of them is required;
* calibrator store: ``--calibrator-store`` > policy ``calibrator_store_dir`` > none (identity);
* global reject threshold: ``--reject-threshold`` > policy ``reject_threshold`` > 0.55;
* per-user thresholds: policy ``per_user_reject_thresholds`` (no flag); they beat the global one.

Policy paths are relative to ``TASKCLF_HOME``, the parent of the directory holding the policy
(taskclf keeps it at ``$TASKCLF_HOME/models/inference_policy.json``). Unlike taskclf -- which
treats a broken policy as "no policy" and ignores the policy entirely when a model dir is given --
an explicitly named policy that cannot be used is a start-up error, and a policy whose schema
hash or label set does not match the chosen model is refused instead of silently mixed.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.labels import DEFAULT_REJECT_THRESHOLD, LABELS

_FIX = "write the policy as taskclf does (taskclf policy create / tune-reject --write-policy) or drop --policy"


@dataclass(frozen=True)
class InferencePolicy:
    path: Path
    model_dir: str
    model_schema_hash: str
    model_label_set: tuple[str, ...]
    reject_threshold: float
    calibrator_store_dir: str | None = None
    calibration_method: str | None = None
    per_user_reject_thresholds: dict[str, float] = field(default_factory=dict)
    policy_version: str = "v1"
    source: str | None = None

    @property
    def home(self) -> Path:
        """``TASKCLF_HOME``: the parent of the models directory holding the policy."""
        return self.path.resolve().parent.parent

    def resolve_path(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else self.home / q


def _threshold(v: Any, path: Path, fld: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
        raise ArtifactError(path, f"must be a number in [0, 1], got {v!r}", _FIX, field=fld)
    return float(v)


def load_policy(path: str | Path) -> InferencePolicy:
    """Parse and check a policy file. Extra keys (``_help``...) are ignored, as in taskclf."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(p, "policy file does not exist", _FIX)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(p, f"not valid JSON: {exc}", _FIX) from None
    if not isinstance(raw, dict):
        raise ArtifactError(p, "policy must be a JSON object", _FIX)
    for req in ("model_dir", "model_schema_hash", "model_label_set", "reject_threshold"):
        if req not in raw:
            raise ArtifactError(p, "required field is missing", _FIX, field=req)
    if not isinstance(raw["model_dir"], str) or not raw["model_dir"]:
        raise ArtifactError(p, "must be a non-empty path string", _FIX, field="model_dir")
    labels = raw["model_label_set"]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ArtifactError(p, "must be a list of label names", _FIX, field="model_label_set")
    store = raw.get("calibrator_store_dir")
    if store is not None and not isinstance(store, str):
        raise ArtifactError(p, "must be a path string or null", _FIX, field="calibrator_store_dir")
    per_user_raw = raw.get("per_user_reject_thresholds") or {}
    if not isinstance(per_user_raw, dict):
        raise ArtifactError(p, "must be an object {user_id: threshold} or null", _FIX, field="per_user_reject_thresholds")
    per_user = {str(u): _threshold(t, p, f"per_user_reject_thresholds[{u!r}]") for u, t in per_user_raw.items()}
    return InferencePolicy(
        path=p,
        model_dir=raw["model_dir"],
        model_schema_hash=str(raw["model_schema_hash"]),
        model_label_set=tuple(labels),
        reject_threshold=_threshold(raw["reject_threshold"], p, "reject_threshold"),
        calibrator_store_dir=store,
        calibration_method=raw.get("calibration_method"),
        per_user_reject_thresholds=per_user,
        policy_version=str(raw.get("policy_version", "v1")),
        source=raw.get("source"),
    )


@dataclass(frozen=True)
class ResolvedInference:
    """What to load, where each value came from (``flag`` / ``policy`` / ``default``)."""

    model_dir: Path
    calibrator_store: Path | None
    reject_threshold: float | None
    per_user_thresholds: dict[str, float]
    sources: dict[str, str]
    policy: InferencePolicy | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "calibrator_store": str(self.calibrator_store) if self.calibrator_store else None,
            "reject_threshold": self.reject_threshold,
            "per_user_thresholds": len(self.per_user_thresholds),
            "policy": str(self.policy.path) if self.policy else None,
            "sources": dict(self.sources),
            "precedence": "flag > policy > default",
        }


class FromPolicy(enum.Enum):
    """The one spelling of "not set, take it from the policy (else the default)" for a setting
    that may also be set to ``None`` on purpose (``reject_threshold=None`` disables rejection)."""

    FROM_POLICY = "policy"

    def __repr__(self) -> str:
        return "FROM_POLICY"


FROM_POLICY = FromPolicy.FROM_POLICY


def resolve_inference(
    *,
    model_dir: str | Path | None = None,
    calibrator_store: str | Path | None = None,
    reject_threshold: float | None | FromPolicy = FROM_POLICY,
    policy_path: str | Path | None = None,
) -> ResolvedInference:
    """Apply flag > policy > default. ``reject_threshold=None`` (explicit) disables rejection."""
    pol = load_policy(policy_path) if policy_path is not None else None
    src: dict[str, str] = {}
    if model_dir is not None:
        md, src["model_dir"] = Path(model_dir), "flag"
    elif pol is not None:
        md, src["model_dir"] = pol.resolve_path(pol.model_dir), "policy"
    else:
        raise ArtifactError("<command line>", "no model bundle given", "pass --model-dir models/<run_id> or --policy models/inference_policy.json", field="model_dir")
    if calibrator_store is not None:
        cs, src["calibrator_store"] = Path(calibrator_store), "flag"
    elif pol is not None and pol.calibrator_store_dir:
        cs, src["calibrator_store"] = pol.resolve_path(pol.calibrator_store_dir), "policy"
    else:
        cs, src["calibrator_store"] = None, "default"
    if not isinstance(reject_threshold, FromPolicy):
        thr, src["reject_threshold"] = reject_threshold, "flag"
    elif pol is not None:
        thr, src["reject_threshold"] = pol.reject_threshold, "policy"
    else:
        thr, src["reject_threshold"] = DEFAULT_REJECT_THRESHOLD, "default"
    per_user = dict(pol.per_user_reject_thresholds) if pol else {}
    src["per_user_thresholds"] = "policy" if per_user else "default"
    return ResolvedInference(md, cs, thr, per_user, src, pol)


def check_policy_against_model(pol: InferencePolicy, schema_hash: str, label_set: list[str] | tuple[str, ...]) -> None:
    """Refuse a policy written for another model (schema hash or label set)."""
    if pol.model_schema_hash != schema_hash:
        raise ArtifactError(pol.path, f"policy is for schema hash {pol.model_schema_hash!r}, the model has {schema_hash!r}", "regenerate the policy for this model or drop --policy", field="model_schema_hash")
    if sorted(pol.model_label_set) != sorted(label_set) or sorted(label_set) != sorted(LABELS):
        raise ArtifactError(pol.path, f"policy label set {list(pol.model_label_set)} differs from the model's", "regenerate the policy for this model", field="model_label_set")
