"""The codec's field checks and fast paths, built afresh, behave as the imported ones.

``codec.py`` builds its per-field checks (``_num``, ``_int``, ``_str``... closures with their
generated fast-path tests and msgspec types) once, at import. This test executes the module a
second time, inside the test, and compares the two builds record by record: the decode outcome
(values to the bit, or the refusal's reason and detail) and which fast path accepted the record;
and each check's description (``_contract``, what the input-row JSON Schemas are made from).

In a normal run both builds come from the same code and this is a determinism check. Its real
job is mutation testing (``make mutate``): mutmut activates a mutant only in code that runs
after its worker started, so a change to the import-time construction is invisible to every
other test; here it changes the fresh build only, and any difference in behaviour shows.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

import orjson
import pytest

from helpers_rows import make_row
from taskclf_daemon import codec
from taskclf_daemon.errors import InvalidRecord
from taskclf_daemon.schema import SCHEMAS
from test_codec_fastdecode import NUMBERS, _bits, _with


@pytest.fixture(scope="module")
def fresh() -> ModuleType:
    spec = importlib.util.find_spec("taskclf_daemon.codec")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)  # not registered in sys.modules
    spec.loader.exec_module(mod)
    assert mod is not codec and mod.RowValidator is not codec.RowValidator
    return mod


#: below/between every bound, as floats (NUMBERS has no negative finite float but -0.0)
MORE_NUMBERS = ["-0.5", "-1.5", "-1e-300", "-7.0", "0.25", "23.5", "6.5", "255.5", "-2147483648.5"]


def _behaviour(mod: ModuleType, v: Any, data: bytes) -> tuple:
    """Everything observable about one record: both fast paths' verdicts and the outcome."""
    fast = v.fast_decode(data) if v.fast_decode is not None else None
    fast_dict: Any = "n/a"
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        obj = None
    if type(obj) is dict and v._fast is not None:
        w = v._fast(obj)
        fast_dict = None if w is None else (w.user_id, w.ts_us, {k: _bits(x) for k, x in w.values.items()})
    try:
        w = mod.decode_window(data, v)
    except InvalidRecord as exc:
        out: tuple = ("refused", exc.reason, exc.detail)
    else:
        out = ("ok", w.user_id, w.ts_us, w.schema_version, {k: _bits(x) for k, x in w.values.items()}, list(w.values))
    # the detailed checks alone, also where a fast path answered first
    detailed: tuple = ("n/a",)
    if obj is not None:
        try:
            w = v._validate(obj)
        except InvalidRecord as exc:
            detailed = ("refused", exc.reason, exc.detail)
        else:
            detailed = ("ok", w.user_id, w.ts_us, {k: _bits(x) for k, x in w.values.items()})
    return (fast is not None, fast_dict, out, detailed)


def _corpus(version: str) -> list[bytes]:
    base = make_row(schema_version=version, schema_hash=SCHEMAS[version].hash)
    if version == "v3":
        base.update({n: 0.25 for n, _t in SCHEMAS["v3"].registry if n.startswith("title_") and _t == "float"})
        base.update({"title_char_count": 12, "title_token_count": 3, "title_separator_count": 1})
    fields = [n for n, _ in SCHEMAS[version].registry if not n.startswith(("title_token_sketch", "title_char3_sketch"))]
    fields += ["user_id", "title_token_sketch_007", "title_char3_sketch_100"] if version == "v3" else ["user_id"]
    out = [orjson.dumps(base)]
    for field in fields:
        for raw in [*NUMBERS, *MORE_NUMBERS, '"x"', '"2026-04-06T10:00:00Z"', None]:
            out.append(_with(base, field, raw))
    good = orjson.dumps(base)
    out += [
        good[:-1] + b',"extra_field":1}',
        good[:-1] + b',"raw_keys":[1,2]}',
        b"[1]",
        b"null",
        orjson.dumps({k: base[k] for k in reversed(list(base))}),  # same keys, other order
    ]
    # strings at, below and one past their length limit (user_id 256, the others 1024)
    for field, limit in (("user_id", codec.MAX_USER_ID_CHARS), ("app_id", codec.MAX_STR_CHARS), ("device_id", codec.MAX_STR_CHARS)):
        for n in (limit - 1, limit, limit + 1):
            out.append(orjson.dumps(dict(base, **{field: "é" * n})))
    return out


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_fresh_build_of_the_codec_behaves_as_the_imported_one(version: str, fresh: ModuleType) -> None:
    imported, rebuilt = codec.RowValidator(SCHEMAS[version]), fresh.RowValidator(SCHEMAS[version])
    corpus = _corpus(version)
    kinds = set()
    for data in corpus:
        a, b = _behaviour(codec, imported, data), _behaviour(fresh, rebuilt, data)
        assert b == a, data
        kinds.add((a[0], a[2][0]))
    # the corpus reaches the fast path, the fallback and the refusals
    assert {(True, "ok"), (False, "ok"), (False, "refused")} <= kinds, kinds


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_fresh_build_describes_its_checks_as_the_imported_one(version: str, fresh: ModuleType) -> None:
    """What each check accepts, as the JSON Schemas of ``contracts.py`` read it (``_contract``)."""
    imported, rebuilt = codec.RowValidator(SCHEMAS[version]), fresh.RowValidator(SCHEMAS[version])
    described = [(n, getattr(c, "_contract", None), r) for n, c, r, _d in imported.fields]
    assert [(n, getattr(c, "_contract", None), r) for n, c, r, _d in rebuilt.fields] == described
    assert all(type(c) is dict for _n, c, _r in described)
    assert {c["kind"] for _n, c, _r in described} == {"number", "integer", "boolean", "string", "string_list", "timestamp"}
