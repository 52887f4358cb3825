#!/usr/bin/env python3
"""Hot-path cost of streaming drift: a pipeline worker's shard with drift on vs off, in one run.

    python scripts/bench_drift.py [--records 50000] [--users 1000] [--batch-size 1000] [--rounds 5]

What a pipeline worker does per micro-batch -- :meth:`PipelineShard.process`: decode, validate,
overlay, model, calibration, reject, smoothing, output encoding -- over the benchmark workload
(golden users cloned by ``benchlib.build_workload``, all users interleaved, Kafka-like batches),
once with ``drift_window = 0`` and once with the default 10,000-window sliding window against a
reference profile built from the golden stream. The two variants alternate round by round (order
rotated; this machine is shared and noisy) and each round runs a fresh shard over the same
batches; the median of the per-round throughput ratios is reported, with the drift stage's own
share of the time (``timings["drift"]``).

Last line: ``bench_drift: off_rows_s=N on_rows_s=N ratio=R drift_share=S``
(``ratio`` = throughput with drift / without; 1.0 = free).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "daemon"))

from benchlib import GOLDEN, build_workload  # noqa: E402
from taskclf_daemon.artifacts import build_pipeline  # noqa: E402
from taskclf_daemon.cli import main as cli_main  # noqa: E402
from taskclf_daemon.shard import PipelineShard, RawBatch, ShardLimits  # noqa: E402


def _batches(records: list[tuple[bytes, bytes]], size: int, partitions: int = 4) -> list[RawBatch]:
    out: list[RawBatch] = []
    offs = [0] * partitions
    for i in range(0, len(records), size):
        b = RawBatch("bench")
        for key, value in records[i : i + size]:
            p = hash(key) % partitions
            b.add(p, offs[p], value, key)
            offs[p] += 1
        out.append(b)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--golden", default=str(GOLDEN))
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=1000, help="records per micro-batch (the daemon's max_batch_records)")
    ap.add_argument("--window", type=int, default=10_000, help="drift window of the 'on' variant")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--model-backend", choices=["lightgbm", "lleaves", "auto"], default="lightgbm")
    a = ap.parse_args()
    golden = Path(a.golden)
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        home = Path(tmp)
        shutil.copytree(golden / "models", home / "models")
        shutil.copytree(golden / "artifacts", home / "artifacts")
        policy = home / "models" / "inference_policy.json"
        if cli_main(["reference", "--policy", str(policy), "--windows", str(golden / "inputs.jsonl")]) != 0:
            return 1
        pipe, _ = build_pipeline(policy=policy, model_backend=a.model_backend)
    assert pipe.reference is not None
    work = build_workload(a.records, a.users, golden / "inputs.jsonl")
    batches = _batches(work.records, a.batch_size)
    n = len(work)

    def run(window: int) -> tuple[float, float]:
        shard = PipelineShard(pipe, ShardLimits(drift_window=window, max_event_ahead_s=0.0))
        drift = 0.0
        t = time.perf_counter()
        for b in batches:
            r = shard.process(b)
            drift += r.timings.get("drift", 0.0)
        return time.perf_counter() - t, drift

    run(0)  # warm-up (imports, caches)
    ratios, off_s, on_s, shares = [], [], [], []
    for i in range(a.rounds):
        order = (0, a.window) if i % 2 == 0 else (a.window, 0)
        res = {w: run(w) for w in order}
        off, on = res[0][0], res[a.window][0]
        off_s.append(off)
        on_s.append(on)
        ratios.append(off / on)
        shares.append(res[a.window][1] / on)
        print(f"round {i + 1}: off {n / off:.0f} rows/s, on {n / on:.0f} rows/s, ratio {off / on:.3f}, drift stage {100 * shares[-1]:.2f}% of the time", file=sys.stderr)
    print(
        f"bench_drift: off_rows_s={n / statistics.median(off_s):.0f} on_rows_s={n / statistics.median(on_s):.0f} "
        f"ratio={statistics.median(ratios):.3f} drift_share={statistics.median(shares):.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
