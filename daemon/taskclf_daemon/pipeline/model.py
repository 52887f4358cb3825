"""taskclf model bundle: load with the schema-hash and label-set gates, encode, predict in batches.

Bundle layout (spec 3): ``model.txt`` (LightGBM text model), ``metadata.json``, optional
``categorical_encoders.json`` (``{column: [sorted vocabulary]}``); ``metrics.json`` and
``confusion_matrix.csv`` are written by ``train`` but not needed to serve.

Prediction backends (``ModelBundle.load(..., backend=...)``; the chosen one is ``bundle.backend``)
---------------------------------------------------------------------------------------------------
* ``lightgbm`` (default): ``Booster.predict(X, num_threads=1)``, exactly what taskclf runs.
* ``lleaves``: ``model.txt`` compiled to native code with lleaves (optional extra
  ``pip install 'taskclf-daemon[fast]'``), about 6-7x faster on the golden 800-tree model. It is
  compiled with ``raw_score=True`` and the multiclass softmax is applied here exactly as LightGBM's
  ``Common::Softmax`` does it (max, ``exp`` from libm in class order, sequential sum, divide);
  lleaves' own softmax adds 1e-15 to the denominator. Prediction runs on one thread
  (``n_jobs=1``; perf_anchors section 0). Compiling takes ~30 s, so the object file is cached
  in ``cache_dir`` (default ``$XDG_CACHE_HOME/taskclf-daemon/lleaves``, else
  ``~/.cache/taskclf-daemon/lleaves``) under a key over sha256(model.txt), the lleaves and
  llvmlite versions, the CPU (arch, LLVM host CPU name and features) and the compile options;
  the cache is written atomically (temp file + fsync + rename). Only the first start compiles.
* ``auto``: ``lleaves`` when it is importable AND a cached compile for this model exists,
  else ``lightgbm``. It never compiles (no 30 s stall on the start path); warm the cache with
  one ``backend="lleaves"`` load (e.g. at deploy/build time).

Determinism: for a given backend, a row's output does not depend on the batch it is in (rows
are computed independently, one thread, no reassociation). **Across backends the output bytes
differ**: lleaves sums the trees of a class in blocks of 34 (cache blocking), LightGBM one by one,
so raw scores differ in the last bits (max |diff| ~1e-14 raw, ~1e-15 in probabilities on the
golden model). Probabilities are the same to ~1e-15, labels the same, but ``core_probs`` (rounded
to 6 places, rarely) and ``mapped_probs`` (unrounded) can change in their last digits when the
backend is switched. The backend is therefore part of the model identity: log ``bundle.backend``
and put it in the provenance of the outputs.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import platform
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.labels import LABELS, N_LABELS
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.schema import OVERLAY_COLUMNS, SCHEMAS, FeatureSchema

UNKNOWN_CATEGORY = "__unknown__"
_GENERIC_NAME = re.compile(r"^Column_\d+$")

#: accepted values of ``ModelBundle.load(backend=...)`` (and of the ``model_backend`` setting)
BACKENDS = ("lightgbm", "lleaves", "auto")
FAST_EXTRA_FIX = "pip install 'taskclf-daemon[fast]' (lleaves==1.3.0 with llvmlite==0.44.0), or use model_backend = \"lightgbm\""
#: lleaves compile options used here; part of the cache key (bump the tag when they change)
_LLEAVES_OPTIONS = {"format": 1, "raw_score": True, "fblocksize": 34, "fcodemodel": "large", "finline": True, "use_fp64": True}


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
    """A loaded taskclf bundle. Thread-safe for concurrent ``predict_proba`` calls.

    ``backend`` is the prediction backend actually in use (``lightgbm`` or ``lleaves``; part of the
    model identity, see the module docstring); ``requested_backend`` what was asked for;
    ``backend_note`` why ``auto`` chose what it did; for ``lleaves``, ``cache_file`` is the compiled
    object file, ``compiled_from_cache`` whether this load reused it (False: it compiled) and
    ``compile_seconds`` how long compiling or loading the object took.
    """

    def __init__(self, path: Path, metadata: dict[str, Any], booster: lgb.Booster, encoders: dict[str, CategoricalCodes], schema: FeatureSchema, *, backend: str = "lightgbm", compiled: Any = None) -> None:
        self.path = path
        self.metadata = metadata
        self.booster = booster
        self.encoders = encoders
        self.schema = schema
        if backend not in ("lightgbm", "lleaves") or (backend == "lleaves") != (compiled is not None):
            raise ValueError(f"backend {backend!r} with compiled={compiled!r}")
        self.backend = backend
        self.requested_backend = backend
        self.backend_note = ""
        self.cache_file: Path | None = None
        self.compiled_from_cache: bool | None = None
        self.compile_seconds: float | None = None
        self._compiled = compiled
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
        self._row = _compile_row(self._plan)

    @classmethod
    def load(cls, model_dir: str | Path, backend: str = "lightgbm", cache_dir: str | Path | None = None) -> ModelBundle:
        """Load and validate a bundle.

        :param backend: ``lightgbm`` (default), ``lleaves`` (compile ``model.txt``, or reuse the
            cached compile) or ``auto`` (``lleaves`` only if importable and already cached, else
            ``lightgbm``; never compiles). See the module docstring.
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
        if backend == "lightgbm":
            bundle = cls(path, meta, booster, encoders, schema)
        else:
            bundle = _load_with_lleaves(cls, backend, model_path, cache_dir, (path, meta, booster, encoders, schema))
        bundle.requested_backend = backend
        return bundle

    def backend_info(self) -> dict[str, Any]:
        """What the start-up log line / provenance should carry about the prediction backend."""
        info: dict[str, Any] = {"model_backend": self.backend, "model_backend_requested": self.requested_backend}
        if self.backend_note:
            info["model_backend_note"] = self.backend_note
        if self.backend == "lleaves":
            info.update(
                lleaves_version=_dist_version("lleaves"),
                llvmlite_version=_dist_version("llvmlite"),
                lleaves_cache_file=str(self.cache_file) if self.cache_file else None,
                lleaves_compiled_from_cache=self.compiled_from_cache,
                lleaves_load_seconds=None if self.compile_seconds is None else round(self.compile_seconds, 3),
            )
        return info

    @property
    def width(self) -> int:
        return len(self.schema.feature_columns)

    def encode(self, windows: Sequence[FeatureWindow], overlays: Sequence[tuple[float | None, ...]]) -> np.ndarray:
        """Build the float64 model input matrix (n, width): categorical codes, None -> 0.0, bool -> 1/0."""
        if not windows:
            return np.empty((0, self.width), dtype=np.float64)
        row = self._row
        return np.array([row(w.values, ov) for w, ov in zip(windows, overlays)], dtype=np.float64)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Raw class probabilities (n, 8), columns in alphabetical label order. One model call
        (one thread) on the whole batch, with the bundle's backend."""
        if X.shape[0] == 0:
            return np.empty((0, N_LABELS), dtype=np.float64)
        if self._compiled is not None:
            raw = self._compiled.predict(np.ascontiguousarray(X, dtype=np.float64), n_jobs=1)
            return softmax_like_lightgbm(np.asarray(raw, dtype=np.float64).reshape(X.shape[0], N_LABELS))
        P = self.booster.predict(X, num_threads=1)
        return np.asarray(P, dtype=np.float64).reshape(X.shape[0], N_LABELS)


def _compile_row(plan: Sequence[tuple[str, str, Any]]) -> Any:
    """A generated ``row(values, overlay) -> list[float]`` for the encode plan: one list
    display, no per-column loop or numpy scalar stores (the matrix is built in one call)."""
    env: dict[str, Any] = {}
    items = []
    for j, (col, kind, arg) in enumerate(plan):
        if kind == "num":
            items.append(f"0.0 if (v := vals[{col!r}]) is None else float(v)")
        elif kind == "ovl":
            items.append(f"0.0 if (v := ov[{int(arg)}]) is None else float(v)")
        elif arg is None:
            items.append("-1.0")
        else:
            env[f"_g{j}"] = arg.codes.get
            env[f"_u{j}"] = arg.unknown
            items.append(f"_g{j}(str(vals[{col!r}]), _u{j})")
    src = "def row(vals, ov):\n    return [\n        " + ",\n        ".join(items) + ",\n    ]\n"
    exec(compile(src, "<taskclf_daemon encode row>", "exec"), env)  # noqa: S102 - our own generated code
    return env["row"]


# ---------------------------------------------------------------- lleaves backend


_SMALL_BATCH = 16  # below this many rows the per-call cost of the numpy path dominates


def softmax_like_lightgbm(raw: np.ndarray) -> np.ndarray:
    """Row-wise softmax computed exactly as LightGBM's ``Common::Softmax`` (multiclass objective).

    ``wmax = max(row)``; ``e_k = exp(x_k - wmax)`` with libm's ``exp`` (``math.exp`` calls the same
    function as ``std::exp``; numpy's SIMD ``exp`` differs in the last bit for ~5% of inputs);
    ``wsum`` accumulated in class order from 0; ``p_k = e_k / wsum``. Given bit-identical raw
    scores the result is bit-identical to ``Booster.predict`` (checked on the golden rows). Each
    row is computed on its own, so the result does not depend on the batch.
    """
    n, k = raw.shape
    if n <= _SMALL_BATCH:  # pure Python: same operations in the same order, without numpy's fixed cost
        out = []
        for row in raw.tolist():
            wmax = max(row)
            ex = [math.exp(x - wmax) for x in row]
            wsum = 0.0
            for x in ex:
                wsum += x
            out.append([x / wsum for x in ex])
        return np.array(out, dtype=np.float64).reshape(n, k)
    d = raw - raw.max(axis=1, keepdims=True)
    e = np.fromiter(map(math.exp, d.ravel().tolist()), dtype=np.float64, count=n * k).reshape(n, k)
    s = e[:, 0].copy()
    for j in range(1, k):
        s += e[:, j]
    return e / s[:, None]


def default_lleaves_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/taskclf-daemon/lleaves``, else ``~/.cache/taskclf-daemon/lleaves``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "taskclf-daemon" / "lleaves"


def _dist_version(name: str) -> str | None:
    try:
        return _metadata.version(name)
    except _metadata.PackageNotFoundError:
        return None


def _import_lleaves() -> Any:
    """The lleaves module, or ImportError (lleaves missing, or llvmlite unusable)."""
    return importlib.import_module("lleaves")


def _cpu_identity() -> dict[str, str]:
    """What the compiled object depends on: lleaves targets the host CPU name and features."""
    import llvmlite.binding as llvm

    llvm.initialize()
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:
        features = ""
    return {"machine": platform.machine(), "triple": llvm.get_process_triple(), "cpu": llvm.get_host_cpu_name(), "features": features}


def lleaves_cache_file(model_file: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Path of the cached lleaves object for ``model_file`` on this machine and software stack.

    Key: sha256 of model.txt, the lleaves and llvmlite versions, the CPU identity and the compile
    options (:data:`_LLEAVES_OPTIONS`). Needs llvmlite importable (for the CPU identity).
    """
    model_sha = hashlib.sha256(Path(model_file).read_bytes()).hexdigest()
    key = {"model_sha256": model_sha, "lleaves": _dist_version("lleaves"), "llvmlite": _dist_version("llvmlite"), "cpu": _cpu_identity(), "options": _LLEAVES_OPTIONS}
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir or default_lleaves_cache_dir()) / f"model-{model_sha[:16]}-{key_hash[:16]}.o"


def _looks_like_object(path: Path) -> bool:
    """Cheap sanity check of a cached object file (non-empty; ELF magic on Linux)."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head == b"\x7fELF" if platform.system() == "Linux" else len(head) == 4


def untrusted_cache_reason(cache_file: Path) -> str | None:
    """Why loading native code from ``cache_file`` would be unsafe, or ``None``: on POSIX the
    file and its directory must belong to this user (or root) and be writable by nobody else --
    otherwise anyone who can write there could make the daemon run their code (the rule ssh
    applies to its keys). A missing file is not a reason (it is a cache miss)."""
    if os.name != "posix":  # pragma: no cover - POSIX only here
        return None
    uid = os.geteuid()
    for path in (cache_file.parent, cache_file):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"cannot stat {path} ({exc})"
        if st.st_uid not in (uid, 0):
            return f"{path} belongs to uid {st.st_uid}, not to this user ({uid})"
        if st.st_mode & 0o022:
            return f"{path} is writable by group or others (mode {st.st_mode & 0o777:o})"
    return None


def _compile_options() -> dict[str, Any]:
    return {k: v for k, v in _LLEAVES_OPTIONS.items() if k != "format"}


def _load_with_lleaves(cls: type[ModelBundle], backend: str, model_path: Path, cache_dir: str | Path | None, args: tuple[Any, ...]) -> ModelBundle:
    """``lleaves``: compile (or reuse the cache); ``auto``: reuse the cache or fall back to LightGBM."""
    try:
        lleaves = _import_lleaves()
        cache_file = lleaves_cache_file(model_path, cache_dir)
    except Exception as exc:  # noqa: BLE001 -- ImportError, or an llvmlite that lleaves cannot use
        if backend == "auto":
            bundle = cls(*args)
            bundle.backend_note = f"lleaves not importable ({exc.__class__.__name__}: {exc}); using lightgbm"
            return bundle
        raise ArtifactError(model_path, f"model backend 'lleaves' needs the lleaves package, which cannot be imported ({exc.__class__.__name__}: {exc})", FAST_EXTRA_FIX, field="model_backend") from None
    unsafe = untrusted_cache_reason(cache_file)
    if unsafe is not None:
        if backend == "auto":
            bundle = cls(*args)
            bundle.backend_note = f"lleaves cache not trusted: {unsafe}; using lightgbm"
            return bundle
        raise ArtifactError(cache_file.parent, f"the lleaves cache is not safe to load native code from: {unsafe}", "run `chmod go-w` on the directory and file (or remove them), or set model_cache_dir to a private directory", field="model_cache_dir")
    cached = cache_file.is_file() and _looks_like_object(cache_file)
    if backend == "auto" and not cached:
        bundle = cls(*args)
        bundle.backend_note = f"no lleaves compile cached at {cache_file}; using lightgbm (a backend='lleaves' load compiles and caches it)"
        return bundle
    t0 = time.perf_counter()
    model = lleaves.Model(model_file=str(model_path))
    schema: FeatureSchema = args[4]
    if model.num_feature() != len(schema.feature_columns) or model.num_model_per_iteration() != N_LABELS:
        raise ArtifactError(model_path, f"lleaves reads {model.num_feature()} features / {model.num_model_per_iteration()} classes", "restore model.txt from the bundle", field="model_backend")
    if cached:
        try:
            model.compile(cache=str(cache_file), **_compile_options())
        except Exception as exc:  # noqa: BLE001 -- an unusable object file is a cache miss
            if backend == "auto":
                bundle = cls(*args)
                bundle.backend_note = f"cached lleaves object {cache_file} unusable ({exc.__class__.__name__}: {exc}); using lightgbm"
                return bundle
            cached = False  # "lleaves": recompile and replace it
            model = lleaves.Model(model_file=str(model_path))
    if not cached:
        _compile_to_cache(model, model_path, cache_file)
    bundle = cls(*args, backend="lleaves", compiled=model)
    bundle.cache_file = cache_file
    bundle.compiled_from_cache = cached
    bundle.compile_seconds = time.perf_counter() - t0
    return bundle


def _compile_to_cache(model: Any, model_path: Path, cache_file: Path) -> None:
    """Compile ``model`` and publish the object file atomically: lleaves writes a fresh temp file in
    the cache directory, which is fsynced and renamed over ``cache_file`` (concurrent starts each
    compile and rename; readers only ever see a complete file)."""
    try:
        cache_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(cache_file.parent, f"cannot create the lleaves cache directory ({exc})", "make it writable, set another cache directory, or pre-populate it with a compile made on an identical machine", field="model_backend") from None
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")  # must not exist: lleaves would load it
    try:
        try:
            model.compile(cache=str(tmp), **_compile_options())
        except AttributeError as exc:  # lleaves 1.3.0 with llvmlite >= 0.45: no PassManagerBuilder
            raise ArtifactError(model_path, f"lleaves cannot compile with this llvmlite ({exc})", FAST_EXTRA_FIX, field="model_backend") from None
        except Exception as exc:  # noqa: BLE001
            raise ArtifactError(model_path, f"lleaves failed to compile the model ({exc.__class__.__name__}: {exc})", "use model_backend = \"lightgbm\" and report the model", field="model_backend") from None
        if not tmp.is_file():
            raise ArtifactError(cache_file, "lleaves did not write the compiled object", "check the cache directory is writable and has space", field="model_backend")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, cache_file)
        try:
            dfd = os.open(cache_file.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)
    except OSError as exc:
        raise ArtifactError(cache_file, f"cannot write the lleaves cache ({exc})", "make the cache directory writable and check free space", field="model_backend") from None
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass
