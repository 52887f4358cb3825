"""README's configuration and metrics tables are what scripts/gen_readme_tables.py makes from
the code (labels from the metric definitions, not from samples that may not exist yet)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _gen():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_readme_tables", REPO / "scripts" / "gen_readme_tables.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_tables_are_generated_from_the_code() -> None:
    gen = _gen()
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for name, body in (("config-table", gen.config_table()), ("metrics-table", gen.metrics_table())):
        m = re.search(rf"<!-- {name} -->\n(.*?)\n<!-- /{name} -->", text, flags=re.S)
        assert m, name
        assert m.group(1) == body, f"README.md {name} drifted: run python scripts/gen_readme_tables.py"
    assert "| `taskclf_records_processed_total` | counter | outcome |" in text
    assert "| `taskclf_state_evictions_total` | counter | reason |" in text
