"""PNG charts of an ``evaluate`` report (optional: ``pip install 'taskclf-daemon[report]'``).

* ``reliability.png``: reliability diagrams of the later windows, global vs personal (accuracy
  per confidence bin against the diagonal, bin counts as bars);
* ``gain.png``: per-user macro-F1 gain of the served (personal) model over the global one on
  the user's later windows, coloured by the user's final model kind.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def matplotlib_missing() -> str | None:
    """None when matplotlib can be imported, else the message to show."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "plots skipped: matplotlib is not installed (pip install 'taskclf-daemon[report]')"
    return None


_COLOURS = {"global": "#9e9e9e", "temperature": "#1f77b4", "isotonic": "#ff7f0e", "head": "#2ca02c"}


def write_plots(out_dir: Path, report: dict[str, Any], reliability: dict[str, list[tuple[int, float, float]]]) -> list[Path]:
    """Write the PNGs into ``out_dir``; returns their paths (none without later windows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    if reliability:
        fig, axes = plt.subplots(1, len(reliability), figsize=(5 * len(reliability), 4.6), squeeze=False)
        for ax, (name, bins) in zip(axes[0], sorted(reliability.items())):
            k = len(bins)
            centers = [(b + 0.5) / k for b in range(k)]
            accs = [acc if n else math.nan for n, _c, acc in bins]
            total = sum(n for n, _c, _a in bins) or 1
            ax.bar(centers, [n / total for n, _c, _a in bins], width=1.0 / k, color="#dddddd", label="share of windows")
            ax.plot([0, 1], [0, 1], "--", color="#555555", linewidth=1, label="perfect calibration")
            ax.plot(centers, accs, "o-", color=_COLOURS["global" if name == "global" else "head"], label="accuracy")
            sc = report["overall"]["later"][name]
            ax.set_title(f"{name}: ECE {sc['ece']:.3f}, NLL {sc['nll']:.3f}, macro-F1 {sc['macro_f1']:.3f}", fontsize=9)
            ax.set_xlabel("confidence (top-class probability)")
            ax.set_ylabel("accuracy")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.legend(fontsize=7, loc="upper left")
        fig.suptitle("Reliability on later windows (all users pooled)")
        written.append(_save(plt, fig, out_dir / "reliability.png"))
    users = [(uid, u) for uid, u in report["users"].items() if u["later"]]
    if users:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(users) + 2), 4.2))
        names = [uid[:8] for uid, _ in users]
        gains = [u["later"]["macro_f1_gain"] for _, u in users]
        kinds = [u["final_model"]["kind"] if u["final_model"] else "global" for _, u in users]
        ax.bar(range(len(users)), gains, color=[_COLOURS.get(k, "#000000") for k in kinds])
        ax.axhline(0.0, color="#333333", linewidth=0.8)
        ax.axhline(-0.02, color="#d62728", linewidth=0.8, linestyle=":", label="-0.02 tolerance")
        ax.set_xticks(range(len(users)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("macro-F1 gain over global (later windows)")
        for kind, colour in _COLOURS.items():
            ax.bar([0], [0], color=colour, label=f"final: {kind}")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        ax.set_title("Per-user gain of the learning loop")
        written.append(_save(plt, fig, out_dir / "gain.png"))
    return written


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
