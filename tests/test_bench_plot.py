"""``scripts/bench_plot.py``: the benchmark result as an SVG with true-to-scale, labelled bars."""

from __future__ import annotations

import importlib.util
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_plot", REPO / "scripts" / "bench_plot.py")
assert _spec is not None and _spec.loader is not None
bench_plot = importlib.util.module_from_spec(_spec)
sys.modules["bench_plot"] = bench_plot
_spec.loader.exec_module(bench_plot)

RESULT = {
    "config": {"partitions": 4},
    "workload": {"records": 100000, "users": 1000},
    "summary": {"daemon_eps": 30000, "passthrough_eps": 75000, "naive_eps": 1500.0, "io_ratio": 0.4, "naive_ratio": 20.0, "contended_phases": []},
    "latency": {"offered_eps": 15000, "daemon": {"p50": 100.0, "p90": 250.0, "p99": 500.0}, "passthrough": {"p50": 20.0, "p90": 100.0, "p99": 250.0}},
}
SVG = "{http://www.w3.org/2000/svg}"


def _bars(root: ET.Element) -> list[tuple[float, float, str]]:
    """(x, height, label) of every bar, in document order."""
    # (the legend's swatches are the 12 px squares)
    rects = [r for r in root.iter(f"{SVG}rect") if r.get("fill") in bench_plot.COLORS.values() and r.get("width") != "12"]
    texts = {round(float(t.get("x")), 1): t.text for t in root.iter(f"{SVG}text") if t.get("x")}
    out = []
    for r in rects:
        x, w, h = float(r.get("x")), float(r.get("width")), float(r.get("height"))
        out.append((x, h, texts.get(round(x + w / 2, 1), "")))
    return out


def test_bars_are_to_scale_and_labelled(tmp_path: Path) -> None:
    root = ET.fromstring(bench_plot.render_svg(RESULT))
    bars = _bars(root)
    assert len(bars) == 3 + 6  # throughput: 3; latency: 3 percentiles x 2
    thr, lat = bars[:3], bars[3:]
    full = bench_plot.PANEL_BOTTOM - bench_plot.PANEL_TOP
    assert [round(h, 1) for _, h, _ in thr] == [round(full * v / 75000, 1) for v in (75000, 30000, 1500)]
    assert [label for _, _, label in thr] == ["75,000", "30,000", "1,500"]
    assert [round(h, 1) for _, h, _ in lat] == [round(full * v / 500, 1) for v in (100, 20, 250, 100, 500, 250)]
    text = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "io_ratio 0.4" in text and "naive_ratio 20.0" in text and "at 15000 windows/s offered" in text and "quiet machine" in text


def test_cli_writes_the_file_and_refuses_a_wrong_one(tmp_path: Path) -> None:
    import json

    src = tmp_path / "bench.json"
    src.write_text(json.dumps(RESULT))
    out = tmp_path / "bench.svg"
    assert bench_plot.main([str(src), "-o", str(out)]) == 0
    ET.parse(out)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert bench_plot.main([str(bad), "-o", str(tmp_path / "x.svg")]) == 2
