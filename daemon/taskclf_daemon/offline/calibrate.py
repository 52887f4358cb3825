"""Fit taskclf calibrators and a ``CalibratorStore`` for a model bundle (spec 4).

Faithful to taskclf's ``train/calibrate.py``:

* temperature: minimise mean NLL over a grid -- incumbent ``T = 1.0``; coarse
  ``np.arange(0.1, 5.05, 0.1)``; fine ``np.arange(max(0.01, T* - 0.1), T* + 0.1 + 0.005, 0.01)``;
  a grid value replaces the incumbent only on a *strictly* lower NLL; result rounded to 4 dp;
* isotonic: one ``IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip")`` per class on
  ``(p[:, c], y == c)``;
* eligibility: >= 200 labelled windows AND >= 3 distinct UTC dates AND >= 3 distinct labels;
* store: global calibrator fitted on all rows, then per user (sorted) a calibrator of the same
  method only if eligible; bound to the bundle (``model_bundle_id``, ``model_schema_hash``).

Rows are scored as the daemon serves them: the history overlay comes from
:func:`~taskclf_daemon.offline.train.fill_overlay` (given non-null overlay values are kept).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.labels import MIN_DISTINCT_LABELS, MIN_LABELED_DAYS, MIN_LABELED_WINDOWS, N_LABELS
from taskclf_daemon.offline.train import Progress, fill_overlay
from taskclf_daemon.pipeline.calibfit import fit_isotonic, fit_temperature, nll
from taskclf_daemon.pipeline.calibration import (
    Calibrator,
    CalibratorStore,
    TemperatureCalibrator,
    user_file_name,
    utc_now_iso,
)
from taskclf_daemon.pipeline.model import ModelBundle
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.timeutil import parse_ts_us, utc_date

__all__ = ["ELIGIBILITY_FILE", "calibrate_store", "eligibility", "fit_isotonic", "fit_temperature", "nll", "raw_probabilities"]

PREDICT_CHUNK = 65536
ELIGIBILITY_FILE = "eligibility.json"


def _noop(stage: str, done: int, total: int) -> None:
    return None


def _fit(method: str, probs: np.ndarray, y: np.ndarray) -> Calibrator:
    if method == "isotonic":
        return fit_isotonic(probs, y)
    return TemperatureCalibrator(fit_temperature(probs, y))


def _ident(item: Any) -> tuple[str, int, int | str]:
    """(user_id, ts_us, label) of a labelled row dict or a ``fill_overlay`` item."""
    if isinstance(item, tuple):
        w: FeatureWindow = item[0]
        return w.user_id, w.ts_us, item[-1]
    if isinstance(item, Mapping):
        ts = item["bucket_start_ts"]
        return str(item["user_id"]), ts if isinstance(ts, int) else parse_ts_us(ts), item["label"]
    raise TypeError(f"expected a labelled row dict or a fill_overlay item, got {type(item).__name__}")


def eligibility(
    rows_windows: Iterable[Any],
    user_ids: Iterable[str] | None = None,
    *,
    min_windows: int = MIN_LABELED_WINDOWS,
    min_days: int = MIN_LABELED_DAYS,
    min_labels: int = MIN_DISTINCT_LABELS,
) -> dict[str, dict[str, Any]]:
    """Per-user personalisation eligibility (taskclf ``check_personalization_eligible``).

    ``rows_windows``: labelled row dicts (``user_id``, ``bucket_start_ts``, ``label``) or
    ``fill_overlay`` items. Reports every user present plus any listed in ``user_ids`` (absent
    users get 0/0/0, ineligible). Keys are sorted; each value is ``{labeled_windows,
    labeled_days (distinct UTC dates), distinct_labels, is_eligible}`` with all thresholds ``>=``.
    """
    acc: dict[str, tuple[list[int], set[Any], set[Any]]] = {}
    for item in rows_windows:
        uid, ts, lab = _ident(item)
        a = acc.setdefault(uid, ([0], set(), set()))
        a[0][0] += 1
        a[1].add(utc_date(ts))
        a[2].add(lab)
    for uid in user_ids or ():
        acc.setdefault(uid, ([0], set(), set()))
    out: dict[str, dict[str, Any]] = {}
    for uid in sorted(acc):
        n, days, labs = acc[uid][0][0], len(acc[uid][1]), len(acc[uid][2])
        out[uid] = {
            "labeled_windows": n,
            "labeled_days": days,
            "distinct_labels": labs,
            "is_eligible": n > 0 and n >= min_windows and days >= min_days and labs >= min_labels,
        }
    return out


def raw_probabilities(bundle: ModelBundle, items: Sequence[tuple], *, chunk: int = PREDICT_CHUNK, progress: Progress | None = None) -> np.ndarray:
    """Uncalibrated (n, 8) probabilities of ``fill_overlay`` items, in big batched predicts."""
    report = progress or _noop
    n = len(items)
    out = np.empty((n, N_LABELS), dtype=np.float64)
    for s in range(0, n, chunk):
        part = items[s : s + chunk]
        X = bundle.encode([it[0] for it in part], [it[1] for it in part])
        out[s : s + len(part)] = bundle.predict_proba(X)
        report("predict", s + len(part), n)
    return out


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def calibrate_store(
    bundle_dir: str | Path,
    rows: Sequence[dict[str, Any]],
    *,
    method: Literal["temperature", "isotonic"] = "temperature",
    out_dir: str | Path,
    progress: Progress | None = None,
) -> CalibratorStore:
    """Fit and save a calibrator store for the bundle from labelled rows.

    Raw probabilities come from the bundle (overlay via ``fill_overlay``; chunked batch
    predicts). The global calibrator is fitted on all rows; each eligible user (sorted) gets one
    of the same method. The store is bound to the bundle (``model_bundle_id`` = bundle directory
    name, ``model_schema_hash``), stamped ``created_at`` = now (UTC), saved with
    :meth:`CalibratorStore.save` into ``out_dir`` (per-user files of an earlier fit in the same
    directory that are not in the new store are removed), and ``out_dir/eligibility.json`` lists
    every user's report (sorted by user). An ``inference_policy.json`` is never touched.

    :raises ArtifactError: unloadable bundle, invalid rows, no rows
    :raises ValueError: unknown ``method``
    """
    if method not in ("temperature", "isotonic"):
        raise ValueError(f"method must be 'temperature' or 'isotonic', got {method!r}")
    report = progress or _noop
    bundle = ModelBundle.load(bundle_dir)
    if not rows:
        raise ArtifactError("<calibration rows>", "no labelled rows", "pass labelled FeatureRows (ideally the bundle's validation period)")
    report("overlay", 0, len(rows))
    items = fill_overlay(rows, bundle.schema, source="<calibration rows>")
    report("overlay", len(rows), len(rows))
    P = raw_probabilities(bundle, items, progress=report)
    y = np.asarray([it[2] for it in items], dtype=np.int64)
    uids = np.asarray([it[0].user_id for it in items], dtype=object)

    reports = eligibility(items)
    eligible = [u for u, r in reports.items() if r["is_eligible"]]
    total = 1 + len(eligible)
    report("fit", 0, total)
    global_cal = _fit(method, P, y)
    report("fit", 1, total)
    users: dict[str, Calibrator] = {}
    for k, uid in enumerate(eligible, 2):
        mask = uids == uid
        users[uid] = _fit(method, P[mask], y[mask])
        report("fit", k, total)

    store = CalibratorStore(global_cal, users, method, bundle.bundle_id, bundle.schema_hash, utc_now_iso())
    d = Path(out_dir)
    store.save(d)
    # a re-fit into an existing store directory must not leave calibrators of users that are no
    # longer in store.json (they belong to the previous fit, possibly of another model)
    keep = {user_file_name(u) for u in store.user_ids}
    users_dir = d / "users"
    if users_dir.is_dir():
        for f in users_dir.glob("*.json"):
            if f.name not in keep:
                f.unlink()
    _write_json(d / ELIGIBILITY_FILE, [{"user_id": u, **r} for u, r in reports.items()])
    report("write", 1, 1)
    return store

