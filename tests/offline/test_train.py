"""Training a taskclf-compatible bundle: files, fields, encoding rules, weights, determinism."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from helpers_rows import GOLDEN_DIR
from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.labels import LABELS
from taskclf_daemon.offline.synthetic import generate_labelled
from taskclf_daemon.offline.train import (
    balanced_class_weights,
    dataset_hash,
    fill_overlay,
    fit_category,
    load_rows,
    sample_weights,
    split_by_time,
    train_bundle,
)
from taskclf_daemon.pipeline.drift import load_profile
from taskclf_daemon.pipeline.model import UNKNOWN_CATEGORY, ModelBundle
from taskclf_daemon.schema import OVERLAY_COLUMNS, SCHEMAS

GOLDEN = GOLDEN_DIR  # the in-repo golden fixture (built before collection by conftest)
GOLDEN_BUNDLE = GOLDEN / "models" / "2026-04-06_000000_run-0001"
ROUNDS = 40

METADATA_KEYS = [
    "schema_version", "schema_hash", "label_set", "train_date_from", "train_date_to", "params",
    "git_commit", "dataset_hash", "reject_threshold", "data_provenance", "created_at",
    "unknown_category_freq_threshold", "unknown_category_mask_rate",
]
PARAM_KEYS = [
    "objective", "metric", "num_leaves", "learning_rate", "verbose", "num_class", "seed",
    "deterministic", "force_row_wise", "num_threads", "class_weight_method",
    "unknown_category_freq_threshold", "unknown_category_mask_rate",
]
POLICY_KEYS = [
    "policy_version", "model_dir", "model_schema_hash", "model_label_set", "calibrator_store_dir",
    "calibration_method", "reject_threshold", "per_user_reject_thresholds", "created_at", "source",
    "git_commit",
]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return generate_labelled(seed=1, n_users=6, days=5)


@pytest.fixture(scope="module")
def trained(rows: list[dict], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple]]:
    out = tmp_path_factory.mktemp("home") / "models"
    events: list[tuple] = []
    bundle = train_bundle(rows, out, seed=1, num_boost_round=ROUNDS, data_provenance="synthetic", progress=lambda s, d, t: events.append((s, d, t)))
    return bundle, events


def _json(p: Path) -> object:
    return json.loads(p.read_text())


def test_bundle_files_and_fields_match_taskclf(trained: tuple[Path, list], rows: list[dict]) -> None:
    bundle, _ = trained
    # taskclf's files plus the drift reference (an extra file, which taskclf's loader ignores)
    assert sorted(p.name for p in bundle.iterdir()) == ["categorical_encoders.json", "confusion_matrix.csv", "drift_reference.json", "metadata.json", "metrics.json", "model.txt"]
    meta = _json(bundle / "metadata.json")
    assert list(meta) == METADATA_KEYS
    assert list(meta["params"]) == PARAM_KEYS
    assert meta["schema_version"] == "v1" and meta["schema_hash"] == "4077fe0dba70"
    assert meta["label_set"] == sorted(LABELS)
    dates = sorted(r["bucket_start_ts"][:10] for r in rows)
    assert (meta["train_date_from"], meta["train_date_to"]) == (dates[0], dates[-1]) == ("2026-03-02", "2026-03-07")
    assert meta["params"]["seed"] == 1 and meta["params"]["num_class"] == 8 and meta["params"]["deterministic"] is True
    assert meta["params"]["class_weight_method"] == "balanced"
    assert meta["unknown_category_freq_threshold"] == 5 and meta["unknown_category_mask_rate"] == 0.05
    assert meta["git_commit"] == "unknown" and meta["reject_threshold"] is None and meta["data_provenance"] == "synthetic"
    assert len(meta["dataset_hash"]) == 16 and int(meta["dataset_hash"], 16) >= 0
    assert meta["created_at"].endswith("+00:00")
    metrics = _json(bundle / "metrics.json")
    assert list(metrics) == ["macro_f1", "weighted_f1", "confusion_matrix", "label_names"]
    assert metrics["label_names"] == list(LABELS)
    cm = np.asarray(metrics["confusion_matrix"])
    assert cm.shape == (8, 8)
    with open(bundle / "confusion_matrix.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == [""] + list(LABELS)
    assert [r[0] for r in table[1:]] == list(LABELS)
    assert np.array_equal(np.asarray([[int(v) for v in r[1:]] for r in table[1:]]), cm)
    # same key sets as the real taskclf bundle
    gmeta = _json(GOLDEN_BUNDLE / "metadata.json")
    assert list(gmeta) == list(meta) and list(gmeta["params"]) == list(meta["params"])
    assert list(_json(GOLDEN_BUNDLE / "metrics.json")) == list(metrics)
    assert (GOLDEN_BUNDLE / "confusion_matrix.csv").read_text().splitlines()[0] == (bundle / "confusion_matrix.csv").read_text().splitlines()[0]
    assert list(_json(GOLDEN_BUNDLE / "categorical_encoders.json")) == list(_json(bundle / "categorical_encoders.json"))
    assert list(_json(GOLDEN / "models" / "inference_policy.json")) == POLICY_KEYS


def test_validation_metrics_well_above_chance(trained: tuple[Path, list], rows: list[dict]) -> None:
    bundle, _ = trained
    metrics = _json(bundle / "metrics.json")
    assert metrics["macro_f1"] > 0.5
    assert metrics["weighted_f1"] > 0.6
    assert metrics["macro_f1"] == round(metrics["macro_f1"], 4)
    data = fill_overlay(rows, SCHEMAS["v1"])
    assert np.asarray(metrics["confusion_matrix"]).sum() == len(split_by_time(data)["val"])


def test_drift_reference_profiles_the_validation_split(trained: tuple[Path, list], rows: list[dict]) -> None:
    bundle, _ = trained
    prof = load_profile(bundle, "4077fe0dba70")
    assert prof is not None and prof.model_bundle_id == bundle.name and prof.source.startswith("train: validation split")
    data = fill_overlay(rows, SCHEMAS["v1"])
    va = split_by_time(data)["val"]
    assert prof.windows == len(va) == sum(prof.class_counts)
    for feat in ("keys_per_min", "hour_of_day", "session_length_so_far", "backspace_ratio"):
        col = [data[i][0].values[feat] if feat not in OVERLAY_COLUMNS else data[i][1][OVERLAY_COLUMNS.index(feat)] for i in va]
        vals = np.asarray([np.nan if v is None else v for v in col], dtype=np.float64)
        fin = vals[np.isfinite(vals)]
        f = prof.features[feat]
        assert (f.values, f.nulls) == (len(fin), len(vals) - len(fin)), feat
        if len(fin) >= 2 and len(np.unique(fin)) > 1:
            edges = np.unique(np.percentile(fin, np.arange(0, 101, 10)))
            assert f.edges == tuple(edges.tolist()) and f.counts == tuple(np.histogram(fin, edges)[0].tolist()), feat
    # classes and entropy: the bundle alone (no calibration) with taskclf's threshold 0.55
    mb = ModelBundle.load(bundle)
    P = mb.predict_proba(mb.encode([data[i][0] for i in va], [data[i][1] for i in va]))
    classes = np.where(P.max(axis=1) < 0.55, 8, P.argmax(axis=1))
    assert prof.class_counts == tuple(np.bincount(classes, minlength=9).tolist())
    assert 0.0 < prof.reject_rate < 1.0
    p = np.clip(P, 1e-8, 1.0)
    assert prof.mean_entropy == pytest.approx(float(np.mean(-np.sum(p * np.log(p), axis=1))), rel=1e-12)


def test_bundle_loads_and_policy_points_at_it(trained: tuple[Path, list]) -> None:
    bundle, events = trained
    mb = ModelBundle.load(bundle)
    assert mb.bundle_id == bundle.name and mb.booster.num_trees() == ROUNDS * 8
    name = bundle.name
    assert len(name) == len("2026-03-02_101500_run-0001") and name[10] == "_" and name[17:22] == "_run-"
    assert name[22:].isdigit()
    policy = _json(bundle.parent / "inference_policy.json")
    assert list(policy) == POLICY_KEYS
    assert policy["model_dir"] == f"models/{name}"
    assert policy["model_schema_hash"] == "4077fe0dba70" and policy["model_label_set"] == sorted(LABELS)
    assert policy["reject_threshold"] == 0.55 and policy["source"] == "retrain"
    assert policy["calibrator_store_dir"] is None and policy["calibration_method"] is None
    assert not list(bundle.parent.glob(".*tmp*"))
    stages = [e[0] for e in events]
    for s in ("overlay", "split", "encode", "train", "evaluate", "write"):
        assert s in stages
    train_events = [e for e in events if e[0] == "train"]
    assert train_events[-1] == ("train", ROUNDS, ROUNDS) and ("train", 10, ROUNDS) in train_events


def test_categorical_encoders_sorted_with_unknown(trained: tuple[Path, list], rows: list[dict]) -> None:
    bundle, _ = trained
    enc = _json(bundle / "categorical_encoders.json")
    assert list(enc) == ["app_id", "app_category", "domain_category", "user_id"]
    for vocab in enc.values():
        assert vocab == sorted(vocab) and UNKNOWN_CATEGORY in vocab and len(set(vocab)) == len(vocab)
    assert enc["domain_category"] == ["__unknown__", "non_browser", "unknown"]
    assert set(enc["user_id"]) - {UNKNOWN_CATEGORY} == {r["user_id"] for r in rows}


def test_rare_category_becomes_unknown_and_exact_mask_count() -> None:
    values = ["a"] * 60 + ["b"] * 40 + ["rare"] * 4
    fit = fit_category(values, np.random.RandomState(0))
    assert fit.rare_values == frozenset({"rare"})
    assert all(fit.tokens[i] == UNKNOWN_CATEGORY for i in range(100, 104))
    assert fit.masked_rows.size == 5  # round(100 known * 0.05)
    assert all(values[i] != "rare" for i in fit.masked_rows)
    assert sum(t == UNKNOWN_CATEGORY for t in fit.tokens) == 9
    assert fit.vocabulary == ["__unknown__", "a", "b"]
    # exactly-5 occurrences is kept; masking is reproducible with the same RandomState seed
    fit5 = fit_category(["x"] * 5 + ["y"] * 95, np.random.RandomState(3))
    assert "x" in fit5.vocabulary and fit5.masked_rows.size == 5
    again = fit_category(["x"] * 5 + ["y"] * 95, np.random.RandomState(3))
    assert np.array_equal(fit5.masked_rows, again.masked_rows)
    # values are compared as str, like taskclf (None -> "None")
    assert "None" in fit_category([None] * 6, np.random.RandomState(0), mask_rate=0).vocabulary


def test_balanced_class_weights() -> None:
    y = np.asarray([0, 0, 0, 1, 2, 2])
    assert np.allclose(balanced_class_weights(y), [2 / 3, 2.0, 1.0])
    assert np.allclose(sample_weights(y), [2 / 3] * 3 + [2.0, 1.0, 1.0])
    assert sample_weights(y, "none") is None
    # n_classes = y.max() + 1, absent classes count as 1
    assert np.allclose(balanced_class_weights(np.asarray([0, 0, 3, 3])), [4 / 8, 4 / 4, 4 / 4, 4 / 8])


def test_split_is_per_user_chronological_70_15_15(rows: list[dict]) -> None:
    data = fill_overlay(rows, SCHEMAS["v1"])
    sp = split_by_time(data)
    assert sorted(sp["train"] + sp["val"] + sp["test"]) == list(range(len(data)))
    for uid in {w.user_id for w, _, _ in data}:
        idx = [i for i, (w, _, _) in enumerate(data) if w.user_id == uid]
        n = len(idx)
        tr = [i for i in sp["train"] if data[i][0].user_id == uid]
        va = [i for i in sp["val"] if data[i][0].user_id == uid]
        assert len(tr) == int(n * 0.7) and len(va) == int(n * (0.7 + 0.15)) - int(n * 0.7)
        if tr and va:
            assert max(data[i][0].ts_us for i in tr) < min(data[i][0].ts_us for i in va)


def test_same_seed_same_model(trained: tuple[Path, list], rows: list[dict], tmp_path: Path) -> None:
    first, _ = trained
    second = train_bundle(rows, tmp_path / "models", seed=1, num_boost_round=ROUNDS, data_provenance="synthetic")
    a, b = ModelBundle.load(first), ModelBundle.load(second)
    data = fill_overlay(rows[:3000], a.schema)
    X = a.encode([d[0] for d in data], [d[1] for d in data])
    assert np.array_equal(a.predict_proba(X), b.predict_proba(X))
    assert _json(first / "categorical_encoders.json") == _json(second / "categorical_encoders.json")
    assert _json(first / "metrics.json") == _json(second / "metrics.json")
    ma, mb_ = _json(first / "metadata.json"), _json(second / "metadata.json")
    ma.pop("created_at"), mb_.pop("created_at")
    assert ma == mb_
    trees = lambda p: (p / "model.txt").read_text().split("end of trees")[0]
    assert trees(first) == trees(second)


def test_fill_overlay_matches_online_semantics_and_keeps_given_values(rows: list[dict]) -> None:
    some = [dict(r) for r in rows if r["user_id"] == rows[0]["user_id"]][:30]
    data = fill_overlay(list(reversed(some)), "v1")  # input order does not matter
    assert [d[0].ts_us for d in data] == sorted(d[0].ts_us for d in data)
    first = dict(zip(OVERLAY_COLUMNS, data[0][1]))
    assert first["session_length_so_far"] == 0.0 and first["keys_per_min_delta"] is None
    assert first["app_switch_count_last_15m"] == 0
    some[5]["session_length_so_far"] = 42.0
    some[5]["keys_per_min_delta"] = -3.5
    again = fill_overlay(some, "v1")
    by_ts = {d[0].ts_us: d[1] for d in again}
    ts5 = fill_overlay([some[5]], "v1")[0][0].ts_us
    got = dict(zip(OVERLAY_COLUMNS, by_ts[ts5]))
    assert got["session_length_so_far"] == 42.0 and got["keys_per_min_delta"] == -3.5
    base = dict(zip(OVERLAY_COLUMNS, {d[0].ts_us: d[1] for d in data}[ts5]))
    assert got["keys_per_min_rolling_5"] == base["keys_per_min_rolling_5"]  # computed ones unchanged


def test_fill_overlay_reproduces_taskclf_online_features() -> None:
    # fails, never skips, without the fixture (as every golden test does)
    assert (GOLDEN / "expected_features.jsonl").is_file(), f"golden fixture missing: {GOLDEN.resolve()}"
    inputs = [orjson.loads(line) for line in (GOLDEN / "inputs.jsonl").read_bytes().splitlines()]
    for r in inputs:
        r["label"] = "Build"
    expected = {(e["user_id"], e["bucket_start_ts"]): e for e in map(orjson.loads, (GOLDEN / "expected_features.jsonl").read_bytes().splitlines())}
    data = fill_overlay(inputs, "v1")
    assert len(data) == len(expected)
    for w, ov, _ in data:
        e = expected[(w.user_id, inputs_ts(w.ts_us))]
        for c, v in zip(OVERLAY_COLUMNS, ov):
            assert e[c] == v or (e[c] is not None and v is not None and abs(e[c] - v) < 1e-9), (c, e[c], v)


def inputs_ts(us: int) -> str:
    from taskclf_daemon.timeutil import format_ts_us

    return format_ts_us(us)


def test_load_rows_jsonl_gz_parquet_and_errors(rows: list[dict], tmp_path: Path) -> None:
    some = rows[:50]
    p = tmp_path / "rows.jsonl"
    p.write_bytes(b"\n".join(orjson.dumps(r) for r in some) + b"\n\n")
    assert load_rows(p) == some
    gz = tmp_path / "rows.jsonl.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(p.read_bytes())
    assert load_rows(gz) == some

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(some), tmp_path / "rows.parquet")
    loaded = load_rows(tmp_path / "rows.parquet")
    assert [r["user_id"] for r in loaded] == [r["user_id"] for r in some]
    assert [d[0].values for d in fill_overlay(loaded, "v1")] == [d[0].values for d in fill_overlay(some, "v1")]
    # timestamps stored as real Parquet timestamps come back as ISO strings
    tbl = pa.Table.from_pylist([{**some[0], "bucket_start_ts": np.datetime64("2026-03-02T09:00:00", "us")}])
    pq.write_table(tbl, tmp_path / "ts.parquet")
    assert load_rows(tmp_path / "ts.parquet")[0]["bucket_start_ts"] == "2026-03-02T09:00:00Z"

    bad = [dict(r) for r in some[:3]]
    del bad[1]["label"]
    p.write_bytes(b"\n".join(orjson.dumps(r) for r in bad))
    with pytest.raises(ArtifactError, match="line 2") as ei:
        load_rows(p)
    assert ei.value.field == "label" and str(p) in str(ei.value)
    bad[1]["label"] = "Coding"
    p.write_bytes(b"\n".join(orjson.dumps(r) for r in bad))
    with pytest.raises(ArtifactError, match="line 2.*'Coding'") as ei:
        load_rows(p)
    assert ei.value.field == "label"
    p.write_bytes(orjson.dumps(some[0]) + b"\n{not json\n")
    with pytest.raises(ArtifactError, match="line 2"):
        load_rows(p)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_rows(tmp_path / "missing.jsonl")


def test_invalid_rows_are_named(rows: list[dict]) -> None:
    bad = [dict(r) for r in rows[:5]]
    bad[3]["keys_per_min"] = "fast"
    with pytest.raises(ArtifactError, match="row 3") as ei:
        fill_overlay(bad, "v1")
    assert "keys_per_min" in str(ei.value)
    with pytest.raises(ArtifactError, match="schema"):
        fill_overlay(rows[:5], "v2")


def test_dataset_hash_order_independent(rows: list[dict]) -> None:
    some = rows[:200]
    h = dataset_hash(some)
    assert len(h) == 16 and h == dataset_hash(list(reversed(some)))
    changed = [dict(r) for r in some]
    changed[0]["label"] = "Meet" if changed[0]["label"] != "Meet" else "Build"
    assert dataset_hash(changed) != h


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_other_schema_versions_train_and_load(version: str, tmp_path: Path) -> None:
    rows = generate_labelled(seed=2, n_users=3, days=3, schema_version=version)
    bundle = train_bundle(rows, tmp_path / "models", schema_version=version, seed=2, num_boost_round=5, class_weight="none")
    mb = ModelBundle.load(bundle)
    assert mb.schema.version == version and mb.width == len(SCHEMAS[version].feature_columns)
    enc = _json(bundle / "categorical_encoders.json")
    assert list(enc) == ["app_id", "app_category", "domain_category"]
    assert _json(bundle / "metadata.json")["params"]["class_weight_method"] == "none"


def test_too_few_rows_is_a_clear_error(rows: list[dict], tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="validation"):
        train_bundle(rows[:3], tmp_path / "models", num_boost_round=2)
