"""Feature schema registries, hashes, model input layout and label order (spec 1.2, 1.3, 2.1; items 1, 3, 8)."""

from __future__ import annotations

import hashlib
import json

import lightgbm as lgb
import pytest

from helpers_rows import golden_dir
from taskclf_daemon import labels
from taskclf_daemon.labels import LABEL_INDEX, LABELS, MIXED_UNKNOWN, N_LABELS
from taskclf_daemon.schema import OVERLAY_COLUMNS, SCHEMAS, get_schema, schema_hash

# spec 1.3 table, indices 0..37 (shared by all versions); v1 appends user_id at 38
MODEL_COLUMNS_0_37 = [
    "app_id", "app_category", "is_browser", "is_editor", "is_terminal",
    "app_switch_count_last_5m", "app_foreground_time_ratio", "app_change_count",
    "app_dwell_time_seconds", "app_entropy_5m", "app_entropy_15m", "top2_app_concentration_15m",
    "idle_return_indicator", "keys_per_min", "backspace_ratio", "shortcut_rate", "clicks_per_min",
    "scroll_events_per_min", "mouse_distance", "active_seconds_keyboard", "active_seconds_mouse",
    "active_seconds_any", "max_idle_run_seconds", "event_density", "domain_category",
    "window_title_bucket", "title_repeat_count_session", "keys_per_min_rolling_5",
    "keys_per_min_rolling_15", "mouse_distance_rolling_5", "mouse_distance_rolling_15",
    "keys_per_min_delta", "clicks_per_min_delta", "mouse_distance_delta",
    "app_switch_count_last_15m", "hour_of_day", "day_of_week", "session_length_so_far",
]  # fmt: skip

META = ["user_id", "device_id", "session_id", "bucket_start_ts", "bucket_end_ts", "schema_version", "schema_hash", "source_ids"]


# ---------------------------------------------------------------- item 1: hashes


def _reference_hash(registry) -> str:
    # independent restatement: compact JSON of [[name, typename], ...], sha256, first 12 hex chars
    payload = "[" + ",".join(f'["{n}","{t}"]' for n, t in registry) + "]"
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


@pytest.mark.parametrize(("version", "expected"), [("v1", "4077fe0dba70"), ("v2", "a15f4751a947"), ("v3", "7f29b4b8795e")])
def test_schema_hash_values(version: str, expected: str) -> None:
    s = SCHEMAS[version]
    assert s.hash == expected
    assert schema_hash(s.registry) == expected
    assert _reference_hash(s.registry) == expected


def test_schema_hash_algorithm_on_small_registry() -> None:
    reg = (("a", "str"), ("b_c", "float"))
    assert schema_hash(reg) == hashlib.sha256(b'[["a","str"],["b_c","float"]]').hexdigest()[:12]
    # order matters and type names matter
    assert schema_hash(reg) != schema_hash(tuple(reversed(reg)))
    assert schema_hash(reg) != schema_hash((("a", "str"), ("b_c", "int")))


def test_registry_sizes_and_relations() -> None:
    v1, v2, v3 = (SCHEMAS[v].registry for v in ("v1", "v2", "v3"))
    assert len(v1) == 47 and len(v2) == 46 and len(v3) == 308
    assert [n for n, _ in v1][:8] == META
    assert v2 == tuple(c for c in v1 if c[0] != "user_id")
    assert v3[:47] == v1
    assert {t for _, t in v1} == {"str", "datetime", "list", "bool", "int", "float"}
    extra = dict(v3[47:])
    assert len(extra) == 261
    assert extra["title_token_sketch_000"] == "float" and extra["title_char3_sketch_127"] == "float"
    assert [(n, t) for n, t in v3[-5:]] == [
        ("title_char_count", "int"),
        ("title_token_count", "int"),
        ("title_unique_token_ratio", "float"),
        ("title_digit_ratio", "float"),
        ("title_separator_count", "int"),
    ]


def test_get_schema() -> None:
    assert get_schema("v1") is SCHEMAS["v1"]
    with pytest.raises(KeyError, match="v9"):
        get_schema("v9")
    assert SCHEMAS["v1"].tag == "features_v1" and SCHEMAS["v3"].tag == "features_v3"


# ---------------------------------------------------------------- item 3: widths / categoricals


def test_model_input_widths() -> None:
    assert len(SCHEMAS["v1"].feature_columns) == 39
    assert len(SCHEMAS["v2"].feature_columns) == 38
    assert len(SCHEMAS["v3"].feature_columns) == 299


def test_model_column_order() -> None:
    v1 = SCHEMAS["v1"].feature_columns
    v2 = SCHEMAS["v2"].feature_columns
    v3 = SCHEMAS["v3"].feature_columns
    assert list(v1) == MODEL_COLUMNS_0_37 + ["user_id"]
    assert list(v2) == MODEL_COLUMNS_0_37
    assert list(v3[:38]) == MODEL_COLUMNS_0_37
    assert list(v3[38:166]) == [f"title_token_sketch_{i:03d}" for i in range(128)]
    assert list(v3[166:294]) == [f"title_char3_sketch_{i:03d}" for i in range(128)]
    assert list(v3[294:]) == ["title_char_count", "title_token_count", "title_unique_token_ratio", "title_digit_ratio", "title_separator_count"]
    for cols in (v1, v2, v3):
        assert "window_title_hash" not in cols and "session_id" not in cols and "bucket_start_ts" not in cols
        assert set(OVERLAY_COLUMNS) <= set(cols)


def test_categorical_positions() -> None:
    assert SCHEMAS["v1"].categorical_indices == (0, 1, 24, 38)
    assert SCHEMAS["v2"].categorical_indices == (0, 1, 24)
    assert SCHEMAS["v3"].categorical_indices == (0, 1, 24)
    assert SCHEMAS["v1"].categorical_columns == ("app_id", "app_category", "domain_category", "user_id")
    for v in ("v1", "v2", "v3"):
        cols = SCHEMAS[v].feature_columns
        # bools, hour_of_day, day_of_week, window_title_bucket are numeric, not categorical
        for num in ("is_browser", "is_editor", "is_terminal", "hour_of_day", "day_of_week", "window_title_bucket"):
            assert cols.index(num) not in SCHEMAS[v].categorical_indices


def test_golden_model_feature_names_match_v1_columns() -> None:
    g = golden_dir()
    booster = lgb.Booster(model_file=str(g / "models" / "2026-04-06_000000_run-0001" / "model.txt"))
    assert tuple(booster.feature_name()) == SCHEMAS["v1"].feature_columns


# ---------------------------------------------------------------- item 8: label order


def test_label_order_is_alphabetical() -> None:
    assert list(LABELS) == ["BreakIdle", "Build", "Communicate", "Debug", "Meet", "ReadResearch", "Review", "Write"]
    assert list(LABELS) == sorted(LABELS)
    assert N_LABELS == 8
    assert LABEL_INDEX == {name: i for i, name in enumerate(LABELS)}
    assert MIXED_UNKNOWN == "Mixed/Unknown" and MIXED_UNKNOWN not in LABELS
    assert labels.REJECT_ID == 8
    assert labels.DEFAULT_REJECT_THRESHOLD == 0.55 and labels.DEFAULT_SMOOTH_WINDOW == 3


def test_label_order_matches_golden_bundle_and_records() -> None:
    g = golden_dir()
    meta = json.loads((g / "models" / "2026-04-06_000000_run-0001" / "metadata.json").read_text())
    assert meta["label_set"] == list(LABELS)
    seen: set[int] = set()
    with open(g / "expected_w3.jsonl", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            k = rec["core_label_id"]
            assert LABELS[k] == rec["core_label_name"]
            # probability column k is label k: the argmax column carries the core label
            probs = rec["core_probs"]
            assert probs.index(max(probs)) == k
            seen.add(k)
    assert seen == set(range(8))
