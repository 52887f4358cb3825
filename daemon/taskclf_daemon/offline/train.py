"""Train a taskclf-compatible LightGBM model bundle from labelled FeatureRows.

Faithful to taskclf's ``train/lgbm.py``, ``train/dataset.py`` and ``core/model_io.py`` (spec 3):

* per-user chronological 70/15/15 split (``split_by_time``);
* categorical vocabularies fitted on the train split: values cast to ``str``, values seen fewer
  than 5 times become ``"__unknown__"``, then ``round(n_known * 0.05)`` randomly chosen known
  rows are masked to ``"__unknown__"`` (one ``np.random.RandomState(seed)`` shared by the
  columns, in column order); vocabulary = sorted unique values;
* the model matrix is built by the serving code (:meth:`ModelBundle.encode`), so training and
  serving cannot disagree on column order, categorical codes or ``None -> 0.0``;
* LightGBM multiclass with balanced sample weights, native categoricals, no early stopping;
* bundle ``<out_dir>/<run_id>/`` with ``model.txt``, ``metadata.json``, ``metrics.json``
  (validation split), ``confusion_matrix.csv``, ``categorical_encoders.json``, the drift
  reference ``drift_reference.json`` (validation split; an extra file taskclf ignores), plus
  ``<out_dir>/inference_policy.json`` pointing at it.

Deliberate differences from taskclf (documented, harmless for serving):

* the history overlay (the 9 ``OnlineFeatureState`` fields) is computed with the daemon's own
  online code when a row leaves it null, so the model is trained on what it will be served;
* ``"__unknown__"`` is always in every vocabulary (taskclf has it whenever at least one row was
  masked, i.e. for any column with >= 10 known rows);
* training is deterministic (``seed``, ``deterministic``, one thread); the run id's 4 digits are
  ``seed % 10000`` (bumped if the directory exists) instead of random;
* the bundle is written to a hidden temporary directory and renamed into place, so a crash never
  leaves a half-written bundle.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import orjson

from taskclf_daemon.codec import RowValidator
from taskclf_daemon.errors import ArtifactError, InvalidRecord
from taskclf_daemon.labels import DEFAULT_IDLE_GAP_SECONDS, DEFAULT_REJECT_THRESHOLD, LABEL_INDEX, LABELS, N_LABELS, REJECT_ID
from taskclf_daemon.offline.reference import profile_of_samples
from taskclf_daemon.pipeline.calibration import utc_now_iso
from taskclf_daemon.pipeline.drift import PROFILE_FILE, write_profile
from taskclf_daemon.pipeline.drift_window import BatchArrays, DriftObserver, sample_profile_inputs
from taskclf_daemon.pipeline.features import Overlay, push_window
from taskclf_daemon.pipeline.model import UNKNOWN_CATEGORY, CategoricalCodes, ModelBundle
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.schema import OVERLAY_COLUMNS, SCHEMAS, FeatureSchema
from taskclf_daemon.state import StateStore
from taskclf_daemon.timeutil import format_ts_us, utc_date

__all__ = [
    "MIN_CATEGORY_FREQ",
    "UNKNOWN_MASK_RATE",
    "CategoryFit",
    "LabelledWindow",
    "Progress",
    "balanced_class_weights",
    "dataset_hash",
    "fill_overlay",
    "fit_category",
    "load_rows",
    "sample_weights",
    "split_by_time",
    "train_bundle",
    "write_policy",
]

#: ``progress(stage, done, total)``
Progress = Callable[[str, int, int], None]
#: ``(validated window, the 9 overlay values, label index in LABELS)``
LabelledWindow = tuple[FeatureWindow, Overlay, int]

MIN_CATEGORY_FREQ = 5
UNKNOWN_MASK_RATE = 0.05
TRAIN_RATIO = 0.70
VAL_RATIO = 0.15
POLICY_FILE = "inference_policy.json"


def _noop(stage: str, done: int, total: int) -> None:
    return None


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------


def _check_label(row: dict[str, Any], path: Path, where: str) -> None:
    if "label" not in row:
        raise ArtifactError(path, f"{where}: the row has no 'label'", "give every training row a labels_v1 label", field="label")
    lab = row["label"]
    if lab not in LABEL_INDEX:
        raise ArtifactError(path, f"{where}: unknown label {lab!r} (labels_v1: {', '.join(LABELS)})", "relabel the row with one of the 8 labels_v1 labels", field="label")


def _jsonable(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=dt.UTC)
        us = (v - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
        return format_ts_us(us)
    if isinstance(v, float) and v != v:
        return None  # Parquet/pandas NaN means "missing"
    return v


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read labelled FeatureRows from JSONL (``.jsonl``/``.json``, optionally ``.gz``) or Parquet.

    Parquet columns are the FeatureRow fields plus ``label``; timestamp columns become
    ``YYYY-MM-DDTHH:MM:SSZ`` strings and NaN becomes ``None``. Rows are returned in file order.
    Only JSON syntax and the ``label`` are checked here; :func:`fill_overlay` validates the rest.

    :raises ArtifactError: unreadable file, a line that is not a JSON object, a missing or
        unknown ``label`` -- naming the file, the line (1-based; Parquet: row) and the field
    """
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(p, "training data file does not exist", "pass --data FILE (.jsonl, .jsonl.gz or .parquet)")
    rows: list[dict[str, Any]] = []
    if p.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - pyarrow is a test dependency
            raise ArtifactError(p, "reading Parquet needs pyarrow", "pip install 'taskclf-daemon[parquet]' or convert to JSONL") from None
        try:
            table = pq.read_table(p)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
            raise ArtifactError(p, f"cannot read Parquet: {exc}", "check the file") from None
        for i, rec in enumerate(table.to_pylist(), 1):
            row = {k: _jsonable(v) for k, v in rec.items()}
            _check_label(row, p, f"row {i}")
            rows.append(row)
        return rows
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise ArtifactError(p, f"line {lineno}: invalid JSON ({exc})", "write one FeatureRow JSON object per line") from None
                if not isinstance(row, dict):
                    raise ArtifactError(p, f"line {lineno}: expected a JSON object, got {type(row).__name__}", "write one FeatureRow JSON object per line")
                _check_label(row, p, f"line {lineno}")
                rows.append(row)
    except (OSError, EOFError) as exc:
        raise ArtifactError(p, f"cannot read file: {exc}", "check the path and the compression") from None
    return rows


# ---------------------------------------------------------------------------------------------
# overlay
# ---------------------------------------------------------------------------------------------


def fill_overlay(rows: Sequence[dict[str, Any]], schema: FeatureSchema | str, *, idle_gap_seconds: float = DEFAULT_IDLE_GAP_SECONDS, source: object = "<training rows>") -> list[LabelledWindow]:
    """Validate labelled rows and attach the online history overlay.

    Each row is validated with :class:`RowValidator` for ``schema``; rows are grouped per user
    and, in time order (ties keep input order), pushed through :func:`push_window` on a fresh
    :class:`StateStore` -- exactly what the daemon computes when serving the same stream.
    **A non-null overlay value already present in the row is kept** (e.g. features built by
    taskclf's batch builder); only null/absent overlay fields take the computed value.

    :returns: ``(window, overlay, label_index)`` sorted by (``user_id``, ``bucket_start_ts``,
        input position) -- deterministic for a given input
    :raises ArtifactError: a row that fails validation or has a missing/unknown label, naming
        its 0-based position, user and field
    """
    sch = SCHEMAS[schema] if isinstance(schema, str) else schema
    validator = RowValidator(sch)
    items: list[tuple[str, int, int, FeatureWindow, int]] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ArtifactError(source, f"row {i}: expected a JSON object, got {type(row).__name__}", "pass FeatureRow dicts")
        lab = row.get("label")
        if lab not in LABEL_INDEX:
            what = "has no 'label'" if "label" not in row else f"has unknown label {lab!r}"
            raise ArtifactError(source, f"row {i} {what}", "give every training row a labels_v1 label", field="label")
        try:
            w = validator.validate(row)
        except InvalidRecord as exc:
            raise ArtifactError(source, f"row {i} (user {row.get('user_id')!r}, {row.get('bucket_start_ts')!r}) is invalid: {exc.detail}", f"fix the row or train with the matching schema (this run uses {sch.version})", field=exc.reason) from None
        items.append((w.user_id, w.ts_us, i, w, LABEL_INDEX[lab]))
    items.sort(key=lambda x: (x[0], x[1], x[2]))
    states = StateStore(1)
    out: list[LabelledWindow] = []
    for uid, _, _, w, y in items:
        ov = push_window(states.get(uid), w, idle_gap_seconds)
        given = [w.values.get(c) for c in OVERLAY_COLUMNS]
        if any(v is not None for v in given):
            ov = tuple(g if g is not None else o for g, o in zip(given, ov))
        out.append((w, ov, y))
    return out


# ---------------------------------------------------------------------------------------------
# split, categoricals, weights
# ---------------------------------------------------------------------------------------------


def split_by_time(windows: Sequence[LabelledWindow | FeatureWindow], train_ratio: float = TRAIN_RATIO, val_ratio: float = VAL_RATIO) -> dict[str, list[int]]:
    """taskclf's per-user chronological split: first ``int(n*0.70)`` rows of each user train,
    up to ``int(n*(0.70+0.15))`` validation, the rest test. Returns sorted index lists."""
    if train_ratio + val_ratio > 1.0:
        raise ValueError("train_ratio + val_ratio must be <= 1.0")
    per_user: dict[str, list[tuple[int, int]]] = {}
    for i, item in enumerate(windows):
        w = item[0] if isinstance(item, tuple) else item
        per_user.setdefault(w.user_id, []).append((w.ts_us, i))
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for uid in sorted(per_user):
        idx = [i for _, i in sorted(per_user[uid])]
        n = len(idx)
        a = int(n * train_ratio)
        b = int(n * (train_ratio + val_ratio))
        train += idx[:a]
        val += idx[a:b]
        test += idx[b:]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


@dataclass(frozen=True)
class CategoryFit:
    """Training-time encoding of one categorical column.

    ``tokens[i]`` is row ``i``'s value as trained on (``str(value)``, or ``"__unknown__"`` when
    rare or masked); ``vocabulary`` is sorted and always contains ``"__unknown__"``.
    """

    tokens: list[str]
    vocabulary: list[str]
    rare_values: frozenset[str]
    masked_rows: np.ndarray

    @property
    def codes(self) -> CategoricalCodes:
        return CategoricalCodes.from_vocab(self.vocabulary)


def fit_category(values: Iterable[Any], rng: np.random.RandomState, *, min_freq: int = MIN_CATEGORY_FREQ, mask_rate: float = UNKNOWN_MASK_RATE) -> CategoryFit:
    """taskclf's training encoding of one column (spec 1.4, 12.6).

    Values are cast to ``str``; values seen fewer than ``min_freq`` times become
    ``"__unknown__"``; then ``round(n_known * mask_rate)`` of the remaining rows, chosen with
    ``rng.choice(known_positions, n, replace=False)``, are masked to ``"__unknown__"``.
    """
    toks = [str(v) for v in values]
    freq: dict[str, int] = {}
    for t in toks:
        freq[t] = freq.get(t, 0) + 1
    rare = frozenset(t for t, c in freq.items() if c < min_freq)
    if rare:
        toks = [UNKNOWN_CATEGORY if t in rare else t for t in toks]
    masked = np.empty(0, dtype=np.int64)
    if mask_rate > 0:
        known = np.flatnonzero(np.asarray([t != UNKNOWN_CATEGORY for t in toks], dtype=bool))
        n_mask = int(round(len(known) * mask_rate))
        if n_mask > 0:
            masked = np.sort(rng.choice(known, size=n_mask, replace=False))
            for i in masked.tolist():
                toks[i] = UNKNOWN_CATEGORY
    vocab = sorted(set(toks) | {UNKNOWN_CATEGORY})
    return CategoryFit(toks, vocab, rare, masked)


def balanced_class_weights(y: np.ndarray) -> np.ndarray:
    """Per-class weights ``n / (n_classes * count)`` with ``n_classes = y.max() + 1`` and zero
    counts set to 1 (taskclf ``compute_sample_weights``; spec 3, 12.7)."""
    y = np.asarray(y, dtype=np.int64)
    n_classes = int(y.max()) + 1
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    counts[counts == 0] = 1.0
    return len(y) / (n_classes * counts)


def sample_weights(y: np.ndarray, method: Literal["balanced", "none"] = "balanced") -> np.ndarray | None:
    """Per-sample weights for ``method`` (``"none"`` -> None)."""
    if method == "none":
        return None
    if method != "balanced":
        raise ValueError(f"class_weight must be 'balanced' or 'none', got {method!r}")
    y = np.asarray(y, dtype=np.int64)
    return balanced_class_weights(y)[y]


def _encoder(schema: FeatureSchema, vocabs: dict[str, list[str]]) -> ModelBundle:
    """A :class:`ModelBundle` used only for its ``encode`` (the serving column plan).

    ModelBundle's constructor takes a booster but its encoding plan never touches it; building
    one without a booster guarantees that training sees exactly the serving encoding.
    """
    codes = {c: CategoricalCodes.from_vocab(v) for c, v in vocabs.items()}
    return ModelBundle(Path("<training>"), {"schema_hash": schema.hash}, None, codes, schema)  # type: ignore[arg-type]


def dataset_hash(rows: Iterable[dict[str, Any]]) -> str:
    """First 16 hex digits of SHA-256 over the canonical rows: each row as sorted-key compact
    JSON, rows sorted by (``user_id``, ``bucket_start_ts``, JSON text), newline-joined."""
    lines = []
    for r in rows:
        lines.append((str(r.get("user_id")), str(r.get("bucket_start_ts")), orjson.dumps(r, option=orjson.OPT_SORT_KEYS)))
    lines.sort()
    h = hashlib.sha256()
    for _, _, b in lines:
        h.update(b)
        h.update(b"\n")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------


def _dump(path: Path, obj: Any, newline: bool = False) -> None:
    path.write_text(json.dumps(obj, indent=2) + ("\n" if newline else ""), encoding="utf-8")


def _confusion_csv(cm: np.ndarray) -> str:
    lines = ["," + ",".join(LABELS)]
    for name, row in zip(LABELS, cm.tolist()):
        lines.append(name + "," + ",".join(str(int(v)) for v in row))
    return "\n".join(lines) + "\n"


def write_policy(
    models_dir: str | Path,
    bundle_dir: str | Path,
    schema_hash: str,
    *,
    reject_threshold: float = DEFAULT_REJECT_THRESHOLD,
    calibrator_store_dir: str | None = None,
    calibration_method: str | None = None,
    per_user_reject_thresholds: dict[str, float] | None = None,
    source: str = "retrain",
) -> Path:
    """Write ``<models_dir>/inference_policy.json`` in taskclf's format, atomically.

    ``model_dir`` is written relative to ``models_dir``'s parent (taskclf's ``TASKCLF_HOME``)
    when the bundle lies under it, else absolute. The temporary file is
    ``.inference_policy.json.tmp`` and is replaced into place with ``os.replace``.
    """
    md = Path(models_dir)
    home = md.resolve().parent
    b = Path(bundle_dir).resolve()
    try:
        rel = b.relative_to(home).as_posix()
    except ValueError:
        rel = str(b)
    policy = {
        "policy_version": "v1",
        "model_dir": rel,
        "model_schema_hash": schema_hash,
        "model_label_set": sorted(LABELS),
        "calibrator_store_dir": calibrator_store_dir,
        "calibration_method": calibration_method,
        "reject_threshold": reject_threshold,
        "per_user_reject_thresholds": per_user_reject_thresholds,
        "created_at": utc_now_iso(),
        "source": source,
        "git_commit": "unknown",
    }
    md.mkdir(parents=True, exist_ok=True)
    tmp = md / f".{POLICY_FILE}.tmp"
    _dump(tmp, policy, newline=True)
    os.replace(tmp, md / POLICY_FILE)
    return md / POLICY_FILE


def _reserve_run_dir(out_dir: Path, seed: int, now: dt.datetime) -> tuple[str, Path]:
    stamp = now.strftime("%Y-%m-%d_%H%M%S")
    base = seed % 10000
    for k in range(10000):
        run_id = f"{stamp}_run-{(base + k) % 10000:04d}"
        final = out_dir / run_id
        if not final.exists() and not (out_dir / f".{run_id}.tmp").exists():
            return run_id, final
    raise ArtifactError(out_dir, f"no free run id for {stamp}", "retry in a second")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


def train_bundle(
    rows: Sequence[dict[str, Any]],
    out_dir: str | Path,
    *,
    schema_version: str = "v1",
    seed: int = 0,
    num_boost_round: int = 100,
    class_weight: Literal["balanced", "none"] = "balanced",
    data_provenance: Literal["real", "synthetic", "mixed"] = "real",
    progress: Progress | None = None,
) -> Path:
    """Train a LightGBM bundle on labelled FeatureRows and write it under ``out_dir``.

    Writes ``out_dir/<run_id>/`` (model.txt, metadata.json, metrics.json, confusion_matrix.csv,
    categorical_encoders.json, drift_reference.json) and refreshes ``out_dir/inference_policy.json`` to point at it
    (threshold 0.55, no calibrator store, source ``"retrain"``). The same rows and seed give
    the same model (bit-identical ``model.txt`` tree section and predictions).

    :returns: the bundle directory; ``ModelBundle.load`` accepts it
    :raises ArtifactError: invalid rows, or too few rows for a validation split
    """
    report = progress or _noop
    if schema_version not in SCHEMAS:
        raise ArtifactError("<train>", f"unknown schema_version {schema_version!r}", f"use one of {sorted(SCHEMAS)}", field="schema_version")
    schema = SCHEMAS[schema_version]
    out = Path(out_dir)
    n_rows = len(rows)

    report("overlay", 0, n_rows)
    data = fill_overlay(rows, schema)
    report("overlay", n_rows, n_rows)

    splits = split_by_time(data)
    tr, va = splits["train"], splits["val"]
    report("split", 1, 1)
    if not tr or not va:
        raise ArtifactError("<training rows>", f"{n_rows} rows give {len(tr)} train / {len(va)} validation rows", "provide more labelled rows per user (each user's rows are split 70/15/15 in time)")

    # categorical vocabularies on the train split (one RandomState, columns in schema order)
    rng = np.random.RandomState(seed)
    fits: dict[str, CategoryFit] = {}
    for col in schema.categorical_columns:
        fits[col] = fit_category((data[i][0].values[col] for i in tr), rng)
    vocabs = {c: f.vocabulary for c, f in fits.items()}
    enc = _encoder(schema, vocabs)

    report("encode", 0, 2)
    X_tr = enc.encode([data[i][0] for i in tr], [data[i][1] for i in tr])
    for col, f in fits.items():
        if f.masked_rows.size:
            X_tr[f.masked_rows, schema.feature_columns.index(col)] = float(enc.encoders[col].unknown)
    y_tr = np.asarray([data[i][2] for i in tr], dtype=np.int64)
    X_va = enc.encode([data[i][0] for i in va], [data[i][1] for i in va])
    y_va = np.asarray([data[i][2] for i in va], dtype=np.int64)
    report("encode", 2, 2)

    params: dict[str, Any] = {
        "objective": "multiclass",
        "metric": "multi_logloss",
        "num_leaves": 31,
        "learning_rate": 0.1,
        "verbose": -1,
        "num_class": N_LABELS,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,
    }
    ds = lgb.Dataset(
        X_tr,
        label=y_tr,
        weight=sample_weights(y_tr, class_weight),
        feature_name=list(schema.feature_columns),
        categorical_feature=list(schema.categorical_indices),
        free_raw_data=False,
    )

    def _cb(env: Any) -> None:
        done = env.iteration - env.begin_iteration + 1
        if done % 10 == 0 or done == num_boost_round:
            report("train", done, num_boost_round)

    report("train", 0, num_boost_round)
    booster = lgb.train(dict(params), ds, num_boost_round=num_boost_round, callbacks=[_cb])

    report("evaluate", 0, 1)
    from sklearn.metrics import confusion_matrix, f1_score

    P_va = np.asarray(booster.predict(X_va, num_threads=1)).reshape(len(va), N_LABELS)
    pred = P_va.argmax(axis=1)
    true_names = [LABELS[i] for i in y_va.tolist()]
    pred_names = [LABELS[i] for i in pred.tolist()]
    labels = list(LABELS)
    cm = confusion_matrix(true_names, pred_names, labels=labels)
    metrics = {
        "macro_f1": round(float(f1_score(true_names, pred_names, labels=labels, average="macro", zero_division=0)), 4),
        "weighted_f1": round(float(f1_score(true_names, pred_names, labels=labels, average="weighted", zero_division=0)), 4),
        "confusion_matrix": cm.tolist(),
        "label_names": labels,
    }
    report("evaluate", 1, 1)

    report("write", 0, 1)
    dates = [utc_date(w.ts_us) for w, _, _ in data]
    params.update({"class_weight_method": class_weight, "unknown_category_freq_threshold": MIN_CATEGORY_FREQ, "unknown_category_mask_rate": UNKNOWN_MASK_RATE})
    metadata = {
        "schema_version": schema.version,
        "schema_hash": schema.hash,
        "label_set": sorted(LABELS),
        "train_date_from": min(dates).isoformat(),
        "train_date_to": max(dates).isoformat(),
        "params": params,
        "git_commit": "unknown",
        "dataset_hash": dataset_hash(rows),
        "reject_threshold": None,
        "data_provenance": data_provenance,
        "created_at": utc_now_iso(),
        "unknown_category_freq_threshold": MIN_CATEGORY_FREQ,
        "unknown_category_mask_rate": UNKNOWN_MASK_RATE,
    }
    out.mkdir(parents=True, exist_ok=True)
    run_id, final = _reserve_run_dir(out, seed, dt.datetime.now(dt.UTC))
    tmp = out / f".{run_id}.tmp"
    tmp.mkdir()
    try:
        booster.save_model(str(tmp / "model.txt"))
        _dump(tmp / "metadata.json", metadata)
        _dump(tmp / "metrics.json", metrics)
        (tmp / "confusion_matrix.csv").write_text(_confusion_csv(cm), encoding="utf-8")
        _dump(tmp / "categorical_encoders.json", vocabs)
        # the drift reference (an extra file: taskclf ignores it): the validation windows as the
        # bundle alone serves them (no calibrator store, taskclf's default reject threshold)
        va_classes = np.where(P_va.max(axis=1) < DEFAULT_REJECT_THRESHOLD, REJECT_ID, pred)
        va_sample = sample_profile_inputs(DriftObserver(enc), BatchArrays([data[i][0] for i in va], X_va, P_va, va_classes))
        source = f"train: validation split ({len(va)} windows), uncalibrated, reject threshold {DEFAULT_REJECT_THRESHOLD}"
        write_profile(profile_of_samples(enc, [va_sample], model_bundle_id=run_id, source=source), tmp / PROFILE_FILE)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_policy(out, final, schema.hash, source="retrain")
    report("write", 1, 1)
    return final
