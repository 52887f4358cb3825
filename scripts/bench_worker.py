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

``--baseline-tree DIR`` (a checkout of another version, e.g. ``git worktree add DIR main``,
or ``git archive main daemon | tar -x -C DIR``): that version's package is copied as
``taskclf_daemon_baseline`` (its imports renamed) and runs in this process on its own shard,
batch by batch alternating with the current one (the order flipped each round), so both see
the same machine conditions; the ratios baseline / current are printed. Both must produce the
same outputs (keys, values, source headers), dead letters and counts, byte for byte
(``digest``), else it exits 1. Ratios, not absolute times, are the result: the machine is
shared. Times are this thread's CPU time (``--clock cpu``, the default: every
``time.perf_counter`` of the process reads ``time.thread_time``), which other processes on a
busy machine disturb far less than wall time (``--clock wall``).

Last line: ``bench_worker: total_us=X decode_us=X features_us=X encode_us=X predict_us=X
serialize_us=X shard_us=X ipc_us=X [total_ratio=R ipc_ratio=R] digest=HEX`` (the best round of each stage: on a shared machine the least disturbed one).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib
import pickle
import re
import shutil
import sys
import tempfile
import time
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "daemon"))  # this tree's package, even where another is installed (editable)
from benchlib import GOLDEN, build_workload  # noqa: E402 - the repository's golden fixture
from taskclf_daemon.workers import tune_gc  # noqa: E402

STAGES = ("decode", "features", "encode", "predict", "calibrate", "decide", "serialize", "shard", "total", "ipc")


def _load(package: str) -> tuple[Any, Any, Any]:
    """``(build_pipeline, PipelineShard, RawBatch)`` of the package named ``package``."""
    art = importlib.import_module(f"{package}.artifacts")
    shard = importlib.import_module(f"{package}.shard")
    return art.build_pipeline, shard.PipelineShard, shard.RawBatch


def _native(package: str) -> str:
    """The C accelerators a version runs with (``native.in_force()``); a tree's copy has the
    compiled modules only if that tree was built (copy its ``.so`` files in to compare two native
    builds)."""
    try:
        mod = importlib.import_module(f"{package}.native")
    except ImportError:
        return "[] (no native.py)"
    return str(mod.in_force())


def baseline_package(tree: Path, into: Path) -> str:
    """Copy ``tree``'s package as ``taskclf_daemon_baseline`` (its own imports renamed) into
    ``into``, so both versions run in one process, batch by batch."""
    src = tree / "daemon" / "taskclf_daemon"
    dst = into / "taskclf_daemon_baseline"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    for f in dst.rglob("*.py"):
        f.write_text(re.sub(r"\btaskclf_daemon\b", "taskclf_daemon_baseline", f.read_text(encoding="utf-8")), encoding="utf-8")
    sys.path.insert(0, str(into))
    return "taskclf_daemon_baseline"


class Runner:
    """One version's shard over the batches; per-stage seconds and the digest of every result."""

    def __init__(self, package: str, args: argparse.Namespace, records: list[tuple[bytes, bytes]]) -> None:
        build_pipeline, shard_cls, batch_cls = _load(package)
        pipe, _ = build_pipeline(policy=GOLDEN / "models" / "inference_policy.json", model_backend=args.backend)
        self.backend = pipe.bundle.backend
        self.shard = shard_cls(pipe)
        self.batches = []
        for s in range(0, len(records), args.batch):
            rb = batch_cls("in")
            for j, (k, v) in enumerate(records[s : s + args.batch]):
                rb.add(j % 4, s + j, v, k, 1_900_000_000_000)
            self.batches.append(rb)
        self.stages: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.digest = hashlib.sha256()

    def run(self, i: int) -> None:
        b = self.batches[i]
        st = self.stages
        t0 = time.perf_counter()
        _op, (b2, now) = pickle.loads(ForkingPickler.dumps(("process", (b, 0))))
        t1 = time.perf_counter()
        res = self.shard.process(b2, now)
        t2 = time.perf_counter()
        back = pickle.loads(ForkingPickler.dumps(("ok", res)))[1]
        t3 = time.perf_counter()
        st["ipc"] += (t1 - t0) + (t3 - t2)
        st["total"] += t2 - t1
        for k, v in res.timings.items():
            st[k] = st.get(k, 0.0) + v
        d = self.digest
        for key, value, src in back.outputs:
            d.update(b"%d:%b%d:%b%d:%b" % (len(key), key, len(value), value, len(src), src))
        d.update(repr([tuple(x) for x in back.dead]).encode())
        d.update(repr((sorted(back.skipped.items()), sorted(back.tally.items()), back.confidences, back.rejected, back.state_users)).encode())

    def per_window(self, n: int) -> dict[str, float]:
        st = dict(self.stages)
        st["shard"] = st["total"] - sum(v for k, v in st.items() if k not in ("total", "ipc", "shard"))
        return {k: v / n * 1e6 for k, v in st.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=30_000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--backend", choices=["lightgbm", "lleaves"], default="lleaves")
    ap.add_argument("--baseline-tree", type=Path)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="cpu (default): this thread's CPU time, far less disturbed by other processes on a shared machine than wall time")
    args = ap.parse_args()
    if args.clock == "cpu":  # every stage timer of the shard reads time.perf_counter
        time.perf_counter = time.thread_time
    records = build_workload(args.records, args.users).records
    n = len(records)
    tmp = tempfile.TemporaryDirectory()
    packages = {"current": "taskclf_daemon"}
    if args.baseline_tree is not None:
        packages["baseline"] = baseline_package(args.baseline_tree.resolve(), Path(tmp.name))
    rounds: dict[str, list[dict[str, float]]] = {k: [] for k in packages}
    digests: dict[str, set[str]] = {k: set() for k in packages}
    backend = ""
    for r in range(args.rounds):
        runners = {name: Runner(pkg, args, records) for name, pkg in packages.items()}  # fresh state each round
        backend = f"{runners['current'].backend}, current = {importlib.import_module('taskclf_daemon').__file__}"
        tune_gc()
        names = list(runners) if r % 2 == 0 else list(reversed(runners))
        for i in range(len(runners["current"].batches)):  # batch by batch, alternating: same machine conditions
            for name in names:
                runners[name].run(i)
        for name, rn in runners.items():
            rounds[name].append(rn.per_window(n))
            digests[name].add(rn.digest.hexdigest())
        del runners
        gc.unfreeze()
        gc.collect()
    tmp.cleanup()
    best = {name: {s: min(x[s] for x in rs) for s in STAGES} for name, rs in rounds.items()}
    print(f"windows: {n}, batch {args.batch}, users {args.users}, backend {backend}, rounds {args.rounds}, clock {args.clock} (batches of both versions interleaved)")
    print("C accelerators in force: " + ", ".join(f"{name} {_native(pkg)}" for name, pkg in packages.items()))
    hdr = f"{'stage':<11}{'current us':>11}"
    if "baseline" in best:
        hdr += f"{'baseline us':>13}{'ratio':>8}"
    print(hdr)
    for s in STAGES:
        line = f"{s:<11}{best['current'][s]:>11.2f}"
        if "baseline" in best:
            line += f"{best['baseline'][s]:>13.2f}{best['baseline'][s] / best['current'][s]:>7.2f}x"
        print(line)
    bad = len(digests["current"]) != 1 or ("baseline" in digests and digests["baseline"] != digests["current"])
    if bad:
        print(f"bench_worker: OUTPUTS DIFFER {digests}", file=sys.stderr)
    c = best["current"]
    tail = " ".join(f"{s}_us={c[s]:.2f}" for s in ("total", "decode", "features", "encode", "predict", "serialize", "shard", "ipc"))
    if "baseline" in best:
        b = best["baseline"]
        tail += f" total_ratio={b['total'] / c['total']:.2f} ipc_ratio={b['ipc'] / c['ipc']:.2f}"
    print(f"bench_worker: {tail} digest={next(iter(digests['current']))[:16]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
