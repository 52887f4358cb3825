"""Command line: each sub-command parses its flags, calls one function and returns an exit code."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taskclf_daemon import __version__
from taskclf_daemon.errors import TaskclfDaemonError
from taskclf_daemon.pipeline.policy import FROM_POLICY


def _threshold(s: str) -> float | None:
    if s.lower() in ("none", "off", "null"):
        return None
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r} (use e.g. 0.55 or 'none')") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{v} is outside [0, 1]")
    return v


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def add_inference_flags(p: argparse.ArgumentParser, defaults_from_config: bool = False) -> None:
    p.add_argument("--model-dir", help="taskclf model bundle directory (models/<run_id>)")
    p.add_argument("--calibrator-store", help="taskclf CalibratorStore directory")
    p.add_argument("--policy", help="taskclf inference_policy.json (paths relative to its TASKCLF_HOME)")
    p.add_argument("--taxonomy", help="taskclf taxonomy YAML (maps core labels to your buckets)")
    p.add_argument("--smooth-window", type=_positive_int, default=None if defaults_from_config else 3, help="rolling-majority window (default 3, taskclf's)")
    p.add_argument("--reject-threshold", type=_threshold, default=FROM_POLICY, help="global reject threshold in [0,1] or 'none' (default: policy's, else 0.55)")


class _Progress:
    """One self-overwriting stderr line per stage (plain lines when stderr is not a terminal)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        final = done >= total
        if stage == self.stage and not final and now - self.last < (0.2 if self.tty else 2.0):
            return
        self.stage, self.last = stage, now
        pct = 100.0 * done / total if total else 100.0
        msg = f"{stage}: {done}/{total} ({pct:5.1f}%)"
        if self.tty:
            sys.stderr.write("\r" + msg + ("\n" if final else ""))
        else:
            sys.stderr.write(msg + "\n")
        sys.stderr.flush()


def _pipeline_from_flags(a: argparse.Namespace) -> Any:
    """The pipeline (and its description) the inference flags of :func:`add_inference_flags` name."""
    from taskclf_daemon.artifacts import build_pipeline

    return build_pipeline(
        model_dir=a.model_dir,
        calibrator_store=a.calibrator_store,
        policy=a.policy,
        taxonomy=a.taxonomy,
        smooth_window=a.smooth_window,
        reject_threshold=a.reject_threshold,
        model_backend=getattr(a, "model_backend", "lightgbm"),
    )


def cmd_replay(a: argparse.Namespace) -> int:
    from taskclf_daemon.offline.replay import open_input, open_output, replay

    pipe, desc = _pipeline_from_flags(a)
    print("replay: settings " + json.dumps(desc, sort_keys=True), file=sys.stderr)

    def on_bad(lineno: int, exc: Any) -> None:
        print(f"{a.input}:{lineno}: {exc.reason}: {exc.detail}", file=sys.stderr)

    src = open_input(a.input)
    dst = open_output(a.output)
    try:
        summary = replay(pipe, src, dst, batch_size=a.batch_size, on_bad=on_bad)
    finally:
        if a.input != "-":
            src.close()
        if a.output != "-":
            dst.close()
    print(summary.line(), file=sys.stderr)
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from taskclf_daemon.offline import synthetic, train

    if a.synthetic:
        rows = synthetic.generate_labelled(seed=a.seed, n_users=a.users, days=a.days, schema_version=a.schema, start=a.start)
    else:
        rows = train.load_rows(a.data)
    bundle = train.train_bundle(rows, Path(a.out), schema_version=a.schema, seed=a.seed, num_boost_round=a.rounds, data_provenance="synthetic" if a.synthetic else "real", progress=_Progress())
    metrics = json.loads((bundle / "metrics.json").read_text())
    print(f"train: wrote {bundle} (macro_f1={metrics['macro_f1']}, weighted_f1={metrics['weighted_f1']}, rows={len(rows)})", file=sys.stderr)
    print(str(bundle))
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    from taskclf_daemon.offline import calibrate, synthetic, train

    if a.synthetic:
        # the same users as `train --synthetic --seed N`, on later days: held-out calibration data
        rows = synthetic.generate_labelled(seed=a.seed, n_users=a.users, days=a.days, schema_version=_bundle_schema(a.model_dir), start=a.start)
    else:
        rows = train.load_rows(a.data)
    store = calibrate.calibrate_store(Path(a.model_dir), rows, method=a.method, out_dir=Path(a.out), progress=_Progress())
    print(f"calibrate: wrote {a.out} (method={store.method}, per-user calibrators={len(store.user_calibrators)})", file=sys.stderr)
    return 0


def cmd_reference(a: argparse.Namespace) -> int:
    from taskclf_daemon.offline.reference import profile_from_windows
    from taskclf_daemon.offline.replay import open_input
    from taskclf_daemon.pipeline.drift import PROFILE_FILE, write_profile

    pipe, desc = _pipeline_from_flags(a)
    print("reference: settings " + json.dumps({k: desc.get(k) for k in ("model_bundle_id", "calibrator_store", "calibration_method", "reject_threshold")}, sort_keys=True), file=sys.stderr)

    def on_bad(lineno: int, exc: Any) -> None:
        print(f"{a.windows}:{lineno}: {exc.reason}: {exc.detail}", file=sys.stderr)

    src = open_input(a.windows)
    try:
        prof, summary = profile_from_windows(pipe, src, source=f"reference: {a.windows}", on_bad=on_bad)
    finally:
        if a.windows != "-":
            src.close()
    out = write_profile(prof, Path(a.out) if a.out else pipe.bundle.path / PROFILE_FILE)
    print(summary.line().replace("replay:", "reference:", 1), file=sys.stderr)
    print(f"reference: wrote {out} ({prof.windows} windows, reject rate {prof.reject_rate:.4f}, mean entropy {prof.mean_entropy:.4f})", file=sys.stderr)
    print(str(out))
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from taskclf_daemon.artifacts import build_pipeline
    from taskclf_daemon.codec import RowValidator
    from taskclf_daemon.offline import evaluate as ev
    from taskclf_daemon.pipeline.evidence import LearnConfig
    from taskclf_daemon.pipeline.personalize import GateConfig

    pipe, desc = build_pipeline(model_dir=a.model_dir, calibrator_store=a.calibrator_store, policy=a.policy, taxonomy=a.taxonomy, smooth_window=a.smooth_window, reject_threshold=a.reject_threshold)
    print("evaluate: settings " + json.dumps(desc, sort_keys=True), file=sys.stderr)
    if a.input:
        win_lines, span_lines = ev.split_labelled(ev.read_lines(a.input))
    else:
        win_lines, span_lines = ev.read_lines(a.windows), ev.read_lines(a.labels)

    def on_bad(what: str, lineno: int, exc: Any) -> None:
        print(f"evaluate: {what} line {lineno}: {exc.reason}: {exc.detail}", file=sys.stderr)

    windows, spans = ev.load_inputs(win_lines, span_lines, RowValidator(pipe.bundle.schema), on_bad)
    learn = LearnConfig(refit_every=a.refit_every, label_wait_s=a.label_wait)
    gate = GateConfig(nll_margin=a.nll_margin)
    result = ev.evaluate(pipe, windows, spans, learn=learn, gate=gate, label_delay_s=a.label_delay, progress=_Progress())
    files, skipped = ev.write_outputs(result, Path(a.out), plots=not a.no_plots)
    if skipped:
        print(f"evaluate: {skipped}", file=sys.stderr)
    ov = result.report["overall"]
    later = ov.get("later")
    if later:
        g, p = later["global"], later["personal"]
        print(f"evaluate: later windows n={g['n']}: macro-F1 global {g['macro_f1']:.4f} -> personal {p['macro_f1']:.4f}, NLL {g['nll']:.4f} -> {p['nll']:.4f}; users on a personal model {ov['users_adopted']}/{ov['users']}", file=sys.stderr)
    print(f"evaluate: wrote {', '.join(str(f) for f in files)}", file=sys.stderr)
    return 0


def cmd_export_store(a: argparse.Namespace) -> int:
    from taskclf_daemon.offline.export_store import export_store
    from taskclf_daemon.pipeline.calibration import CalibratorStore
    from taskclf_daemon.pipeline.model import ModelBundle

    models = json.loads(Path(a.models).read_text(encoding="utf-8"))
    source = CalibratorStore.load(a.calibrator_store) if a.calibrator_store else None
    bundle = ModelBundle.load(a.model_dir) if a.model_dir else None
    res = export_store(models, Path(a.out), source_store=source, model_bundle_id=bundle.bundle_id if bundle else None, model_schema_hash=bundle.schema_hash if bundle else None)
    for uid, why in res.skipped.items():
        print(f"export-store: skipped {uid}: {why}", file=sys.stderr)
    print(f"export-store: wrote {a.out} ({len(res.exported)} per-user calibrators, {len(res.skipped)} heads skipped)", file=sys.stderr)
    return 0


def cmd_personas(a: argparse.Namespace) -> int:
    import orjson

    from taskclf_daemon.offline import personas

    windows, spans, kinds = personas.generate(seed=a.seed, n_users=a.users, days=a.days, start=a.start)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "windows.jsonl").write_bytes(b"".join(orjson.dumps(w) + b"\n" for w in windows))
    (out / "labels.jsonl").write_bytes(b"".join(orjson.dumps(s) + b"\n" for s in spans))
    (out / "kinds.json").write_text(json.dumps(kinds, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"personas: wrote {len(windows)} windows and {len(spans)} label spans of {a.users} users to {out}", file=sys.stderr)
    return 0


RUN_FLAGS = (
    "bootstrap_servers", "input_topic", "output_topic", "dlq_topic", "group_id", "group_instance_id",
    "model_dir", "calibrator_store", "policy", "taxonomy", "smooth_window", "reject_threshold", "http_port", "model_backend",
    "log_level", "log_format",
)


def run_settings(a: argparse.Namespace) -> Any:
    from taskclf_daemon.config import load_settings

    flags = {k: getattr(a, k, None) for k in RUN_FLAGS}
    return load_settings(a.config, flags=flags)


def build_daemon(settings: Any, metrics: Any = None) -> Any:
    """Load artifacts per the settings and construct the daemon (not started)."""
    from taskclf_daemon.artifacts import pipeline_from_settings
    from taskclf_daemon.daemon import Daemon
    from taskclf_daemon.reload import signature, watched_file

    # the watched file as it was before anything was loaded: should it change while the daemon
    # process or its workers load, the first check reloads and every shard converges
    before = signature(watched_file(settings))
    pipe, desc = pipeline_from_settings(settings)
    daemon = Daemon(settings, pipe, desc, metrics)
    daemon.reloader.loaded = before
    return daemon


def cmd_run(a: argparse.Namespace) -> int:
    import asyncio

    from taskclf_daemon.daemon import serve
    from taskclf_daemon.log import configure_logging

    settings = run_settings(a)
    configure_logging(settings.log_level, settings.log_format)
    daemon = build_daemon(settings)
    return asyncio.run(serve(daemon))


def cmd_produce(a: argparse.Namespace) -> int:
    import asyncio

    from taskclf_daemon.config import load_settings
    from taskclf_daemon.offline import produce as prod

    settings = load_settings(a.config, flags={"bootstrap_servers": a.bootstrap_servers}, require_model=False)
    if a.synthetic:
        from taskclf_daemon.offline import synthetic

        records = prod.records_from_rows(synthetic.iter_stream(seed=a.seed, n_users=a.users, minutes=a.minutes, schema_version=a.schema))
        src = None
    else:
        src = open(a.input, "rb") if a.input != "-" else sys.stdin.buffer
        if a.input.endswith(".gz"):
            import gzip

            src = gzip.open(a.input, "rb")
        records = prod.records_from_file(src)

    def progress(n: int, elapsed: float) -> None:
        print(f"produce: {n} records in {elapsed:.1f}s ({n / elapsed if elapsed else 0:.0f}/s)", file=sys.stderr)

    try:
        n = asyncio.run(prod.produce(settings, a.topic, records, rate=a.rate, progress=progress, create_partitions=a.partitions))
    finally:
        if src is not None and src is not sys.stdin.buffer:
            src.close()
    print(f"produce: done, {n} records acknowledged on {a.topic}", file=sys.stderr)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    import asyncio

    from taskclf_daemon.demo import run_demo

    res = asyncio.run(run_demo(workdir=Path(a.workdir), seconds=a.seconds, users=a.users, rate=a.rate, http_port=a.http_port))
    ok = res["exit_code"] == 0 and res["emitted"] == res["produced"] > 0
    return 0 if ok else 1


def _bundle_schema(model_dir: str) -> str:
    from taskclf_daemon.pipeline.model import ModelBundle

    return ModelBundle.load(model_dir).schema.version


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="taskclf-daemon", description="Streaming online inference for taskclf task-type models.")
    ap.add_argument("--version", action="version", version=f"taskclf-daemon {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("replay", help="run the daemon's pipeline over a JSONL file of FeatureRows")
    add_inference_flags(p)
    p.add_argument("--input", required=True, help="JSONL input ('-' = stdin; .gz accepted)")
    p.add_argument("--output", required=True, help="JSONL output ('-' = stdout; .gz written compressed)")
    p.add_argument("--batch-size", type=_positive_int, default=512, help="micro-batch size (does not change results)")
    p.add_argument("--model-backend", choices=["lightgbm", "lleaves", "auto"], default="lightgbm",
                   help="lightgbm (default here), lleaves (compiled trees; compiles and caches on a miss) or auto; all give bit-identical outputs")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("run", help="run the streaming daemon (Kafka in, predictions out)")
    p.add_argument("--config", help="TOML config file (see config/taskclf-daemon.toml)")
    p.add_argument("--bootstrap-servers")
    p.add_argument("--input-topic")
    p.add_argument("--output-topic")
    p.add_argument("--dlq-topic")
    p.add_argument("--group-id")
    p.add_argument("--group-instance-id", help="static membership id")
    p.add_argument("--model-dir")
    p.add_argument("--calibrator-store")
    p.add_argument("--policy")
    p.add_argument("--taxonomy")
    p.add_argument("--smooth-window", type=_positive_int)
    p.add_argument("--reject-threshold", help="number in [0,1], 'none' or 'policy'")
    p.add_argument("--http-port", type=int)
    p.add_argument("--model-backend", choices=["lightgbm", "lleaves", "auto"], help="auto (default: compiled when ready, LightGBM until then), lightgbm or lleaves; all give bit-identical outputs")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["json", "console"])
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("produce", help="send FeatureRows (file or synthetic) to a topic, keyed by user_id")
    p.add_argument("--config", help="TOML config (for Kafka connection/security keys)")
    p.add_argument("--bootstrap-servers")
    p.add_argument("--topic", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="JSONL(.gz) file of FeatureRows ('-' = stdin)")
    src.add_argument("--synthetic", action="store_true", help="synthetic multi-user traffic")
    p.add_argument("--users", type=_positive_int, default=50, help="synthetic users")
    p.add_argument("--minutes", type=_positive_int, default=60, help="synthetic minutes (one window per user per minute)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--schema", choices=["v1", "v2", "v3"], default="v1")
    p.add_argument("--rate", type=float, default=0.0, help="records per second (0 = as fast as possible)")
    p.add_argument("--partitions", type=_positive_int, default=None, help="create the topic with N partitions if missing")
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("demo", help="embedded broker + demo model + synthetic traffic + the daemon, with live progress")
    p.add_argument("--workdir", default="var/demo", help="where the demo model and logs live (reused across runs)")
    p.add_argument("--seconds", type=float, default=30.0, help="how long to produce traffic")
    p.add_argument("--users", type=_positive_int, default=200)
    p.add_argument("--rate", type=float, default=1000.0, help="windows per second")
    p.add_argument("--http-port", type=int, default=8080, help="/metrics /healthz /readyz port (0 = off)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a taskclf model bundle (LightGBM) from labelled FeatureRows")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="labelled FeatureRows: JSONL(.gz) or Parquet with a 'label' column")
    src.add_argument("--synthetic", action="store_true", help="use the built-in synthetic persona generator")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--users", type=_positive_int, default=8, help="synthetic users (with --synthetic)")
    p.add_argument("--days", type=_positive_int, default=6, help="synthetic days (with --synthetic)")
    p.add_argument("--schema", choices=["v1", "v2", "v3"], default="v1", help="feature schema version")
    p.add_argument("--start", default="2026-03-02", help="first UTC day of synthetic data")
    p.add_argument("--rounds", type=_positive_int, default=100, help="boosting rounds (taskclf: 100)")
    p.add_argument("--out", required=True, help="models directory; the bundle goes to OUT/<run_id>/")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("reference", help="write a bundle's drift reference profile (drift_reference.json) from a file of windows")
    add_inference_flags(p)
    p.add_argument("--windows", required=True, help="JSONL(.gz) of FeatureRows representative of normal traffic ('-' = stdin)")
    p.add_argument("--out", help="where to write the profile (default: <bundle>/drift_reference.json, which the daemon loads)")
    p.set_defaults(func=cmd_reference)

    p = sub.add_parser("calibrate", help="fit a per-user CalibratorStore for a bundle")
    p.add_argument("--model-dir", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="labelled FeatureRows (JSONL(.gz) or Parquet) held out from training")
    src.add_argument("--synthetic", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--users", type=_positive_int, default=8)
    p.add_argument("--days", type=_positive_int, default=6)
    p.add_argument("--start", default="2026-03-16", help="first UTC day of synthetic data (after the training days: held out)")
    p.add_argument("--method", choices=["temperature", "isotonic"], default="temperature")
    p.add_argument("--out", required=True, help="store directory to write")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("evaluate", help="replay the learning loop over labelled windows: global vs personal on later windows")
    add_inference_flags(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="one labelled file: FeatureRows with a 'label' column (JSONL(.gz))")
    src.add_argument("--windows", help="FeatureRows JSONL(.gz) (with --labels)")
    p.add_argument("--labels", help="taskclf LabelSpan JSONL(.gz) (with --windows)")
    p.add_argument("--out", required=True, help="directory for report.json, report.md, models.json, decisions.jsonl and the PNGs")
    p.add_argument("--refit-every", type=_positive_int, default=200, help="refit after this many new labelled windows (default 200)")
    p.add_argument("--label-delay", type=float, default=600.0, help="a span is delivered this many seconds (event time) after its end (default 600)")
    p.add_argument("--label-wait", type=float, default=3600.0, help="how long a window waits for its label (event time, default 3600)")
    p.add_argument("--nll-margin", type=float, default=0.01, help="held-out NLL a candidate must gain (nats, default 0.01)")
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG charts")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export-store", help="write learned per-user temperature/isotonic models as a taskclf CalibratorStore")
    p.add_argument("--models", required=True, help="models.json written by evaluate")
    p.add_argument("--model-dir", help="bind the store to this bundle (model_bundle_id, model_schema_hash)")
    p.add_argument("--calibrator-store", help="take the global calibrator (and binding) from this store")
    p.add_argument("--out", required=True, help="store directory to write")
    p.set_defaults(func=cmd_export_store)

    p = sub.add_parser("personas", help="synthetic labelling personas (normal, swap, noise): windows.jsonl + labels.jsonl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--users", type=_positive_int, default=6)
    p.add_argument("--days", type=_positive_int, default=8)
    p.add_argument("--start", default="2026-03-09", help="first UTC day (after `train --synthetic`'s days: held out)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_personas)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        return int(a.func(a) or 0)
    except TaskclfDaemonError as exc:
        print(f"taskclf-daemon {a.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
