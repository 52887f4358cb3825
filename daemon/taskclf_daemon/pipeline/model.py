"""taskclf model bundle: load with the schema-hash and label-set gates, encode, predict in batches.

Bundle layout (spec 3): ``model.txt`` (LightGBM text model), ``metadata.json``, optional
``categorical_encoders.json`` (``{column: [sorted vocabulary]}``); ``metrics.json`` and
``confusion_matrix.csv`` are written by ``train`` but not needed to serve.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import lightgbm as lgb
import numpy as np

from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.labels import LABELS, N_LABELS
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.schema import OVERLAY_COLUMNS, SCHEMAS, FeatureSchema

UNKNOWN_CATEGORY = "__unknown__"
_GENERIC_NAME = re.compile(r"^Column_\d+$")


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ArtifactError(path, f"{what} is missing", "point --model-dir at a taskclf bundle directory (models/<run_id>/)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(path, f"cannot read {what}: {exc}", "restore the file from the bundle as written by taskclf train") from None


@dataclass(frozen=True, slots=True)
class CategoricalCodes:
    """Code lookup of one categorical column: index in the sorted vocabulary."""

    codes: dict[str, int]
    unknown: int  # code of "__unknown__", or -1 for legacy vocabularies without it

    @classmethod
    def from_vocab(cls, vocab: Sequence[str]) -> "CategoricalCodes":
        codes = {str(v): i for i, v in enumerate(vocab)}
        return cls(codes, codes.get(UNKNOWN_CATEGORY, -1))

    def encode(self, value: Any) -> int:
        return self.codes.get(str(value), self.unknown)


class ModelBundle:
    """A loaded taskclf bundle. Thread-safe for concurrent ``predict_proba`` calls."""

    def __init__(self, path: Path, metadata: dict[str, Any], booster: lgb.Booster, encoders: dict[str, CategoricalCodes], schema: FeatureSchema) -> None:
        self.path = path
        self.metadata = metadata
        self.booster = booster
        self.encoders = encoders
        self.schema = schema
        self.bundle_id = path.name
        self.schema_hash: str = metadata["schema_hash"]
        cols = schema.feature_columns
        overlay_pos = {c: i for i, c in enumerate(OVERLAY_COLUMNS)}
        # per column: ("cat", codes) | ("ovl", overlay index) | ("num", None)
        self._plan: list[tuple[str, str, Any]] = []
        for c in cols:
            if c in schema.categorical_columns:
                self._plan.append((c, "cat", encoders.get(c)))
            elif c in overlay_pos:
                self._plan.append((c, "ovl", overlay_pos[c]))
            else:
                self._plan.append((c, "num", None))

    @classmethod
    def load(cls, model_dir: str | Path) -> "ModelBundle":
        """Load and validate a bundle.

        :raises ArtifactError: missing files, unknown schema version, schema-hash or label-set
            mismatch, a model whose width or class count does not fit the schema
        """
        path = Path(model_dir)
        if not path.is_dir():
            raise ArtifactError(path, "model bundle directory does not exist", "pass --model-dir models/<run_id> (a directory holding model.txt and metadata.json)")
        meta_path = path / "metadata.json"
        meta = _read_json(meta_path, "metadata.json")
        if not isinstance(meta, dict):
            raise ArtifactError(meta_path, "metadata.json is not a JSON object", "restore it from taskclf train")
        version = meta.get("schema_version")
        if version not in SCHEMAS:
            raise ArtifactError(meta_path, f"unknown schema_version {version!r}", f"use a bundle trained on one of {sorted(SCHEMAS)}", field="schema_version")
        schema = SCHEMAS[version]
        if meta.get("schema_hash") != schema.hash:
            raise ArtifactError(
                meta_path,
                f"Schema hash mismatch: bundle says {meta.get('schema_hash')!r}, schema {version} is {schema.hash!r}",
                "retrain the model with the current feature schema (the bundle does not match its declared schema_version)",
                field="schema_hash",
            )
        label_set = meta.get("label_set")
        if not isinstance(label_set, list) or sorted(map(str, label_set)) != sorted(LABELS):
            raise ArtifactError(
                meta_path,
                f"Label set mismatch: bundle has {label_set!r}, expected the 8 labels_v1 labels {list(LABELS)}",
                "serve a model trained on labels_v1",
                field="label_set",
            )
        model_path = path / "model.txt"
        if not model_path.is_file():
            raise ArtifactError(model_path, "model.txt is missing", "point --model-dir at a complete taskclf bundle")
        try:
            booster = lgb.Booster(model_file=str(model_path))
        except lgb.basic.LightGBMError as exc:
            raise ArtifactError(model_path, f"LightGBM cannot load the model: {exc}", "restore model.txt from the bundle") from None
        width = len(schema.feature_columns)
        if booster.num_feature() != width:
            raise ArtifactError(model_path, f"model has {booster.num_feature()} input features, schema {version} needs {width}", "use the bundle's own metadata.json / retrain", field="max_feature_idx")
        if booster.num_model_per_iteration() != N_LABELS:
            raise ArtifactError(model_path, f"model has {booster.num_model_per_iteration()} classes, expected {N_LABELS}", "serve a labels_v1 multiclass model", field="num_class")
        names = booster.feature_name()
        if not all(_GENERIC_NAME.match(n) for n in names) and tuple(names) != schema.feature_columns:
            bad = next(i for i, (a, b) in enumerate(zip(names, schema.feature_columns)) if a != b)
            raise ArtifactError(model_path, f"feature {bad} is {names[bad]!r}, schema {version} has {schema.feature_columns[bad]!r}", "retrain with taskclf's FEATURE_COLUMNS order", field="feature_names")
        encoders: dict[str, CategoricalCodes] = {}
        enc_path = path / "categorical_encoders.json"
        if enc_path.is_file():
            raw = _read_json(enc_path, "categorical_encoders.json")
            if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
                raise ArtifactError(enc_path, "expected {column: [sorted vocabulary]}", "restore the file from taskclf train")
            encoders = {str(k): CategoricalCodes.from_vocab(v) for k, v in raw.items()}
        return cls(path, meta, booster, encoders, schema)

    @property
    def width(self) -> int:
        return len(self.schema.feature_columns)

    def encode(self, windows: Sequence[FeatureWindow], overlays: Sequence[tuple]) -> np.ndarray:
        """Build the float64 model input matrix (n, width): categorical codes, None -> 0.0, bool -> 1/0."""
        n = len(windows)
        X = np.empty((n, self.width), dtype=np.float64)
        plan = self._plan
        for i in range(n):
            vals = windows[i].values
            ov = overlays[i]
            row = X[i]
            for j, (col, kind, arg) in enumerate(plan):
                if kind == "num":
                    v = vals[col]
                elif kind == "ovl":
                    v = ov[arg]
                else:
                    row[j] = arg.encode(vals[col]) if arg is not None else -1.0
                    continue
                row[j] = 0.0 if v is None else float(v)
        return X

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Raw class probabilities (n, 8), columns in alphabetical label order. One LightGBM call."""
        if X.shape[0] == 0:
            return np.empty((0, N_LABELS), dtype=np.float64)
        P = self.booster.predict(X, num_threads=1)
        return np.asarray(P, dtype=np.float64).reshape(X.shape[0], N_LABELS)
