"""Streaming drift through Kafka: the daemon (subprocess, two pipeline worker processes) serves a
bundle whose reference was built from the golden stream; the golden stream with
``keys_per_min`` tripled makes that feature's PSI gauge cross taskclf's thresholds while the
untouched features stay at 0 -- each gauge equal to the batch PSI over the same windows."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from fixtures_daemon import produce_values, read_topic
from taskclf_daemon.cli import main
from taskclf_daemon.pipeline.drift import psi

pytestmark = pytest.mark.broker


def _column(lines: list[bytes], feature: str) -> np.ndarray:
    return np.asarray([np.nan if (v := orjson.loads(ln)[feature]) is None else v for ln in lines], dtype=np.float64)


def test_a_shifted_stream_drives_the_psi_gauge_over_the_threshold(golden, kafka_bootstrap, topic_factory, unique_group, daemon_factory, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(Path(golden) / "models", home / "models")
    shutil.copytree(Path(golden) / "artifacts", home / "artifacts")
    policy = home / "models" / "inference_policy.json"
    assert main(["reference", "--policy", str(policy), "--windows", str(Path(golden) / "inputs.jsonl")]) == 0
    lines = [ln for ln in (Path(golden) / "inputs.jsonl").read_bytes().splitlines() if ln.strip()]
    shifted = []
    for ln in lines:
        row = orjson.loads(ln)
        if row["keys_per_min"] is not None:
            row["keys_per_min"] *= 3
        shifted.append(orjson.dumps(row))

    tin, tout, tdlq = topic_factory(4), topic_factory(4), topic_factory(1)
    n = produce_values(kafka_bootstrap, tin, ((orjson.loads(v)["user_id"].encode(), v) for v in shifted))
    d = daemon_factory(tin, tout, tdlq, unique_group, "--policy", str(policy), env={"TASKCLF_DRIFT_REFRESH_S": "1", "TASKCLF_PIPELINE_WORKERS": "2"})
    d.wait_ready()
    assert len(read_topic(kafka_bootstrap, tout, expect=n, timeout=90)) == n == 3030
    deadline = time.monotonic() + 20
    while d.metric("taskclf_drift_window_windows") < n and time.monotonic() < deadline:
        time.sleep(0.3)
    assert d.metric("taskclf_drift_window_windows") == n  # both workers' windows, added up

    kpm = d.metric("taskclf_feature_psi", 'feature="keys_per_min"')
    assert kpm == pytest.approx(psi(_column(lines, "keys_per_min"), _column(shifted, "keys_per_min")), rel=1e-12)
    assert kpm > 0.4  # taskclf: drifted, critical
    for f in ("hour_of_day", "clicks_per_min", "session_length_so_far", "active_seconds_any"):
        assert d.metric("taskclf_feature_psi", f'feature="{f}"') == 0.0, f  # the reference's own windows
    assert d.metric("taskclf_feature_nulls_total", 'feature="keys_per_min"') == 407
    assert d.metric("taskclf_reference_reject_rate") > 0.0
    rc, _ = d.terminate()
    assert rc == 0
