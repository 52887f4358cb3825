"""taskclf model bundle: load with the schema-hash and label-set gates, encode, predict in batches.

Bundle layout (spec 3): ``model.txt`` (LightGBM text model), ``metadata.json``, optional
``categorical_encoders.json`` (``{column: [sorted vocabulary]}``); ``metrics.json`` and
``confusion_matrix.csv`` are written by ``train`` but not needed to serve.

Prediction backends (``ModelBundle.load(..., backend=...)``; the one in force is ``bundle.backend``)
---------------------------------------------------------------------------------------------------
* ``lightgbm``: ``Booster.predict(X, num_threads=1)``, exactly what taskclf runs.
* ``lleaves``: ``model.txt`` compiled to native code with lleaves (a dependency), 6-11x faster
  predict on the golden 800-tree model and **bit-identical** to LightGBM (``compiled.py`` says
  why and how that is checked). Compiling takes 30-100 s, so the object file is cached in
  ``cache_dir`` (default ``$XDG_CACHE_HOME/taskclf-daemon/lleaves``, else
  ``~/.cache/taskclf-daemon/lleaves``) under a key over sha256(model.txt), the lleaves and llvmlite
  versions, the CPU and the compile options; a ``lleaves`` load compiles (blocking) on a miss.
* ``auto`` (the daemon's default): a cached compile is loaded at once; otherwise the bundle
  serves with LightGBM immediately while a child process compiles into the cache, and the
  compiled model is swapped in inside this object when it is ready (no restart). Any failure
  leaves LightGBM in force, with ``backend_note`` saying why.

Every compiled model, from the cache or fresh, must reproduce LightGBM bit for bit on a fixed
probe of awkward rows before it serves, and native code is only loaded from a cache that belongs
to this user and that nobody else can write. So outputs never depend on the backend, the swap
changes no output byte, and for a given backend a row's output does not depend on its batch
(rows computed independently, one thread, no reassociation). The swap is logged
(``model_backend_swapped``) and listeners (``add_backend_listener``) are told, e.g. the
``taskclf_model_backend_info`` gauge.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.labels import LABELS, N_LABELS
from taskclf_daemon.pipeline import compiled as cc
from taskclf_daemon.pipeline.compiled import softmax_like_lightgbm, untrusted_cache_reason
from taskclf_daemon.pipeline.matrix import MatrixEncoder
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.schema import OVERLAY_COLUMNS, SCHEMAS, FeatureSchema

UNKNOWN_CATEGORY = "__unknown__"
_GENERIC_NAME = re.compile(r"^Column_\d+$")

#: accepted values of ``ModelBundle.load(backend=...)`` (and of the ``model_backend`` setting)
BACKENDS = ("lightgbm", "lleaves", "auto")
FAST_EXTRA_FIX = cc.FAST_FIX
__all__ = ["BACKENDS", "ModelBundle", "default_lleaves_cache_dir", "lleaves_cache_file", "softmax_like_lightgbm", "untrusted_cache_reason"]
_log = logging.getLogger("taskclf_daemon.model")
default_lleaves_cache_dir = cc.default_cache_dir


def lleaves_cache_file(model_file: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Path of the cached compiled object for ``model_file`` on this machine and software stack."""
    return cc.cache_file_for(model_file, cache_dir)


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
    def from_vocab(cls, vocab: Sequence[str]) -> CategoricalCodes:
        codes = {str(v): i for i, v in enumerate(vocab)}
        return cls(codes, codes.get(UNKNOWN_CATEGORY, -1))

    def encode(self, value: Any) -> int:
        return self.codes.get(str(value), self.unknown)


class ModelBundle:
    """A loaded taskclf bundle. Thread-safe for concurrent ``predict_proba`` calls, also while the
    compiled backend is swapped in.

    ``backend`` is the prediction backend in force (``lightgbm`` or ``lleaves``; both give the same
    bits, see the module docstring); ``requested_backend`` what was asked for; ``backend_note`` why
    ``auto`` is (still) on LightGBM; for ``lleaves``, ``cache_file`` is the compiled object file,
    ``compiled_from_cache`` whether it was already there (False: this start compiled it) and
    ``compile_seconds`` how long compiling and/or loading the object took.
    """

    def __init__(self, path: Path, metadata: dict[str, Any], booster: lgb.Booster, encoders: dict[str, CategoricalCodes], schema: FeatureSchema) -> None:
        self.path = path
        self.metadata = metadata
        self.booster = booster
        self.encoders = encoders
        self.schema = schema
        self.backend = "lightgbm"
        self.requested_backend = "lightgbm"
        self.backend_note = ""
        self.cache_file: Path | None = None
        self.compiled_from_cache: bool | None = None
        self.compile_seconds: float | None = None
        self._compiled: Any = None  # the lleaves model once in force (set last, read first)
        self._categorical: tuple[int, ...] = ()
        self._listeners: list[Callable[[ModelBundle], None]] = []
        self._job: cc.CompileJob | None = None
        self._settled = threading.Event()  # set when no background compile is pending
        self._settled.set()
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
        self._matrix = MatrixEncoder(self._plan, len(OVERLAY_COLUMNS))

    @classmethod
    def load(cls, model_dir: str | Path, backend: str = "lightgbm", cache_dir: str | Path | None = None) -> ModelBundle:
        """Load and validate a bundle.

        :param backend: ``lightgbm`` (default here), ``lleaves`` (compile ``model.txt`` now, or
            reuse the cached compile) or ``auto`` (the cached compile, else LightGBM at once and
            the compile swapped in from the background). See the module docstring.
        :param cache_dir: where compiled lleaves objects live (default
            :func:`default_lleaves_cache_dir`)
        :raises ArtifactError: missing files, unknown schema version, schema-hash or label-set
            mismatch, a model whose width or class count does not fit the schema; an unknown
            backend; ``lleaves`` requested but not installed (or not compilable / cache not writable)
        """
        if backend not in BACKENDS:
            raise ArtifactError(model_dir, f"unknown model backend {backend!r}", f"use one of {', '.join(BACKENDS)}", field="model_backend")
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
        bundle = cls(path, meta, booster, encoders, schema)
        bundle.requested_backend = backend
        if backend != "lightgbm":
            bundle._attach_compiled(backend, model_path, cache_dir)
        return bundle

    def backend_info(self) -> dict[str, Any]:
        """What the start-up log line / provenance should carry about the prediction backend."""
        info: dict[str, Any] = {"model_backend": self.backend, "model_backend_requested": self.requested_backend}
        if self.backend_note:
            info["model_backend_note"] = self.backend_note
        if self.backend == "lleaves":
            info.update(
                lleaves_version=cc.dist_version("lleaves"),
                llvmlite_version=cc.dist_version("llvmlite"),
                lleaves_cache_file=str(self.cache_file) if self.cache_file else None,
                lleaves_compiled_from_cache=self.compiled_from_cache,
                lleaves_load_seconds=None if self.compile_seconds is None else round(self.compile_seconds, 3),
            )
        return info

    @property
    def width(self) -> int:
        return len(self.schema.feature_columns)

    def encode(self, windows: Sequence[FeatureWindow], overlays: Sequence[tuple[float | None, ...]]) -> np.ndarray:
        """Build the float64 model input matrix (n, width): categorical codes, None -> 0.0, bool -> 1/0
        (``pipeline/matrix.py``: columnar, the same bits as one list per row)."""
        return self._matrix.encode(windows, overlays)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Raw class probabilities (n, 8), columns in alphabetical label order. One model call
        (one thread) on the whole batch, with the bundle's backend."""
        if X.shape[0] == 0:
            return np.empty((0, N_LABELS), dtype=np.float64)
        compiled = self._compiled
        if compiled is not None:
            return cc.predict_compiled(compiled, X, self._categorical, N_LABELS)
        return self._predict_lightgbm(X)

    def _predict_lightgbm(self, X: np.ndarray) -> np.ndarray:
        P = self.booster.predict(X, num_threads=1)
        return np.asarray(P, dtype=np.float64).reshape(X.shape[0], N_LABELS)

    # ------------------------------------------------------------ the compiled backend
    def add_backend_listener(self, fn: Callable[[ModelBundle], None]) -> None:
        """Call ``fn(bundle)`` now and whenever the backend in force changes (from the compile thread)."""
        self._listeners.append(fn)
        fn(self)

    def wait_for_backend(self, timeout: float | None = None) -> bool:
        """Wait until no background compile is pending; True if none is (any more)."""
        return self._settled.wait(timeout)

    def close(self) -> None:
        """Abandon a pending background compile (kills its child process; the next start redoes it)."""
        job = self._job
        if job is not None:
            job.cancel()

    def _attach_compiled(self, backend: str, model_path: Path, cache_dir: str | Path | None) -> None:
        """``lleaves``: load the cached compile or compile now; ``auto``: load the cached compile or
        start compiling in the background. ``auto`` never fails: LightGBM stays, with a note."""
        auto = backend == "auto"

        def fail(what: str, exc: BaseException | str, fix: str, field: str = "model_backend", path: Path = model_path) -> None:
            if not auto:
                raise ArtifactError(path, f"{what}: {exc}", fix, field=field)
            self.backend_note = f"{what}: {exc}; using lightgbm"

        try:
            lleaves = cc.import_lleaves()
            cache_file = cc.cache_file_for(model_path, cache_dir)
        except Exception as exc:  # noqa: BLE001 -- ImportError, or an llvmlite that lleaves cannot use
            return fail("model backend 'lleaves' needs the lleaves package, which cannot be imported", f"{exc.__class__.__name__}: {exc}", FAST_EXTRA_FIX)
        unsafe = cc.untrusted_cache_reason(cache_file)
        if unsafe is not None:
            if auto:
                self.backend_note = f"lleaves cache not trusted: {unsafe}; using lightgbm"
                return None
            raise ArtifactError(cache_file.parent, f"the lleaves cache is not safe to load native code from: {unsafe}", "run `chmod go-w` on the directory and file (or remove them), or set model_cache_dir to a private directory", field="model_cache_dir")
        t0 = time.perf_counter()
        if cache_file.is_file() and cc.looks_like_object(cache_file):
            try:
                self._use_compiled(lleaves, model_path, cache_file, from_cache=True, t0=t0)
                return None
            except cc.CompileError as exc:
                if auto:
                    self.backend_note = f"{exc}; using lightgbm"
                    return None
                cache_file.unlink(missing_ok=True)  # "lleaves": recompile and replace it
        if auto:
            self.backend_note = f"compiling {cache_file.name} in the background; using lightgbm until it is ready"
            self._start_background(lleaves, model_path, cache_file)
            return None
        try:
            cc.CompileJob(model_path, cache_file).run()
            self._use_compiled(lleaves, model_path, cache_file, from_cache=False, t0=t0)
        except cc.CompileError as exc:
            return fail("lleaves failed to compile the model", exc, FAST_EXTRA_FIX)
        return None

    def _use_compiled(self, lleaves: Any, model_path: Path, cache_file: Path, *, from_cache: bool, t0: float) -> None:
        """Load the object (trust check first), check it against LightGBM on the probe rows bit for
        bit, then put it in force and tell the listeners.

        :raises CompileError: untrusted, unloadable, wrong shape, or not bit-identical
        """
        model = cc.load_object(lleaves, model_path, cache_file)
        if model.num_feature() != self.width or model.num_model_per_iteration() != N_LABELS:
            raise cc.CompileError(f"lleaves reads {model.num_feature()} features / {model.num_model_per_iteration()} classes from {model_path}")
        categorical = cc.categorical_features(model_path)
        probe = cc.probe_rows(self.width, categorical)
        want = self._predict_lightgbm(probe)
        got = cc.predict_compiled(model, probe, categorical, N_LABELS)
        if got.tobytes() != want.tobytes():
            rows = int((got.view(np.uint64) != want.view(np.uint64)).any(axis=1).sum())
            raise cc.CompileError(f"the compiled model differs from LightGBM on {rows} of {len(probe)} probe rows (max |diff| {float(np.nanmax(np.abs(got - want))):.3g})")
        self._categorical = categorical
        self.cache_file = cache_file
        self.compiled_from_cache = from_cache
        self.compile_seconds = time.perf_counter() - t0
        self.backend_note = ""
        self._compiled = model  # from here on predict_proba uses it
        self.backend = "lleaves"
        for fn in list(self._listeners):
            fn(self)

    def _start_background(self, lleaves: Any, model_path: Path, cache_file: Path) -> None:
        job = self._job = cc.CompileJob(model_path, cache_file, nice=10)
        self._settled.clear()

        def run() -> None:
            t0 = time.perf_counter()
            try:
                compiled_now = job.run()
                self._use_compiled(lleaves, model_path, cache_file, from_cache=not compiled_now, t0=t0)
                _log.info("model_backend_swapped backend=lleaves bundle=%s compiled=%s seconds=%.1f pid=%d", self.bundle_id, compiled_now, time.perf_counter() - t0, os.getpid())
            except Exception as exc:  # noqa: BLE001 -- LightGBM stays in force; say why
                self.backend_note = f"background compile failed ({exc.__class__.__name__}: {exc}); using lightgbm"
                _log.warning("model_backend_compile_failed bundle=%s error=%s", self.bundle_id, exc)
            finally:
                self._job = None
                self._settled.set()

        threading.Thread(target=run, name="taskclf-model-compile", daemon=True).start()
