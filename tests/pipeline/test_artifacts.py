"""Settings reach the pipeline: config file / environment / flag -> ``pipeline_from_settings`` (what
``taskclf-daemon run`` and its workers call) and policy -> ``build_pipeline`` -> ``PipelineConfig``
-> the records. The golden policy's threshold equals the default and it has no per-user
thresholds, so these tests use other values, and check both the config and its effect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers_rows import golden_dir
from taskclf_daemon.artifacts import build_pipeline, pipeline_from_settings
from taskclf_daemon.cli import build_parser, run_settings
from taskclf_daemon.codec import RowValidator, decode_window
from taskclf_daemon.pipeline.batch import InferencePipeline
from taskclf_daemon.pipeline.policy import FROM_POLICY
from taskclf_daemon.records import FeatureWindow


@pytest.fixture(scope="module")
def policy() -> Path:
    return golden_dir() / "models" / "inference_policy.json"


#: the first N golden rows (all 10 users, ~120 windows each): enough decisions, a third of the time
N = 1200


@pytest.fixture(scope="module")
def windows(policy: Path) -> list[FeatureWindow]:
    pipe, _ = build_pipeline(policy=policy)
    v = RowValidator(pipe.bundle.schema)
    return [decode_window(ln, v) for ln in (golden_dir() / "inputs.jsonl").read_bytes().splitlines()[:N] if ln.strip()]


def _expected(w: int) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (golden_dir() / f"expected_w{w}.jsonl").read_text().splitlines()[:N] if ln.strip()]


def _records(pipe: InferencePipeline, windows: list[FeatureWindow]) -> list[dict[str, Any]]:
    return [orjson.loads(p.value) for p in pipe.process(windows, pipe.new_state_store()).predictions]


def _calibrated_max(e: dict[str, Any]) -> float:
    """The golden row's unrounded confidence (max of its unrounded calibrated probabilities)."""
    return max(e["mapped_probs"].values())


def _settings(source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: Path, **values: str) -> Any:
    """Settings as ``taskclf-daemon run`` builds them, with ``values`` given by one source."""
    for k in [k for k in __import__("os").environ if k.startswith("TASKCLF_")]:
        monkeypatch.delenv(k)
    argv = ["run", "--policy", str(policy)]
    if source == "file":
        cfg = tmp_path / "daemon.toml"
        body = "".join(f'{k} = {v if v.replace(".", "").isdigit() else json.dumps(v)}\n' for k, v in values.items())
        cfg.write_text("[model]\n" + body)
        argv += ["--config", str(cfg)]
    elif source == "env":
        for k, v in values.items():
            monkeypatch.setenv(f"TASKCLF_{k.upper()}", v)
    else:
        for k, v in values.items():
            argv += [f"--{k.replace('_', '-')}", v]
    a = build_parser().parse_args(argv)
    s = run_settings(a)
    for k in values:
        assert s.sources[k] != "default", (k, s.sources[k])
    return s


SOURCES = ["file", "env", "flag"]


@pytest.mark.parametrize("source", SOURCES)
def test_run_reject_threshold_from_settings_reaches_the_pipeline(source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: Path, windows: list[FeatureWindow]) -> None:
    s = _settings(source, tmp_path, monkeypatch, policy, reject_threshold="0.7")
    pipe, desc = pipeline_from_settings(s)
    assert pipe.config.reject_threshold == 0.7
    assert desc["reject_threshold"] == 0.7 and desc["sources"]["reject_threshold"] == "flag"
    recs = _records(pipe, windows)
    exp = _expected(3)
    assert [r["is_rejected"] for r in recs] == [_calibrated_max(e) < 0.7 for e in exp]
    assert sum(r["is_rejected"] for r in recs) > sum(e["is_rejected"] for e in exp)  # 0.7 rejects more than 0.55


@pytest.mark.parametrize("source", SOURCES)
def test_run_smooth_window_from_settings_reaches_the_pipeline(source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: Path, windows: list[FeatureWindow]) -> None:
    s = _settings(source, tmp_path, monkeypatch, policy, smooth_window="5")
    pipe, desc = pipeline_from_settings(s)
    assert pipe.config.smooth_window == 5 and desc["smooth_window"] == 5
    assert pipe.new_state_store().smooth_window == 5
    recs = _records(pipe, windows)
    # the w5 golden differs from the w3 labels (351 rows of 3030), so a pipeline left at 3 fails here
    assert [r["mapped_label_name"] for r in recs] == [e["mapped_label_name"] for e in _expected(5)]
    assert [r["mapped_label_name"] for r in recs] != [e["mapped_label_name"] for e in _expected(3)]


def test_run_reject_threshold_none_disables_rejection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: Path, windows: list[FeatureWindow]) -> None:
    s = _settings("env", tmp_path, monkeypatch, policy, reject_threshold="none")
    pipe, _ = pipeline_from_settings(s)
    assert pipe.config.reject_threshold is None
    assert not any(r["is_rejected"] for r in _records(pipe, windows[:400]))


def _policy_copy(tmp_path: Path, policy: Path, **changes: Any) -> Path:
    raw = json.loads(policy.read_text())
    home = policy.resolve().parent.parent
    raw["model_dir"] = str(home / raw["model_dir"])
    raw["calibrator_store_dir"] = str(home / raw["calibrator_store_dir"])
    raw.update(changes)
    d = tmp_path / "home" / "models"
    d.mkdir(parents=True)
    p = d / "inference_policy.json"
    p.write_text(json.dumps(raw))
    return p


def test_run_default_reject_threshold_is_the_policys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: Path, windows: list[FeatureWindow]) -> None:
    p = _policy_copy(tmp_path, policy, reject_threshold=0.62)
    s = _settings("env", tmp_path, monkeypatch, p)
    assert s.reject_threshold is FROM_POLICY
    pipe, desc = pipeline_from_settings(s)
    assert pipe.config.reject_threshold == 0.62 and desc["sources"]["reject_threshold"] == "policy"
    recs = _records(pipe, windows)
    assert [r["is_rejected"] for r in recs] == [_calibrated_max(e) < 0.62 for e in _expected(3)]


def _per_user_case(windows: list[FeatureWindow]) -> tuple[str, str, dict[str, float]]:
    users = sorted({w.user_id for w in windows})
    strict, lenient = users[0], users[1]
    return strict, lenient, {strict: 0.9, lenient: 0.0}


def _check_per_user(recs: list[dict[str, Any]], strict: str, lenient: str) -> None:
    exp = _expected(3)
    n_strict = 0
    for r, e in zip(recs, exp):
        conf = _calibrated_max(e)
        want = conf < 0.9 if r["user_id"] == strict else False if r["user_id"] == lenient else conf < 0.55
        assert r["is_rejected"] == want, (r["user_id"], r["bucket_start_ts"], conf)
        n_strict += r["user_id"] == strict and r["is_rejected"] and not e["is_rejected"]
    assert n_strict > 0, "the strict user's threshold must change some decisions"
    assert any(e["is_rejected"] and e["user_id"] == lenient for e in exp), "the lenient user must have rejected rows in the golden"


def test_build_pipeline_keeps_the_policys_per_user_thresholds(tmp_path: Path, policy: Path, windows: list[FeatureWindow]) -> None:
    strict, lenient, per_user = _per_user_case(windows)
    p = _policy_copy(tmp_path, policy, per_user_reject_thresholds=per_user)
    pipe, desc = build_pipeline(policy=p)
    assert dict(pipe.config.per_user_thresholds) == per_user
    assert pipe.config.reject_threshold == 0.55 and desc["per_user_thresholds"] == 2
    _check_per_user(_records(pipe, windows), strict, lenient)


def test_run_keeps_the_policys_per_user_thresholds_with_a_global_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: Path, windows: list[FeatureWindow]) -> None:
    # a flag overrides the global threshold only: per-user thresholds still beat it
    strict, lenient, per_user = _per_user_case(windows)
    p = _policy_copy(tmp_path, policy, per_user_reject_thresholds=per_user, reject_threshold=0.3)
    s = _settings("flag", tmp_path, monkeypatch, p, reject_threshold="0.55")
    pipe, _ = pipeline_from_settings(s)
    assert dict(pipe.config.per_user_thresholds) == per_user and pipe.config.reject_threshold == 0.55
    _check_per_user(_records(pipe, windows), strict, lenient)


def test_replay_cli_keeps_the_policys_per_user_thresholds(tmp_path: Path, policy: Path, windows: list[FeatureWindow], capsys: pytest.CaptureFixture[str]) -> None:
    from taskclf_daemon.cli import main

    strict, lenient, per_user = _per_user_case(windows)
    p = _policy_copy(tmp_path, policy, per_user_reject_thresholds=per_user)
    out = tmp_path / "out.jsonl"
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join((golden_dir() / "inputs.jsonl").read_bytes().splitlines()[:N]) + b"\n")
    rc = main(["replay", "--policy", str(p), "--input", str(src), "--output", str(out), "--batch-size", "100"])
    assert rc == 0, capsys.readouterr().err
    _check_per_user([json.loads(ln) for ln in out.read_text().splitlines()], strict, lenient)
