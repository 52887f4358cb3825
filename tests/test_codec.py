"""Decoding and validating taskclf FeatureRow JSON (spec 1.1-1.3, 13.11): every refusal reason."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import orjson
import pytest

from helpers_rows import V1_HASH, V2_HASH, V3_HASH, make_row, make_window, validator
from taskclf_daemon.codec import DEFAULT_MAX_RECORD_BYTES, REASONS, RowValidator, decode_window
from taskclf_daemon.errors import InvalidRecord
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.schema import OVERLAY_COLUMNS, SCHEMAS
from taskclf_daemon.timeutil import format_ts_us

V1 = validator("v1")
T10_US = 1775469600 * 1_000_000  # 2026-04-06T10:00:00Z


def _dec(obj_or_bytes: Any, v: RowValidator = V1, **kw: Any) -> FeatureWindow:
    data = obj_or_bytes if isinstance(obj_or_bytes, (bytes, str)) else orjson.dumps(obj_or_bytes)
    return decode_window(data, v, **kw)


def _refused(obj_or_bytes: Any, v: RowValidator = V1, **kw: Any) -> InvalidRecord:
    with pytest.raises(InvalidRecord) as ei:
        _dec(obj_or_bytes, v, **kw)
    exc = ei.value
    assert exc.reason in REASONS
    assert str(exc).startswith(exc.reason + ": ")
    return exc


# ---------------------------------------------------------------- valid rows


def test_valid_row_round_trip() -> None:
    row = make_row()
    w = _dec(row)
    assert isinstance(w, FeatureWindow)
    assert w.user_id == row["user_id"]
    assert w.schema_version == "v1"
    assert w.ts_us == T10_US
    assert format_ts_us(w.ts_us) == row["bucket_start_ts"]
    assert format_ts_us(w.values["bucket_end_ts"]) == row["bucket_end_ts"]
    for name, _t in SCHEMAS["v1"].registry:
        if name in ("bucket_start_ts", "bucket_end_ts"):
            continue
        assert name in w.values, name
        assert w.values[name] == row[name], name
        # JSON types preserved (bool stays bool, int stays int)
        assert type(w.values[name]) is type(row[name]), name
    assert w.source is None


def test_decode_accepts_str_and_bytes() -> None:
    data = orjson.dumps(make_row())
    assert decode_window(data, V1).values == decode_window(data.decode(), V1).values


def test_golden_first_row_decodes() -> None:
    # a real taskclf row (all overlay fields null)
    from helpers_rows import golden_dir

    line = (golden_dir() / "inputs.jsonl").open("rb").readline()
    w = decode_window(line, V1)
    assert w.user_id == "36329fc1-cfbb-42f2-87da-c965fcbd3ef3"
    assert format_ts_us(w.ts_us) == "2026-04-06T01:23:00Z"
    assert all(w.values[c] is None for c in OVERLAY_COLUMNS)


@pytest.mark.parametrize(
    ("value", "expected_us"),
    [
        ("2026-04-06T10:00:00Z", T10_US),
        ("2026-04-06T10:00:00+00:00", T10_US),
        ("2026-04-06T12:00:00+02:00", T10_US),
        ("2026-04-06T05:30:00-04:30", T10_US),
        ("2026-04-06T10:00:00", T10_US),  # naive = UTC
        ("2026-04-06T10:00:00.250Z", T10_US + 250_000),
        (1775469600, T10_US),  # epoch seconds int
        (1775469600.0, T10_US),  # epoch seconds float
        (1775469600.5, T10_US + 500_000),
        (1775469600000, T10_US),  # epoch milliseconds
        (1775469600250, T10_US + 250_000),
    ],
)
def test_timestamp_forms(value: Any, expected_us: int) -> None:
    end = expected_us + 60_000_000
    w = _dec(make_row(bucket_start_ts=value, bucket_end_ts=format_ts_us(end)))
    assert w.ts_us == expected_us
    assert isinstance(w.ts_us, int)


def test_naive_timestamp_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    if not hasattr(time, "tzset"):
        pytest.fail("time.tzset is required (POSIX) to check local-zone independence")
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        w = _dec(make_row(bucket_start_ts="2026-04-06T10:00:00", bucket_end_ts="2026-04-06T10:01:00"))
        assert w.ts_us == T10_US
        assert w.values["bucket_end_ts"] == T10_US + 60_000_000
        assert format_ts_us(w.ts_us) == "2026-04-06T10:00:00Z"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_offset_timestamp_is_normalised_to_utc() -> None:
    w = _dec(make_row(bucket_start_ts="2026-04-06T03:00:00+02:00", bucket_end_ts="2026-04-06T01:01:00Z"))
    assert format_ts_us(w.ts_us) == "2026-04-06T01:00:00Z"
    assert dt.datetime.fromtimestamp(w.ts_us / 1e6, dt.UTC).hour == 1


def test_end_timestamp_forms_and_optional() -> None:
    w = _dec(make_row(bucket_end_ts=1775469660))
    assert w.values["bucket_end_ts"] == T10_US + 60_000_000
    w = _dec(make_row(_drop=("bucket_end_ts",)))
    assert w.values["bucket_end_ts"] is None


# ---------------------------------------------------------------- refusals, one table for every reason


def _bytes(**kw: Any) -> bytes:
    return orjson.dumps(make_row(**kw))


# (id, reason, input bytes, substring the detail must contain)
REFUSALS: list[tuple[str, str, bytes, str]] = [
    ("invalid_json_nan_literal", "invalid_json", _bytes()[:-1] + b',"keys_per_min_delta":NaN}', ""),
    ("invalid_json_truncated", "invalid_json", _bytes()[:-25], ""),
    ("invalid_json_empty", "invalid_json", b"", ""),
    ("invalid_json_trailing", "invalid_json", _bytes() + b"{", ""),
    # orjson refuses 1e999 (it would be inf) at the JSON layer: reason invalid_json
    ("invalid_json_1e999", "invalid_json", _bytes()[:-1] + b',"x":1e999}', ""),
    ("not_an_object_array", "not_an_object", b"[1, 2, 3]", "list"),
    ("not_an_object_string", "not_an_object", b'"a string"', "str"),
    ("not_an_object_number", "not_an_object", b"42", "int"),
    ("not_an_object_null", "not_an_object", b"null", "NoneType"),
    ("missing_app_id", "missing_field", _bytes(_drop=("app_id",)), "'app_id'"),
    ("missing_user_id", "missing_field", _bytes(_drop=("user_id",)), "'user_id'"),
    ("missing_bucket_start_ts", "missing_field", _bytes(_drop=("bucket_start_ts",)), "'bucket_start_ts'"),
    ("missing_schema_version", "missing_field", _bytes(_drop=("schema_version",)), "'schema_version'"),
    ("missing_hour_of_day", "missing_field", _bytes(_drop=("hour_of_day",)), "'hour_of_day'"),
    ("missing_is_browser", "missing_field", _bytes(_drop=("is_browser",)), "'is_browser'"),
    ("wrong_type_keys_str", "wrong_type", _bytes(keys_per_min="12.5"), "'keys_per_min'"),
    ("wrong_type_keys_bool", "wrong_type", _bytes(keys_per_min=True), "'keys_per_min'"),
    ("wrong_type_is_browser_int", "wrong_type", _bytes(is_browser=1), "'is_browser'"),
    ("wrong_type_app_change_float", "wrong_type", _bytes(app_change_count=3.5), "'app_change_count'"),
    ("wrong_type_app_id_int", "wrong_type", _bytes(app_id=5), "'app_id'"),
    ("wrong_type_hour_null", "wrong_type", _bytes(hour_of_day=None), "'hour_of_day'"),
    ("wrong_type_source_ids", "wrong_type", _bytes(source_ids="aw-watcher-window"), "'source_ids'"),
    ("wrong_type_overlay_str", "wrong_type", _bytes(keys_per_min_rolling_5="x"), "'keys_per_min_rolling_5'"),
    ("out_of_range_hour_24", "out_of_range", _bytes(hour_of_day=24), "'hour_of_day'"),
    ("out_of_range_hour_neg", "out_of_range", _bytes(hour_of_day=-1), "'hour_of_day'"),
    ("out_of_range_day_7", "out_of_range", _bytes(day_of_week=7), "'day_of_week'"),
    ("out_of_range_fg_ratio", "out_of_range", _bytes(app_foreground_time_ratio=1.5), "'app_foreground_time_ratio'"),
    ("out_of_range_neg_clicks", "out_of_range", _bytes(clicks_per_min=-1.0), "'clicks_per_min'"),
    ("out_of_range_title_bucket", "out_of_range", _bytes(window_title_bucket=256), "'window_title_bucket'"),
    ("out_of_range_empty_user", "out_of_range", _bytes(user_id=""), "'user_id'"),
    ("bad_timestamp_text", "bad_timestamp", _bytes(bucket_start_ts="yesterday at ten"), "'bucket_start_ts'"),
    ("bad_timestamp_null", "bad_timestamp", _bytes(bucket_start_ts=None), "'bucket_start_ts'"),
    ("bad_timestamp_bool", "bad_timestamp", _bytes(bucket_start_ts=True), "'bucket_start_ts'"),
    ("bad_timestamp_end", "bad_timestamp", _bytes(bucket_end_ts="2026-13-01T00:00:00Z"), "'bucket_end_ts'"),
    ("bad_timestamp_end_before_start", "bad_timestamp", _bytes(bucket_end_ts="2026-04-06T09:59:00Z"), "'bucket_end_ts'"),
    ("bad_timestamp_end_equals_start", "bad_timestamp", _bytes(bucket_end_ts="2026-04-06T10:00:00Z"), "'bucket_end_ts'"),
    ("schema_mismatch_v2", "schema_mismatch", _bytes(schema_version="v2", schema_hash=V2_HASH), "'schema_version'"),
    ("schema_mismatch_hash", "schema_mismatch", _bytes(schema_hash="deadbeef0000"), "'schema_hash'"),
    ("schema_mismatch_v1_with_v3_hash", "schema_mismatch", _bytes(schema_hash=V3_HASH), "'schema_hash'"),
    ("privacy_raw_window_title", "privacy_raw_field", _bytes(raw_window_title="secret: my bank statement"), "'raw_window_title'"),
    ("privacy_raw_other", "privacy_raw_field", _bytes(raw_app_name="Sublime"), "'raw_app_name'"),
]


@pytest.mark.parametrize(("reason", "data", "needle"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusal(reason: str, data: bytes, needle: str) -> None:
    exc = _refused(data)
    assert exc.reason == reason, str(exc)
    assert needle in exc.detail, exc.detail


def test_every_reason_is_covered() -> None:
    covered = {r[1] for r in REFUSALS} | {"oversize", "non_finite"}
    assert covered == set(REASONS)
    assert len(REASONS) == len(set(REASONS)) == 10


def test_oversize() -> None:
    data = orjson.dumps(make_row())
    exc = _refused(data, max_bytes=len(data) - 1)
    assert exc.reason == "oversize"
    assert str(len(data)) in exc.detail and str(len(data) - 1) in exc.detail
    # exactly at the limit is fine
    assert _dec(data, max_bytes=len(data)).user_id == make_row()["user_id"]
    # the default limit is 1 MiB: a row padded with an ignored key beyond it is refused
    big = orjson.dumps(make_row(padding="x" * DEFAULT_MAX_RECORD_BYTES))
    assert _refused(big).reason == "oversize"


def test_oversize_counts_bytes_for_str_input() -> None:
    # the limit is in bytes: a str record is measured by its UTF-8 size, not its character count
    text = orjson.dumps(make_row(app_id="é" * 400)).decode("utf-8")
    n_bytes = len(text.encode("utf-8"))
    assert n_bytes > len(text)
    exc = _refused(text, max_bytes=n_bytes - 1)
    assert exc.reason == "oversize" and str(n_bytes) in exc.detail
    assert _dec(text, max_bytes=n_bytes).values["app_id"] == "é" * 400


def test_orjson_refuses_infinite_numbers() -> None:
    # documents why non_finite cannot come from JSON bytes: orjson rejects 1e999 itself
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(b"1e999")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(b"NaN")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("keys_per_min", math.inf),
        ("keys_per_min", -math.inf),
        ("mouse_distance", math.nan),
        ("app_foreground_time_ratio", math.inf),
        ("app_change_count", math.inf),
        ("session_length_so_far", math.nan),
    ],
)
def test_non_finite_from_decoded_object(field: str, value: float) -> None:
    # a non-finite value can reach the validator from a non-JSON source (e.g. parquet replay)
    with pytest.raises(InvalidRecord) as ei:
        V1.validate(make_row(**{field: value}))
    assert ei.value.reason == "non_finite"
    assert repr(field) in ei.value.detail


def test_privacy_detail_does_not_leak_the_raw_value() -> None:
    exc = _refused(_bytes(raw_window_title="secret: my bank statement"))
    assert "secret" not in str(exc) and "bank" not in str(exc)


def test_privacy_checked_before_schema() -> None:
    # a raw_* key is refused even when the row is otherwise invalid
    exc = _refused(orjson.dumps({"raw_window_title": "t"}))
    assert exc.reason == "privacy_raw_field"


def test_v1_row_to_v2_validator_is_schema_mismatch() -> None:
    exc = _refused(_bytes(), validator("v2"))
    assert exc.reason == "schema_mismatch" and "'schema_version'" in exc.detail


# ---------------------------------------------------------------- defaults, extra keys, versions


def test_unknown_extra_keys_are_ignored() -> None:
    row = make_row(future_field=123, evidence_snapshots=[{"a": 1}], title_char_count=7)
    w = _dec(row)
    assert "future_field" not in w.values
    assert "evidence_snapshots" not in w.values
    assert "title_char_count" not in w.values  # v3-only field on a v1 row
    assert w.values == _dec(make_row()).values


def test_optional_fields_get_defaults() -> None:
    drop = ("device_id", "session_id", "bucket_end_ts", "schema_hash", "source_ids", "window_title_hash",
            "domain_category", "idle_return_indicator", "keys_per_min", "backspace_ratio", "app_entropy_5m",
            *OVERLAY_COLUMNS)  # fmt: skip
    w = _dec(make_row(_drop=drop))
    assert w.values["domain_category"] == "unknown"
    assert w.values["idle_return_indicator"] is False
    assert w.values["keys_per_min"] is None
    assert w.values["app_entropy_5m"] is None
    assert w.values["session_id"] is None
    for c in OVERLAY_COLUMNS:
        assert w.values[c] is None


def test_integral_float_accepted_for_int_field() -> None:
    w = _dec(make_row(app_change_count=3.0, hour_of_day=13.0))
    assert w.values["app_change_count"] == 3 and type(w.values["app_change_count"]) is int
    assert w.values["hour_of_day"] == 13


def test_negative_keys_per_min_accepted() -> None:
    # taskclf's pydantic model puts no lower bound on keys_per_min (spec 1.3 idx 13)
    assert _dec(make_row(keys_per_min=-1.0)).values["keys_per_min"] == -1.0


def test_missing_schema_hash_is_accepted() -> None:
    assert _dec(make_row(_drop=("schema_hash",))).values["schema_hash"] is None


def test_v2_validator_requires_user_id() -> None:
    v2 = validator("v2")
    row = make_row(schema_version="v2", schema_hash=V2_HASH)
    w = _dec(row, v2)
    assert w.user_id == row["user_id"] and w.schema_version == "v2"
    exc = _refused(orjson.dumps(make_row(schema_version="v2", schema_hash=V2_HASH, _drop=("user_id",))), v2)
    assert exc.reason == "missing_field" and "'user_id'" in exc.detail
    # v1 hash on a v2 row is a mismatch
    assert _refused(orjson.dumps(make_row(schema_version="v2", schema_hash=V1_HASH)), v2).reason == "schema_mismatch"


def test_v3_title_fields_default_to_zero() -> None:
    v3 = validator("v3")
    w = _dec(make_row(schema_version="v3", schema_hash=V3_HASH), v3)
    for i in (0, 64, 127):
        assert w.values[f"title_token_sketch_{i:03d}"] == 0.0
        assert w.values[f"title_char3_sketch_{i:03d}"] == 0.0
    for n in ("title_char_count", "title_token_count", "title_separator_count"):
        assert w.values[n] == 0 and type(w.values[n]) is int
    assert w.values["title_unique_token_ratio"] == 0.0 and w.values["title_digit_ratio"] == 0.0
    given = _dec(make_row(schema_version="v3", schema_hash=V3_HASH, title_token_sketch_005=0.25, title_char_count=17), v3)
    assert given.values["title_token_sketch_005"] == 0.25 and given.values["title_char_count"] == 17


def test_v3_title_field_ranges() -> None:
    v3 = validator("v3")
    exc = _refused(orjson.dumps(make_row(schema_version="v3", schema_hash=V3_HASH, title_token_sketch_005=1.5)), v3)
    assert exc.reason == "out_of_range" and "'title_token_sketch_005'" in exc.detail
    exc = _refused(orjson.dumps(make_row(schema_version="v3", schema_hash=V3_HASH, title_char_count=-1)), v3)
    assert exc.reason == "out_of_range" and "'title_char_count'" in exc.detail


def test_make_window_helper_is_valid() -> None:
    w = make_window(app_id="dev.zed.Zed")
    assert w.values["app_id"] == "dev.zed.Zed" and w.ts_us == T10_US


def test_huge_epoch_timestamp_is_refused_as_bad_timestamp() -> None:
    """1.7e308 is valid JSON; it is refused by the timestamp bounds (bad_timestamp, naming the
    field), never an exception out of the codec, whichever path decodes it."""
    for ts in (1.7e308, -1.7e308, 10**18, -(10**18), 2**64 - 1, 1e13, -1):
        for data in (orjson.dumps(make_row(bucket_start_ts=ts)), orjson.dumps(make_row(bucket_start_ts=ts, extra_key=1))):
            exc = _refused(data, validator("v1"))
            assert exc.reason == "bad_timestamp", (ts, exc.reason, exc.detail)
            assert exc.detail.startswith("field 'bucket_start_ts': ") and "range" in exc.detail


def test_a_value_error_from_a_check_is_refused_as_out_of_range_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """The catch-all behind the checks: a ValueError/OverflowError that a check lets through
    (none does today) becomes an ``out_of_range`` refusal with the message, cut to 200 characters."""
    v = RowValidator(SCHEMAS["v1"])
    monkeypatch.setattr(v, "fast_decode", None)
    for err in (OverflowError("int too large to convert to float"), ValueError("x" * 300)):
        def boom(obj: object, err: Exception = err) -> None:
            raise err

        monkeypatch.setattr(v, "validate", boom)
        exc = _refused(orjson.dumps(make_row()), v)
        assert exc.reason == "out_of_range"
        assert exc.detail == f"value out of range: {err}"[:200]
        assert str(exc) == f"out_of_range: {exc.detail}"


def test_format_ts_us_matches_datetime_everywhere() -> None:
    """The integer formatter equals datetime's strftime (plus ``.ffffff`` when non-zero) on
    random instants of years 1-9999, minute-aligned ones and the edges; memo misses included."""
    import random

    from taskclf_daemon import timeutil

    def reference(us: int) -> str:
        ts = timeutil._EPOCH + dt.timedelta(microseconds=us)
        out = ts.strftime("%Y-%m-%dT%H:%M:%S")
        return out + (f".{ts.microsecond:06d}" if ts.microsecond else "") + "Z"

    us_of = lambda t: (t - timeutil._EPOCH) // dt.timedelta(microseconds=1)
    lo = us_of(dt.datetime(1, 1, 1, tzinfo=dt.UTC))
    hi = us_of(dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC))
    rng = random.Random(20261123)
    values = [rng.randint(lo, hi) for _ in range(20000)] + [rng.randint(-10**15, 10**15) // 60_000_000 * 60_000_000 for _ in range(20000)]
    values += [lo, hi, 0, -1, 1, 59_999_999, 86_399_999_999, 86_400_000_000]
    for us in values:
        assert timeutil._format(us) == reference(us), us
        assert format_ts_us(us) == reference(us), us
    assert format_ts_us(1775438580000000) == "2026-04-06T01:23:00Z"
    assert format_ts_us(1775438580000001) == "2026-04-06T01:23:00.000001Z"
