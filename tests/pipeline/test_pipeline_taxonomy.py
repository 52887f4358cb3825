"""The whole pipeline, and ``replay --taxonomy``, with a taxonomy (README pipeline step 7).

A rejected window maps to the taxonomy's reject label with ``{reject label: 1.0}``; any other
window to its bucket. The core fields stay exactly taskclf's golden ones, and the output stays
byte-identical whatever the batch size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from helpers_rows import REPO_ROOT, golden_dir
from taskclf_daemon.cli import main
from taskclf_daemon.codec import RowValidator, decode_window
from taskclf_daemon.labels import LABELS
from taskclf_daemon.pipeline.batch import InferencePipeline, PipelineConfig
from taskclf_daemon.pipeline.calibration import CalibratorStore
from taskclf_daemon.pipeline.model import ModelBundle
from taskclf_daemon.pipeline.taxonomy import Taxonomy, load_taxonomy
from taskclf_daemon.records import FeatureWindow

EXAMPLE = REPO_ROOT / "config" / "taxonomy.example.yaml"
REJECT = "Unsure"  # not the default Mixed/Unknown: the label must come from the taxonomy


@pytest.fixture(scope="module")
def taxonomy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["reject"]["mixed_label_name"] = REJECT
    p = tmp_path_factory.mktemp("tax") / "taxonomy.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.fixture(scope="module")
def taxonomy(taxonomy_file: Path) -> Taxonomy:
    return load_taxonomy(taxonomy_file)


@pytest.fixture(scope="module")
def g() -> Path:
    return golden_dir()


@pytest.fixture(scope="module")
def pipe(g: Path, taxonomy: Taxonomy) -> InferencePipeline:
    bundle = ModelBundle.load(g / "models" / "2026-04-06_000000_run-0001")
    store = CalibratorStore.load(g / "artifacts" / "calibrator_store")
    return InferencePipeline(bundle, store, PipelineConfig(smooth_window=3, reject_threshold=0.55), taxonomy)


@pytest.fixture(scope="module")
def windows(g: Path, pipe: InferencePipeline) -> list[FeatureWindow]:
    v = RowValidator(pipe.bundle.schema)
    return [decode_window(ln, v) for ln in (g / "inputs.jsonl").read_bytes().splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def expected(g: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (g / "expected_w3.jsonl").read_text().splitlines() if ln.strip()]


def _values(pipe: InferencePipeline, windows: list[FeatureWindow], batch: int | None = None) -> list[bytes]:
    states = pipe.new_state_store()
    step = batch or len(windows)
    out: list[bytes] = []
    for i in range(0, len(windows), step):
        out.extend(p.value for p in pipe.process(windows[i:i + step], states).predictions)
    return out


_whole: dict[int, list[bytes]] = {}


def _whole_run(pipe: InferencePipeline, windows: list[FeatureWindow]) -> list[bytes]:
    if not _whole:
        _whole[0] = _values(pipe, windows)
    return _whole[0]


def _bucket_by_hand(probs: dict[str, float]) -> tuple[str, dict[str, float]]:
    """The example taxonomy (sum aggregation, no reweighting) computed without taxonomy.py."""
    buckets = [(b["name"], b["core_labels"]) for b in yaml.safe_load(EXAMPLE.read_text())["buckets"]]
    scores = [sum(probs[lab] for lab in labs) for _, labs in buckets]
    total = sum(scores)
    scores = [s / total for s in scores]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return buckets[best][0], {name: s for (name, _), s in zip(buckets, scores)}


def _check_records(values: list[bytes], expected: list[dict[str, Any]], taxonomy: Taxonomy) -> None:
    assert len(values) == len(expected) == 3030
    n_rejected = 0
    for i, (v, e) in enumerate(zip(values, expected)):
        r = orjson.loads(v)
        # the taxonomy never changes the core prediction: taskclf's golden values, exactly
        for f in ("user_id", "bucket_start_ts", "core_label_id", "core_label_name", "core_probs", "confidence", "is_rejected"):
            assert r[f] == e[f], (i, f)
        # smoothing still runs on the core labels (the golden's label without taxonomy)
        assert r["smoothed_label_name"] == e["mapped_label_name"], i
        if r["is_rejected"]:
            n_rejected += 1
            assert r["mapped_label_name"] == REJECT, i
            assert r["mapped_probs"] == {REJECT: 1.0}, i
        else:
            probs = np.array([e["mapped_probs"][k] for k in LABELS])  # the unrounded calibrated probabilities
            assert (r["mapped_label_name"], r["mapped_probs"]) == taxonomy.map_one(probs), i
            label, scores = _bucket_by_hand(e["mapped_probs"])
            assert r["mapped_label_name"] == label, i
            assert list(r["mapped_probs"]) == list(scores)
            assert max(abs(r["mapped_probs"][k] - s) for k, s in scores.items()) <= 5.01e-7, i
            assert all(round(x, 6) == x for x in r["mapped_probs"].values())
    assert n_rejected == 592  # the golden's rejected windows


def test_pipeline_with_taxonomy_maps_rejected_windows_to_the_reject_label(pipe: InferencePipeline, windows: list[FeatureWindow], expected: list[dict[str, Any]], taxonomy: Taxonomy) -> None:
    _check_records(_whole_run(pipe, windows), expected, taxonomy)


def test_pipeline_with_taxonomy_is_byte_identical_for_any_batch_size(pipe: InferencePipeline, windows: list[FeatureWindow]) -> None:
    whole = _whole_run(pipe, windows)
    for size in (7, 512):
        assert _values(pipe, windows, size) == whole, f"batch size {size}"
    # one window at a time (over a prefix: a window's output depends only on what came before)
    assert _values(pipe, windows[:600], 1) == whole[:600]


def test_prediction_label_is_the_mapped_label(pipe: InferencePipeline, windows: list[FeatureWindow]) -> None:
    res = pipe.process(windows[:300], pipe.new_state_store())
    assert any(p.is_rejected for p in res.predictions)
    for p in res.predictions:
        assert p.label == orjson.loads(p.value)["mapped_label_name"]
        assert (p.label == REJECT) == p.is_rejected


def test_replay_with_taxonomy(tmp_path: Path, g: Path, taxonomy_file: Path, taxonomy: Taxonomy, pipe: InferencePipeline, windows: list[FeatureWindow], expected: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    outs = []
    for size in ("61", "512"):
        out = tmp_path / f"out{size}.jsonl"
        rc = main(["replay", "--policy", str(g / "models" / "inference_policy.json"), "--taxonomy", str(taxonomy_file),
                   "--input", str(g / "inputs.jsonl"), "--output", str(out), "--batch-size", size])
        err = capsys.readouterr().err
        assert rc == 0, err
        assert '"taxonomy": "' + str(taxonomy_file) in err  # the settings line names it
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    values = outs[0].splitlines()
    assert values == _whole_run(pipe, windows)
    _check_records(values, expected, taxonomy)
