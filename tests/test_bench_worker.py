"""Smoke test of ``scripts/bench_worker.py``: the result line, and a baseline whose outputs differ fails the run."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--records", "400", "--users", "20", "--batch", "100", "--rounds", "1", "--backend", "lightgbm"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "bench_worker.py"), *SMALL, *args], capture_output=True, text=True, timeout=600, cwd=REPO)


def test_same_code_as_baseline_gives_equal_digests_and_the_result_line(tmp_path: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(REPO / "daemon", base / "daemon", ignore=shutil.ignore_patterns("__pycache__"))
    r = _run("--baseline-tree", str(base))
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"bench_worker: total_us=([\d.]+) decode_us=[\d.]+ features_us=[\d.]+ encode_us=[\d.]+ predict_us=[\d.]+ serialize_us=[\d.]+ shard_us=[\d.]+ ipc_us=([\d.]+) total_ratio=([\d.]+) ipc_ratio=[\d.]+ digest=[0-9a-f]{16}", last)
    assert m is not None, last
    assert float(m.group(1)) > 0 and float(m.group(2)) > 0
    assert "stage" in r.stdout and "baseline us" in r.stdout
    # the copy of the built tree carries its compiled modules: both versions run all four
    four = "['overlay', 'output', 'timestamps', 'matrix']"
    assert f"C accelerators in force: current {four}, baseline {four}" in r.stdout


def test_a_baseline_with_other_outputs_fails(tmp_path: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(REPO / "daemon", base / "daemon", ignore=shutil.ignore_patterns("__pycache__"))
    labels = base / "daemon" / "taskclf_daemon" / "labels.py"
    text = labels.read_text()
    assert 'LABEL_VERSION = "labels_v1"' in text
    labels.write_text(text.replace('LABEL_VERSION = "labels_v1"', 'LABEL_VERSION = "labels_vX"'))  # every output value changes
    r = _run("--baseline-tree", str(base))
    assert r.returncode == 1
    assert "OUTPUTS DIFFER" in r.stderr
