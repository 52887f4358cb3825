"""Feature schema registries v1/v2/v3, their hashes and the model input columns.

Restated from taskclf's ``core/schema.py`` and ``train/lgbm.py`` (spec 1.2, 1.3). The hash is
``sha256(json.dumps([[name, type_name], ...], separators=(",", ":")))[:12]``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

# Row registry of schema v1, in order: (name, python type name).
_V1: tuple[tuple[str, str], ...] = (
    ("user_id", "str"),
    ("device_id", "str"),
    ("session_id", "str"),
    ("bucket_start_ts", "datetime"),
    ("bucket_end_ts", "datetime"),
    ("schema_version", "str"),
    ("schema_hash", "str"),
    ("source_ids", "list"),
    ("app_id", "str"),
    ("app_category", "str"),
    ("window_title_hash", "str"),
    ("is_browser", "bool"),
    ("is_editor", "bool"),
    ("is_terminal", "bool"),
    ("app_switch_count_last_5m", "int"),
    ("app_foreground_time_ratio", "float"),
    ("app_change_count", "int"),
    ("app_dwell_time_seconds", "float"),
    ("app_entropy_5m", "float"),
    ("app_entropy_15m", "float"),
    ("top2_app_concentration_15m", "float"),
    ("idle_return_indicator", "bool"),
    ("keys_per_min", "float"),
    ("backspace_ratio", "float"),
    ("shortcut_rate", "float"),
    ("clicks_per_min", "float"),
    ("scroll_events_per_min", "float"),
    ("mouse_distance", "float"),
    ("active_seconds_keyboard", "float"),
    ("active_seconds_mouse", "float"),
    ("active_seconds_any", "float"),
    ("max_idle_run_seconds", "float"),
    ("event_density", "float"),
    ("domain_category", "str"),
    ("window_title_bucket", "int"),
    ("title_repeat_count_session", "int"),
    ("keys_per_min_rolling_5", "float"),
    ("keys_per_min_rolling_15", "float"),
    ("mouse_distance_rolling_5", "float"),
    ("mouse_distance_rolling_15", "float"),
    ("keys_per_min_delta", "float"),
    ("clicks_per_min_delta", "float"),
    ("mouse_distance_delta", "float"),
    ("app_switch_count_last_15m", "int"),
    ("hour_of_day", "int"),
    ("day_of_week", "int"),
    ("session_length_so_far", "float"),
)

TITLE_TOKEN_SKETCH = tuple(f"title_token_sketch_{i:03d}" for i in range(128))
TITLE_CHAR3_SKETCH = tuple(f"title_char3_sketch_{i:03d}" for i in range(128))
TITLE_SCALARS: tuple[tuple[str, str], ...] = (
    ("title_char_count", "int"),
    ("title_token_count", "int"),
    ("title_unique_token_ratio", "float"),
    ("title_digit_ratio", "float"),
    ("title_separator_count", "int"),
)
V3_ONLY: tuple[tuple[str, str], ...] = (
    tuple((n, "float") for n in TITLE_TOKEN_SKETCH)
    + tuple((n, "float") for n in TITLE_CHAR3_SKETCH)
    + TITLE_SCALARS
)

META_COLUMNS = frozenset(
    {
        "user_id",
        "device_id",
        "session_id",
        "bucket_start_ts",
        "bucket_end_ts",
        "schema_version",
        "schema_hash",
        "source_ids",
        "window_title_hash",
    }
)

#: the 9 history fields taskclf recomputes online (OnlineFeatureState.get_context)
OVERLAY_COLUMNS: tuple[str, ...] = (
    "app_switch_count_last_15m",
    "keys_per_min_rolling_5",
    "keys_per_min_rolling_15",
    "mouse_distance_rolling_5",
    "mouse_distance_rolling_15",
    "keys_per_min_delta",
    "clicks_per_min_delta",
    "mouse_distance_delta",
    "session_length_so_far",
)

CATEGORICAL_COLUMNS_V2 = ("app_id", "app_category", "domain_category")


def schema_hash(registry: tuple[tuple[str, str], ...]) -> str:
    payload = json.dumps([[n, t] for n, t in registry], separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class FeatureSchema:
    """One feature schema version: its row registry, hash and model input layout."""

    version: str
    registry: tuple[tuple[str, str], ...]
    hash: str
    feature_columns: tuple[str, ...]
    categorical_columns: tuple[str, ...]

    @property
    def categorical_indices(self) -> tuple[int, ...]:
        return tuple(self.feature_columns.index(c) for c in self.categorical_columns)

    @property
    def column_types(self) -> dict[str, str]:
        return dict(self.registry)

    @property
    def tag(self) -> str:
        """The ``schema_version`` value of an output record, e.g. ``features_v1``."""
        return f"features_{self.version}"


def _model_columns(registry: tuple[tuple[str, str], ...], with_user: bool) -> tuple[str, ...]:
    cols = [n for n, _ in registry if n not in META_COLUMNS]
    if with_user:
        cols.append("user_id")
    return tuple(cols)


def _build() -> dict[str, FeatureSchema]:
    v1 = _V1
    v2 = tuple(c for c in _V1 if c[0] != "user_id")
    v3 = _V1 + V3_ONLY
    v1_cols = _model_columns(v1, with_user=True)
    v2_cols = _model_columns(v2, with_user=False)
    v3_cols = v2_cols + tuple(n for n, _ in V3_ONLY)
    return {
        "v1": FeatureSchema("v1", v1, schema_hash(v1), v1_cols, CATEGORICAL_COLUMNS_V2 + ("user_id",)),
        "v2": FeatureSchema("v2", v2, schema_hash(v2), v2_cols, CATEGORICAL_COLUMNS_V2),
        "v3": FeatureSchema("v3", v3, schema_hash(v3), v3_cols, CATEGORICAL_COLUMNS_V2),
    }


SCHEMAS: dict[str, FeatureSchema] = _build()
LATEST_SCHEMA_VERSION = "v3"


def get_schema(version: str) -> FeatureSchema:
    try:
        return SCHEMAS[version]
    except KeyError:
        raise KeyError(f"unknown feature schema version {version!r} (known: {', '.join(SCHEMAS)})") from None
