"""The compiled backend: the model's trees as native code (lleaves), bit-identical to LightGBM.

``Booster.predict`` and the compiled trees give the same float64 probabilities, bit for bit, so
no output byte depends on the backend. Why, point by point (checked against LightGBM's
``GBDT::PredictRaw``, ``Tree::NumericalDecision``/``CategoricalDecision``, ``Common::Softmax``
and the dense-row predictor in ``c_api.cpp``, and against lleaves 1.3.0's code generator):

1. **Summation order.** LightGBM sums each class's trees one at a time, from 0.0, in iteration
   order. lleaves sorts the trees by class and sums them in blocks of ``fblocksize`` trees, each
   block from 0.0, then adds the block's partial sum to the running total: another
   association, different last bits (every golden row, up to 8.9e-15 in a raw score). Compiled
   with ``fblocksize`` = trees per class, every block is exactly one class: that class's sum is
   built tree by tree from 0.0 as LightGBM does, the other blocks add exact zeros. No speed is
   lost (measured 2.72 vs 2.77 us/row at batch 1000, 4.58 vs 4.79 at batch 8).
2. **Tiny inputs.** LightGBM's dense-matrix predictor leaves values with
   ``|x| <= kZeroThreshold`` (``1e-35f``) out of the row, so the trees see 0.0; lleaves passes
   them on (1.7% of random rows with such values differed). :func:`lightgbm_row_values` zeroes them.
3. **Categorical inputs.** LightGBM sends NaN and ``int(x) < 0`` right; lleaves converts with
   ``fptosi``, undefined beyond int32. NaN, ``x <= -1`` and ``x >= 2**31`` become -1.0, which
   both send right: same decision, defined behaviour.
4. Thresholds and leaf values are the same doubles (both parse the 17-digit text; ``use_fp64``);
   missing values (none / zero / NaN) follow the same rules once 2. holds.
5. **Softmax.** lleaves returns raw scores (its own softmax adds 1e-15 to the denominator);
   :func:`softmax_like_lightgbm` is ``Common::Softmax``.

Measured: 0 of 120,000 random rows differ (NaN, +-0, tiny, huge, +-inf, unseen, negative,
fractional and out-of-range categories), nor any of the 3,030 golden rows; and every load of a
compiled model is checked against LightGBM on :func:`probe_rows` before it serves (model.py).

Compiling takes 30-100 s (more on a busy machine) and ~1.1 GB, so it is cached (key: model
sha256, lleaves/llvmlite versions, CPU, options) and runs in a niced child process (no GIL
contention with serving, a crash cannot take the daemon down) holding an exclusive lock per
cache file, so several processes starting at once compile once. Native code is only loaded from a cache that :func:`untrusted_cache_reason` accepts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import numpy as np

#: LightGBM's kZeroThreshold: the float literal 1e-35f, compared as a double
K_ZERO_THRESHOLD = float(np.float32(1e-35))
_INT32_LIMIT = 2147483648.0
#: lleaves compile options; part of the cache key (bump ``format`` when they change).
#: ``fblocksize`` is the number of trees per class (see point 1 of the module docstring).
LLEAVES_OPTIONS: dict[str, Any] = {"format": 2, "raw_score": True, "fblocksize": "trees_per_class", "fcodemodel": "large", "finline": True, "use_fp64": True}
FAST_FIX = "reinstall taskclf-daemon (it depends on lleaves==1.3.0 with llvmlite==0.44.0), or use model_backend = \"lightgbm\""
_SMALL_BATCH = 16  # below this many rows the per-call cost of the numpy path dominates


class CompileError(Exception):
    """The compile (or loading its result) failed; the message says why."""


def softmax_like_lightgbm(raw: np.ndarray) -> np.ndarray:
    """Row-wise softmax computed exactly as LightGBM's ``Common::Softmax``.

    ``wmax = max(row)``; ``e_k = exp(x_k - wmax)`` with libm's ``exp`` (``math.exp`` calls the
    same function as ``std::exp``; numpy's SIMD ``exp`` differs in the last bit for ~5% of
    inputs); ``wsum`` accumulated in class order from 0; ``p_k = e_k / wsum``. Each row on its
    own, so the result does not depend on the batch.
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


def categorical_features(model_file: str | Path) -> tuple[int, ...]:
    """Indices of the features lleaves treats as categorical (its rule: a ``feature_infos``
    entry that is not a ``[min:max]`` range)."""
    with open(model_file, encoding="utf-8") as f:
        for line in f:
            if line.startswith("feature_infos="):
                return tuple(i for i, info in enumerate(line.strip().split("=", 1)[1].split(" ")) if not info.startswith("["))
            if line.startswith("Tree="):
                break
    return ()


def lightgbm_row_values(X: np.ndarray, categorical: Sequence[int]) -> np.ndarray:
    """``X`` as LightGBM's dense predictor hands it to the trees (points 2 and 3 of the module
    docstring), float64 C-contiguous; ``X`` itself is never modified."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    tiny = np.abs(X) <= K_ZERO_THRESHOLD  # NaN compares False: kept
    cats = list(categorical)
    C = X[:, cats]
    right = ~((C > -1.0) & (C < _INT32_LIMIT))  # NaN compares False: right
    if not tiny.any() and not right.any():
        return X
    X = X.copy()
    X[tiny] = 0.0
    C[right] = -1.0
    X[:, cats] = C
    return X


def predict_compiled(model: Any, X: np.ndarray, categorical: Sequence[int], n_classes: int) -> np.ndarray:
    """Probabilities (n, n_classes) from a compiled lleaves model, bit-identical to LightGBM's."""
    raw = model.predict(lightgbm_row_values(X, categorical), n_jobs=1)
    return softmax_like_lightgbm(np.asarray(raw, dtype=np.float64).reshape(X.shape[0], n_classes))


def probe_rows(width: int, categorical: Sequence[int], n: int = 512, seed: int = 20260406) -> np.ndarray:
    """A fixed matrix of awkward rows (NaN, +-0, tiny, huge, +-inf, unseen and out-of-range
    categories) on which a compiled model must match LightGBM bit for bit before it serves."""
    rng = np.random.default_rng(seed)
    X: np.ndarray = rng.normal(0.0, 1.0, (n, width)) * rng.choice([0.01, 1.0, 10.0, 1000.0], (n, width))
    special = np.array([0.0, -0.0, np.nan, 1e-36, -1e-36, K_ZERO_THRESHOLD, -K_ZERO_THRESHOLD, 1e-35, -1e-35, 1e-34, 1e300, -1e300, np.inf, -np.inf, 5e-324])
    mask = rng.random((n, width)) < 0.15
    X[mask] = rng.choice(special, int(mask.sum()))
    for j in categorical:
        X[:, j] = rng.integers(-3, 64, n).astype(np.float64)
        odd = rng.random(n) < 0.2
        X[odd, j] = rng.choice(np.array([np.nan, -0.5, 0.5, -1.0, 2.0**31, 1e20, -np.inf, 31.9, 1000.0]), int(odd.sum()))
    return X


# ---------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/taskclf-daemon/lleaves``, else ``~/.cache/taskclf-daemon/lleaves``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "taskclf-daemon" / "lleaves"


def dist_version(name: str) -> str | None:
    try:
        return _metadata.version(name)
    except _metadata.PackageNotFoundError:
        return None


def import_lleaves() -> Any:
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


def cache_file_for(model_file: str | Path, cache_dir: str | Path | None = None, version: Any = dist_version) -> Path:
    """Path of the cached object for ``model_file`` on this machine and software stack: a key over
    sha256(model.txt), the lleaves and llvmlite versions, the CPU and :data:`LLEAVES_OPTIONS`."""
    model_sha = hashlib.sha256(Path(model_file).read_bytes()).hexdigest()
    key = {"model_sha256": model_sha, "lleaves": version("lleaves"), "llvmlite": version("llvmlite"), "cpu": _cpu_identity(), "options": LLEAVES_OPTIONS}
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir or default_cache_dir()) / f"model-{model_sha[:16]}-{key_hash[:16]}.o"


def looks_like_object(path: Path) -> bool:
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


def _compile_kwargs(model: Any) -> dict[str, Any]:
    opts = {k: v for k, v in LLEAVES_OPTIONS.items() if k != "format"}
    opts["fblocksize"] = max(1, model.num_trees() // max(1, model.num_model_per_iteration()))
    return opts


@contextlib.contextmanager
def cache_lock(cache_file: Path) -> Iterator[None]:
    """Exclusive lock for compiling ``cache_file`` (other processes wait here, then find it)."""
    cache_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(cache_file.with_name(f".{cache_file.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def compile_to_cache(model_file: Path, cache_file: Path) -> None:
    """Compile ``model_file`` into ``cache_file`` atomically: lleaves writes a fresh temp file in the
    cache directory, which is fsynced and renamed over ``cache_file`` (readers only ever see a
    complete file). Runs in the compile child process (:func:`main`).

    :raises CompileError: lleaves cannot compile, or the file cannot be written
    """
    lleaves = import_lleaves()
    model = lleaves.Model(model_file=str(model_file))
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")  # must not exist: lleaves would load it
    try:
        try:
            model.compile(cache=str(tmp), **_compile_kwargs(model))
        except AttributeError as exc:  # lleaves 1.3.0 with llvmlite >= 0.45: no PassManagerBuilder
            raise CompileError(f"lleaves cannot compile with this llvmlite ({exc})") from None
        if not tmp.is_file():
            raise CompileError("lleaves did not write the compiled object")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, cache_file)
        with contextlib.suppress(OSError):
            dfd = os.open(cache_file.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except OSError as exc:
        raise CompileError(f"cannot write the lleaves cache ({exc})") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


#: exit status of the compile child when another process had already compiled the model
_EXIT_ALREADY_CACHED = 10


def _cached(cache_file: Path) -> bool:
    return cache_file.is_file() and looks_like_object(cache_file)


class CompileJob:
    """Makes sure ``cache_file`` holds the compile of ``model_file``: a child process takes
    :func:`cache_lock` and compiles unless the file is (by then) there. The child holds the lock,
    so a compile outlives a parent that exits (its cache is then ready for the next start) and
    no second compile starts meanwhile. :meth:`cancel` kills the child."""

    def __init__(self, model_file: Path, cache_file: Path, *, nice: int = 0) -> None:
        self.model_file = model_file
        self.cache_file = cache_file
        self.nice = nice
        self._proc: subprocess.Popen[bytes] | None = None
        self._cancelled = False

    def run(self) -> bool:
        """Returns True if this job compiled, False if the cache was already there.

        :raises CompileError: the child failed (its last error line is in the message)
        """
        if _cached(self.cache_file):
            return False
        if self._cancelled:
            raise CompileError("cancelled")
        try:
            self.cache_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "taskclf_daemon.pipeline.compiled", str(self.model_file), str(self.cache_file), str(self.nice)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            _, err = self._proc.communicate()
        except OSError as exc:
            raise CompileError(f"cannot compile into {self.cache_file.parent} ({exc})") from None
        if self._proc.returncode == _EXIT_ALREADY_CACHED:
            return False
        if self._proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            raise CompileError(lines[-1] if lines else f"compile process exited with {self._proc.returncode}")
        return True

    def cancel(self) -> None:
        self._cancelled = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()


def load_object(lleaves: Any, model_file: Path, cache_file: Path) -> Any:
    """The compiled model from ``cache_file``, after the trust check (before any native code).

    :raises CompileError: untrusted cache, or lleaves cannot load the object
    """
    unsafe = untrusted_cache_reason(cache_file)
    if unsafe is not None:
        raise CompileError(f"the lleaves cache is not safe to load native code from: {unsafe}")
    if not (cache_file.is_file() and looks_like_object(cache_file)):
        raise CompileError(f"no usable compiled object at {cache_file}")
    model = lleaves.Model(model_file=str(model_file))
    try:
        model.compile(cache=str(cache_file), **_compile_kwargs(model))
    except Exception as exc:  # noqa: BLE001 -- an unusable object file
        raise CompileError(f"cached lleaves object {cache_file} unusable ({exc.__class__.__name__}: {exc})") from None
    return model


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m taskclf_daemon.pipeline.compiled MODEL_TXT CACHE_FILE [NICE]``: the compile child
    (``NICE``: added to its niceness, so a background compile yields the CPU to serving)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3):
        print("usage: python -m taskclf_daemon.pipeline.compiled MODEL_TXT CACHE_FILE [NICE]", file=sys.stderr)
        return 2
    if len(args) == 3 and int(args[2]):
        with contextlib.suppress(OSError):
            os.nice(int(args[2]))
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:  # LLVM peaks at ~1.1 GB on
        f.write("1000")  # 800 trees: under memory pressure the kernel kills this child, not the daemon
    model_file, cache_file = Path(args[0]), Path(args[1])
    try:
        with cache_lock(cache_file):  # held until this process ends: one compile at a time
            if _cached(cache_file):
                return _EXIT_ALREADY_CACHED
            for stale in cache_file.parent.glob(f".{cache_file.name}.*.tmp"):  # left by a killed compile
                with contextlib.suppress(OSError):
                    stale.unlink()
            compile_to_cache(model_file, cache_file)
    except (CompileError, ImportError, OSError) as exc:
        print(f"{exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 -- report any failure of the compiler in one line
        print(f"lleaves failed to compile the model ({exc.__class__.__name__}: {exc})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
