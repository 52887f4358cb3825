"""Model prediction backends: ``lightgbm``, ``lleaves`` (compiled, bit-identical), ``auto`` (the default).

The lleaves tests compile the golden model once per module (30-100 s), in the background as
``auto`` does on a cold cache, into a temporary cache directory; they skip only where lleaves
cannot be installed (Python >= 3.14, see pyproject.toml). Everything else runs everywhere.
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
from taskclf_daemon.pipeline import compiled as cc, model as model_mod
from taskclf_daemon.pipeline.batch import InferencePipeline, PipelineConfig
from taskclf_daemon.pipeline.calibration import CalibratorStore
from taskclf_daemon.pipeline.features import push_window
from taskclf_daemon.pipeline.model import BACKENDS, ModelBundle, default_lleaves_cache_dir, softmax_like_lightgbm
from taskclf_daemon.pipeline.policy import resolve_inference

RUN = "2026-04-06_000000_run-0001"
FIX = "reinstall taskclf-daemon (it depends on lleaves==1.3.0"


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


def test_auto_serves_lightgbm_at_once_and_stays_there_if_the_compile_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, golden_X: tuple[np.ndarray, np.ndarray]) -> None:
    pytest.importorskip("lleaves")

    def boom(self: cc.CompileJob) -> bool:
        raise cc.CompileError("compiler exploded")

    monkeypatch.setattr(cc.CompileJob, "run", boom)
    b = ModelBundle.load(_bundle_dir(), backend="auto", cache_dir=tmp_path / "cache")
    seen: list[str] = []
    b.add_backend_listener(lambda bb: seen.append(bb.backend))
    assert b.wait_for_backend(timeout=60)
    assert b.backend == "lightgbm" and b.requested_backend == "auto" and seen == ["lightgbm"]
    assert "background compile failed (CompileError: compiler exploded); using lightgbm" == b.backend_info()["model_backend_note"]
    assert b.compiled_from_cache is None and b._compiled is None
    X, P = golden_X
    assert b.predict_proba(X[:50]).tobytes() == P[:50].tobytes()


def test_lleaves_missing_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "lleaves", None)  # makes `import lleaves` raise ImportError
    with pytest.raises(ArtifactError) as ei:
        ModelBundle.load(_bundle_dir(), backend="lleaves", cache_dir=tmp_path)
    assert FIX in str(ei.value) and ei.value.field == "model_backend"
    assert "model.txt" in ei.value.path
    # auto degrades silently (with a note) instead
    b = ModelBundle.load(_bundle_dir(), backend="auto", cache_dir=tmp_path)
    assert b.backend == "lightgbm" and "cannot be imported" in b.backend_note and b.backend_note.endswith("; using lightgbm")


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
    assert cc._SMALL_BATCH >= 5 and small.tobytes() == P.tobytes()
    assert softmax_like_lightgbm(raw[:0]).shape == (0, 8)


def test_lightgbm_rows_independent_of_batch(golden_X: tuple[np.ndarray, np.ndarray]) -> None:
    _assert_rows_independent_of_batch(ModelBundle.load(_bundle_dir()), golden_X[0][:600])


# ---------------------------------------------------------------- lleaves (compiled)


def test_lightgbm_row_values_zeroes_tiny_and_defines_categorical_casts() -> None:
    X = np.array([[1e-36, -1e-36, cc.K_ZERO_THRESHOLD, 1.1e-35, np.nan, -0.0, 3.0],
                  [np.nan, 2.0**31, -1.0, -0.5, 7.0, 1e300, 31.9]])
    before = X.copy()
    out = cc.lightgbm_row_values(X, categorical=(4, 6))
    assert np.array_equal(X, before, equal_nan=True), "the caller's matrix is never modified"
    assert out[0, :4].tolist() == [0.0, 0.0, 0.0, 1.1e-35] and np.signbit(out[0, 1]) == np.False_
    assert out[0, 4] == -1.0 and out[1, 4] == 7.0  # a NaN category goes right, as LightGBM sends it
    assert out[0, 6] == 3.0 and out[1, 6] == 31.9
    assert np.isnan(out[1, 0]) and out[1, 1] == 2.0**31 and out[1, 5] == 1e300  # non-categorical: as given
    assert cc.lightgbm_row_values(np.array([[1.0, 2.0]]), ()).flags["C_CONTIGUOUS"]


@pytest.fixture(scope="module")
def lleaves_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lleaves-cache")


@pytest.fixture(scope="module")
def swap(lleaves_cache: Path, golden_X: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """``auto`` on an empty cache: LightGBM at once, the compile in the background, then the swap
    inside the same object. The golden replay runs half before and half after the swap."""
    pytest.importorskip("lleaves")  # only where lleaves cannot be installed (Python >= 3.14)
    g = golden_dir()
    b = ModelBundle.load(_bundle_dir(), backend="auto", cache_dir=lleaves_cache)
    seen: list[str] = []
    b.add_backend_listener(lambda bb: seen.append(bb.backend))
    r = resolve_inference(policy_path=g / "models" / "inference_policy.json")
    cfg = PipelineConfig(smooth_window=3, reject_threshold=r.reject_threshold, per_user_thresholds=r.per_user_thresholds)
    pipe = InferencePipeline(b, CalibratorStore.load(r.calibrator_store), cfg)
    v = RowValidator(b.schema)
    ws = [decode_window(ln, v) for ln in (g / "inputs.jsonl").read_bytes().splitlines() if ln.strip()]
    states = pipe.new_state_store()
    outs: list[bytes] = []
    half = len(ws) // 2
    for i in range(0, half, 256):
        outs += [p.value for p in pipe.process(ws[i:min(i + 256, half)], states).predictions]
    backend_first_half = b.backend
    before = b.predict_proba(golden_X[0])
    note = b.backend_note
    assert b.wait_for_backend(timeout=900)
    for i in range(half, len(ws), 256):
        outs += [p.value for p in pipe.process(ws[i:i + 256], states).predictions]
    return {"bundle": b, "seen": seen, "before": before, "note": note, "backend_first_half": backend_first_half, "outputs": outs}


@pytest.fixture(scope="module")
def fast(swap: dict[str, Any], lleaves_cache: Path) -> ModelBundle:
    """``lleaves`` loading the compile the background job cached."""
    b = ModelBundle.load(_bundle_dir(), backend="lleaves", cache_dir=lleaves_cache)
    assert b.backend == "lleaves" and b.compiled_from_cache is True
    return b


def test_auto_swaps_in_the_compiled_model_without_changing_a_byte(swap: dict[str, Any], golden_X: tuple[np.ndarray, np.ndarray]) -> None:
    b: ModelBundle = swap["bundle"]
    assert swap["backend_first_half"] == "lightgbm" and "in the background" in swap["note"]
    assert b.backend == "lleaves" and b.requested_backend == "auto" and swap["seen"] == ["lightgbm", "lleaves"]
    assert b.compiled_from_cache is False and b.backend_note == "" and b.cache_file is not None and b.cache_file.is_file()
    X, P = golden_X
    after = b.predict_proba(X)
    assert swap["before"].tobytes() == P.tobytes() == after.tobytes()
    # the pipeline's outputs across the swap are byte for byte those of LightGBM alone
    g = golden_dir()
    pipe, _ = build_pipeline(policy=g / "models" / "inference_policy.json")
    v = RowValidator(pipe.bundle.schema)
    ws = [decode_window(ln, v) for ln in (g / "inputs.jsonl").read_bytes().splitlines() if ln.strip()]
    ref = [p.value for p in pipe.process(ws, pipe.new_state_store()).predictions]
    assert len(ref) == len(swap["outputs"]) == 3030
    assert swap["outputs"] == ref


def test_lleaves_is_bit_identical_on_120k_awkward_rows(fast: ModelBundle) -> None:
    cats = cc.categorical_features(_bundle_dir() / "model.txt")
    assert cats == (0, 1, 14, 15, 24, 38)  # app_id, app_category, ...; 14 and 15 are unused ("none"), lleaves casts them too
    X = cc.probe_rows(fast.width, cats, n=120_000, seed=4)
    assert np.isnan(X).sum() > 10_000 and (X == 0.0).sum() > 10_000 and (np.abs(X) == np.inf).sum() > 10_000
    assert ((np.abs(X) > 0) & (np.abs(X) <= cc.K_ZERO_THRESHOLD)).sum() > 10_000 and (X[:, 0] >= 40).sum() > 1000
    P = fast._predict_lightgbm(X)
    Q = fast.predict_proba(X)
    differ = int((P.view(np.uint64) != Q.view(np.uint64)).any(axis=1).sum())
    assert differ == 0, f"{differ} of {len(X)} rows differ"
    # without LightGBM's zeroing of tiny inputs the compiled trees do differ: the check can fail
    raw = np.asarray(fast._compiled.predict(np.ascontiguousarray(X[:20_000]), n_jobs=1)).reshape(-1, 8)
    assert (cc.softmax_like_lightgbm(raw) != P[:20_000]).any(axis=1).sum() > 100
    # ... and so does the probe every compiled model must pass before it serves
    probe = cc.probe_rows(fast.width, cats)
    raw = np.asarray(fast._compiled.predict(np.ascontiguousarray(probe), n_jobs=1)).reshape(-1, 8)
    assert (cc.softmax_like_lightgbm(raw) != fast._predict_lightgbm(probe)).any(axis=1).sum() > 0


def test_lleaves_probabilities_equal_lightgbm_on_the_golden_rows(fast: ModelBundle, golden_X: tuple[np.ndarray, np.ndarray]) -> None:
    X, P = golden_X
    Q = fast.predict_proba(X)
    assert Q.shape == P.shape == (3030, 8) and Q.dtype == np.float64
    assert Q.tobytes() == P.tobytes()


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
    assert sorted(p.name for p in lleaves_cache.iterdir()) == sorted([cache_file.name, f".{cache_file.name}.lock"]), "temp files left behind"
    assert os.stat(lleaves_cache).st_mode & 0o777 == 0o700 or lleaves_cache.stat().st_mode & 0o022 == 0
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
    # auto picks the cached compile up at once, no background job
    auto = ModelBundle.load(_bundle_dir(), backend="auto", cache_dir=lleaves_cache)
    assert auto.backend == "lleaves" and auto.requested_backend == "auto" and auto.compiled_from_cache is True
    assert auto.wait_for_backend(timeout=0) and auto._job is None
    assert auto.predict_proba(X).tobytes() == fast.predict_proba(X).tobytes()


def test_cache_key_covers_model_options_and_versions(fast: ModelBundle, lleaves_cache: Path, tmp_path: Path) -> None:
    model_txt = _bundle_dir() / "model.txt"
    key = model_mod.lleaves_cache_file(model_txt, lleaves_cache)
    assert key == fast.cache_file
    other = tmp_path / "model.txt"
    other.write_bytes(model_txt.read_bytes() + b"\n")
    assert model_mod.lleaves_cache_file(other, lleaves_cache) != key
    assert cc.cache_file_for(model_txt, lleaves_cache, version=lambda n: "0.45.0" if n == "llvmlite" else cc.dist_version(n)) != key
    assert cc.LLEAVES_OPTIONS["format"] == 2 and cc.LLEAVES_OPTIONS["fblocksize"] == "trees_per_class"


def test_a_compiled_model_that_is_not_bit_identical_never_serves(fast: ModelBundle, lleaves_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = cc.predict_compiled

    def off_by_one_ulp(model: Any, X: np.ndarray, categorical: Any, n: int) -> np.ndarray:
        P = real(model, X, categorical, n)
        P[3, 2] = np.nextafter(P[3, 2], 1.0)
        return P

    monkeypatch.setattr(cc, "predict_compiled", off_by_one_ulp)
    auto = ModelBundle.load(_bundle_dir(), backend="auto", cache_dir=lleaves_cache)
    assert auto.backend == "lightgbm" and auto._compiled is None
    assert "differs from LightGBM on 1 of 512 probe rows" in auto.backend_note


def test_auto_treats_a_truncated_cache_file_as_a_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("lleaves")
    cache = tmp_path / "cache"
    target = model_mod.lleaves_cache_file(_bundle_dir() / "model.txt", cache)
    cache.mkdir(mode=0o700)
    target.write_bytes(b"")  # e.g. a crash before the cache was written atomically
    assert not cc.looks_like_object(target)
    jobs: list[cc.CompileJob] = []

    def fake_run(self: cc.CompileJob) -> bool:
        jobs.append(self)
        raise cc.CompileError("no compiler here")

    monkeypatch.setattr(cc.CompileJob, "run", fake_run)
    b = ModelBundle.load(_bundle_dir(), backend="auto", cache_dir=cache)
    assert "in the background" in b.backend_note or "no compiler here" in b.backend_note
    assert b.wait_for_backend(timeout=60) and b.backend == "lightgbm"
    assert [j.cache_file for j in jobs] == [target] and jobs[0].nice == 10
    assert json.dumps(b.backend_info())  # serialisable for the log line


def test_a_compile_waits_for_the_lock_and_skips_a_model_compiled_meanwhile(tmp_path: Path) -> None:
    """The compile child takes the cache file's lock; finding the object there once it has the
    lock (another process compiled it meanwhile) it exits without compiling."""
    import threading
    import time

    cache_file = tmp_path / "cache" / "model-x.o"
    job = cc.CompileJob(_bundle_dir() / "model.txt", cache_file)
    result: list[bool] = []
    with cc.cache_lock(cache_file):  # another process compiling
        t = threading.Thread(target=lambda: result.append(job.run()))
        t.start()
        time.sleep(3.0)
        assert t.is_alive() and job._proc is not None and job._proc.poll() is None, "the child must wait for the lock"
        cache_file.write_bytes(b"\x7fELF" + b"\0" * 60)  # ... which then publishes its object
    t.join(timeout=60)
    assert result == [False]
    assert job._proc.returncode == 10
    assert sorted(p.name for p in cache_file.parent.iterdir()) == [".model-x.o.lock", "model-x.o"]
