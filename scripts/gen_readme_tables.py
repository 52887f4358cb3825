#!/usr/bin/env python3
"""Regenerate README.md's configuration and metrics tables from the code (run after changing either)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "daemon"))

from taskclf_daemon.config import ENV_PREFIX, KEYS  # noqa: E402
from taskclf_daemon.metrics import Metrics  # noqa: E402


def config_table() -> str:
    rows = ["| key | section | default | env | meaning |", "|---|---|---|---|---|"]
    for k, s in KEYS.items():
        d = "—" if s.default is None else (str(s.default).lower() if isinstance(s.default, bool) else s.default)
        rows.append(f"| `{k}` | {s.section} | `{d}` | `{ENV_PREFIX}{k.upper()}` | {s.help} |")
    return "\n".join(rows)


def metrics_table() -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    from prometheus_client.metrics import MetricWrapperBase

    # label names from the metric definitions (a labelled metric has no samples until first used)
    for c in vars(Metrics()).values():
        if not isinstance(c, MetricWrapperBase):
            continue
        name = c._name + ("_total" if c._type == "counter" else "")
        rows.append(f"| `{name}` | {c._type} | {', '.join(c._labelnames) or '—'} | {c._documentation} |")
    return "\n".join(rows)


def main() -> int:
    p = REPO / "README.md"
    text = p.read_text()
    for name, body in (("config-table", config_table()), ("metrics-table", metrics_table())):
        text, n = re.subn(rf"(<!-- {name} -->\n).*?(\n<!-- /{name} -->)", lambda m, body=body: m.group(1) + body + m.group(2), text, flags=re.S)
        if n != 1:
            raise SystemExit(f"README.md has no <!-- {name} --> ... <!-- /{name} --> block")
    p.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
