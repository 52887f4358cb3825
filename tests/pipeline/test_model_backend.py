"""Model prediction backends: ``lightgbm`` (default), ``lleaves`` (optional ``fast`` extra), ``auto``.

The lleaves-specific tests need the optional ``fast`` extra and are skipped (``importorskip``) when
lleaves is not installed; they compile the golden model once per module (~30 s) into a temporary
cache directory. Everything else runs everywhere.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from golden_compare import compare
from helpers_rows import golden_dir
from taskclf_daemon.artifacts import build_pipeline
from taskclf_daemon.codec import RowValidator, decode_window
from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.pipeline import model as model_mod
from taskclf_daemon.pipeline.batch import InferencePipeline, PipelineConfig
from taskclf_daemon.pipeline.calibration import CalibratorStore
from taskclf_daemon.pipeline.features import push_window
from taskclf_daemon.pipeline.model import BACKENDS, ModelBundle, default_lleaves_cache_dir, softmax_like_lightgbm
from taskclf_daemon.pipeline.policy import resolve_inference

RUN = "2026-04-06_000000_run-0001"
FIX = "pip install 'taskclf-daemon[fast]'"


def _bundle_dir() -> Path:
    return golden_dir() / "models" / RUN


@pytest.fixture(scope="module")
def golden_X() -> tuple[np.ndarray, np.ndarray]:
    """The golden rows as the real pipeline encodes them (as scripts/bench_replay.py does), and
    LightGBM's probabilities for them."""
    g = golden_dir()
    pipe, _ = build_pipeline(policy=g / "models" / "inference_policy.json")
    assert pipe.bundle.backend == "lightgbm"
    v = RowValidator(pipe.bundle.schema)
    st = pipe.new_state_store()
    ws = [decode_window(ln, v) for ln in (g / "inputs.jsonl").read_bytes().splitlines() if ln.strip()]
    X = pipe.bundle.encode(ws, [push_window(st.get(w.user_id), w) for w in ws])
    assert X.shape == (3030, 39)
    return X, pipe.bundle.predict_proba(X)


def _assert_rows_independent_of_batch(bundle: ModelBundle, X: np.ndarray) -> None:
    full = bundle.predict_proba(X)
    single = np.vstack([bundle.predict_proba(X[i:i + 1]) for i in range(len(X))])
    assert np.array_equal(full, single), "a row's output depends on its batch"
    perm = np.random.default_rng(7).permutation(len(X))
    chunks = [bundle.predict_proba(X[perm[i:i + 97]]) for i in range(0, len(X), 97)]
    assert np.array_equal(full[perm], np.vstack(chunks))
    assert full.tobytes() == single.tobytes()


# ---------------------------------------------------------------- every install


def test_default_backend_is_lightgbm() -> None:
    b = ModelBundle.load(_bundle_dir())
    assert b.backend == b.requested_backend == "lightgbm"
    assert b.compiled_from_cache is None and b.cache_file is None
    assert b.backend_info() == {"model_backend": "lightgbm", "model_backend_requested": "lightgbm"}
    assert BACKENDS == ("lightgbm", "lleaves", "auto")


@pytest.mark.parametrize("name", ["onnx", "LightGBM", "", "lleaves "])
def test_unknown_backend_is_refused(name: str) -> None:
    with pytest.raises(ArtifactError) as ei:
        ModelBundle.load(_bundle_dir(), backend=name)
    assert ei.value.field == "model_backend"
    assert repr(name) in str(ei.value) and "lightgbm, lleaves, auto" in ei.value.fix


def test_auto_without_cache_falls_back_to_lightgbm(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    b = ModelBundle.load(_bundle_dir(), backend="auto", cache_dir=cache)
    assert b.backend == "lightgbm" and b.requested_backend == "auto"
    assert b.backend_note and b.backend_info()["model_backend_note"] == b.backend_note
    assert b.compiled_from_cache is None
    assert not cache.exists(), "auto must never compile on the start path"


def test_lleaves_missing_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "lleaves", None)  # makes `import lleaves` raise ImportError
    with pytest.raises(ArtifactError) as ei:
        ModelBundle.load(_bundle_dir(), backend="lleaves", cache_dir=tmp_path)
    assert FIX in str(ei.value) and ei.value.field == "model_backend"
    assert "model.txt" in ei.value.path
    # auto degrades silently (with a note) instead
    b = ModelBundle.load(_bundle_dir(), backend="auto", cache_dir=tmp_path)
    assert b.backend == "lightgbm" and "not importable" in b.backend_note


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_lleaves_cache_dir() == tmp_path / "taskclf-daemon" / "lleaves"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # XDG: relative paths are invalid
    assert default_lleaves_cache_dir() == Path.home() / ".cache" / "taskclf-daemon" / "lleaves"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_lleaves_cache_dir() == Path.home() / ".cache" / "taskclf-daemon" / "lleaves"


def test_softmax_reproduces_lightgbm_bit_for_bit(golden_X: tuple[np.ndarray, np.ndarray]) -> None:
    X, P = golden_X
    raw = np.asarray(ModelBundle.load(_bundle_dir()).booster.predict(X, num_threads=1, raw_score=True)).reshape(-1, 8)
    assert np.array_equal(softmax_like_lightgbm(raw), P)
    # the small-batch (pure Python) path gives the same bits as the vectorised one
    small = np.vstack([softmax_like_lightgbm(raw[i:i + 5]) for i in range(0, len(raw), 5)])
    assert model_mod._SMALL_BATCH >= 5 and small.tobytes() == P.tobytes()
    assert softmax_like_lightgbm(raw[:0]).shape == (0, 8)


def test_lightgbm_rows_independent_of_batch(golden_X: tuple[np.ndarray, np.ndarray]) -> None:
    _assert_rows_independent_of_batch(ModelBundle.load(_bundle_dir()), golden_X[0][:600])


# ---------------------------------------------------------------- lleaves (optional `fast` extra)


@pytest.fixture(scope="module")
def lleaves_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lleaves-cache")


@pytest.fixture(scope="module")
def fast(lleaves_cache: Path) -> ModelBundle:
    """The golden model compiled by lleaves into an empty cache (once per module, ~30 s)."""
    pytest.importorskip("lleaves")  # the only skip: the backend is an optional extra
    b = ModelBundle.load(_bundle_dir(), backend="lleaves", cache_dir=lleaves_cache)
    assert b.backend == "lleaves" and b.compiled_from_cache is False
    return b


def test_lleaves_probabilities_match_lightgbm(fast: ModelBundle, golden_X: tuple[np.ndarray, np.ndarray]) -> None:
    X, P = golden_X
    Q = fast.predict_proba(X)
    assert Q.shape == P.shape == (3030, 8) and Q.dtype == np.float64
    diff = float(np.abs(Q - P).max())
    assert diff <= 1e-12, diff
    assert np.array_equal(Q.argmax(axis=1), P.argmax(axis=1))
    assert np.abs(Q.sum(axis=1) - 1.0).max() <= 1e-12  # probabilities, not raw scores


def test_lleaves_rows_independent_of_batch(fast: ModelBundle, golden_X: tuple[np.ndarray, np.ndarray]) -> None:
    _assert_rows_independent_of_batch(fast, golden_X[0])


def test_lleaves_predicts_on_one_thread(fast: ModelBundle, golden_X: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    real = fast._compiled.predict

    def spy(data: Any, n_jobs: Any = None) -> Any:
        seen.append(n_jobs)
        return real(data, n_jobs=n_jobs)

    monkeypatch.setattr(fast._compiled, "predict", spy)
    fast.predict_proba(golden_X[0][:64])
    assert seen == [1]
    assert fast.predict_proba(golden_X[0][:0]).shape == (0, 8)


def test_lleaves_golden_replay_passes_compare_tool(fast: ModelBundle, tmp_path: Path) -> None:
    g = golden_dir()
    r = resolve_inference(policy_path=g / "models" / "inference_policy.json")
    assert Path(r.model_dir).resolve() == fast.path.resolve()
    pipe = InferencePipeline(fast, CalibratorStore.load(r.calibrator_store), PipelineConfig(smooth_window=3, reject_threshold=r.reject_threshold, per_user_thresholds=r.per_user_thresholds))
    v = RowValidator(fast.schema)
    ws = [decode_window(ln, v) for ln in (g / "inputs.jsonl").read_bytes().splitlines() if ln.strip()]
    states = pipe.new_state_store()
    out = tmp_path / "lleaves_w3.jsonl"
    with out.open("wb") as f:
        for i in range(0, len(ws), 512):
            for p in pipe.process(ws[i:i + 512], states).predictions:
                f.write(p.value + b"\n")
    report = compare(g / "expected_w3.jsonl", out, fail_on_extra=True, tol=1e-5)
    assert report.ok, str(report)
    assert report.matched == 3030


def test_second_load_reuses_the_cache(fast: ModelBundle, lleaves_cache: Path, golden_X: tuple[np.ndarray, np.ndarray]) -> None:
    cache_file = fast.cache_file
    assert cache_file is not None and cache_file.parent == lleaves_cache and cache_file.is_file()
    assert cache_file.read_bytes()[:4] == b"\x7fELF"
    assert [p.name for p in lleaves_cache.iterdir()] == [cache_file.name], "temp files left behind"
    before = os.stat(cache_file)
    again = ModelBundle.load(_bundle_dir(), backend="lleaves", cache_dir=lleaves_cache)
    assert again.compiled_from_cache is True and again.cache_file == cache_file
    after = os.stat(cache_file)
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size), "cache rewritten"
    info = again.backend_info()
    assert info["model_backend"] == "lleaves" and info["lleaves_compiled_from_cache"] is True and info["lleaves_cache_file"] == str(cache_file)
    assert info["lleaves_version"] == "1.3.0"
    X = golden_X[0]
    assert np.array_equal(again.predict_proba(X), fast.predict_proba(X))
    # auto picks the cached compile up
    auto = ModelBundle.load(_bundle_dir(), backend="auto", cache_dir=lleaves_cache)
    assert auto.backend == "lleaves" and auto.requested_backend == "auto" and auto.compiled_from_cache is True
    assert np.array_equal(auto.predict_proba(X), fast.predict_proba(X))


def test_cache_key_covers_model_and_versions(fast: ModelBundle, lleaves_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_txt = _bundle_dir() / "model.txt"
    key = model_mod.lleaves_cache_file(model_txt, lleaves_cache)
    assert key == fast.cache_file
    other = tmp_path / "model.txt"
    other.write_bytes(model_txt.read_bytes() + b"\n")
    assert model_mod.lleaves_cache_file(other, lleaves_cache) != key
    real = model_mod._dist_version
    monkeypatch.setattr(model_mod, "_dist_version", lambda n: "0.45.0" if n == "llvmlite" else real(n))
    assert model_mod.lleaves_cache_file(model_txt, lleaves_cache) != key


def test_auto_ignores_a_corrupt_cache_file(fast: ModelBundle, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    target = model_mod.lleaves_cache_file(_bundle_dir() / "model.txt", cache)
    cache.mkdir()
    target.write_bytes(b"")  # e.g. a truncated file from a crash before this code wrote atomically
    b = ModelBundle.load(_bundle_dir(), backend="auto", cache_dir=cache)
    assert b.backend == "lightgbm" and "no lleaves compile cached" in b.backend_note
    assert json.dumps(b.backend_info())  # serialisable for the log line
