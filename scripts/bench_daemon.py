#!/usr/bin/env python3
"""End-to-end benchmark of ``taskclf-daemon run`` against a Kafka-protocol broker, with baselines.

One run, one broker (its own in-memory Tansu unless ``--bootstrap-servers`` is given), following
``shared/spec/perf_anchors.md`` section 6. Phases, in order:

(a) **pass-through**: raw aiokafka consume -> produce -> commit with the daemon's own client
    factories, batch sink, batch sizes and offset tracking, no decode/model (a worker process,
    ``scripts/benchlib.py passthrough``), draining the pre-loaded backlog;
(b) **daemon**: ``taskclf-daemon run --policy <golden policy>`` as a subprocess draining the same
    pre-loaded backlog (>= 100k windows of >= 1,000 users cloned from the golden inputs);
    peak RSS (VmHWM), the backend in force and the daemon's own per-stage timings from
    ``/metrics``. With the ``auto`` (default) or ``lleaves`` backend the compiled model is
    cached first (``compile_cache:`` line), as a first start does in the background, so (b)
    measures a normal start; ``--cold-cache`` skips that (a first start: LightGBM until the
    background compile is swapped in); the ``daemon_cpu:`` line: µs of CPU per window of the
    daemon process, its workers and the broker from the first output to the last
    (``benchlib.DrainCpu``), and the machine's busy cores meanwhile.
    (a) and (b) run in ``--rounds`` rounds (default 3), each a pass-through drain and a daemon
    drain next to each other, the order flipped every round: a shared machine's speed drifts
    by tens of percent over minutes (seen: the same pass-through at 42k and 77k windows/s in
    one session), far more than between two neighbouring drains. ``io_ratio`` is the median
    of the rounds' daemon/pass-through ratios; ``daemon_eps``/``passthrough_eps`` the medians;
(p) **stage profile** (offline, in this process): µs per record of decode, features, encode,
    predict, calibrate, decide, serialize on the same rows, and ``R_model``;
(c) **naive**: one message at a time (``InferencePipeline.process([window])``,
    ``send_and_wait``, a commit per message), in this process, on a smaller slice;
(d) **latency** at half of (b)'s throughput (``--latency-rate``: a fixed rate instead, to compare
    builds whose drain rates differ): an open-loop generator (``taskclf-daemon produce
    --rate``, ``linger_ms=1``) against the daemon with ``fetch_max_wait_ms=5``, and against the
    pass-through at the same rate, in ``--latency-rounds`` rounds (default 2, the order flipped
    every round; the percentiles are the medians over the rounds); latency = output CreateTime
    - input CreateTime, joined on the ``taskclf-source`` header.

Throughput = records / (last output CreateTime - first output CreateTime), the same for (a),
(b) and (c): the group join is excluded. Every output topic is read back with confluent-kafka
``assign()`` and deduplicated on (user_id, bucket_start_ts); the count must equal the input.
**Values**: the outputs of (b), (c) and the latency daemon must equal, byte for byte, an offline
replay of the same records (``scripts/bench_verify.py``: the pure pipeline, same settings,
``lightgbm`` backend), and re-emitted copies must equal the first; a ``values_<phase>:`` line
gives compared/equal/differing/missing/extra counts, the differing fields and an example, and
any difference fails the run (exit 1).
Noise: ``others_cores`` per phase (machine busy CPU minus this process tree); runs with
``others_cores > 0.3`` are marked contended (C).

The last line printed is::

    bench: daemon_eps=N passthrough_eps=N io_ratio=R naive_ratio=R p50_ms=N p99_ms=N passthrough_p99_ms=N rss_mb=N

Usage::

    python scripts/bench_daemon.py [--records 100000] [--users 1000] [--json out.json] [--plot out.svg]
    python scripts/bench_daemon.py --quick --bootstrap-servers 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_verify as bv
import benchlib as bl

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class BenchError(Exception):
    """A phase failed (timeout, crash, wrong output count)."""


def _fmt(x: float, nd: int) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "nan"
    return f"{x:.{nd}f}" if nd else str(int(round(x)))


def _out(line: str) -> None:
    print(line, flush=True)


def _daemon_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("taskclf-daemon")
    return [str(exe)] if exe.is_file() and os.access(exe, os.X_OK) else [sys.executable, "-m", "taskclf_daemon"]


def _median(xs: list[float]) -> float:
    """The median (of an even count: the mean of the middle two)."""
    v = sorted(xs)
    k = len(v) // 2
    return float(v[k]) if len(v) % 2 else (v[k - 1] + v[k]) / 2.0


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput (of an even count: the lower middle one)."""
    return sorted(rounds, key=lambda r: r["eps"])[(len(rounds) - 1) // 2]


class Bench:
    def __init__(self, a: argparse.Namespace, bootstrap: str, mon: bl.CpuMonitor, procs: bl.Procs, tmp: Path) -> None:
        self.a = a
        self.bootstrap = bootstrap
        self.mon = mon
        self.procs = procs
        self.tmp = tmp
        self.rid = uuid.uuid4().hex[:6]
        self.results: dict[str, Any] = {"config": {k: v for k, v in vars(a).items()}, "bootstrap_servers": bootstrap, "run_id": self.rid}
        self.policy = str(Path(a.policy).resolve())
        #: the daemon's settings as this benchmark runs it (defaults + the golden policy): the
        #: offline replay reference, the stage profile and the naive daemon use the same
        self.settings = bl.settings_for(bootstrap).replace(policy=self.policy)

    def topic(self, name: str) -> str:
        return f"bench-{self.rid}-{name}"

    # ----------------------------------------------------------------- helpers
    def timeout_for(self, n: int, rate_floor: float = 300.0) -> float:
        return 60.0 + n / rate_floor

    def start_daemon(self, tag: str, input_topic: str, output_topic: str, dlq_topic: str, extra_env: dict[str, str]) -> tuple[Any, int, Path]:
        port = bl.free_port()
        log_path = self.tmp / f"daemon-{tag}.log"
        env = bl.bench_env({"TASKCLF_SESSION_TIMEOUT_MS": "6000", **extra_env})
        cmd = [*_daemon_cmd(), "run", "--bootstrap-servers", self.bootstrap, "--input-topic", input_topic, "--output-topic", output_topic,
               "--dlq-topic", dlq_topic, "--group-id", f"bench-{self.rid}-{tag}", "--policy", self.policy, "--http-port", str(port),
               "--log-level", "info", "--log-format", "json"]
        p = self.procs.spawn(cmd, env=env, log_path=log_path)
        self.mon.tag(f"daemon_{tag}", p.pid)
        return p, port, log_path

    @staticmethod
    def tail(path: Path, n: int = 20) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_daemon_ready(self, p: Any, port: int, log_path: Path, timeout: float = 90.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if p.poll() is not None:
                raise BenchError(f"daemon exited with {p.returncode}:\n{self.tail(log_path)}")
            if bl.http_get(port, "/readyz")[0] == 200:
                return time.monotonic() - t0
            time.sleep(0.1)
        raise BenchError(f"daemon not ready after {timeout:.0f}s:\n{self.tail(log_path)}")

    def wait_daemon_done(self, p: Any, port: int, log_path: Path, n: int, timeout: float, what: str, cpu: bl.DrainCpu | None = None) -> bytes:
        """Poll /metrics (1/s; 5/s with ``cpu``, which samples the CPU budget of the drain at the
        first poll that sees an output and at the last) until emitted + dead-lettered >= n and
        nothing is in flight."""
        t0 = time.monotonic()
        last_log = t0
        body = b""
        while True:
            if p.poll() is not None:
                raise BenchError(f"daemon exited with {p.returncode} during {what}:\n{self.tail(log_path)}")
            status, body = bl.http_get(port, "/metrics")
            if status == 200:
                done = bl.prom_sum(body, "taskclf_records_processed_total", 'outcome="emitted"') + bl.prom_sum(body, "taskclf_records_processed_total", 'outcome="dlq"')
                inflight = bl.prom_sum(body, "taskclf_in_flight_records")
                if cpu is not None and done > 0:
                    cpu.first(int(done))
                if done >= n and inflight == 0:
                    if cpu is not None:
                        cpu.last(int(done))
                    return body
                if time.monotonic() - last_log >= 5.0:
                    bl.log(f"{what}: daemon processed {int(done)}/{n}")
                    last_log = time.monotonic()
            if time.monotonic() - t0 > timeout:
                raise BenchError(f"{what}: daemon did not process {n} records within {timeout:.0f}s:\n{self.tail(log_path)}")
            time.sleep(1.0 if cpu is None else 0.2)

    def drain_cpu(self, p: Any) -> bl.DrainCpu:
        broker = sorted(self.mon.tagged("broker"))
        return bl.DrainCpu(p.pid, broker[0] if broker else None)

    @staticmethod
    def cpu_str(res: dict[str, Any] | None) -> str:
        if not res:
            return "cpu_us_per_window=na"
        return (f"cpu_us_per_window={{daemon_process:{res['daemon_process_us']},workers:{res['workers_us']},broker:{res['broker_us']},"
                f"total:{res['total_us']}}} machine_busy_cores={res['machine_busy_cores']}")

    def stop_daemon(self, p: Any, log_path: Path) -> int | None:
        rc = bl.Procs.stop(p, timeout=40.0)
        if rc not in (0, None):
            bl.log(f"warning: daemon exited with {rc}:\n{self.tail(log_path)}")
        return rc

    def start_passthrough(self, tag: str, input_topic: str, output_topic: str, n: int, fetch_max_wait_ms: int) -> tuple[Any, Path]:
        events = self.tmp / f"passthrough-{tag}.events"
        cmd = [sys.executable, str(Path(bl.__file__).resolve()), "passthrough", "--bootstrap-servers", self.bootstrap, "--input-topic", input_topic,
               "--output-topic", output_topic, "--group-id", f"bench-{self.rid}-{tag}", "--expect", str(n),
               "--fetch-max-wait-ms", str(fetch_max_wait_ms), "--timeout", str(self.timeout_for(n, 2000)), "--events", str(events)]
        p = self.procs.spawn(cmd, env=bl.bench_env(), log_path=self.tmp / f"passthrough-{tag}.log")
        self.mon.tag(f"passthrough_{tag}", p.pid)
        return p, events

    def wait_event(self, p: Any, events: Path, name: str, timeout: float, what: str, who: str = "pass-through worker") -> dict[str, Any]:
        """The first ``name`` event a worker process (``who``) appended to ``events``; its
        ``error`` event, exit or silence for ``timeout`` s fail the phase (its log, ``events``
        with the suffix ``.log``, quoted)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if events.exists():
                for line in events.read_text().splitlines():
                    ev = json.loads(line)
                    if ev.get("event") == name:
                        return ev
                    if ev.get("event") == "error":
                        raise BenchError(f"{what}: {who} failed: {ev.get('error')}\n{ev.get('traceback', '')}")
            if p.poll() is not None:
                raise BenchError(f"{what}: {who} exited with {p.returncode}:\n{self.tail(events.with_suffix('.log'), 40)}")
            time.sleep(0.05)
        raise BenchError(f"{what}: no '{name}' from the {who} within {timeout:.0f}s:\n{self.tail(events.with_suffix('.log'), 40)}")

    def verify(self, what: str, read: bl.TopicRead, expect: int) -> dict[str, Any]:
        res = {"records_read": read.count, "unique": read.unique, "duplicates": read.duplicates, "expected": expect,
               "span_s": round(read.span_s(), 3), "count_ok": read.unique == expect}
        if read.unique != expect:
            self.results.setdefault("errors", []).append(f"{what}: read back {read.unique} distinct records, expected {expect}")
            bl.log(f"ERROR {what}: output has {read.unique} distinct records (of {read.count}), expected {expect}")
        if read.duplicates:
            bl.log(f"{what}: {read.duplicates} duplicate outputs (re-emitted), deduplicated")
        return res

    def verify_values(self, what: str, read: bl.TopicRead, records: list[tuple[bytes, bytes]], reference: dict[bv.Key, bytes] | None = None) -> dict[str, Any]:
        """The drained values equal an offline replay of ``records`` (bench_verify.py), byte for
        byte; ``reference``: that replay, already made."""
        t0 = time.monotonic()
        res = bv.compare_values(read.values, reference if reference is not None else bv.reference_values(self.settings, records))
        res["conflicts"] = read.value_conflicts
        res["replay_s"] = round(time.monotonic() - t0, 1)
        _out(bv.summary_line(what, res, read.value_conflicts))
        if not res["ok"] or read.value_conflicts:
            self.results.setdefault("errors", []).append(
                f"{what}: {res['differing']} of {res['compared']} values differ from the offline replay, {res['missing']} missing, "
                f"{res['extra']} extra, {read.value_conflicts} re-emitted copies differ (example: {res.get('example')})")
        return res

    def warm_compile_cache(self) -> dict[str, Any]:
        """With the ``auto``/``lleaves`` backend, make sure the compiled model is cached (as the
        daemon's first start does in the background) so (b) measures a normal start."""
        backend = os.environ.get("TASKCLF_MODEL_BACKEND", self.settings.model_backend)
        if backend == "lightgbm" or self.a.cold_cache:
            return {"backend": backend, "cache": "not warmed"}
        from taskclf_daemon.pipeline import compiled as cc
        from taskclf_daemon.pipeline.policy import resolve_inference

        model_txt = Path(resolve_inference(policy_path=self.policy).model_dir) / "model.txt"
        cache_file = cc.cache_file_for(model_txt, os.environ.get("TASKCLF_MODEL_CACHE_DIR") or self.settings.model_cache_dir)
        t0 = time.monotonic()
        compiled = cc.CompileJob(model_txt, cache_file).run()
        res = {"backend": backend, "cache": "compiled" if compiled else "warm", "seconds": round(time.monotonic() - t0, 1), "file": str(cache_file)}
        _out(f"compile_cache: backend={backend} cache={res['cache']} seconds={res['seconds']}")
        return res

    def run_with_labels(self, wl: Any, expect: int, d_eps: float, pt_eps: float) -> None:
        """(b'): the daemon drains the backlog again, a fresh group, with the learning loop fed:
        one-window LabelSpans for a deterministic ``--labels-fraction`` of the windows, loaded on
        a co-partitioned feedback topic first (so the catch-up reads them before any window).
        The workload's users have too few labelled windows to become eligible, so the outputs
        must still equal the offline replay; what is measured is the cost of the loop itself
        (spans, evidence, rings, label requests, bigger changelog values)."""
        import zlib

        import orjson

        a, R = self.a, self.results
        t_fb, t_out, t_dlq, t_req = self.topic("fb"), self.topic("l-out"), self.topic("l-dlq"), self.topic("l-req")
        bl.run_async(bl.create_topics(self.bootstrap, [t_fb, t_out, t_dlq, t_req], a.partitions), 60)
        labels = ("Build", "Debug", "Write", "Communicate", "ReadResearch", "Review", "Meet", "BreakIdle")
        cut = int(a.labels_fraction * 1_000_000)
        spans = []
        for key, value in wl.records:
            rec = orjson.loads(value)
            ts = rec["bucket_start_ts"]
            h = zlib.crc32(key + b"|" + ts.encode())
            if h % 1_000_000 < cut:
                end = bl.plus_minute(ts)
                spans.append((key, orjson.dumps({"start_ts": ts, "end_ts": end, "label": labels[h % len(labels)], "provenance": "manual", "user_id": rec["user_id"]})))
        n_fb = bl.run_async(bl.preload(self.bootstrap, t_fb, spans), self.timeout_for(len(spans), 2000))
        bl.log(f"(b') daemon with labels: {n_fb} label spans ({n_fb / expect:.1%} of the windows) on {t_fb}")
        self.mon.begin("daemon_labels")
        p, port, dlog = self.start_daemon("bl", self.topic("in"), t_out, t_dlq, {"TASKCLF_FEEDBACK_TOPIC": t_fb, "TASKCLF_LABEL_REQUESTS_TOPIC": t_req})
        try:
            self.wait_daemon_ready(p, port, dlog)
            cpu = self.drain_cpu(p)
            body = self.wait_daemon_done(p, port, dlog, expect, self.timeout_for(expect, 300), "daemon with labels", cpu)
            noise = self.mon.end()
        finally:
            rc = self.stop_daemon(p, dlog)
        read = bl.read_topic(self.bootstrap, t_out, expect=expect, timeout=self.timeout_for(expect, 5000), keep_values=True)
        l_eps = read.rate()
        accepted = bl.prom_sum(body, "taskclf_records_processed_total", 'outcome="span_accepted"')
        R["daemon_labels"] = {"eps": round(l_eps), **self.verify("daemon_labels", read, expect), "exit_code": rc, "spans": n_fb, "spans_accepted": accepted,
                              "label_requests": bl.prom_sum(body, "taskclf_label_requests_total"), "ratio_to_daemon": round(l_eps / d_eps, 3) if d_eps else None,
                              "io_ratio": round(l_eps / pt_eps, 3) if pt_eps else None, "noise": noise, "cpu": cpu.result()}
        _out(f"daemon_labels: eps={l_eps:.0f} records={read.unique} spans={n_fb} accepted={accepted:.0f} label_requests={R['daemon_labels']['label_requests']:.0f} "
             f"io_ratio={l_eps / pt_eps:.3f} ratio_to_daemon={l_eps / d_eps:.3f} {self.noise_str(noise)}")
        _out(f"daemon_labels_cpu: {self.cpu_str(R['daemon_labels']['cpu'])}")
        R["daemon_labels"]["values"] = self.verify_values("daemon_labels", read, wl.records)

    def passthrough_drain(self, i: int, t_in: str, t_pt: str, expect: int) -> dict[str, Any]:
        """(a), round ``i``: the raw aiokafka pass-through drains the backlog into its own topic."""
        a = self.a
        t_out = t_pt if i == 1 else self.topic(f"pt-out-{i}")
        if i > 1:
            bl.run_async(bl.create_topics(self.bootstrap, [t_out], a.partitions), 60)
        bl.log(f"(a) pass-through round {i}/{a.rounds}: draining the backlog with raw aiokafka (daemon settings, no model)")
        name = "passthrough" if a.rounds == 1 else f"passthrough_{i}"
        self.mon.begin(name)
        p, events = self.start_passthrough(f"a{i}", t_in, t_out, expect, fetch_max_wait_ms=50)
        self.wait_event(p, events, "assigned", 90.0, "pass-through")
        broker = sorted(self.mon.tagged("broker"))
        cpu = bl.ProcessCpu({"passthrough_process": [p.pid], "broker": broker[:1]})
        done = self.wait_event(p, events, "drained", self.timeout_for(expect, 1000), "pass-through")
        cpu_res = cpu.per_window(expect)
        noise = self.mon.end()
        bl.Procs.stop(p, timeout=20.0)
        read = bl.read_topic(self.bootstrap, t_out, expect=expect, timeout=self.timeout_for(expect, 5000))
        eps = read.rate()
        _out(f"{name}: eps={eps:.0f} records={read.unique} duplicates={read.duplicates} span_s={read.span_s():.2f} "
             f"eps_to_last_ack={done.get('acked_eps')} join_s={done.get('join_s')} {self.noise_str(noise)}")
        _out(f"{name}_cpu: cpu_us_per_window={{passthrough_process:{cpu_res['passthrough_process_us']},broker:{cpu_res['broker_us']},"
             f"total:{cpu_res['total_us']}}} machine_busy_cores={cpu_res['machine_busy_cores']}")
        return {"eps": round(eps), **self.verify(name, read, expect), "worker": done, "noise": noise, "cpu": cpu_res}

    def daemon_drain(self, i: int, t_in: str, t_d: str, t_dlq: str, expect: int) -> tuple[dict[str, Any], bl.TopicRead]:
        """(b), round ``i``: ``taskclf-daemon run`` (a fresh group) drains the backlog into its own
        topic; the round's results and its outputs read back (values kept)."""
        a = self.a
        if i > 1:
            t_d, t_dlq = self.topic(f"d-out-{i}"), self.topic(f"d-dlq-{i}")
            bl.run_async(bl.create_topics(self.bootstrap, [t_d, t_dlq], a.partitions), 60)
        name = "daemon" if a.rounds == 1 else f"daemon_{i}"
        bl.log(f"(b) daemon round {i}/{a.rounds}: taskclf-daemon run draining the same backlog")
        self.mon.begin(name)
        p, port, dlog = self.start_daemon(f"b{i}", t_in, t_d, t_dlq, {})
        try:
            ready_s = self.wait_daemon_ready(p, port, dlog)
            cpu = self.drain_cpu(p)
            body = self.wait_daemon_done(p, port, dlog, expect, self.timeout_for(expect, 300), name, cpu)
            rss = bl.vm_hwm_mb(p.pid)
            noise = self.mon.end()
        finally:
            rc = self.stop_daemon(p, dlog)
        read = bl.read_topic(self.bootstrap, t_d, expect=expect, timeout=self.timeout_for(expect, 5000), keep_values=True)
        d_eps = read.rate()
        emitted = bl.prom_sum(body, "taskclf_records_processed_total", 'outcome="emitted"')
        stages = {}
        for st in ("features", "encode", "predict", "calibrate", "decide", "serialize"):
            sec = bl.prom_sum(body, "taskclf_stage_duration_seconds_sum", f'stage="{st}"')
            stages[st] = round(sec / emitted * 1e6, 2) if emitted else None
        calls = bl.prom_sum(body, "taskclf_predict_batch_size_records_count")
        in_force = [b for b in ("lightgbm", "lleaves") if bl.prom_sum(body, "taskclf_model_backend_info", f'backend="{b}"') == 1.0]
        res = {"eps": round(d_eps), **self.verify(name, read, expect), "ready_s": round(ready_s, 2), "exit_code": rc,
               "rss_mb": round(rss) if rss else None, "stage_us_per_record": stages,
               "mean_batch": round(emitted / calls, 1) if calls else None,
               "dlq": bl.prom_sum(body, "taskclf_records_processed_total", 'outcome="dlq"'),
               "commits_ok": bl.prom_sum(body, "taskclf_offset_commits_total", 'result="ok"'),
               "backpressure_pauses": bl.prom_sum(body, "taskclf_backpressure_pauses_total"), "noise": noise,
               "backend_in_force": in_force[0] if in_force else None, "cpu": cpu.result()}
        daemon_cpu = noise.get(f"daemon_b{i}_cores")
        if daemon_cpu is not None and noise.get("wall_s"):
            res["daemon_cpu_s"] = round(daemon_cpu * noise["wall_s"], 2)
        _out(f"{name}: eps={d_eps:.0f} records={read.unique} duplicates={read.duplicates} span_s={read.span_s():.2f} "
             f"rss_mb={res['rss_mb']} mean_batch={res['mean_batch']} backend={res['backend_in_force']} in_daemon_us/rec={json.dumps(stages, separators=(',', ':'))} "
             f"{self.noise_str(noise)}")
        _out(f"{name}_cpu: {self.cpu_str(res['cpu'])}")
        return res, read

    def latency_run(self, who: str, rnd: int, rate: float, n_lat: int, lat_file: Path, records: list[tuple[bytes, bytes]]) -> dict[str, Any]:
        """(d), round ``rnd``: ``n_lat`` records offered at ``rate`` (open loop) to ``who`` (the
        daemon or the pass-through); latency percentiles of output CreateTime - input CreateTime."""
        a = self.a
        sfx = f"{who}-{rnd}"
        name = f"latency_{who}" if a.latency_rounds == 1 else f"latency_{who}_{rnd}"
        t_lin, t_lout, t_ldlq = self.topic(f"lat-{sfx}-in"), self.topic(f"lat-{sfx}-out"), self.topic(f"lat-{sfx}-dlq")
        bl.run_async(bl.create_topics(self.bootstrap, [t_lin, t_lout, t_ldlq], a.partitions), 60)
        bl.log(f"(d) latency, {who} round {rnd}/{a.latency_rounds}: {n_lat} records offered at {rate:.0f}/s (open loop, linger_ms=1, fetch_max_wait_ms=5)")
        if who == "daemon":
            p, port, dlog = self.start_daemon(f"d{rnd}", t_lin, t_lout, t_ldlq, {"TASKCLF_FETCH_MAX_WAIT_MS": "5"})
            self.wait_daemon_ready(p, port, dlog)
        else:
            p, events = self.start_passthrough(f"d{rnd}", t_lin, t_lout, n_lat, fetch_max_wait_ms=5)
            self.wait_event(p, events, "assigned", 90.0, "latency pass-through")
        time.sleep(0.5)
        try:
            self.mon.begin(name)
            gen = self.procs.spawn([*_daemon_cmd(), "produce", "--bootstrap-servers", self.bootstrap, "--topic", t_lin, "--input", str(lat_file),
                                    "--rate", f"{rate:.3f}"], env=bl.bench_env({"TASKCLF_LINGER_MS": "1"}), log_path=self.tmp / f"generator-{sfx}.log")
            self.mon.tag(f"generator_{sfx}", gen.pid)
            try:
                grc = gen.wait(timeout=a.latency_seconds * 3 + 60)
            except Exception as exc:  # noqa: BLE001
                raise BenchError(f"load generator did not finish: {exc}") from None
            if grc != 0:
                raise BenchError(f"load generator exited with {grc}:\n{self.tail(self.tmp / f'generator-{sfx}.log')}")
            if who == "daemon":
                self.wait_daemon_done(p, port, dlog, n_lat, self.timeout_for(n_lat, 200), "latency daemon")
            else:
                self.wait_event(p, events, "drained", self.timeout_for(n_lat, 200), "latency pass-through")
            noise = self.mon.end()
        finally:
            if who == "daemon":
                self.stop_daemon(p, dlog)
            else:
                bl.Procs.stop(p, timeout=20.0)
        rin = bl.read_topic(self.bootstrap, t_lin, expect=n_lat, dedupe=False, keep_positions=True, timeout=self.timeout_for(n_lat, 5000))
        rout = bl.read_topic(self.bootstrap, t_lout, expect=n_lat, keep_sources=True, timeout=self.timeout_for(n_lat, 5000), keep_values=who == "daemon")
        lat = bl.join_latencies(rout, rin, t_lin)
        pct = bl.percentiles(lat, (50, 90, 99))
        achieved = rin.rate()
        res = {**{k: round(v, 1) for k, v in pct.items()}, "max": round(max(lat), 1) if lat else None, "events": len(lat),
               "achieved_eps": round(achieved), **self.verify(f"latency {who}", rout, n_lat), "noise": noise}
        if who == "daemon":
            res["values"] = self.verify_values(name, rout, records)
        _out(f"{name}: offered_eps={rate:.0f} achieved_eps={achieved:.0f} events={len(lat)} p50_ms={pct['p50']:.1f} "
             f"p90_ms={pct['p90']:.1f} p99_ms={pct['p99']:.1f} {self.noise_str(noise)}")
        return res

    def noise_str(self, noise: dict[str, Any]) -> str:
        return f"others_cores={noise.get('others_cores')} own_cores={noise.get('own_cores')} state={noise.get('state')}"

    # ----------------------------------------------------------------- phases
    def run(self) -> dict[str, Any]:
        a = self.a
        R = self.results
        t_build = time.monotonic()
        wl = bl.build_workload(a.records, a.users, Path(a.golden) / "inputs.jsonl")
        R["workload"] = {"records": len(wl), "users": wl.users, "rows_per_user_max": wl.rows_per_user_max,
                         "mean_value_bytes": round(wl.mean_value_bytes(), 1), "source": wl.source}
        bl.log(f"workload: {len(wl)} records, {wl.users} users, <= {wl.rows_per_user_max} rows/user, "
               f"{wl.mean_value_bytes():.0f} B/value (built in {time.monotonic() - t_build:.1f}s)")
        naive_n = min(a.naive_records, len(wl))
        naive_records = wl.records[:naive_n]

        t_in, t_pt, t_d, t_dlq = self.topic("in"), self.topic("pt-out"), self.topic("d-out"), self.topic("d-dlq")
        t_nin, t_nout = self.topic("naive-in"), self.topic("naive-out")
        bl.run_async(bl.create_topics(self.bootstrap, [t_in, t_pt, t_d, t_dlq, t_nin, t_nout], a.partitions), 60)

        # ---- pre-load
        bl.log(f"pre-loading {len(wl)} records into {t_in} ({a.partitions} partitions)")
        t0 = time.monotonic()
        n = bl.run_async(bl.preload(self.bootstrap, t_in, wl.records, progress=lambda k, e: bl.log(f"  produced {k} ({k / e:.0f}/s)") if e else None),
                         self.timeout_for(len(wl), 2000))
        took = time.monotonic() - t0
        bl.run_async(bl.preload(self.bootstrap, t_nin, naive_records), self.timeout_for(naive_n, 2000))
        R["preload"] = {"records": n, "seconds": round(took, 2), "eps": round(n / took)}
        _out(f"preload: records={n} seconds={took:.1f} produce_eps={n / took:.0f}")
        if n != len(wl):
            raise BenchError(f"pre-load acknowledged {n} of {len(wl)} records")
        expect = len(wl)

        # ---- (a) + (b): pass-through and daemon drains of the same backlog, interleaved in
        # --rounds rounds (the order flipped every round), so each daemon drain is compared with
        # the pass-through drain next to it in time: a shared machine's speed drifts by tens of
        # percent over minutes, far more than between two neighbouring drains
        R["compile_cache"] = self.warm_compile_cache()
        pts: list[dict[str, Any]] = []
        ds: list[dict[str, Any]] = []
        reference: dict[bv.Key, bytes] | None = None
        for i in range(1, a.rounds + 1):
            for who in ("passthrough", "daemon") if i % 2 else ("daemon", "passthrough"):
                if who == "passthrough":
                    pts.append(self.passthrough_drain(i, t_in, t_pt, expect))
                    continue
                d_round, read = self.daemon_drain(i, t_in, t_d, t_dlq, expect)
                if reference is None:
                    bl.log("(b) values: the offline replay of the backlog (the reference for every drain)")
                    reference = bv.reference_values(self.settings, wl.records)
                d_round["values"] = self.verify_values("daemon" if a.rounds == 1 else f"daemon_{i}", read, wl.records, reference)
                del read
                ds.append(d_round)
        ratios = [round(d["eps"] / p["eps"], 3) for p, d in zip(pts, ds)]
        io_ratio = _median(ratios)
        pt_eps, d_eps = _median([float(r["eps"]) for r in pts]), _median([float(r["eps"]) for r in ds])
        R["passthrough"] = {**_median_round(pts), "count_ok": all(r["count_ok"] for r in pts), "rounds_eps": [r["eps"] for r in pts], "rounds": pts}
        R["daemon"] = {**_median_round(ds), "count_ok": all(r["count_ok"] for r in ds), "rounds_eps": [r["eps"] for r in ds], "rounds": ds, "pair_ratios": ratios}
        R["daemon"]["values"] = {**R["daemon"]["values"], "ok": all(r["values"]["ok"] for r in ds)}
        if a.rounds > 1:
            _out(f"passthrough: eps={pt_eps:.0f} (median of {len(pts)} rounds: {', '.join(str(r['eps']) for r in pts)})")
            _out(f"daemon: eps={d_eps:.0f} (median of {len(ds)} rounds: {', '.join(str(r['eps']) for r in ds)})")
        _out(f"io_ratio: {io_ratio:.3f} (daemon/passthrough, median of the rounds' ratios: {', '.join(f'{x:.3f}' for x in ratios)})")
        # CPU per window, daemon (process + workers + broker) over pass-through (process + broker),
        # per round: an efficiency ratio that a slower or faster host moves far less than io_ratio
        cpu_ratios = [round(d["cpu"]["total_us"] / p["cpu"]["total_us"], 2) for p, d in zip(pts, ds) if d.get("cpu") and p["cpu"]["total_us"]]
        if cpu_ratios:
            R["daemon"]["cpu_ratios"] = cpu_ratios
            _out(f"cpu_ratio: {_median(cpu_ratios):.2f} (daemon/passthrough CPU per window, median of the rounds': {', '.join(f'{x:.2f}' for x in cpu_ratios)})")

        # ---- (b') daemon with labels flowing: the same backlog, a feedback topic pre-loaded with
        # one-window label spans for --labels-fraction of the windows
        if a.labels_fraction > 0:
            self.run_with_labels(wl, expect, d_eps, pt_eps)

        # ---- stage profile (offline, this process)
        from taskclf_daemon.artifacts import pipeline_from_settings

        backend = os.environ.get("TASKCLF_MODEL_BACKEND", self.settings.model_backend)
        pipe, _desc = pipeline_from_settings(self.settings.replace(model_backend=backend))
        if a.profile_records:
            k = min(a.profile_records, len(wl))
            bl.log(f"(p) stage profile: {k} records through decode + InferencePipeline.process in batches of 1000")
            self.mon.begin("stage_profile")
            prof = bl.stage_profile(pipe, wl.records[:k], batch=1000)
            prof["noise"] = self.mon.end()
            R["stage_profile"] = prof
            _out("stage_profile_us_per_record: " + " ".join(f"{s}={prof[s]}" for s in ("decode", "features", "encode", "predict", "calibrate", "decide", "serialize", "total"))
                 + f" raw_booster_predict={prof['raw_booster_predict']} R_model={prof['R_model']} {self.noise_str(prof['noise'])}")
            pipe, _desc = pipeline_from_settings(self.settings.replace(model_backend=backend))  # fresh state

        # ---- (c) naive
        bl.log(f"(c) naive daemon: {naive_n} records one at a time (process([w]), send_and_wait, commit per message)")
        # linger_ms=0 (aiokafka's default): with the daemon's 5 ms linger every send_and_wait would
        # also wait out the linger, which no one-at-a-time implementation would do
        s_naive = bl.settings_for(self.bootstrap, f"bench-{self.rid}-naive", linger_ms=0)
        self.mon.begin("naive")
        res = bl.run_async(bl.naive_daemon(s_naive, pipe, t_nin, t_nout, naive_n, timeout=self.timeout_for(naive_n, 50)), self.timeout_for(naive_n, 50) + 30)
        noise = self.mon.end()
        read = bl.read_topic(self.bootstrap, t_nout, expect=naive_n, timeout=self.timeout_for(naive_n, 5000), keep_values=True)
        n_eps = read.rate()
        R["naive"] = {"eps": round(n_eps, 1), **self.verify("naive", read, naive_n), **res, "noise": noise}
        R["naive"]["values"] = self.verify_values("naive", read, naive_records)
        _out(f"naive: eps={n_eps:.0f} records={read.unique} span_s={read.span_s():.2f} "
             f"us_per_message={json.dumps(res.get('us_per_message'), separators=(',', ':'))} {self.noise_str(noise)}")
        _out(f"naive_ratio: {d_eps / n_eps:.2f} (daemon/naive)")

        # ---- (d) latency
        rate = max(1.0, d_eps / 2.0) if a.latency_rate is None else a.latency_rate
        n_lat = max(100, int(rate * a.latency_seconds))
        lat_wl = bl.build_workload(n_lat, min(a.users, n_lat))
        lat_file = bl.write_jsonl(lat_wl.records, self.tmp / "latency.jsonl")
        R["latency"] = {"offered_eps": round(rate), "records": n_lat}
        lat_rounds: dict[str, list[dict[str, Any]]] = {"daemon": [], "passthrough": []}
        for rnd in range(1, a.latency_rounds + 1):  # interleaved like (a)/(b): the order flipped every round
            for who in ("daemon", "passthrough") if rnd % 2 else ("passthrough", "daemon"):
                lat_rounds[who].append(self.latency_run(who, rnd, rate, n_lat, lat_file, lat_wl.records))
        for who, rs in lat_rounds.items():
            R["latency"][who] = {**sorted(rs, key=lambda r: r["p99"])[(len(rs) - 1) // 2], "count_ok": all(r["count_ok"] for r in rs), "rounds": rs}
            for k in ("p50", "p90", "p99"):
                R["latency"][who][k] = round(_median([r[k] for r in rs]), 1)
            if who == "daemon":
                R["latency"][who]["values"] = {**rs[0]["values"], "ok": all(r["values"]["ok"] for r in rs)}
        if a.latency_rounds > 1:
            for who, rs in lat_rounds.items():
                _out(f"latency_{who}: p50_ms={R['latency'][who]['p50']:.1f} p99_ms={R['latency'][who]['p99']:.1f} "
                     f"(medians of {len(rs)} rounds; p99_ms: {', '.join(format(r['p99'], '.1f') for r in rs)})")

        # ---- summary
        ld, lp = R["latency"]["daemon"], R["latency"]["passthrough"]
        R["summary"] = {
            "daemon_eps": round(d_eps), "passthrough_eps": round(pt_eps), "io_ratio": round(io_ratio, 3), "io_pair_ratios": ratios, "cpu_ratio": _median(cpu_ratios) if cpu_ratios else None,
            "naive_eps": round(n_eps, 1), "naive_ratio": round(d_eps / n_eps, 2), "p50_ms": ld["p50"], "p99_ms": ld["p99"],
            "passthrough_p50_ms": lp["p50"], "passthrough_p99_ms": lp["p99"], "rss_mb": R["daemon"]["rss_mb"],
            "contended_phases": [k for k, v in self.mon.phases.items() if v.get("contended")],
            "max_others_cores": max((v.get("others_cores", 0.0) for v in self.mon.phases.values()), default=0.0),
        }
        R["noise"] = self.mon.phases
        return R


def bench_line(s: dict[str, Any]) -> str:
    return (f"bench: daemon_eps={_fmt(s['daemon_eps'], 0)} passthrough_eps={_fmt(s['passthrough_eps'], 0)} io_ratio={_fmt(s['io_ratio'], 3)} "
            f"naive_ratio={_fmt(s['naive_ratio'], 2)} p50_ms={_fmt(s['p50_ms'], 1)} p99_ms={_fmt(s['p99_ms'], 1)} "
            f"passthrough_p99_ms={_fmt(s['passthrough_p99_ms'], 1)} rss_mb={_fmt(s['rss_mb'] or float('nan'), 0)}")


def add_run_args(ap: argparse.ArgumentParser, timeout_defaults: str) -> None:
    """The options :func:`run_main` and the workload read (every Kafka benchmark has them)."""
    ap.add_argument("--bootstrap-servers", help="use this broker instead of starting a local Tansu")
    ap.add_argument("--golden", default=str(bl.GOLDEN), help="golden fixture directory (inputs.jsonl)")
    ap.add_argument("--policy", default=None, help="inference policy (default: the golden fixture's)")
    ap.add_argument("--json", help="write all results to this JSON file")
    ap.add_argument("--plot", help="draw the results as an SVG to this file (scripts/bench_plot.py)")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--timeout", type=float, default=None, help=f"hard limit for the whole run in seconds ({timeout_defaults})")
    ap.add_argument("--keep-logs", action="store_true", help="keep the logs directory (daemon, workers, peers)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=None, help="backlog records for (a)/(b) (default 100000; --quick 3000)")
    ap.add_argument("--users", type=int, default=None, help="distinct users (default 1000; --quick 100)")
    ap.add_argument("--partitions", type=int, default=4, help="partitions of every topic (default 4)")
    ap.add_argument("--naive-records", type=int, default=None, help="records for the naive daemon (default 3000; --quick 300)")
    ap.add_argument("--latency-seconds", type=float, default=None, help="seconds of offered load per latency run (default 20; --quick 3)")
    ap.add_argument("--latency-rate", type=float, default=None,
                    help="windows/s offered in the latency runs (default: half of (b)'s drain rate); a fixed rate compares builds whose drain rates differ")
    ap.add_argument("--rounds", "--passthrough-rounds", type=int, default=None,
                    help="drain rounds, each a pass-through and a daemon drain next to each other (order flipped every round); io_ratio is the median of the rounds' ratios (default 3; --quick 1)")
    ap.add_argument("--latency-rounds", type=int, default=None, help="latency rounds, each the daemon and the pass-through at the same rate, interleaved; the medians count (default 2; --quick 1)")
    ap.add_argument("--profile-records", type=int, default=None, help="records for the offline stage profile, 0 = skip (default 20000; --quick 1000)")
    add_run_args(ap, "default 1800; --quick 240")
    ap.add_argument("--labels-fraction", type=float, default=0.0, help="also drain with the learning loop fed: one-window label spans for this share of the windows on a feedback topic (issue 12: 0.1); 0 = skip")
    ap.add_argument("--cold-cache", action="store_true", help="do not compile the model before (b): measure a first start (LightGBM until the background compile is swapped in)")
    ap.add_argument("--pipeline-workers", type=int, default=None, help="pipeline_workers of the daemon (default: the daemon's default, 2; env TASKCLF_PIPELINE_WORKERS)")
    ap.add_argument("--model-backend", choices=["lightgbm", "lleaves", "auto"], default=None, help="model backend of the daemon, the naive daemon and the stage profile (default: the daemon's default; env TASKCLF_MODEL_BACKEND)")
    a = ap.parse_args(argv)
    if a.model_backend:
        os.environ["TASKCLF_MODEL_BACKEND"] = a.model_backend
    if a.pipeline_workers is not None:
        os.environ["TASKCLF_PIPELINE_WORKERS"] = str(a.pipeline_workers)
    q = a.quick
    for name, full, quick in (("records", 100_000, 3000), ("users", 1000, 100), ("naive_records", 3000, 300), ("latency_seconds", 20.0, 3.0),
                              ("profile_records", 20_000, 1000), ("timeout", 1800.0, 240.0),
                              ("rounds", 3, 1), ("latency_rounds", 2, 1)):
        if getattr(a, name) is None:
            setattr(a, name, quick if q else full)
    if a.policy is None:
        a.policy = str(Path(a.golden) / "models" / "inference_policy.json")
    for name in ("records", "users", "partitions", "naive_records", "rounds", "latency_rounds"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.latency_seconds <= 0:
        ap.error("--latency-seconds must be > 0")
    if a.latency_rate is not None and a.latency_rate <= 0:
        ap.error("--latency-rate must be > 0")
    return a


def run_main(a: argparse.Namespace, prefix: str, make: Callable[[str, bl.CpuMonitor, bl.Procs, Path], Any], report: Callable[[dict[str, Any]], None]) -> int:
    """What every Kafka benchmark's ``main`` does around its phases: the ``--timeout`` alarm,
    SIGTERM as an interrupt, a broker (a local Tansu unless ``--bootstrap-servers``), the logs
    directory, ``--json``, the errors (exit 1) and the noise line, and cleaning up whatever
    happens. ``make(bootstrap, mon, procs, tmp)`` builds the benchmark (``.run()`` returns and
    ``.results`` holds its results); ``report(results)`` prints its plot and last line."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"benchmark exceeded --timeout {a.timeout:.0f}s")

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM -> KeyboardInterrupt -> cleanup
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(a.timeout))
    procs = bl.Procs()
    mon = bl.CpuMonitor()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    broker = None
    rc = EXIT_OK
    try:
        if a.bootstrap_servers:
            bootstrap = a.bootstrap_servers
        else:
            from taskclf_daemon.devbroker import LocalBroker

            broker = LocalBroker()
            broker.start(timeout=30.0)
            mon.tag("broker", broker.pid)
            bootstrap = broker.bootstrap_servers
            bl.log(f"started Tansu broker on {bootstrap} (pid {broker.pid})")
        bench = make(bootstrap, mon, procs, tmp)
        try:
            res = bench.run()
        finally:
            if a.json:
                Path(a.json).write_text(json.dumps(bench.results, indent=2, default=str) + "\n")
        if res.get("errors"):
            rc = EXIT_FAILED
            for e in res["errors"]:
                bl.log(f"ERROR: {e}")
        s = res["summary"]
        contended = s["contended_phases"]
        _out(f"noise: max_others_cores={s['max_others_cores']} contended_phases={','.join(contended) if contended else 'none'}")
        report(res)
    except KeyboardInterrupt:
        bl.log("interrupted: cleaning up")
        rc = EXIT_INTERRUPTED
    except (BenchError, TimeoutError) as exc:
        bl.log(f"FAILED: {exc}")
        rc = EXIT_FAILED
    except Exception:  # noqa: BLE001 - report, clean up, fail
        import traceback

        bl.log("FAILED with an unexpected error:\n" + traceback.format_exc())
        rc = EXIT_FAILED
    finally:
        signal.alarm(0)
        procs.kill_all()
        if broker is not None:
            broker.stop()
        mon.close()
        if a.keep_logs or rc not in (EXIT_OK, EXIT_INTERRUPTED):
            bl.log(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)

    def report(res: dict[str, Any]) -> None:
        if a.plot:
            from bench_plot import render_svg

            Path(a.plot).write_text(render_svg(res))
            bl.log(f"plot written to {a.plot}")
        _out(bench_line(res["summary"]))

    return run_main(a, "taskclf-bench-", lambda bootstrap, mon, procs, tmp: Bench(a, bootstrap, mon, procs, tmp), report)


if __name__ == "__main__":
    sys.exit(main())
