#!/usr/bin/env python3
"""Predict speed of the compiled backend vs LightGBM on the same rows, measured in one run.

    python scripts/bench_backends.py [--golden DIR] [--rounds 5] [--cache-dir DIR]

The golden rows as the pipeline encodes them, predicted by ``ModelBundle.predict_proba`` with the
``lightgbm`` and the ``lleaves`` bundle (compiled into ``--cache-dir`` first if needed), at batch
sizes 1000, 64 and 1, rounds interleaved (order rotated each round, median reported) because the
machine is shared. Before timing, both backends' probabilities are compared bit for bit (the run
fails on any difference). Also reports how long loading the cached compile takes.

Last line: ``bench_backends: lightgbm_us=N lleaves_us=N ratio=R ratio_b64=R ratio_b1=R load_s=S``
(µs per row at batch 1000; ratio = lightgbm / lleaves).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

import benchlib
from taskclf_daemon.artifacts import build_pipeline
from taskclf_daemon.codec import RowValidator, decode_window
from taskclf_daemon.pipeline.features import push_window
from taskclf_daemon.pipeline.model import ModelBundle


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median reported)")
    ap.add_argument("--golden", default=str(benchlib.GOLDEN), help="golden fixture directory")
    ap.add_argument("--cache-dir", default=None, help="compiled-model cache (default: the daemon's default)")
    a = ap.parse_args()
    g = Path(a.golden)
    pipe, _ = build_pipeline(policy=g / "models" / "inference_policy.json", model_backend="lightgbm")
    v = RowValidator(pipe.bundle.schema)
    st = pipe.new_state_store()
    ws = [decode_window(ln, v) for ln in (g / "inputs.jsonl").read_bytes().splitlines() if ln.strip()]
    X = pipe.bundle.encode(ws, [push_window(st.get(w.user_id), w) for w in ws])
    lgbm = pipe.bundle
    t0 = time.perf_counter()
    fast = ModelBundle.load(lgbm.path, backend="lleaves", cache_dir=a.cache_dir)
    load_s = time.perf_counter() - t0
    print(f"lleaves: {'loaded from cache' if fast.compiled_from_cache else 'compiled'} in {load_s:.1f}s ({fast.cache_file})", file=sys.stderr)
    P, Q = lgbm.predict_proba(X), fast.predict_proba(X)
    if P.tobytes() != Q.tobytes():
        print(f"FAILED: {int((P != Q).any(axis=1).sum())} of {len(X)} golden rows differ between the backends", file=sys.stderr)
        return 1
    rows = X[:1000]
    plans = {"b1000": (rows, 1000), "b64": (rows, 64), "b1": (X[:200], 1)}
    times: dict[tuple[str, str], list[float]] = {}
    bundles = {"lightgbm": lgbm, "lleaves": fast}
    names = list(bundles)
    for r in range(a.rounds):
        order = names[r % 2:] + names[:r % 2]
        for plan, (M, batch) in plans.items():
            for name in order:
                b = bundles[name]
                t = time.perf_counter()
                for i in range(0, len(M), batch):
                    b.predict_proba(M[i:i + batch])
                times.setdefault((name, plan), []).append((time.perf_counter() - t) / len(M) * 1e6)
    med = {k: statistics.median(v) for k, v in times.items()}
    for plan in plans:
        print(f"{plan}: lightgbm={med[('lightgbm', plan)]:.2f} us/row lleaves={med[('lleaves', plan)]:.2f} us/row "
              f"ratio={med[('lightgbm', plan)] / med[('lleaves', plan)]:.2f}", file=sys.stderr)
    r1000 = med[("lightgbm", "b1000")] / med[("lleaves", "b1000")]
    print(f"bench_backends: lightgbm_us={med[('lightgbm', 'b1000')]:.2f} lleaves_us={med[('lleaves', 'b1000')]:.2f} ratio={r1000:.2f} "
          f"ratio_b64={med[('lightgbm', 'b64')] / med[('lleaves', 'b64')]:.2f} ratio_b1={med[('lightgbm', 'b1')] / med[('lleaves', 'b1')]:.2f} load_s={load_s:.2f}")
    return 0 if np.isfinite(r1000) else 1


if __name__ == "__main__":
    sys.exit(main())
