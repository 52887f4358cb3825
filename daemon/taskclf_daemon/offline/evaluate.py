"""``taskclf-daemon evaluate``: the learning loop replayed offline over a labelled file.

Windows go through the real :class:`~taskclf_daemon.pipeline.batch.InferencePipeline` with a
:class:`~taskclf_daemon.pipeline.learner.Learner` attached, in event-time order
(``bucket_start_ts``, then ``user_id``). Each span is delivered to its user once the stream's
event time reaches ``end_ts + label_delay_s`` (default 10 minutes: a user labels what they
just did), between micro-batches. Every window's global (store-calibrated) and served
(personal, when one is in force) probabilities are recorded; the truth is the projection of
*all* spans (strict containment).

Per user, the **later windows** are the labelled windows from the user's first refit decision
on (the first point the gate could act); global and served scores are compared there. A user
never eligible has no later windows. Overall = all users' later windows pooled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taskclf_daemon.codec import RowValidator, decode_window
from taskclf_daemon.errors import InvalidRecord
from taskclf_daemon.labels import LABELS
from taskclf_daemon.pipeline.batch import InferencePipeline
from taskclf_daemon.pipeline.evidence import LearnConfig
from taskclf_daemon.pipeline.labelspan import LabelSpan, decode_span, project
from taskclf_daemon.pipeline.learner import Learner
from taskclf_daemon.pipeline.personalize import Decision, GateConfig
from taskclf_daemon.pipeline.scoring import reliability, score
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.state import StateStore

Progress = Callable[[str, int, int], None]


class _RecordingLearner(Learner):
    """A Learner that also keeps each window's global and served probabilities."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rows: list[tuple[str, int, np.ndarray, np.ndarray, str]] = []

    def personalise(self, windows, raw, X, overlays, probs, scopes, states):
        glob = np.array(probs, dtype=np.float64, copy=True)
        out, sc, extras = super().personalise(windows, raw, X, overlays, probs, scopes, states)
        for i, w in enumerate(windows):
            st = states.users[w.user_id].learn
            version = "global" if st is None or st.model is None or sc[i] != "user" else st.model.version
            self.rows.append((w.user_id, w.ts_us, glob[i], np.array(out[i], dtype=np.float64), version))
        return out, sc, extras


@dataclass
class EvalResult:
    report: dict[str, Any]
    models: dict[str, dict[str, Any]]
    decisions: list[dict[str, Any]]
    reliability: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)


def load_inputs(window_lines: Sequence[bytes], span_lines: Sequence[bytes], validator: RowValidator, on_bad: Callable[[str, int, InvalidRecord], None]) -> tuple[list[FeatureWindow], list[LabelSpan]]:
    windows: list[FeatureWindow] = []
    spans: list[LabelSpan] = []
    for n, line in enumerate(window_lines, 1):
        if line.strip():
            try:
                windows.append(decode_window(line.rstrip(b"\r\n"), validator))
            except InvalidRecord as exc:
                on_bad("windows", n, exc)
    for n, line in enumerate(span_lines, 1):
        if line.strip():
            try:
                spans.append(decode_span(line.rstrip(b"\r\n")))
            except InvalidRecord as exc:
                on_bad("labels", n, exc)
    return windows, spans


def evaluate(
    pipeline: InferencePipeline,
    windows: Sequence[FeatureWindow],
    spans: Sequence[LabelSpan],
    *,
    learn: LearnConfig | None = None,
    gate: GateConfig | None = None,
    label_delay_s: float = 600.0,
    batch_size: int = 512,
    progress: Progress | None = None,
) -> EvalResult:
    """Replay the loop; see the module docstring."""
    report_progress = progress or (lambda s, d, t: None)
    learner = _RecordingLearner(learn, gate)
    pipeline.attach_learner(learner)
    try:
        states = pipeline.new_state_store()
        ordered = sorted(windows, key=lambda w: (w.ts_us, w.user_id))
        delay = int(label_delay_s * 1_000_000)
        due = sorted(spans, key=lambda s: (s.end_us + delay, s.user_id or "", s.start_us, s.end_us, s.label))
        decisions: list[tuple[str, Decision]] = []
        k = 0
        batch: list[FeatureWindow] = []
        known: set[str] = set()

        def flush() -> None:
            if batch:
                pipeline.process(batch, states)
                known.update(w.user_id for w in batch)
                batch.clear()
            decisions.extend(learner.take_decisions())

        for i, w in enumerate(ordered):
            if k < len(due) and due[k].end_us + delay <= w.ts_us:
                flush()
                while k < len(due) and due[k].end_us + delay <= w.ts_us:
                    _deliver(learner, states, due[k], known)
                    k += 1
            batch.append(w)
            if len(batch) >= batch_size:
                flush()
            if i % 2000 == 0:
                report_progress("evaluate", i, len(ordered))
        flush()
        report_progress("evaluate", len(ordered), len(ordered))
    finally:
        pipeline.attach_learner(None)
    return _report(learner, states, spans, decisions, len(windows), len(spans))


def _deliver(learner: Learner, states: StateStore, span: LabelSpan, known: set[str]) -> None:
    if span.user_id is not None:
        learner.add_span(span, states)
        return
    for uid in sorted(known):  # a span without user_id applies to every user (taskclf)
        learner.add_span(span, states, uid)


def _report(learner: _RecordingLearner, states: StateStore, spans: Sequence[LabelSpan], decisions: list[tuple[str, Decision]], n_windows: int, n_spans: int) -> EvalResult:
    by_user: dict[str, list[int]] = {}
    for j, r in enumerate(learner.rows):
        by_user.setdefault(r[0], []).append(j)
    first_decision: dict[str, int] = {}
    per_user_decisions: dict[str, list[Decision]] = {}
    for uid, d in decisions:
        first_decision.setdefault(uid, d.at_us)
        per_user_decisions.setdefault(uid, []).append(d)
    users: dict[str, Any] = {}
    pooled_g: list[np.ndarray] = []
    pooled_p: list[np.ndarray] = []
    pooled_y: list[int] = []
    for uid in sorted(by_user):
        rows = [learner.rows[j] for j in by_user[uid]]
        truth = project(spans, uid, [r[1] for r in rows])
        labelled = [(r, t) for r, t in zip(rows, truth) if t is not None]
        decs = per_user_decisions.get(uid, [])
        learn = states.users[uid].learn if uid in states.users else None
        entry: dict[str, Any] = {
            "windows": len(rows),
            "labelled_windows": len(labelled),
            "refits": len(decs),
            "adoptions": [{"at": _iso(d.at_us), "kind": d.adopted.kind, "version": d.adopted.version} for d in decs if d.adopted is not None],
            "final_model": None if learn is None or learn.model is None else {"kind": learn.model.kind, "version": learn.model.version},
            "last_decision": None if not decs else decs[-1].to_json(),
        }
        start = first_decision.get(uid)
        later = [(r, t) for r, t in labelled if start is not None and r[1] > start]
        if later and start is not None:
            y = np.asarray([t for _, t in later])
            G = np.stack([r[2] for r, _ in later])
            P = np.stack([r[3] for r, _ in later])
            gs, ps = score(G, y), score(P, y)
            entry["later"] = {"from": _iso(start), "global": gs.to_json(), "personal": ps.to_json(), "macro_f1_gain": round(ps.macro_f1 - gs.macro_f1, 6), "nll_gain": round(gs.nll - ps.nll, 6)}
            pooled_g.append(G)
            pooled_p.append(P)
            pooled_y.extend(y.tolist())
        else:
            entry["later"] = None
        users[uid] = entry
    overall: dict[str, Any] = {"users": len(users), "users_evaluated": sum(1 for u in users.values() if u["later"]), "users_adopted": sum(1 for u in users.values() if u["final_model"])}
    rel: dict[str, list[tuple[int, float, float]]] = {}
    if pooled_y:
        y = np.asarray(pooled_y)
        G, P = np.concatenate(pooled_g), np.concatenate(pooled_p)
        overall["later"] = {"global": score(G, y).to_json(), "personal": score(P, y).to_json()}
        rel = {"global": reliability(G, y), "personal": reliability(P, y)}
        gains = [u["later"]["macro_f1_gain"] for u in users.values() if u["later"] and u["final_model"]]
        overall["worst_adopted_macro_f1_gain"] = min(gains) if gains else None
    report = {"windows": n_windows, "spans": n_spans, "labels": list(LABELS), "overall": overall, "users": users}
    models = {uid: st.learn.model.to_json() for uid, st in sorted(states.users.items()) if st.learn is not None and st.learn.model is not None}
    return EvalResult(report, models, [{"user_id": u, **d.to_json()} for u, d in decisions], rel)


def _iso(us: int) -> str:
    from taskclf_daemon.timeutil import format_ts_us

    return format_ts_us(us)


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page (per user: global vs personal on later windows)."""
    lines = ["# Learning loop evaluation", "", f"{report['windows']} windows, {report['spans']} label spans.", ""]
    ov = report["overall"]
    lines.append(f"Users: {ov['users']}, evaluated (had a refit): {ov['users_evaluated']}, on a personal model at the end: {ov['users_adopted']}.")
    if ov.get("later"):
        g, p = ov["later"]["global"], ov["later"]["personal"]
        lines += ["", "## Overall (later windows, pooled)", "", "| | n | accuracy | macro-F1 | NLL | ECE |", "|---|---|---|---|---|---|"]
        for name, s in (("global", g), ("personal", p)):
            lines.append(f"| {name} | {s['n']} | {s['accuracy']:.4f} | {s['macro_f1']:.4f} | {s['nll']:.4f} | {s['ece']:.4f} |")
        if ov.get("worst_adopted_macro_f1_gain") is not None:
            lines.append(f"\nWorst macro-F1 gain among users on a personal model: {ov['worst_adopted_macro_f1_gain']:+.4f}.")
    lines += ["", "## Per user (later windows)", "", "| user | labelled | refits | final model | global F1 | personal F1 | F1 gain | global NLL | personal NLL |", "|---|---|---|---|---|---|---|---|---|"]
    for uid, u in report["users"].items():
        fm = u["final_model"]["version"] if u["final_model"] else "global"
        lat = u["later"]
        if lat:
            lines.append(f"| {uid} | {u['labelled_windows']} | {u['refits']} | {fm} | {lat['global']['macro_f1']:.4f} | {lat['personal']['macro_f1']:.4f} | {lat['macro_f1_gain']:+.4f} | {lat['global']['nll']:.4f} | {lat['personal']['nll']:.4f} |")
        else:
            lines.append(f"| {uid} | {u['labelled_windows']} | {u['refits']} | {fm} | - | - | - | - | - |")
    return "\n".join(lines) + "\n"


def read_lines(path: str | Path) -> list[bytes]:
    from taskclf_daemon.offline.replay import open_input

    src = open_input(str(path))
    try:
        return src.read().splitlines()
    finally:
        if str(path) != "-":
            src.close()


def split_labelled(lines: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
    """One labelled file (FeatureRows with a ``label`` column) -> (window lines, span lines):
    the spans are each user's maximal runs of consecutive windows with one label."""
    import orjson

    from taskclf_daemon.offline.personas import spans_from_labelled

    rows = [orjson.loads(ln) for ln in lines if ln.strip()]
    labelled = [r for r in rows if isinstance(r, dict) and r.get("label") is not None and "user_id" in r and "bucket_start_ts" in r]
    windows = [orjson.dumps({k: v for k, v in r.items() if k != "label"}) if isinstance(r, dict) else orjson.dumps(r) for r in rows]
    return windows, [orjson.dumps(s) for s in spans_from_labelled(labelled)]


def write_outputs(result: EvalResult, out_dir: str | Path, *, plots: bool = True) -> tuple[list[Path], str | None]:
    """report.json, report.md, models.json, decisions.jsonl and (optional) PNGs in ``out_dir``.
    Returns (files written, why plots were skipped or None)."""
    import json

    import orjson

    from taskclf_daemon.offline.report_plots import matplotlib_missing, write_plots

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    files = [d / "report.json", d / "report.md", d / "models.json", d / "decisions.jsonl"]
    files[0].write_text(json.dumps(result.report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    files[1].write_text(markdown(result.report), encoding="utf-8")
    files[2].write_bytes(orjson.dumps(result.models, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    files[3].write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in result.decisions))
    skipped = None
    if plots:
        skipped = matplotlib_missing()
        if skipped is None:
            files += write_plots(d, result.report, result.reliability)
    else:
        skipped = "plots skipped (--no-plots)"
    return files, skipped
