"""The msgspec decode fast path (``RowValidator.fast_decode``) against the reference path.

The fast path may only *accept*: whatever it accepts, orjson + the detailed checks must accept
with the very same values (types, key order and float bits included); everything else falls
through to the reference, so refusals keep their reason and detail. Checked on every golden row
and on a few thousand edge-case records (numbers at and beyond every bound and int64/uint64/
float limits, each JSON type in each field, missing and null fields, escaped, duplicate, raw_*
and unknown keys, odd timestamps, invalid UTF-8, whitespace).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson
import pytest

from helpers_rows import golden_dir, make_row
from taskclf_daemon.codec import RowValidator, decode_window
from taskclf_daemon.errors import InvalidRecord
from taskclf_daemon.schema import SCHEMAS


def _reference(version: str) -> RowValidator:
    v = RowValidator(SCHEMAS[version])
    v.fast_decode = None
    return v


def _bits(x: Any) -> Any:
    if type(x) is float:
        return ("f", struct.pack("<d", x))
    if type(x) is list:
        return ("l", [_bits(e) for e in x])
    return (type(x).__name__, x)


def _same_values(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(_bits(a[k]) == _bits(b[k]) for k in a)


def _outcome(data: bytes, v: RowValidator) -> tuple:
    try:
        w = decode_window(data, v)
    except InvalidRecord as exc:
        return ("refused", exc.reason, exc.detail)
    return ("ok", w.user_id, w.ts_us, w.schema_version, {k: _bits(x) for k, x in w.values.items()}, list(w.values))


def _check(data: bytes, fast: RowValidator, ref: RowValidator) -> bool:
    """Returns whether the fast path accepted ``data``; asserts it agrees with the reference."""
    w = fast.fast_decode(data)
    if w is not None:
        r = decode_window(data, ref)  # must not raise: the reference accepts it too
        assert (w.user_id, w.ts_us, w.schema_version) == (r.user_id, r.ts_us, r.schema_version), data
        assert _same_values(w.values, r.values), data
    assert _outcome(data, fast) == _outcome(data, ref), data
    return w is not None


def _golden_lines() -> list[bytes]:
    path = golden_dir() / "inputs.jsonl"
    return [ln.strip() for ln in path.read_bytes().splitlines() if ln.strip()]


def test_every_golden_row_takes_the_fast_path_with_identical_values() -> None:
    fast, ref = RowValidator(SCHEMAS["v1"]), _reference("v1")
    lines = _golden_lines()
    for line in lines:
        w = fast.fast_decode(line)
        assert w is not None, line
        r = decode_window(line, ref)
        assert _same_values(w.values, r.values)
        assert (w.user_id, w.ts_us) == (r.user_id, r.ts_us)
    assert len(lines) == 3030


NUMBERS: list[str] = [
    "0", "-0", "1", "-1", "0.0", "-0.0", "1.0", "0.5", "1.5", "1e2", "1E2", "1e-7", "2.5e-320", "5e-324",
    "255", "256", "23", "24", "6", "7", "0.9999999999999999", "1.0000000000000002",
    str(2**53), str(2**53 + 1), str(2**63 - 1), str(2**63), str(2**64 - 1), str(2**64), str(2**70), str(-(2**63)), str(-(2**63) - 1),
    "1.7976931348623157e308", "1.7976931348623159e308", "1e308", "1e309", "-1e309", "1e400",
    "100000000000000000000000", "123456789012345678901234567890.5", "0.30000000000000004", "3.141592653589793238462643383279",
    "true", "false", "null", '"1"', '""', "[]", "{}", '["a"]', "[1]", "NaN", "Infinity", "-Infinity", "01", "1.", ".5", "+1",
]


def _with(row: dict, field: str, raw: str | None) -> bytes:
    """``row`` as JSON with ``field`` set to the raw JSON text ``raw`` (None: field removed)."""
    body = dict(row)
    if raw is None:
        body.pop(field, None)
        return orjson.dumps(body)
    marker = "\u0000MARK\u0000"
    body[field] = marker
    return orjson.dumps(body).replace(orjson.dumps(marker), raw.encode())


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_fast_path_agrees_with_the_reference_on_edge_cases(version: str) -> None:
    fast, ref = RowValidator(SCHEMAS[version]), _reference(version)
    base = make_row(schema_version=version, schema_hash=SCHEMAS[version].hash)
    if version == "v3":
        base.update({n: 0.25 for n, _t in SCHEMAS["v3"].registry if n.startswith("title_") and _t == "float"})
        base.update({"title_char_count": 12, "title_token_count": 3, "title_separator_count": 1})
    assert _check(orjson.dumps(base), fast, ref)
    fields = [n for n, _ in SCHEMAS[version].registry if not n.startswith("title_token_sketch") and not n.startswith("title_char3_sketch")]
    fields += ["user_id", "title_token_sketch_007", "title_char3_sketch_100"] if version == "v3" else ["user_id"]
    accepted = refused = 0
    for field in fields:
        for raw in [*NUMBERS, None]:
            ok = _check(_with(base, field, raw), fast, ref)
            accepted += ok
            refused += not ok
    # both sides are exercised: many variants are accepted quickly, many fall through
    assert accepted > 300 and refused > 300, (accepted, refused)


def test_fast_path_agrees_on_keys_timestamps_and_encodings() -> None:
    fast, ref = RowValidator(SCHEMAS["v1"]), _reference("v1")
    row = make_row()
    good = orjson.dumps(row)
    cases = [
        good,
        b"  " + good + b"\n",
        good[:-1] + b',"extra_field":1}',  # unknown key: reference ignores it, fast path declines
        good[:-1] + b',"raw_keys":[1,2]}',
        good[:-1] + b',"\\u0072aw_keys":1}',  # raw_* written with an escape
        b'{"\\u0075ser_id":' + orjson.dumps(row["user_id"]) + b"," + good[1:].replace(b'"user_id":', b'"x_user_id":', 1),
        good[:-1] + b',"keys_per_min":"fast"}',  # duplicate key, invalid last
        good.replace(b'"keys_per_min":', b'"keys_per_min":"x","keys_per_min":', 1),  # duplicate key, valid last
        good.replace(b'"keys_per_min":', b'"keys_per_min":1.5,"keys_per_min":', 1),
        good.replace(b'"app_id":"', b'"app_id":"\\ud83d\\ude00', 1),
        good.replace(b'"app_id":"', b'"app_id":"\\ud800', 1),  # lone surrogate
        good.replace(b'"app_id":"', b'"app_id":"\xff', 1),  # invalid UTF-8
        good.replace(b'"app_id":"', b'"app_id":"\\u0000', 1),
        b"\xef\xbb\xbf" + good,
        good + b"x",
        b"[" + good + b"]",
        b"null",
        b"",
    ]
    for ts in ["2026-04-06T10:00:00Z", "2026-04-06T10:00:00", "2026-04-06T10:00:00+02:00", "2026-04-06 10:00:00", "2026-04-06T10:00:00.123456Z",
               "2026-02-30T10:00:00Z", "not a time", "", "2026-04-06T10:01:00Z", "2026-04-06T09:59:00Z", "1775469600"]:
        cases.append(_with(row, "bucket_start_ts", orjson.dumps(ts).decode()))
        cases.append(_with(row, "bucket_end_ts", orjson.dumps(ts).decode()))
    cases.append(_with(row, "bucket_end_ts", "null"))
    cases.append(_with(row, "bucket_end_ts", None))
    cases.append(_with(row, "schema_hash", "null"))
    cases.append(_with(row, "schema_hash", '"000000000000"'))
    cases.append(_with(row, "schema_version", '"v2"'))
    cases.append(_with(row, "source_ids", "null"))
    cases.append(_with(row, "source_ids", '["a", 1]'))
    cases.append(_with(row, "user_id", '""'))
    accepted = sum(_check(c, fast, ref) for c in cases)
    assert 8 <= accepted < len(cases)


def test_nan_cannot_reach_the_fast_path() -> None:
    fast = RowValidator(SCHEMAS["v1"])
    for raw in ("NaN", "Infinity", "1e999"):
        assert fast.fast_decode(_with(make_row(), "keys_per_min", raw)) is None
    assert not math.isnan(fast.fast_decode(orjson.dumps(make_row(keys_per_min=1.5))).values["keys_per_min"])
