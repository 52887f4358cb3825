"""Model bundle: load gates, encoding, prediction (spec 1.4, 3; items 2, 4, 5 + golden raw)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers_rows import V2_HASH, golden_dir, make_window, validator
from taskclf_daemon.codec import decode_window
from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.labels import LABELS
from taskclf_daemon.pipeline.features import push_window
from taskclf_daemon.pipeline.model import UNKNOWN_CATEGORY, CategoricalCodes, ModelBundle
from taskclf_daemon.schema import OVERLAY_COLUMNS, SCHEMAS
from taskclf_daemon.state import StateStore

RUN = "2026-04-06_000000_run-0001"
COLS = SCHEMAS["v1"].feature_columns
COL = {c: i for i, c in enumerate(COLS)}
NO_OVERLAY = (None,) * 9


def _bundle_dir() -> Path:
    return golden_dir() / "models" / RUN


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ModelBundle.load(_bundle_dir())


@pytest.fixture(scope="module")
def vocab() -> dict[str, list[str]]:
    return json.loads((_bundle_dir() / "categorical_encoders.json").read_text())


@pytest.fixture
def bundle_copy(tmp_path: Path) -> Path:
    dst = tmp_path / RUN
    shutil.copytree(_bundle_dir(), dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    dst.chmod(0o755)
    return dst


def _edit_meta(d: Path, fn: Callable[[dict[str, Any]], None]) -> None:
    meta = json.loads((d / "metadata.json").read_text())
    fn(meta)
    (d / "metadata.json").write_text(json.dumps(meta))


def _refused(d: Path) -> ArtifactError:
    with pytest.raises(ArtifactError) as ei:
        ModelBundle.load(d)
    return ei.value


# ---------------------------------------------------------------- loading


def test_load_golden_bundle(bundle: ModelBundle) -> None:
    assert bundle.schema is SCHEMAS["v1"]
    assert bundle.schema_hash == "4077fe0dba70"
    assert bundle.bundle_id == RUN
    assert bundle.width == 39
    assert bundle.booster.num_feature() == 39
    assert bundle.booster.num_model_per_iteration() == 8
    assert set(bundle.encoders) == {"app_id", "app_category", "domain_category", "user_id"}
    assert bundle.metadata["label_set"] == list(LABELS)


def test_label_set_order_in_metadata_does_not_matter(bundle_copy: Path) -> None:
    _edit_meta(bundle_copy, lambda m: m.__setitem__("label_set", list(reversed(LABELS))))
    assert ModelBundle.load(bundle_copy).width == 39


def test_refuse_tampered_schema_hash(bundle_copy: Path) -> None:
    _edit_meta(bundle_copy, lambda m: m.__setitem__("schema_hash", "deadbeef_wrong_hash"))
    e = _refused(bundle_copy)
    assert "metadata.json" in str(e) and "schema_hash" in str(e)
    assert e.field == "schema_hash"
    assert "deadbeef_wrong_hash" in str(e)


def test_refuse_v1_bundle_with_v2_hash(bundle_copy: Path) -> None:
    _edit_meta(bundle_copy, lambda m: m.__setitem__("schema_hash", V2_HASH))
    e = _refused(bundle_copy)
    assert e.field == "schema_hash" and "metadata.json" in str(e)


@pytest.mark.parametrize("version", ["v9", None, "features_v1", 1])
def test_refuse_unknown_schema_version(bundle_copy: Path, version: Any) -> None:
    _edit_meta(bundle_copy, lambda m: m.__setitem__("schema_version", version))
    e = _refused(bundle_copy)
    assert "metadata.json" in str(e) and "schema_version" in str(e)
    assert e.field == "schema_version"


def test_refuse_missing_schema_version(bundle_copy: Path) -> None:
    _edit_meta(bundle_copy, lambda m: m.pop("schema_version"))
    e = _refused(bundle_copy)
    assert e.field == "schema_version" and "metadata.json" in str(e)


@pytest.mark.parametrize(
    "label_set",
    [
        ["BreakIdle", "Build", "Communicate", "Debug", "Meet", "ReadResearch", "Review", "Writing"],
        list(LABELS[:7]),
        list(LABELS) + ["Mixed/Unknown"],
        "BreakIdle,Build",
        None,
    ],
)
def test_refuse_label_set_mismatch(bundle_copy: Path, label_set: Any) -> None:
    _edit_meta(bundle_copy, lambda m: m.__setitem__("label_set", label_set))
    e = _refused(bundle_copy)
    assert "metadata.json" in str(e) and "label_set" in str(e)
    assert e.field == "label_set"


def test_refuse_missing_model_txt(bundle_copy: Path) -> None:
    (bundle_copy / "model.txt").unlink()
    e = _refused(bundle_copy)
    assert "model.txt" in str(e)
    assert Path(e.path).name == "model.txt"


def test_refuse_missing_metadata(bundle_copy: Path) -> None:
    (bundle_copy / "metadata.json").unlink()
    e = _refused(bundle_copy)
    assert "metadata.json" in str(e) and Path(e.path).name == "metadata.json"


@pytest.mark.parametrize("content", ["{not json", "", "[1, 2]", '"v1"'])
def test_refuse_metadata_not_json_object(bundle_copy: Path, content: str) -> None:
    (bundle_copy / "metadata.json").write_text(content)
    e = _refused(bundle_copy)
    assert "metadata.json" in str(e) and Path(e.path).name == "metadata.json"


def test_refuse_missing_directory(tmp_path: Path) -> None:
    e = _refused(tmp_path / "no_such_bundle")
    assert "no_such_bundle" in str(e)


def test_refuse_corrupt_model_txt(bundle_copy: Path) -> None:
    (bundle_copy / "model.txt").write_text("this is not a lightgbm model\n")
    e = _refused(bundle_copy)
    assert "model.txt" in str(e)


def test_refuse_model_with_reordered_feature_names(bundle_copy: Path) -> None:
    text = (bundle_copy / "model.txt").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("feature_names="))
    names = line[len("feature_names="):].split(" ")
    names[2], names[3] = names[3], names[2]  # is_browser <-> is_editor
    (bundle_copy / "model.txt").write_text(text.replace(line, "feature_names=" + " ".join(names), 1))
    e = _refused(bundle_copy)
    assert "model.txt" in str(e) and e.field == "feature_names"


def test_refuse_bad_encoders_file(bundle_copy: Path) -> None:
    (bundle_copy / "categorical_encoders.json").write_text('{"app_id": "not a list"}')
    e = _refused(bundle_copy)
    assert "categorical_encoders.json" in str(e)


# ---------------------------------------------------------------- item 4: categorical encoding


def test_categorical_codes_unit() -> None:
    enc = CategoricalCodes.from_vocab(["__unknown__", "a", "b", "c"])
    assert enc.encode("a") == 1 and enc.encode("c") == 3
    assert enc.encode("zzz") == 0
    legacy = CategoricalCodes.from_vocab(["a", "b"])
    assert legacy.encode("b") == 1 and legacy.encode("zzz") == -1
    # values are compared as str(value)
    assert CategoricalCodes.from_vocab(["1", "None", UNKNOWN_CATEGORY]).encode(1) == 0
    assert CategoricalCodes.from_vocab(["1", "None", UNKNOWN_CATEGORY]).encode(None) == 1


def test_known_category_encodes_to_sorted_index(bundle: ModelBundle, vocab: dict[str, list[str]]) -> None:
    uid = "25f4c16a-eb80-47ff-8c2f-67b84814bcee"
    w = make_window(app_id="com.sublimetext.4", app_category="editor", domain_category="non_browser", user_id=uid)
    X = bundle.encode([w], [NO_OVERLAY])
    assert X[0, COL["app_id"]] == vocab["app_id"].index("com.sublimetext.4") == sorted(vocab["app_id"]).index("com.sublimetext.4")
    assert X[0, COL["app_category"]] == vocab["app_category"].index("editor")
    assert X[0, COL["domain_category"]] == vocab["domain_category"].index("non_browser")
    assert X[0, COL["user_id"]] == vocab["user_id"].index(uid)
    assert COL["user_id"] == 38


def test_unseen_category_encodes_to_unknown(bundle: ModelBundle, vocab: dict[str, list[str]]) -> None:
    w = make_window(app_id="dev.zed.Zed", app_category="spaceship", domain_category="warez", user_id="never-seen-user")
    X = bundle.encode([w], [NO_OVERLAY])
    for c in ("app_id", "app_category", "domain_category", "user_id"):
        assert X[0, COL[c]] == vocab[c].index(UNKNOWN_CATEGORY), c
    # user_id's __unknown__ is not at index 0: proves the index is looked up
    assert vocab["user_id"].index(UNKNOWN_CATEGORY) == 7


def test_legacy_vocab_without_unknown_encodes_minus_one(bundle_copy: Path, vocab: dict[str, list[str]]) -> None:
    legacy = {k: [v for v in vs if v != UNKNOWN_CATEGORY] for k, vs in vocab.items()}
    (bundle_copy / "categorical_encoders.json").write_text(json.dumps(legacy))
    b = ModelBundle.load(bundle_copy)
    X = b.encode([make_window(app_id="dev.zed.Zed", app_category="editor")], [NO_OVERLAY])
    assert X[0, COL["app_id"]] == -1.0
    assert X[0, COL["app_category"]] == legacy["app_category"].index("editor")


def test_bundle_without_encoders_file_encodes_minus_one(bundle_copy: Path) -> None:
    (bundle_copy / "categorical_encoders.json").unlink()
    b = ModelBundle.load(bundle_copy)
    X = b.encode([make_window()], [NO_OVERLAY])
    assert [X[0, i] for i in SCHEMAS["v1"].categorical_indices] == [-1.0] * 4


# ---------------------------------------------------------------- item 5: numerics and bools


def test_none_numeric_encodes_to_zero(bundle: ModelBundle) -> None:
    w = make_window(keys_per_min=None, backspace_ratio=None, app_entropy_5m=None, mouse_distance=None)
    X = bundle.encode([w], [NO_OVERLAY])
    for c in ("keys_per_min", "backspace_ratio", "app_entropy_5m", "mouse_distance", *OVERLAY_COLUMNS):
        assert X[0, COL[c]] == 0.0, c
    assert not np.isnan(X).any()


def test_bools_encode_to_one_and_zero(bundle: ModelBundle) -> None:
    w = make_window(is_browser=True, is_editor=False, is_terminal=True, idle_return_indicator=True)
    X = bundle.encode([w], [NO_OVERLAY])
    assert X[0, COL["is_browser"]] == 1.0
    assert X[0, COL["is_editor"]] == 0.0
    assert X[0, COL["is_terminal"]] == 1.0
    assert X[0, COL["idle_return_indicator"]] == 1.0
    X = bundle.encode([make_window(idle_return_indicator=False)], [NO_OVERLAY])
    assert X[0, COL["idle_return_indicator"]] == 0.0


def test_numeric_values_and_overlay_positions(bundle: ModelBundle) -> None:
    w = make_window(hour_of_day=13, day_of_week=6, window_title_bucket=200, keys_per_min=78.5, app_dwell_time_seconds=12.25)
    overlay = tuple(float(100 + i) for i in range(9))
    X = bundle.encode([w], [overlay])
    assert X.dtype == np.float64 and X.shape == (1, 39)
    assert X[0, COL["hour_of_day"]] == 13.0 and X[0, COL["day_of_week"]] == 6.0
    assert X[0, COL["window_title_bucket"]] == 200.0
    assert X[0, COL["keys_per_min"]] == 78.5 and X[0, COL["app_dwell_time_seconds"]] == 12.25
    for i, c in enumerate(OVERLAY_COLUMNS):
        assert X[0, COL[c]] == 100 + i, c
    # the overlay replaces whatever the input carried for those fields
    w2 = make_window(keys_per_min_rolling_5=5.0, session_length_so_far=99.0)
    X2 = bundle.encode([w2], [NO_OVERLAY])
    assert X2[0, COL["keys_per_min_rolling_5"]] == 0.0 and X2[0, COL["session_length_so_far"]] == 0.0


def test_encode_empty_batch(bundle: ModelBundle) -> None:
    X = bundle.encode([], [])
    assert X.shape == (0, 39)
    assert bundle.predict_proba(X).shape == (0, 8)


# ---------------------------------------------------------------- golden raw + batch invariance


@pytest.fixture(scope="module")
def golden_X(bundle: ModelBundle) -> tuple[np.ndarray, list[dict[str, Any]]]:
    v = validator("v1")
    g = golden_dir()
    with open(g / "inputs.jsonl", "rb") as f:
        windows = [decode_window(line, v) for line in f if line.strip()]
    store = StateStore(3)
    overlays = [push_window(store.get(w.user_id), w) for w in windows]
    with open(g / "expected_raw.jsonl", encoding="utf-8") as f:
        raw = [json.loads(line) for line in f if line.strip()]
    assert len(raw) == len(windows) == 3030
    return bundle.encode(windows, overlays), raw


def test_golden_cat_codes_and_raw_probs_first_200(bundle: ModelBundle, golden_X: tuple[np.ndarray, list[dict[str, Any]]]) -> None:
    X, raw = golden_X
    X = X[:200]
    P = bundle.predict_proba(X)
    assert P.shape == (200, 8)
    for i in range(200):
        codes = raw[i]["cat_codes"]
        for c in ("app_id", "app_category", "domain_category", "user_id"):
            assert X[i, COL[c]] == codes[c], (i, c)
        np.testing.assert_allclose(P[i], raw[i]["raw_probs"], rtol=0, atol=1e-12, err_msg=f"row {i}")


def test_golden_cat_codes_all_rows(golden_X: tuple[np.ndarray, list[dict[str, Any]]]) -> None:
    X, raw = golden_X
    for c in ("app_id", "app_category", "domain_category", "user_id"):
        np.testing.assert_array_equal(X[:, COL[c]], [r["cat_codes"][c] for r in raw], err_msg=c)


def test_batch_predict_equals_single_row_predicts(bundle: ModelBundle, golden_X: tuple[np.ndarray, list[dict[str, Any]]]) -> None:
    X = golden_X[0][:300]
    P = bundle.predict_proba(X)
    singles = np.vstack([bundle.predict_proba(X[i:i + 1]) for i in range(X.shape[0])])
    assert np.array_equal(P, singles)
    # and chunked
    chunked = np.vstack([bundle.predict_proba(X[i:i + 7]) for i in range(0, X.shape[0], 7)])
    assert np.array_equal(P, chunked)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-12)
