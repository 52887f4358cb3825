"""Shared test helpers: a canonical valid v1 ``FeatureRow`` and the golden fixture location.

``tests/`` is on ``sys.path`` for every test (pytest's ``pythonpath`` option in pyproject.toml)::

    from helpers_rows import make_row, make_window
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from golden_fixture import GOLDEN_DIR as GOLDEN_DIR, golden_home  # GOLDEN_DIR: re-exported
from taskclf_daemon.codec import RowValidator
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.schema import SCHEMAS

REPO_ROOT = Path(__file__).resolve().parents[1]
#: ``GOLDEN_DIR`` (re-exported): the plain copy of ``tests/fixtures/golden/taskclf-v1-temperature``
#: that ``golden_fixture`` builds; use :func:`golden_dir` to have it built and verified.
#: ``TOOLS_DIR / "compare.py"``: an alias of ``tests/golden_compare.py`` (``main(argv)``).
TOOLS_DIR = REPO_ROOT / "tests" / "tools"

V1_HASH = "4077fe0dba70"
V2_HASH = "a15f4751a947"
V3_HASH = "7f29b4b8795e"

_BASE_ROW: dict[str, Any] = {
    "user_id": "00000000-0000-4000-8000-000000000001",
    "device_id": None,
    "session_id": "35ab0a2ee734",
    "bucket_start_ts": "2026-04-06T10:00:00Z",
    "bucket_end_ts": "2026-04-06T10:01:00Z",
    "schema_version": "v1",
    "schema_hash": V1_HASH,
    "source_ids": ["aw-watcher-window", "aw-watcher-input"],
    "app_id": "com.sublimetext.4",
    "app_category": "editor",
    "window_title_hash": "56ebfc700079",
    "is_browser": False,
    "is_editor": True,
    "is_terminal": False,
    "app_switch_count_last_5m": 0,
    "app_foreground_time_ratio": 0.9808,
    "app_change_count": 0,
    "app_dwell_time_seconds": 58.85,
    "app_entropy_5m": 0.0,
    "app_entropy_15m": 0.0,
    "top2_app_concentration_15m": 1.0,
    "idle_return_indicator": False,
    "keys_per_min": 78.0,
    "backspace_ratio": None,
    "shortcut_rate": None,
    "clicks_per_min": 1.0,
    "scroll_events_per_min": 4.0,
    "mouse_distance": 873.0,
    "active_seconds_keyboard": 50.0,
    "active_seconds_mouse": 50.0,
    "active_seconds_any": 50.0,
    "max_idle_run_seconds": 0.0,
    "event_density": 0.2,
    "domain_category": "non_browser",
    "window_title_bucket": 121,
    "title_repeat_count_session": 1,
    "keys_per_min_rolling_5": None,
    "keys_per_min_rolling_15": None,
    "mouse_distance_rolling_5": None,
    "mouse_distance_rolling_15": None,
    "keys_per_min_delta": None,
    "clicks_per_min_delta": None,
    "mouse_distance_delta": None,
    "app_switch_count_last_15m": None,
    "hour_of_day": 10,
    "day_of_week": 0,
    "session_length_so_far": None,
}

_VALIDATORS = {v: RowValidator(s) for v, s in SCHEMAS.items()}


def make_row(**overrides: Any) -> dict[str, Any]:
    """A valid v1 ``FeatureRow`` JSON dict (a fresh copy); ``overrides`` replace/add keys.

    Pass ``_drop=("field", ...)`` to remove keys.
    """
    drop = overrides.pop("_drop", ())
    row = copy.deepcopy(_BASE_ROW)
    row.update(overrides)
    for k in drop:
        row.pop(k, None)
    return row


def validator(version: str = "v1") -> RowValidator:
    return _VALIDATORS[version]


def make_window(**overrides: Any) -> FeatureWindow:
    """``make_row(**overrides)`` validated by the v1 validator."""
    return _VALIDATORS["v1"].validate(make_row(**overrides))


def golden_dir() -> Path:
    """The golden fixture directory (plain files, checked against its manifest's sha256 sums)."""
    return golden_home()


def golden_pipeline_windows() -> tuple[Any, list[FeatureWindow]]:
    """The golden fixture's pipeline (its inference policy) and its input windows, each with a
    ``SourceRef("in", 0, line index)``."""
    from taskclf_daemon.artifacts import build_pipeline
    from taskclf_daemon.codec import decode_window
    from taskclf_daemon.records import SourceRef

    g = golden_dir()
    pipe, _ = build_pipeline(policy=g / "models" / "inference_policy.json")
    v = RowValidator(pipe.bundle.schema)
    ws = [decode_window(ln, v) for ln in (g / "inputs.jsonl").read_bytes().splitlines() if ln.strip()]
    for i, w in enumerate(ws):
        w.source = SourceRef("in", 0, i)
    return pipe, ws
