"""Bytes/dicts <-> records: decode and validate taskclf ``FeatureRow`` JSON, encode predictions.

Validation follows taskclf's ``FeatureRow`` (spec 1.1-1.3) with the daemon's deliberate choices:

* the 9 history fields that the daemon recomputes (``OVERLAY_COLUMNS``) are optional;
* meta fields that never reach the model (``device_id``, ``session_id``, ``bucket_end_ts``,
  ``source_ids``, ``window_title_hash``) are optional but type-checked when present;
* ``schema_version`` must equal the loaded model's; ``schema_hash``, when present, must equal the
  hash of that version;
* any key starting with ``raw_`` is refused (taskclf's privacy pre-validator);
* unknown keys are ignored (forward compatibility).

Every failure raises :class:`~taskclf_daemon.errors.InvalidRecord` with a reason from
:data:`REASONS` and a detail naming the field.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import orjson

from taskclf_daemon.errors import InvalidRecord
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.schema import META_COLUMNS, OVERLAY_COLUMNS, SCHEMAS, FeatureSchema
from taskclf_daemon.timeutil import parse_ts_us

#: every reason an input record can be refused with (DLQ header / metric label values)
REASONS = (
    "oversize",
    "invalid_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "non_finite",
    "out_of_range",
    "bad_timestamp",
    "schema_mismatch",
    "privacy_raw_field",
)

DEFAULT_MAX_RECORD_BYTES = 1 << 20

_Check = Callable[[str, Any], Any]


def _bad_type(name: str, want: str, v: Any) -> InvalidRecord:
    return InvalidRecord("wrong_type", f"field {name!r} must be {want}, got {type(v).__name__}")


def _as_float(name: str, v: Any, lo: float | None, hi: float | None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad_type(name, "a number", v)
    f = float(v)
    if not math.isfinite(f):
        raise InvalidRecord("non_finite", f"field {name!r} is not finite ({v!r})")
    if (lo is not None and f < lo) or (hi is not None and f > hi):
        raise InvalidRecord("out_of_range", f"field {name!r}={v!r} outside [{lo}, {hi}]")
    return v  # keep the JSON value as given (int stays int): encoding is float() later


def _as_int(name: str, v: Any, lo: int | None, hi: int | None) -> int:
    if isinstance(v, bool):
        raise _bad_type(name, "an integer", v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise InvalidRecord("non_finite", f"field {name!r} is not finite ({v!r})")
        if not v.is_integer():
            raise _bad_type(name, "an integer", v)
        v = int(v)
    elif not isinstance(v, int):
        raise _bad_type(name, "an integer", v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InvalidRecord("out_of_range", f"field {name!r}={v!r} outside [{lo}, {hi}]")
    return v


def _bounded(convert: Callable[[str, Any, Any, Any], Any], lo: Any, hi: Any, nullable: bool) -> _Check:
    def check(name: str, v: Any) -> Any:
        if v is None:
            if nullable:
                return None
            raise InvalidRecord("wrong_type", f"field {name!r} must not be null")
        return convert(name, v, lo, hi)

    return check


def _num(lo: float | None = None, hi: float | None = None, nullable: bool = False) -> _Check:
    return _bounded(_as_float, lo, hi, nullable)


def _int(lo: int | None = None, hi: int | None = None, nullable: bool = False) -> _Check:
    return _bounded(_as_int, lo, hi, nullable)


def _bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise _bad_type(name, "a boolean", v)


def _str(nullable: bool = False, nonempty: bool = False) -> _Check:
    def check(name: str, v: Any) -> Any:
        if v is None and nullable:
            return None
        if not isinstance(v, str):
            raise _bad_type(name, "a string", v)
        if nonempty and not v:
            raise InvalidRecord("out_of_range", f"field {name!r} must not be empty")
        return v

    return check


def _ts(name: str, v: Any) -> int:
    try:
        return parse_ts_us(v)
    except ValueError as exc:
        raise InvalidRecord("bad_timestamp", f"field {name!r}: {exc}") from None


def _str_list(name: str, v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _bad_type(name, "a list of strings", v)
    return v


_MISSING = object()

# (name) -> (checker, required, default)
_FIELDS: dict[str, tuple[_Check, bool, Any]] = {
    "user_id": (_str(nonempty=True), True, _MISSING),
    "device_id": (_str(nullable=True), False, None),
    "session_id": (_str(nullable=True), False, None),
    "bucket_start_ts": (_ts, True, _MISSING),
    "bucket_end_ts": (_ts, False, None),
    "schema_version": (_str(), True, _MISSING),
    "schema_hash": (_str(), False, None),
    "source_ids": (_str_list, False, None),
    "app_id": (_str(), True, _MISSING),
    "app_category": (_str(), True, _MISSING),
    "window_title_hash": (_str(nullable=True), False, None),
    "is_browser": (_bool, True, _MISSING),
    "is_editor": (_bool, True, _MISSING),
    "is_terminal": (_bool, True, _MISSING),
    "app_switch_count_last_5m": (_int(0), True, _MISSING),
    "app_foreground_time_ratio": (_num(0.0, 1.0), True, _MISSING),
    "app_change_count": (_int(0), True, _MISSING),
    "app_dwell_time_seconds": (_num(0.0), True, _MISSING),
    "app_entropy_5m": (_num(0.0, nullable=True), False, None),
    "app_entropy_15m": (_num(0.0, nullable=True), False, None),
    "top2_app_concentration_15m": (_num(0.0, 1.0, nullable=True), False, None),
    "idle_return_indicator": (_bool, False, False),
    "keys_per_min": (_num(nullable=True), False, None),
    "backspace_ratio": (_num(0.0, 1.0, nullable=True), False, None),
    "shortcut_rate": (_num(0.0, nullable=True), False, None),
    "clicks_per_min": (_num(0.0, nullable=True), False, None),
    "scroll_events_per_min": (_num(0.0, nullable=True), False, None),
    "mouse_distance": (_num(0.0, nullable=True), False, None),
    "active_seconds_keyboard": (_num(0.0, nullable=True), False, None),
    "active_seconds_mouse": (_num(0.0, nullable=True), False, None),
    "active_seconds_any": (_num(0.0, nullable=True), False, None),
    "max_idle_run_seconds": (_num(0.0, nullable=True), False, None),
    "event_density": (_num(0.0, nullable=True), False, None),
    "domain_category": (_str(), False, "unknown"),
    "window_title_bucket": (_int(0, 255), True, _MISSING),
    "title_repeat_count_session": (_int(0), True, _MISSING),
    "hour_of_day": (_int(0, 23), True, _MISSING),
    "day_of_week": (_int(0, 6), True, _MISSING),
}
for _n in OVERLAY_COLUMNS:  # recomputed by the daemon; accepted if well-typed
    _FIELDS[_n] = (_num(nullable=True), False, None)
_FIELDS["app_switch_count_last_15m"] = (_int(0, nullable=True), False, None)
_FIELDS["session_length_so_far"] = (_num(0.0, nullable=True), False, None)
for _n in ("keys_per_min_rolling_5", "keys_per_min_rolling_15"):
    _FIELDS[_n] = (_num(nullable=True), False, None)
for _n in ("mouse_distance_rolling_5", "mouse_distance_rolling_15"):
    _FIELDS[_n] = (_num(0.0, nullable=True), False, None)
_V3_FIELDS: dict[str, tuple[_Check, bool, Any]] = {}
for _n, _t in SCHEMAS["v3"].registry[len(SCHEMAS["v1"].registry):]:
    if _t == "int":
        _V3_FIELDS[_n] = (_int(0), False, 0)
    elif _n.startswith("title_") and (_n.endswith("_ratio") or "sketch" in _n):
        _V3_FIELDS[_n] = (_num(0.0, 1.0), False, 0.0)
    else:  # pragma: no cover - every v3 field is one of the above
        _V3_FIELDS[_n] = (_num(), False, 0.0)


class RowValidator:
    """Validates decoded rows against one feature schema (the loaded model's)."""

    def __init__(self, schema: FeatureSchema) -> None:
        self.schema = schema
        names = [n for n, _ in schema.registry]
        if "user_id" not in names:  # v2 rows still carry user_id: it is the state/partition key
            names.insert(0, "user_id")
        specs = dict(_FIELDS)
        specs.update(_V3_FIELDS)
        self._fields = [(n, *specs[n]) for n in names]

    def validate(self, obj: Any) -> FeatureWindow:
        """Check one decoded JSON value; return a :class:`FeatureWindow` or raise InvalidRecord."""
        if not isinstance(obj, dict):
            raise InvalidRecord("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
        for k in obj:
            if k.startswith("raw_"):
                raise InvalidRecord("privacy_raw_field", f"field {k!r}: raw_* fields are refused (privacy)")
        sv = obj.get("schema_version", _MISSING)
        if sv is _MISSING:
            raise InvalidRecord("missing_field", "field 'schema_version' is required")
        if sv != self.schema.version:
            raise InvalidRecord(
                "schema_mismatch",
                f"field 'schema_version'={sv!r} but the loaded model expects {self.schema.version!r}",
            )
        sh = obj.get("schema_hash")
        if sh is not None and sh != self.schema.hash:
            raise InvalidRecord(
                "schema_mismatch",
                f"field 'schema_hash'={sh!r} but schema {self.schema.version} has hash {self.schema.hash!r}",
            )
        values: dict[str, Any] = {}
        for name, check, required, default in self._fields:
            v = obj.get(name, _MISSING)
            if v is _MISSING:
                if required:
                    raise InvalidRecord("missing_field", f"field {name!r} is required")
                values[name] = default
            else:
                values[name] = check(name, v)
        start = values["bucket_start_ts"]
        end = values.get("bucket_end_ts")
        if end is not None and end <= start:
            raise InvalidRecord("bad_timestamp", "field 'bucket_end_ts' must be after 'bucket_start_ts'")
        return FeatureWindow(values["user_id"], start, sv, values)


def decode_window(data: bytes | str, validator: RowValidator, max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> FeatureWindow:
    """Decode and validate one JSON record.

    :raises InvalidRecord: oversize, invalid_json or any validation reason
    """
    size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
    if size > max_bytes:
        raise InvalidRecord("oversize", f"record is {size} bytes, limit {max_bytes}")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord("invalid_json", str(exc)[:200]) from None
    return validator.validate(obj)


__all__ = ["REASONS", "RowValidator", "decode_window", "META_COLUMNS"]
