"""Smoke test of ``scripts/bench_daemon.py --quick`` against the session broker.

It checks that the benchmark runs end to end (pass-through, daemon, naive, latency) and prints
its result line in the exact format; it asserts no performance numbers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "scripts" / "bench_daemon.py"

_NUM = r"([0-9]+(?:\.[0-9]+)?)"
BENCH_LINE = re.compile(
    rf"^bench: daemon_eps={_NUM} passthrough_eps={_NUM} io_ratio={_NUM} naive_ratio={_NUM} "
    rf"p50_ms={_NUM} p99_ms={_NUM} passthrough_p99_ms={_NUM} rss_mb={_NUM}$"
)


@pytest.mark.slow
@pytest.mark.broker
def test_bench_daemon_quick_runs_and_prints_the_result_line(kafka_bootstrap: str, golden: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKCLF_") or k == "TASKCLF_TANSU_BIN"}
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--bootstrap-servers", kafka_bootstrap, "--golden", str(golden), "--json", str(out_json), "--plot", str(tmp_path / "bench.svg"), "--latency-rate", "3000", "--rounds", "2"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard only; the script also bounds itself (--timeout)
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{proc.stderr[-3000:]}"
    m = BENCH_LINE.match(lines[-1])
    assert m, f"last line has the wrong format: {lines[-1]!r}"
    values = [float(g) for g in m.groups()]
    assert all(v > 0 for v in values), lines[-1]

    res = json.loads(out_json.read_text())
    # every phase's output was read back from its topic: one output per input, none lost
    for phase in ("passthrough", "daemon", "naive"):
        assert res[phase]["count_ok"], res[phase]
    # the drained values equal an offline replay of the same input, byte for byte
    for values in (res["daemon"]["values"], res["naive"]["values"], res["latency"]["daemon"]["values"]):
        assert values["ok"] and values["differing"] == 0 and values["conflicts"] == 0 and values["compared"] > 0, values
    assert res["daemon"]["values"]["compared"] == res["workload"]["records"]
    # --rounds 2: two pass-through and two daemon drains, interleaved; every daemon drain's values
    # checked; io_ratio is the median (here: the mean) of the two rounds' ratios
    d_rounds, p_rounds = res["daemon"]["rounds"], res["passthrough"]["rounds"]
    assert len(d_rounds) == len(p_rounds) == 2 and all(r["values"]["ok"] and r["values"]["compared"] == res["workload"]["records"] for r in d_rounds)
    pairs = [round(d["eps"] / p["eps"], 3) for p, d in zip(p_rounds, d_rounds)]
    assert res["summary"]["io_pair_ratios"] == pairs
    assert res["summary"]["io_ratio"] == round((pairs[0] + pairs[1]) / 2, 3)
    # --latency-rate: the latency runs offer that rate (3 s in --quick), not half the drain rate
    assert res["latency"]["offered_eps"] == 3000 and res["latency"]["records"] == 9000, res["latency"]
    # every drain says where its CPU went ("na" when it was over before the first poll saw an output)
    assert sum(bool(re.match(r"^daemon_[12]_cpu: cpu_us_per_window=", line)) for line in lines) == 2, lines
    assert sum(bool(re.match(r"^passthrough_[12]_cpu: cpu_us_per_window=\{passthrough_process:", line)) for line in lines) == 2, lines
    assert all(r["cpu"]["windows"] == res["workload"]["records"] for r in p_rounds)
    for who in ("daemon", "passthrough"):
        assert res["latency"][who]["count_ok"], res["latency"][who]
        assert res["latency"][who]["events"] == res["latency"]["records"]
    assert "others_cores" in res["noise"]["daemon_1"] and "others_cores" in res["noise"]["daemon_2"]
    svg = (tmp_path / "bench.svg").read_text()
    assert svg.startswith("<svg") and f"io_ratio {res['summary']['io_ratio']}" in svg
