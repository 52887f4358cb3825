#!/usr/bin/env python3
"""The daemon against the same job written with other Python stream processors.

One broker (its own in-memory Tansu unless ``--bootstrap-servers``), one data set (the
``bench_daemon.py`` workload: ``--records`` windows of ``--users`` users cloned from the golden
inputs, pre-loaded once), drained by each system in turn from a fresh consumer group into a fresh
output topic, the systems interleaved within each of ``--rounds`` rounds:

* **daemon** -- ``taskclf-daemon run`` with its defaults and the golden policy;
* **passthrough** -- raw aiokafka consume -> produce -> commit, no decode or model (the I/O
  ceiling; ``scripts/benchlib.py passthrough``);
* **faststream** -- a FastStream batch subscriber, batch publish, manual ack after publishing
  (``scripts/peers/faststream_job.py``);
* **faust** -- a Faust agent with ``stream.take_events()`` and a changelog-backed Table holding
  each user's state bytes (``scripts/peers/faust_job.py``);
* **quix** -- a Quix Streams Application with its State (``scripts/peers/quix_job.py``).

Every peer runs the daemon's own pure pipeline (decode, overlay, model, calibration, reject,
smoothing, output encoding) in its own process, so its framework never loads into the daemon,
and every system's drained outputs are checked, value by value, against an offline replay of
the same records (``scripts/bench_verify.py``): any difference fails the run (exit 1). Every
system uses the compiled model backend (``--model-backend``, default ``lleaves``; the cache is
warmed first). A peer whose framework is not installed prints ``na`` (install the ``bench``
extra: ``pip install '.[bench]'``).

Throughput = records / (last output CreateTime - first output CreateTime), as in
``bench_daemon.py`` (start-up and group join excluded); per system the median over the rounds.
The last line printed is::

    peers: daemon_eps=N faststream_eps=N faust_eps=N quix_eps=N passthrough_eps=N best_peer_ratio=R

with ``R`` = daemon / the fastest peer.

Usage::

    python scripts/bench_peers.py [--records 100000] [--users 1000] [--rounds 2] [--json out.json] [--plot out.svg]
    python scripts/bench_peers.py --quick --systems daemon,faststream
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_daemon as bd
import bench_verify as bv
import benchlib as bl

PEERS_DIR = Path(__file__).resolve().parent / "peers"
#: peer -> (the module its framework installs, its job script)
PEERS: dict[str, tuple[str, str]] = {
    "faststream": ("faststream", "faststream_job.py"),
    "faust": ("faust", "faust_job.py"),
    "quix": ("quixstreams", "quix_job.py"),
}
SYSTEMS = ("daemon", "passthrough", *PEERS)
#: the order of the result line
LINE_ORDER = ("daemon", "faststream", "faust", "quix", "passthrough")
EXTRA_HINT = "pip install 'taskclf-daemon[bench]' (or, in a checkout: pip install -e '.[bench]')"
#: retention given explicitly to every topic (Tansu reports no config for topics created
#: without one, and Quix Streams copies the input's retention to its changelog topics)
TOPIC_CONFIG = {"retention.ms": "604800000", "retention.bytes": "-1"}


def peer_installed(peer: str) -> bool:
    """Whether the framework of ``peer`` is importable (looked up, not imported)."""
    return importlib.util.find_spec(PEERS[peer][0]) is not None


def split_installed(systems: list[str], installed: Callable[[str], bool] = peer_installed) -> tuple[list[str], list[str]]:
    """(systems to run, peers whose framework is missing), in the order given."""
    missing = [s for s in systems if s in PEERS and not installed(s)]
    return [s for s in systems if s not in missing], missing


def _fmt_eps(v: float | None) -> str:
    return "na" if v is None else str(int(round(v)))


def best_peer_ratio(eps: Mapping[str, float | None]) -> float | None:
    """daemon / the fastest peer that ran (None when the daemon or every peer is missing)."""
    peers = [v for k, v in eps.items() if k in PEERS and v]
    d = eps.get("daemon")
    return d / max(peers) if d and peers else None


def peers_line(eps: Mapping[str, float | None]) -> str:
    """The result line; a system that did not run (not installed, not selected) prints ``na``."""
    r = best_peer_ratio(eps)
    cols = " ".join(f"{name}_eps={_fmt_eps(eps.get(name))}" for name in LINE_ORDER)
    return f"peers: {cols} best_peer_ratio={'na' if r is None else f'{r:.2f}'}"


def _out(line: str) -> None:
    print(line, flush=True)


class PeerBench:
    def __init__(self, a: argparse.Namespace, bench: bd.Bench) -> None:
        self.a = a
        self.b = bench
        self.results = bench.results
        self.reference: dict[bv.Key, bytes] | None = None

    def peer_cmd(self, peer: str, tag: str, out: str, n: int, events: Path) -> list[str]:
        return [sys.executable, str(PEERS_DIR / PEERS[peer][1]), "--bootstrap-servers", self.b.bootstrap, "--input-topic", self.b.topic("in"),
                "--output-topic", out, "--group-id", f"bench-{self.b.rid}-{tag}", "--expect", str(n), "--partitions", str(self.a.partitions),
                "--policy", self.b.policy, "--state-dir", str(self.b.tmp / f"state-{tag}"), "--events", str(events)]

    def changelog_records(self, group: str) -> int:
        """Records on the state changelog topics a peer created (named after its group/app id)."""
        from confluent_kafka.admin import AdminClient

        names = AdminClient({"bootstrap.servers": self.b.bootstrap}).list_topics(timeout=10).topics
        topics = [t for t in names if group in t and "changelog" in t]
        return sum(bl.read_topic(self.b.bootstrap, t, dedupe=False, idle=2.0).count for t in topics)

    def drain(self, system: str, rnd: int, n: int) -> dict[str, Any]:
        """One system drains the pre-loaded backlog into its own output topic; read back, counted
        and checked against the replay."""
        b = self.b
        tag = f"{system}{rnd}"
        out, dlq = b.topic(f"{tag}-out"), b.topic(f"{tag}-dlq")
        bl.run_async(bl.create_topics(b.bootstrap, [out, dlq], self.a.partitions, TOPIC_CONFIG), 60)
        bl.log(f"round {rnd}: {system} draining {n} windows")
        b.mon.begin(tag)
        extra: dict[str, Any] = {}
        if system == "daemon":
            p, port, dlog = b.start_daemon(tag, b.topic("in"), out, dlq, {})
            try:
                b.wait_daemon_ready(p, port, dlog)
                body = b.wait_daemon_done(p, port, dlog, n, b.timeout_for(n, 300), system)
                extra["backend"] = next((k for k in ("lightgbm", "lleaves") if bl.prom_sum(body, "taskclf_model_backend_info", f'backend="{k}"') == 1.0), None)
                noise = b.mon.end()
            finally:
                b.stop_daemon(p, dlog)
        elif system == "passthrough":
            p, events = b.start_passthrough(tag, b.topic("in"), out, n, fetch_max_wait_ms=50)
            try:
                b.wait_event(p, events, "drained", b.timeout_for(n, 1000), system)
                noise = b.mon.end()
            finally:
                bl.Procs.stop(p, timeout=20.0)
        else:
            events, log_path = b.tmp / f"{tag}.events", b.tmp / f"{tag}.log"
            p = b.procs.spawn(self.peer_cmd(system, tag, out, n, events), env=bl.bench_env(), log_path=log_path)
            b.mon.tag(tag, p.pid)
            try:
                ev = b.wait_event(p, events, "drained", b.timeout_for(n, 100), system, f"{system} job")
                noise = b.mon.end()
                extra["invalid"] = ev.get("invalid")
                started = [json.loads(ln) for ln in events.read_text().splitlines() if '"started"' in ln]
                extra["backend"] = started[0].get("backend") if started else None
            finally:
                bl.Procs.stop(p, timeout=20.0)
            extra["changelog_records"] = self.changelog_records(f"bench-{b.rid}-{tag}")
        read = bl.read_topic(b.bootstrap, out, expect=n, timeout=b.timeout_for(n, 5000), keep_values=True)
        eps = read.rate()
        res = {"eps": round(eps), **b.verify(tag, read, n), **extra, "noise": noise}
        _out(f"{tag}: eps={eps:.0f} records={read.unique} duplicates={read.duplicates} span_s={read.span_s():.2f} "
             f"backend={extra.get('backend', '-')} changelog_records={extra.get('changelog_records', '-')} {b.noise_str(noise)}")
        if system != "passthrough":  # the pass-through forwards the inputs, nothing to replay
            if self.reference is None:
                bl.log("offline replay of the backlog (the reference of every system's values)")
                self.reference = bv.reference_values(b.settings, self.records)
            res["values"] = b.verify_values(tag, read, self.records, self.reference)
        return res

    def run(self) -> dict[str, Any]:
        a, b, R = self.a, self.b, self.results
        wl = bl.build_workload(a.records, a.users, Path(a.golden) / "inputs.jsonl")
        self.records = wl.records
        R["workload"] = {"records": len(wl), "users": wl.users, "rows_per_user_max": wl.rows_per_user_max}
        systems, R["missing"] = split_installed(a.systems)
        t_in = b.topic("in")
        bl.run_async(bl.create_topics(b.bootstrap, [t_in], a.partitions, TOPIC_CONFIG), 60)
        n = bl.run_async(bl.preload(b.bootstrap, t_in, wl.records), b.timeout_for(len(wl), 2000))
        if n != len(wl):
            raise bd.BenchError(f"pre-load acknowledged {n} of {len(wl)} records")
        bl.log(f"pre-loaded {n} windows of {wl.users} users into {t_in} ({a.partitions} partitions)")
        R["compile_cache"] = b.warm_compile_cache()
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
        for rnd in range(1, a.rounds + 1):
            for system in systems:
                runs[system].append(self.drain(system, rnd, n))
        eps: dict[str, float | None] = {s: None for s in SYSTEMS}
        for s, rs in runs.items():
            eps[s] = float(statistics.median(r["eps"] for r in rs))
            _out(f"{s}: eps={eps[s]:.0f} (median of {len(rs)} rounds: {', '.join(str(r['eps']) for r in rs)})")
        ratio = best_peer_ratio(eps)
        R["runs"] = runs
        R["summary"] = {**{f"{s}_eps": (None if v is None else round(v)) for s, v in eps.items()},
                        "best_peer_ratio": None if ratio is None else round(ratio, 2),
                        "contended_phases": [k for k, v in b.mon.phases.items() if v.get("contended")],
                        "max_others_cores": max((v.get("others_cores", 0.0) for v in b.mon.phases.values()), default=0.0)}
        return R


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=None, help="windows in the backlog (default 100000; --quick 3000)")
    ap.add_argument("--users", type=int, default=None, help="distinct users (default 1000; --quick 100)")
    ap.add_argument("--partitions", type=int, default=4, help="partitions of every topic (default 4)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds, every system once per round, interleaved (default 2; --quick 1)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)")
    ap.add_argument("--model-backend", choices=["lightgbm", "lleaves", "auto"], default="lleaves",
                    help="model backend of every system (default lleaves, its cache warmed first)")
    bd.add_run_args(ap, "default 3600; --quick 600")
    a = ap.parse_args(argv)
    q = a.quick
    for name, full, quick in (("records", 100_000, 3000), ("users", 1000, 100), ("rounds", 2, 1), ("timeout", 3600.0, 600.0)):
        if getattr(a, name) is None:
            setattr(a, name, quick if q else full)
    if a.policy is None:
        a.policy = str(Path(a.golden) / "models" / "inference_policy.json")
    for name in ("records", "users", "partitions", "rounds"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be >= 1")
    systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        ap.error(f"--systems: unknown {','.join(unknown) or '(empty)'}; choose from {','.join(SYSTEMS)}")
    a.systems = list(dict.fromkeys(systems))
    a.cold_cache = False  # read by bench_daemon.Bench.warm_compile_cache
    return a


def missing_hint(missing: list[str]) -> str:
    return f"not installed: {', '.join(f'{m} ({PEERS[m][0]})' for m in missing)}; their columns print na. To run them: {EXTRA_HINT}"


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    systems, missing = split_installed(a.systems)
    if missing:
        bl.log(missing_hint(missing))
    if not systems:
        _out(peers_line({}))
        return bd.EXIT_OK
    os.environ["TASKCLF_MODEL_BACKEND"] = a.model_backend  # every system's (bl.bench_env passes it on)

    def report(res: dict[str, Any]) -> None:
        if a.plot:
            from bench_plot import render_peers_svg

            Path(a.plot).write_text(render_peers_svg(res))
            bl.log(f"plot written to {a.plot}")
        if missing:
            bl.log(missing_hint(missing))
        _out(peers_line({k[:-4]: v for k, v in res["summary"].items() if k.endswith("_eps")}))

    return bd.run_main(a, "taskclf-peers-", lambda bootstrap, mon, procs, tmp: PeerBench(a, bd.Bench(a, bootstrap, mon, procs, tmp)), report)


if __name__ == "__main__":
    sys.exit(main())
