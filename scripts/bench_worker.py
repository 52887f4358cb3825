#!/usr/bin/env python3
"""Per-window cost of a pipeline worker's hot path, stage by stage, and of the worker pipe.

    python scripts/bench_worker.py [--records 30000] [--users 1000] [--batch 500] [--rounds 5]
                                   [--backend lleaves] [--baseline-tree DIR]

What a worker process does per micro-batch (``PipelineShard.process`` on a ``RawBatch``), on
the benchmark workload of ``scripts/bench_daemon.py`` (golden rows cloned into ``--users``
users, produced round-robin), split into batches of ``--batch`` records, each round on a fresh
shard: microseconds per window of each stage the shard times itself (decode, features, encode,
predict, calibrate, decide, serialize), ``shard`` (the rest of ``process``: undo snapshots,
per-output bookkeeping, result building) and ``total``; plus ``ipc``: pickling the batch and
unpickling it (daemon -> worker) and the same for the result (worker -> daemon), as the
worker pipe does (``multiprocessing``'s pickler), without the pipe itself.

``--baseline-tree DIR`` (a checkout of another version, e.g. ``git worktree add /tmp/base
main``, or ``git archive main daemon | tar -x -C DIR``) runs the same measurement with
``DIR/daemon`` on the path in a child process, rounds interleaved with this tree's (each round
a fresh process for both, order alternating), and prints the ratios baseline / current. Both
must produce the same outputs, dead letters and counts, byte for byte (``digest``): otherwise
it exits 1. Ratios, not absolute times, are the result: the machine is shared.

Last line: ``bench_worker: total_us=X decode_us=X features_us=X encode_us=X predict_us=X
serialize_us=X shard_us=X ipc_us=X [total_ratio=R ipc_ratio=R] digest=HEX`` (the best round of each stage: on a shared machine the least disturbed one).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("decode", "features", "encode", "predict", "calibrate", "decide", "serialize", "shard", "total", "ipc")


def measure(args: argparse.Namespace) -> dict[str, object]:
    """One round in this process: stage -> us per window, and the digest of every result."""
    sys.path.insert(0, str(REPO / "scripts"))
    import pickle
    from multiprocessing.reduction import ForkingPickler

    from benchlib import GOLDEN, build_workload
    from taskclf_daemon.artifacts import build_pipeline
    from taskclf_daemon.shard import PipelineShard, RawBatch
    from taskclf_daemon.workers import tune_gc

    pipe, _ = build_pipeline(policy=GOLDEN / "models" / "inference_policy.json", model_backend=args.backend)
    wl = build_workload(args.records, args.users)
    batches = []
    for s in range(0, len(wl.records), args.batch):
        rb = RawBatch("in")
        for j, (k, v) in enumerate(wl.records[s : s + args.batch]):
            rb.add(j % 4, s + j, v, k, 1_900_000_000_000)
        batches.append(rb)
    n = len(wl.records)
    tune_gc()
    shard = PipelineShard(pipe)
    stages: dict[str, float] = dict.fromkeys(STAGES, 0.0)
    digest = hashlib.sha256()
    ipc = 0.0
    for b in batches:
        t0 = time.perf_counter()
        wire = ForkingPickler.dumps(("process", (b, 0)))
        _op, (b2, now) = pickle.loads(wire)
        t1 = time.perf_counter()
        res = shard.process(b2, now)
        t2 = time.perf_counter()
        back = pickle.loads(ForkingPickler.dumps(("ok", res)))[1]
        t3 = time.perf_counter()
        ipc += (t1 - t0) + (t3 - t2)
        stages["total"] += t2 - t1
        for k, v in res.timings.items():
            stages[k] = stages.get(k, 0.0) + v
        for key, value, src in back.outputs:
            digest.update(b"%d:%b%d:%b%d:%b" % (len(key), key, len(value), value, len(src), src))
        digest.update(repr([tuple(d) for d in back.dead]).encode())
        digest.update(repr((sorted(back.skipped.items()), sorted(back.tally.items()), back.confidences, back.rejected, back.state_users)).encode())
    stages["ipc"] = ipc
    stages["shard"] = stages["total"] - sum(v for k, v in stages.items() if k not in ("total", "ipc", "shard"))
    return {"us": {k: v / n * 1e6 for k, v in stages.items()}, "digest": digest.hexdigest(), "backend": pipe.bundle.backend, "n": n}


def _child(tree: Path, args: argparse.Namespace) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(tree / "daemon"))
    cmd = [sys.executable, __file__, "--child", "--records", str(args.records), "--users", str(args.users), "--batch", str(args.batch), "--backend", args.backend]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=30_000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--backend", choices=["lightgbm", "lleaves"], default="lleaves")
    ap.add_argument("--baseline-tree", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return 0
    trees = {"current": REPO} | ({"baseline": args.baseline_tree.resolve()} if args.baseline_tree else {})
    runs: dict[str, list[dict[str, object]]] = {k: [] for k in trees}
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            runs[name].append(_child(trees[name], args))
    med = {name: {s: min(float(x["us"][s]) for x in rs) for s in STAGES} for name, rs in runs.items()}  # type: ignore[index]
    digests = {name: {str(x["digest"]) for x in rs} for name, rs in runs.items()}
    first = runs["current"][0]
    print(f"windows: {first['n']}, batch {args.batch}, users {args.users}, backend {first['backend']}, rounds {args.rounds}")
    hdr = f"{'stage':<11}{'current us':>11}"
    if "baseline" in med:
        hdr += f"{'baseline us':>13}{'ratio':>8}"
    print(hdr)
    for s in STAGES:
        line = f"{s:<11}{med['current'][s]:>11.2f}"
        if "baseline" in med:
            line += f"{med['baseline'][s]:>13.2f}{med['baseline'][s] / med['current'][s]:>7.2f}x"
        print(line)
    bad = len(digests["current"]) != 1 or ("baseline" in digests and digests["baseline"] != digests["current"])
    if bad:
        print(f"bench_worker: OUTPUTS DIFFER {digests}", file=sys.stderr)
    c = med["current"]
    tail = " ".join(f"{s}_us={c[s]:.2f}" for s in ("total", "decode", "features", "encode", "predict", "serialize", "shard", "ipc"))
    if "baseline" in med:
        b = med["baseline"]
        tail += f" total_ratio={b['total'] / c['total']:.2f} ipc_ratio={b['ipc'] / c['ipc']:.2f}"
    print(f"bench_worker: {tail} digest={next(iter(digests['current']))[:16]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
