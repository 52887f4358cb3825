#!/usr/bin/env python3
"""Replay throughput vs. one LightGBM call per row, measured in one run (ratios, not absolutes).

    python scripts/bench_replay.py [--golden DIR] [--rounds 5] [--batch-size 512]

Three variants over the golden fixture's 3030 rows, interleaved round by round (order rotated
each round, median reported) because this machine is shared and noisy:

* ``replay``   -- what ``taskclf-daemon replay`` runs: decode + pipeline in micro-batches;
* ``per_row``  -- the same code with one row per call (one LightGBM call per row, as taskclf's
  online loop does);
* ``predict_1``-- only ``Booster.predict`` on one pre-encoded row at a time (the model floor of any
  per-row design).

Last line: ``bench_replay: replay_rows_s=N per_row_rows_s=N predict_1_rows_s=N ratio=R``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "daemon"))

from benchlib import GOLDEN  # noqa: E402 - the repository's golden fixture
from taskclf_daemon.artifacts import build_pipeline  # noqa: E402
from taskclf_daemon.codec import RowValidator, decode_window  # noqa: E402
from taskclf_daemon.offline.replay import replay  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--golden", default=str(GOLDEN))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--model-backend", choices=["lightgbm", "lleaves", "auto"], default="lightgbm", help="backend of replay and per_row (predict_1 is always LightGBM)")
    a = ap.parse_args()
    g = Path(a.golden)
    data = (g / "inputs.jsonl").read_bytes()
    lines = [ln for ln in data.splitlines() if ln.strip()]
    pipe, _ = build_pipeline(policy=g / "models" / "inference_policy.json", model_backend=a.model_backend)
    n = len(lines)

    def run_replay() -> float:
        t = time.perf_counter()
        replay(pipe, io.BytesIO(data), io.BytesIO(), batch_size=a.batch_size)
        return time.perf_counter() - t

    def run_per_row() -> float:
        v = RowValidator(pipe.bundle.schema)
        st = pipe.new_state_store()
        t = time.perf_counter()
        for line in lines:
            pipe.process([decode_window(line, v)], st)
        return time.perf_counter() - t

    v = RowValidator(pipe.bundle.schema)
    st = pipe.new_state_store()
    from taskclf_daemon.pipeline.features import push_window

    ws = [decode_window(ln, v) for ln in lines]
    X = pipe.bundle.encode(ws, [push_window(st.get(w.user_id), w) for w in ws])

    def run_predict_1() -> float:
        booster = pipe.bundle.booster
        t = time.perf_counter()
        for i in range(n):
            booster.predict(X[i : i + 1], num_threads=1)
        return time.perf_counter() - t

    variants = {"replay": run_replay, "per_row": run_per_row, "predict_1": run_predict_1}
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(a.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            times[name].append(variants[name]())
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k}={n / times[k][-1]:.0f} rows/s" for k in names), file=sys.stderr)
    med = {k: n / statistics.median(v) for k, v in times.items()}
    ratios = [times["per_row"][i] / times["replay"][i] for i in range(a.rounds)]
    print(f"rows={n} rounds={a.rounds} batch_size={a.batch_size} per-round ratio replay/per_row: {', '.join(f'{x:.1f}' for x in ratios)}", file=sys.stderr)
    print(f"model_backend={pipe.bundle.backend}", file=sys.stderr)
    print(f"bench_replay: replay_rows_s={med['replay']:.0f} per_row_rows_s={med['per_row']:.0f} predict_1_rows_s={med['predict_1']:.0f} ratio={statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
