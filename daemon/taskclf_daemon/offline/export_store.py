"""``taskclf-daemon export-store``: learned per-user calibrators as a taskclf ``CalibratorStore``.

Input: the personal models ``evaluate`` writes (``models.json``: ``{user_id: personal model
JSON}``) -- or any such mapping. Temperature and isotonic models become
``users/<user_id>.json`` (taskclf's calibrator JSON, spec 4); heads have no taskclf form and
are skipped (listed). The global calibrator comes from ``--calibrator-store`` (else identity),
the binding (``model_bundle_id``, ``model_schema_hash``) from ``--model-dir`` (else the
source store's). ``method`` is the source store's, else the most common exported kind.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskclf_daemon.pipeline.calibration import Calibrator, CalibratorStore, IdentityCalibrator, utc_now_iso
from taskclf_daemon.pipeline.personal_model import PersonalModel


@dataclass
class ExportResult:
    store: CalibratorStore
    exported: list[str]
    skipped: dict[str, str]  # user_id -> why (kind)


def export_store(models: Mapping[str, Any], out_dir: str | Path, *, source_store: CalibratorStore | None = None, model_bundle_id: str | None = None, model_schema_hash: str | None = None) -> ExportResult:
    users: dict[str, Calibrator] = {}
    skipped: dict[str, str] = {}
    for uid in sorted(models):
        m = models[uid] if isinstance(models[uid], PersonalModel) else PersonalModel.from_json(models[uid], f"models[{uid!r}]")
        if m.kind in ("temperature", "isotonic"):
            users[uid] = m.calibrator
        else:
            skipped[uid] = f"{m.kind} ({m.version}): no taskclf calibrator form"
    glob: Calibrator = source_store.global_calibrator if source_store is not None else IdentityCalibrator()
    if source_store is not None:
        method = source_store.method
    else:
        kinds = Counter(c.kind for c in users.values())
        method = sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] if kinds else "temperature"
    store = CalibratorStore(
        glob,
        users,
        method,
        model_bundle_id if model_bundle_id is not None else (source_store.model_bundle_id if source_store else None),
        model_schema_hash if model_schema_hash is not None else (source_store.model_schema_hash if source_store else None),
        utc_now_iso(),
    )
    store.save(out_dir)
    return ExportResult(store, sorted(users), skipped)
