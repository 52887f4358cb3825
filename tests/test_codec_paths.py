"""The codec's two paths, pinned separately.

* The detailed checks (``RowValidator._validate``): the exact refusal detail a DLQ record carries,
  the bounds (inclusive) and the defaults of missing optional fields, on inputs that the fast
  paths would otherwise answer first.
* The dict fast path (``RowValidator._fast`` / ``validate``): well-formed rows -- in another key
  order, with unknown keys, with any optional field left out -- are validated by it (README: one
  pass for well-formed rows) and give exactly what the detailed checks give.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from helpers_rows import make_row
from taskclf_daemon.codec import MAX_STR_CHARS, MAX_USER_ID_CHARS, RowValidator
from taskclf_daemon.errors import InvalidRecord
from taskclf_daemon.schema import SCHEMAS

V1 = RowValidator(SCHEMAS["v1"])


@pytest.mark.parametrize(
    "changes, reason, detail",
    [
        ({"app_switch_count_last_5m": "3"}, "wrong_type", "field 'app_switch_count_last_5m' must be an integer, got str"),
        ({"app_switch_count_last_5m": True}, "wrong_type", "field 'app_switch_count_last_5m' must be an integer, got bool"),
        ({"app_switch_count_last_5m": 1.5}, "wrong_type", "field 'app_switch_count_last_5m' must be an integer, got float"),
        ({"hour_of_day": 24}, "out_of_range", "field 'hour_of_day'=24 outside [0, 23]"),
        ({"hour_of_day": -1}, "out_of_range", "field 'hour_of_day'=-1 outside [0, 23]"),
        ({"keys_per_min": "fast"}, "wrong_type", "field 'keys_per_min' must be a number, got str"),
        ({"keys_per_min": False}, "wrong_type", "field 'keys_per_min' must be a number, got bool"),
        ({"app_foreground_time_ratio": 1.5}, "out_of_range", "field 'app_foreground_time_ratio'=1.5 outside [0.0, 1.0]"),
        ({"is_browser": 1}, "wrong_type", "field 'is_browser' must be a boolean, got int"),
        ({"source_ids": "aw"}, "wrong_type", "field 'source_ids' must be a list of strings, got str"),
        ({"source_ids": ["a", 1]}, "wrong_type", "field 'source_ids' must be a list of strings, got list"),
        ({"app_id": None}, "wrong_type", "field 'app_id' must be a string, got NoneType"),
        ({"app_dwell_time_seconds": None}, "wrong_type", "field 'app_dwell_time_seconds' must not be null"),
        ({"user_id": ""}, "out_of_range", "field 'user_id' must not be empty"),
        ({"_drop": ("schema_version",)}, "missing_field", "field 'schema_version' is required"),
        ({"_drop": ("app_id",)}, "missing_field", "field 'app_id' is required"),
        ({"bucket_end_ts": "2026-04-06T10:00:00Z"}, "bad_timestamp", "field 'bucket_end_ts' must be after 'bucket_start_ts'"),
    ],
)
def test_detailed_check_refusal_detail(changes: dict[str, Any], reason: str, detail: str) -> None:
    with pytest.raises(InvalidRecord) as ei:
        V1._validate(make_row(**changes))
    assert (ei.value.reason, ei.value.detail) == (reason, detail)


@pytest.mark.parametrize(
    "field, lo, hi",
    [("hour_of_day", 0, 23), ("day_of_week", 0, 6), ("window_title_bucket", 0, 255), ("app_change_count", 0, None)],
)
def test_detailed_int_bounds_are_inclusive(field: str, lo: int, hi: int | None) -> None:
    for ok in (lo, hi, float(lo)) if hi is not None else (lo, float(lo), 10**6):
        w = V1._validate(make_row(**{field: ok}))
        assert w.values[field] == ok and type(w.values[field]) is int
    for bad in (lo - 1,) + ((hi + 1,) if hi is not None else ()):
        with pytest.raises(InvalidRecord) as ei:
            V1._validate(make_row(**{field: bad}))
        assert ei.value.reason == "out_of_range"


def test_detailed_window_fields() -> None:
    row = make_row()
    w = V1._validate(row)
    assert (w.user_id, w.schema_version) == (row["user_id"], "v1")


def _optional_fields(version: str) -> list[str]:
    v = RowValidator(SCHEMAS[version])
    return [name for name, _check, required, _default in v._fields if not required]


def _base(version: str) -> dict[str, Any]:
    row = make_row(schema_version=version, schema_hash=SCHEMAS[version].hash)
    if version == "v3":
        row.update({n: 0.25 for n, t in SCHEMAS["v3"].registry if n.startswith("title_") and t == "float"})
        row.update({"title_char_count": 12, "title_token_count": 3, "title_separator_count": 1})
    return row


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_fast_dict_path_takes_rows_without_optional_fields(version: str) -> None:
    v = RowValidator(SCHEMAS[version])
    base = _base(version)
    optional = _optional_fields(version)
    assert "bucket_end_ts" in optional and "idle_return_indicator" in optional
    for name in optional:
        row = {k: x for k, x in base.items() if k != name}
        fast = v._fast(row)
        assert fast is not None, name
        ref = v._validate(row)
        assert (fast.user_id, fast.ts_us, fast.schema_version, fast.values) == (ref.user_id, ref.ts_us, ref.schema_version, ref.values), name
        default = next(d for n, _c, _r, d in v._fields if n == name)
        assert ref.values[name] == default, name


def test_validate_routes_well_formed_dicts_to_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    v = RowValidator(SCHEMAS["v1"])
    row = make_row()
    expected = v.validate(dict(row))
    detailed: list[Any] = []
    real = v._validate
    monkeypatch.setattr(v, "_validate", lambda obj: detailed.append(obj) or real(obj))
    variants = [
        dict(row),
        dict(reversed(list(row.items()))),  # other key order
        {**row, "extra_field": 1},  # unknown key (learned as not raw_*)
        {**row, "extra_field": 1},
        {**row, **{f"unknown_{i}": i for i in range(5)}},
    ]
    for obj in variants:
        w = v.validate(obj)
        assert (w.user_id, w.ts_us, w.values) == (expected.user_id, expected.ts_us, expected.values)
    assert detailed == []
    # a raw_* key never takes the fast path: the detailed check refuses it
    with pytest.raises(InvalidRecord) as ei:
        v.validate({**row, "raw_window_title": "x"})
    assert ei.value.reason == "privacy_raw_field" and len(detailed) == 1


def test_unknown_keys_learned_are_bounded() -> None:
    v = RowValidator(SCHEMAS["v1"])
    row = make_row()
    for i in range(3000):
        v.validate({**row, f"k{i}": 1})
    # a dict's keys are learned while they all fit under the bound: it fills up to exactly that
    assert len(v._plain_keys) == v._max_keys - len(row)


def _result(fn: Any, obj: Any) -> tuple:
    try:
        w = fn(obj)
    except InvalidRecord as exc:
        return ("refused", exc.reason, exc.detail)
    return ("ok", w.user_id, w.ts_us, w.schema_version, {k: (type(x).__name__, x) for k, x in w.values.items()})


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_dict_fast_path_agrees_with_the_detailed_checks(version: str) -> None:
    # the generated fast path may only accept, and only what the detailed checks accept the same
    # way; test_codec_fastdecode's "reference" keeps this dict path, so it is checked here
    import orjson

    from test_codec_fresh_build import _corpus

    v = RowValidator(SCHEMAS[version])
    n_fast = 0
    for data in _corpus(version):
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        ref = _result(v._validate, obj)
        assert _result(v.validate, obj) == ref, data
        if type(obj) is dict and not any(type(k) is str and k.startswith("raw_") for k in obj):
            fast = v._fast(obj)
            if fast is not None:
                n_fast += 1
                assert ref[0] == "ok" and _result(lambda o, fast=fast: fast, obj) == ref, data
    assert n_fast > 100
    # end not after start: refused on every path
    row = _base(version)
    row["bucket_end_ts"] = row["bucket_start_ts"]
    assert v._fast(row) is None
    with pytest.raises(InvalidRecord, match="must be after"):
        v.validate(row)


def _schema_order(version: str) -> list[str]:
    names = [n for n, _ in SCHEMAS[version].registry]
    return (["user_id"] if "user_id" not in names else []) + names


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_rows_in_schema_order_take_the_exact_fast_path(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    v = RowValidator(SCHEMAS[version])
    base = _base(version)
    obj = {n: base.get(n) for n in _schema_order(version)}
    ref = v._validate(dict(obj))

    def fail(o: Any) -> Any:
        raise AssertionError("not the exact fast path")

    monkeypatch.setattr(v, "_fast", fail)
    monkeypatch.setattr(v, "_validate", fail)
    w = v.validate(obj)
    assert (w.user_id, w.ts_us, w.values) == (ref.user_id, ref.ts_us, ref.values)


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_msgspec_fast_path_takes_rows_without_optional_fields(version: str) -> None:
    import orjson

    v = RowValidator(SCHEMAS[version])
    base = _base(version)
    for name in _optional_fields(version):
        row = {k: x for k, x in base.items() if k != name}
        w = v.fast_decode(orjson.dumps(row))
        assert w is not None, name
        assert w.values == v._validate(row).values, name


def test_decode_window_answers_well_formed_rows_with_the_msgspec_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import orjson

    from taskclf_daemon.codec import decode_window

    v = RowValidator(SCHEMAS["v1"])
    data = orjson.dumps(make_row())

    def fail(o: Any) -> Any:
        raise AssertionError("decoded twice")

    monkeypatch.setattr(v, "validate", fail)
    assert decode_window(data, v).user_id == make_row()["user_id"]


def test_invalid_json_detail_is_the_parsers_message() -> None:
    import orjson

    from taskclf_daemon.codec import decode_window

    for data in (b"{bad", b'{"a": 1,}', b"[1, 2"):
        with pytest.raises(orjson.JSONDecodeError) as ej:
            orjson.loads(data)
        with pytest.raises(InvalidRecord) as ei:
            decode_window(data, V1)
        assert (ei.value.reason, ei.value.detail) == ("invalid_json", str(ej.value)[:200])


@pytest.mark.parametrize(("field", "limit"), [("user_id", MAX_USER_ID_CHARS), ("app_id", MAX_STR_CHARS), ("device_id", MAX_STR_CHARS)])
def test_string_length_limits_are_exact_on_every_path(field: str, limit: int) -> None:
    """A string of exactly the limit is accepted by the detailed checks, both dict fast paths and
    the msgspec path; one character more is refused by each, with the detailed check's detail."""
    assert (MAX_USER_ID_CHARS, MAX_STR_CHARS) == (256, 1024)
    v = RowValidator(SCHEMAS["v1"])
    at, over = make_row(**{field: "é" * limit}), make_row(**{field: "é" * (limit + 1)})
    assert v._fast_exact is not None and v._fast is not None and v.fast_decode is not None
    for path in (v._validate, v._fast_exact, v._fast, lambda row: v.fast_decode(orjson.dumps(row))):
        w = path(at)
        assert w is not None and w.values[field] == "é" * limit
    for path in (v._fast_exact, v._fast, lambda row: v.fast_decode(orjson.dumps(row))):
        assert path(over) is None  # the detailed checks decide
    with pytest.raises(InvalidRecord) as ei:
        v._validate(over)
    assert (ei.value.reason, ei.value.detail) == ("out_of_range", f"field {field!r} is {limit + 1} characters long, limit {limit}")


def test_unknown_keys_longer_than_64_characters_are_not_learned() -> None:
    v = RowValidator(SCHEMAS["v1"])
    w = v.validate(make_row(**{"k" * 64: 1, "q" * 65: 2}))
    assert w is not None and "k" * 64 in v._plain_keys and "q" * 65 not in v._plain_keys
