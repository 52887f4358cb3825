#!/usr/bin/env python3
"""Draw a ``bench_daemon.py`` or ``bench_peers.py`` ``--json`` result as one SVG (no plotting library needed).

    python scripts/bench_plot.py bench.json -o bench.svg

Left: throughput draining the backlog (pass-through, daemon, naive daemon), with the two ratios.
Right: end-to-end latency percentiles (p50/p90/p99) of daemon and pass-through at the same
offered rate. Every bar carries its number; the title carries the run's noise verdict.
A ``bench_peers.py`` result is one panel: the median drain throughput of each system.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

W, H = 900, 420
PANEL_TOP, PANEL_BOTTOM = 70, 350
COLORS = {"passthrough": "#8c8c8c", "daemon": "#1f77b4", "naive": "#d62728"}


def _bar(x: float, y: float, w: float, h: float, color: str, label: str) -> str:
    return (f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{color}"/>'
            f'<text x="{x + w / 2:.1f}" y="{y - 6:.1f}" text-anchor="middle" font-size="12">{escape(label)}</text>')


def _panel(x0: float, width: float, title: str, subtitle: str, groups: list[tuple[str, list[tuple[str, float, str]]]], unit: str) -> list[str]:
    """Bars of ``groups`` [(group label, [(series, value, color)])] scaled to the panel's max."""
    out = [f'<text x="{x0 + width / 2:.1f}" y="{PANEL_TOP - 38}" text-anchor="middle" font-size="14" font-weight="bold">{escape(title)}</text>',
           f'<text x="{x0 + width / 2:.1f}" y="{PANEL_TOP - 22}" text-anchor="middle" font-size="12">{escape(subtitle)}</text>',
           f'<line x1="{x0}" y1="{PANEL_BOTTOM}" x2="{x0 + width}" y2="{PANEL_BOTTOM}" stroke="black"/>']
    top = max((v for _, bars in groups for _, v, _ in bars), default=0.0) or 1.0
    slot = width / max(1, len(groups))
    for gi, (glabel, bars) in enumerate(groups):
        bw = slot * 0.8 / max(1, len(bars))
        for bi, (_series, v, color) in enumerate(bars):
            h = (PANEL_BOTTOM - PANEL_TOP) * v / top
            x = x0 + gi * slot + slot * 0.1 + bi * bw
            out.append(_bar(x, PANEL_BOTTOM - h, bw * 0.92, h, color, f"{v:,.0f}{unit}"))
        out.append(f'<text x="{x0 + gi * slot + slot / 2:.1f}" y="{PANEL_BOTTOM + 18}" text-anchor="middle" font-size="12">{escape(glabel)}</text>')
    return out


def _pairs(s: dict[str, Any]) -> str:
    """`` (median of N rounds)`` when io_ratio is the median of paired rounds' ratios."""
    n = len(s.get("io_pair_ratios") or [])
    return f" (median of {n} rounds)" if n > 1 else ""


def render_svg(res: dict[str, Any]) -> str:
    """The SVG text for one benchmark result (``bench_daemon.py --json``)."""
    s = res["summary"]
    lat = res["latency"]
    thr = [("pass-through", [("passthrough", float(s["passthrough_eps"]), COLORS["passthrough"])]),
           ("daemon", [("daemon", float(s["daemon_eps"]), COLORS["daemon"])]),
           ("naive daemon", [("naive", float(s["naive_eps"]), COLORS["naive"])])]
    pct = [(p, [("daemon", float(lat["daemon"][p]), COLORS["daemon"]), ("passthrough", float(lat["passthrough"][p]), COLORS["passthrough"])])
           for p in ("p50", "p90", "p99")]
    contended = s.get("contended_phases") or []
    noise = "quiet machine" if not contended else f"contended: {', '.join(contended)}"
    cfg = res.get("config", {})
    title = (f"taskclf-daemon benchmark: {res.get('workload', {}).get('records', '?')} windows, {res.get('workload', {}).get('users', '?')} users, "
             f"{cfg.get('partitions', '?')} partitions ({noise})")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>']
    parts += _panel(40, 380, "drain throughput, windows/s", f"io_ratio {s['io_ratio']}{_pairs(s)}, naive_ratio {s['naive_ratio']}", thr, "")
    parts += _panel(480, 380, "end-to-end latency, ms", f"at {lat.get('offered_eps', '?')} windows/s offered", pct, "")
    legend_y = H - 30
    for i, (name, color) in enumerate((("daemon", COLORS["daemon"]), ("pass-through", COLORS["passthrough"]), ("naive daemon", COLORS["naive"]))):
        x = 40 + i * 160
        parts.append(f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{color}"/>'
                     f'<text x="{x + 18}" y="{legend_y}" font-size="12">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


#: bar colour of each system in ``bench_peers.py``'s plot
PEER_COLORS = {"daemon": COLORS["daemon"], "passthrough": COLORS["passthrough"], "faststream": "#2ca02c", "faust": "#9467bd", "quix": "#ff7f0e"}


def render_peers_svg(res: dict[str, Any]) -> str:
    """The SVG text for one ``bench_peers.py --json`` result: the median drain throughput of
    every system that ran, the daemon against the fastest peer in the subtitle."""
    s = res["summary"]
    order = ("passthrough", "daemon", "faststream", "faust", "quix")
    groups = [(name, [(name, float(s[f"{name}_eps"]), PEER_COLORS[name])]) for name in order if s.get(f"{name}_eps") is not None]
    contended = s.get("contended_phases") or []
    runs = res.get("runs", {})
    noise = "quiet machine" if not contended else f"contended: {len(contended)} of {sum(len(v) for v in runs.values())} drains"
    w = res.get("workload", {})
    rounds = max((len(v) for v in runs.values()), default=0)
    title = f"taskclf-daemon vs peers: {w.get('records', '?')} windows, {w.get('users', '?')} users, median of {rounds} interleaved rounds ({noise})"
    ratio = s.get("best_peer_ratio")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H - 40}" font-family="sans-serif">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>']
    parts += _panel(60, W - 120, "drain throughput, windows/s (every system runs the daemon's pipeline, outputs checked equal)",
                    f"daemon / fastest peer = {ratio if ratio is not None else 'na'}", groups, "")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", help="a bench_daemon.py or bench_peers.py --json result")
    ap.add_argument("-o", "--output", required=True, help="SVG file to write")
    a = ap.parse_args(argv)
    try:
        res = json.loads(Path(a.json).read_text())
        svg = render_peers_svg(res) if "runs" in res else render_svg(res)
    except (OSError, ValueError, KeyError) as exc:
        print(f"bench_plot: cannot plot {a.json}: {type(exc).__name__}: {exc} (pass the file written by bench_daemon.py or bench_peers.py --json)", file=sys.stderr)
        return 2
    Path(a.output).write_text(svg)
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
