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

Speed: :func:`decode_window` first tries :attr:`RowValidator.fast_decode`, one msgspec call
that decodes and checks a record against a generated ``Struct`` (the fields' fast tests as
msgspec types, unknown keys refused); it only ever accepts too, with the values the detailed
checks would produce (``tests/test_codec_fastdecode.py`` holds it to that), and takes ~2.6 µs
per golden row instead of ~4.7 µs for orjson and the generated checks below.

:meth:`RowValidator.validate` (a decoded object) first tries a *fast path*, a function generated once per
validator with every field's check inlined (exact-type tests and chained range comparisons,
ISO timestamps parsed through a small cache). It only ever *accepts*: on anything it does not
recognise as plainly valid it returns ``None`` and the detailed checks below run, in their
usual order, so the refusal reason and detail are exactly theirs. Each check's fast test is
written next to it (``_fast_test``) and accepts a subset of what the check accepts, returning
the same value.
"""

from __future__ import annotations

import math
import operator
import sys
from collections.abc import Callable
from typing import Annotated, Any, Optional, Union

import msgspec
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

#: longest accepted ``user_id`` (characters; <= 1 KiB of UTF-8): it is the Kafka key of every
#: output, dead letter and changelog record and a key of the in-memory state
MAX_USER_ID_CHARS = 256
#: longest accepted value of any other string field (``app_id`` enters the user's history, so
#: this bounds the changelog record: 15 history rows x 1,024 characters)
MAX_STR_CHARS = 1024
#: unknown keys longer than this are never remembered by a validator (bounded memory)
_MAX_LEARNED_KEY_CHARS = 64

_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1

_Check = Callable[[str, Any], Any]


def _lit(x: Any) -> str:
    """``x`` as a Python literal for generated code (exact: ints, finite floats)."""
    if type(x) is int or (type(x) is float and math.isfinite(x)):
        return repr(x)
    raise TypeError(f"no exact literal for {x!r}")  # pragma: no cover - bounds are ints/floats


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

    if convert is _as_float:
        # int or float within [lo, hi]; the bounds default to +-max float, so NaN and +-inf (and
        # ints too large to convert) fail. Exact int/float comparison: an int that passes also
        # passes after float(), whose rounding is monotonic and keeps it within float bounds.
        rng = f"{_lit(-sys.float_info.max if lo is None else lo)} <= {{v}} <= {_lit(sys.float_info.max if hi is None else hi)}"
        alts = [f"type({{v}}) is float and {rng}", f"type({{v}}) is int and {rng}"]
    else:  # _as_int: exact ints only (an integral float is converted by the detailed check)
        alts = ["type({v}) is int" + "".join(f" and {{v}} {op} {_lit(b)}" for op, b in ((">=", lo), ("<=", hi)) if b is not None)]
    if nullable:
        alts.insert(1 if convert is _as_float else 0, "{v} is None")  # the usual type first
    check._fast_test = "(" + " or ".join(f"({a})" for a in alts) + ")"  # type: ignore[attr-defined]
    # the same subset as a msgspec type: JSON ints stay ints (as orjson gives them) within int64
    # and within [lo, hi]; floats within [lo, hi] (the float bounds default to +-max float)
    if convert is _as_float:
        flo = -sys.float_info.max if lo is None else float(lo)
        fhi = sys.float_info.max if hi is None else float(hi)
        ms: Any = Union[  # noqa: UP007 - a runtime type for msgspec, left as built
            Annotated[int, msgspec.Meta(ge=max(_I64_MIN, math.ceil(flo)), le=min(_I64_MAX, math.floor(fhi)))],
            Annotated[float, msgspec.Meta(ge=flo, le=fhi)],
        ]
    else:
        ms = Annotated[int, msgspec.Meta(ge=_I64_MIN if lo is None else max(_I64_MIN, lo), le=_I64_MAX if hi is None else min(_I64_MAX, hi))]
    check._ms_type = Optional[ms] if nullable else ms  # type: ignore[attr-defined]  # noqa: UP045
    # what the check accepts, for the JSON Schemas of ``contracts.py``
    check._contract = {"kind": "number" if convert is _as_float else "integer", "lo": lo, "hi": hi, "nullable": nullable}  # type: ignore[attr-defined]
    return check


def _num(lo: float | None = None, hi: float | None = None, nullable: bool = False) -> _Check:
    return _bounded(_as_float, lo, hi, nullable)


def _int(lo: int | None = None, hi: int | None = None, nullable: bool = False) -> _Check:
    return _bounded(_as_int, lo, hi, nullable)


def _bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise _bad_type(name, "a boolean", v)


_bool._fast_test = "({v} is True or {v} is False)"  # type: ignore[attr-defined]
_bool._ms_type = bool  # type: ignore[attr-defined]
_bool._contract = {"kind": "boolean"}  # type: ignore[attr-defined]


def _str(nullable: bool = False, nonempty: bool = False, max_chars: int = MAX_STR_CHARS) -> _Check:
    def check(name: str, v: Any) -> Any:
        if v is None and nullable:
            return None
        if not isinstance(v, str):
            raise _bad_type(name, "a string", v)
        if nonempty and not v:
            raise InvalidRecord("out_of_range", f"field {name!r} must not be empty")
        if len(v) > max_chars:
            raise InvalidRecord("out_of_range", f"field {name!r} is {len(v)} characters long, limit {max_chars}")
        return v

    test = "type({v}) is str" + (" and {v} != ''" if nonempty else "") + f" and len({{v}}) <= {max_chars}"
    check._fast_test = f"({{v}} is None or ({test}))" if nullable else f"({test})"  # type: ignore[attr-defined]
    ms: Any = Annotated[str, msgspec.Meta(min_length=1 if nonempty else 0, max_length=max_chars)]
    check._ms_type = Optional[ms] if nullable else ms  # type: ignore[attr-defined]  # noqa: UP045
    check._contract = {"kind": "string", "nullable": nullable, "min_chars": 1 if nonempty else 0, "max_chars": max_chars}  # type: ignore[attr-defined]
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


_str_list._fast_test = "(type({v}) is list and _STR_ONLY.issuperset(map(type, {v})))"  # type: ignore[attr-defined]
_str_list._ms_type = list[str]  # type: ignore[attr-defined]
_ts._ms_type = str  # type: ignore[attr-defined]  # parsed after decoding
_str_list._contract = {"kind": "string_list"}  # type: ignore[attr-defined]
_ts._contract = {"kind": "timestamp"}  # type: ignore[attr-defined]


_MISSING = object()

# --------------------------------------------------------------------------- fast path support

#: ISO timestamp string -> epoch us, for strings that parsed (parse_ts_us is pure); bounded
_TS_CACHE: dict[str, int] = {}
_TS_CACHE_MAX = 16384  # ~2 MB; an end timestamp is the next window's start, ~2 entries per user later
#: the element types a fast-path ``source_ids`` list may hold
_STR_ONLY = frozenset((str,))
#: at most this many keys outside the schemas are remembered as "not raw_*" per validator
_MAX_LEARNED_KEYS = 1024


def _fast_ts(v: str) -> int | None:
    """``parse_ts_us(v)`` for a string, cached; ``None`` when it fails in any way."""
    try:
        us = parse_ts_us(v)
    except Exception:  # noqa: BLE001 - the detailed check reports it (or raises it) in order
        return None
    if len(_TS_CACHE) >= _TS_CACHE_MAX:
        _TS_CACHE.clear()
    _TS_CACHE[v] = us
    return us


def _build_fast(version: str, schema_hash: str, fields: list[tuple[str, _Check, bool, Any]]) -> tuple[Callable[[dict], Any], Callable[[dict], Any], str] | None:
    """Generate the fast path of one validator (see the module docstring).

    Returns ``(fast, fast_exact, source)``. ``fast(obj)`` takes a ``dict`` whose keys are known
    not to start with ``raw_``; ``fast_exact(obj)`` one whose keys are exactly the validator's
    fields in its order. Both return the :class:`FeatureWindow` that
    :meth:`RowValidator._validate` would return, or ``None`` when they cannot tell quickly (then
    the detailed checks decide). Fields are tested in the validator's order, each with its
    check's ``_fast_test``. In ``fast`` a required field, or an optional one whose default would
    itself fail the test (e.g. ``None`` for a non-nullable field), is read with a sentinel
    default that every test rejects; the latter then gets its default.
    """
    names = [n for n, *_ in fields]
    if "bucket_start_ts" not in names or "user_id" not in names:  # pragma: no cover - always there
        return None
    ns: dict[str, Any] = {"_M": _MISSING, "_FW": FeatureWindow, "_STR_ONLY": _STR_ONLY, "_tsc": _TS_CACHE.get, "_ts": _fast_ts}
    defaults: list[Any] = []
    body: list[str] = []
    for i, (name, check, required, default) in enumerate(fields):
        v = f"v{i}"
        if check is _ts:
            defaults.append(_MISSING)
            if not required:  # a missing optional timestamp is the default; a null one is refused
                ns[f"_d{i}"] = default
                body += [f"if {v} is _M:", f"    {v} = _d{i}", "else:"]
            ind = "" if required else "    "
            body += [
                f"{ind}if type({v}) is not str:",
                f"{ind}    return None",
                f"{ind}x = _tsc({v})",
                f"{ind}if x is None:",
                f"{ind}    x = _ts({v})",
                f"{ind}    if x is None:",
                f"{ind}        return None",
                f"{ind}{v} = x",
            ]
            continue
        test = check._fast_test  # type: ignore[attr-defined]
        if eval(test.format(v="x"), dict(ns), {"x": _MISSING}):  # noqa: S307 - our own text
            raise AssertionError(f"fast test of {name!r} accepts the missing sentinel")  # pragma: no cover
        if required or not eval(test.format(v="x"), dict(ns), {"x": default}):  # noqa: S307
            defaults.append(_MISSING)
            if not required:
                ns[f"_d{i}"] = default
                body += [f"if {v} is _M:", f"    {v} = _d{i}", f"elif not {test.format(v=v)}:", "    return None"]
                continue
        else:
            defaults.append(default)
        body += [f"if not {test.format(v=v)}:", "    return None"]
    ns["_NAMES"] = tuple(names)
    ns["_DEFAULTS"] = tuple(defaults)
    ns["_ALL"] = operator.itemgetter(*names)
    var = {n: f"v{i}" for i, n in enumerate(names)}
    unpack = f"({', '.join(var.values())},) = "
    # schema_version / schema_hash first, like the detailed checks (they are ordinary fields too)
    schema = [f"sv = {var['schema_version']}" if "schema_version" in var else "sv = obj.get('schema_version', _M)"]
    schema += [f"if type(sv) is not str or sv != {version!r}:", "    return None"]
    h = var.get("schema_hash", "sh")
    if h == "sh":  # pragma: no cover - every registry has it
        schema += ["sh = obj.get('schema_hash', _M)"]
    schema += [f"if {h} is not _M and (type({h}) is not str or {h} != {schema_hash!r}):", "    return None"]
    start = var["bucket_start_ts"]
    if "bucket_end_ts" in var:
        end = var["bucket_end_ts"]
        body += [f"if {end} is not None and {end} <= {start}:", "    return None"]
    head = {
        # any dict without raw_* keys: read every field (one C call when all are there), build values
        "fast": [
            "try:",
            "    vals = _ALL(obj)",
            "except KeyError:",
            "    vals = tuple(map(obj.get, _NAMES, _DEFAULTS))",
            unpack + "vals",
        ],
        # keys exactly the fields, in order: values = a copy of obj with the timestamps parsed
        # (every other check returns its value unchanged) -- copying beats building a dict
        "fast_exact": [unpack + "obj.values()"],
    }
    tail = {
        "fast": [f"return _FW({var['user_id']}, {start}, sv, {{{', '.join(f'{n!r}: {v}' for n, v in var.items())}}})"],
        "fast_exact": ["values = obj.copy()"]
        + [f"values[{n!r}] = {var[n]}" for n, (_, check, *_r) in zip(names, fields) if check is _ts]
        + [f"return _FW({var['user_id']}, {start}, sv, values)"],
    }
    sig = "(obj, type=type, float=float, int=int, str=str, list=list):\n"
    src = "".join(
        f"def {fn}{sig}" + "".join(f"    {line}\n" for line in head[fn] + schema + body + tail[fn]) + "\n\n" for fn in head
    )
    exec(compile(src, f"<taskclf_daemon.codec fast path {version}>", "exec"), ns)  # noqa: S102 - our own text
    return ns["fast"], ns["fast_exact"], src


def _build_decoder(version: str, schema_hash: str, fields: list[tuple[str, _Check, bool, Any]]) -> Callable[[bytes | str], Any]:
    """The decode-and-validate fast path of one validator: JSON bytes -> :class:`FeatureWindow`
    in one msgspec call, or ``None`` (then orjson and the checks above decide).

    The generated ``msgspec.Struct`` has every field of the validator with the msgspec form of
    its check's fast test (``_ms_type``: the same subset of JSON values, with the same Python
    values) and refuses unknown keys, so anything it accepts has only schema fields -- no
    ``raw_*`` key, however it is escaped. Missing optional fields take the validator's
    defaults; an explicit ``null`` for a non-nullable field is refused, as by the checks.
    What is left is checked here like in the generated fast path: schema version and hash,
    timestamps (through the same cache), end after start. Any error, of any kind, means
    "cannot tell quickly".
    """
    spec: list[tuple[Any, ...]] = []
    for name, check, required, default in fields:
        ms = check._ms_type  # type: ignore[attr-defined]
        spec.append((name, ms) if required else (name, ms, default))
    row_type = msgspec.defstruct(f"FeatureRow_{version}", spec, kw_only=True, forbid_unknown_fields=True)
    decode_row: Callable[[bytes | str], Any] = msgspec.json.Decoder(row_type).decode  # a generated Struct
    asdict = msgspec.structs.asdict
    names = [n for n, *_ in fields]
    has_end = "bucket_end_ts" in names
    tsc, ts = _TS_CACHE.get, _fast_ts

    def decode(data: bytes | str) -> FeatureWindow | None:
        try:
            r = decode_row(data)
        except Exception:  # noqa: BLE001 - refused or odd: the detailed path reports it
            return None
        sv = r.schema_version
        if sv != version or (r.schema_hash is not None and r.schema_hash != schema_hash):
            return None
        start = tsc(r.bucket_start_ts)
        if start is None:
            start = ts(r.bucket_start_ts)
            if start is None:
                return None
        values = asdict(r)
        values["bucket_start_ts"] = start
        if has_end:
            end = r.bucket_end_ts
            if end is not None:
                e = tsc(end)
                if e is None:
                    e = ts(end)
                    if e is None:
                        return None
                if e <= start:
                    return None
                values["bucket_end_ts"] = e
        return FeatureWindow(r.user_id, start, sv, values)

    return decode


# (name) -> (checker, required, default)
_FIELDS: dict[str, tuple[_Check, bool, Any]] = {
    "user_id": (_str(nonempty=True, max_chars=MAX_USER_ID_CHARS), True, _MISSING),
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
        #: keys known not to start with ``raw_`` (the schemas' fields, plus unknown keys seen)
        self._plain_keys: set[str] = set(_FIELDS) | set(_V3_FIELDS)
        self._max_keys = len(self._plain_keys) + _MAX_LEARNED_KEYS
        self._names = tuple(names)
        built = _build_fast(schema.version, schema.hash, self._fields)
        self._fast: Callable[[dict], Any] | None
        self._fast_exact: Callable[[dict], Any] | None
        self._fast, self._fast_exact, self._fast_source = built if built is not None else (None, None, "")
        #: bytes -> FeatureWindow or None: the msgspec fast path (see :func:`_build_decoder`)
        self.fast_decode: Callable[[bytes | str], FeatureWindow | None] | None = _build_decoder(schema.version, schema.hash, self._fields)

    @property
    def fields(self) -> list[tuple[str, _Check, bool, Any]]:
        """``(name, check, required, default)`` of every field, in the order they are checked (the
        input-row JSON Schemas of ``contracts.py`` are generated from it)."""
        return list(self._fields)

    def _no_raw_keys(self, obj: dict) -> bool:
        """True if no key of ``obj`` starts with ``raw_``; remembers its keys while there is room."""
        for k in obj:
            if type(k) is not str or k.startswith("raw_"):
                return False
        if len(self._plain_keys) + len(obj) <= self._max_keys:
            self._plain_keys.update(k for k in obj if len(k) <= _MAX_LEARNED_KEY_CHARS)
        return True

    def validate(self, obj: Any) -> FeatureWindow:
        """Check one decoded JSON value; return a :class:`FeatureWindow` or raise InvalidRecord."""
        if type(obj) is dict and self._fast is not None and self._fast_exact is not None:
            if len(obj) == len(self._names) and tuple(obj) == self._names:  # keys = the fields, in order
                w = self._fast_exact(obj)
            elif self._plain_keys.issuperset(obj) or self._no_raw_keys(obj):
                w = self._fast(obj)
            else:
                w = None
            if w is not None:
                return w
        return self._validate(obj)

    def _validate(self, obj: Any) -> FeatureWindow:
        """The detailed checks: the reference behaviour, and every refusal's reason and detail."""
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
    if validator.fast_decode is not None:
        w = validator.fast_decode(data)
        if w is not None:
            return w
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord("invalid_json", str(exc)[:200]) from None
    try:
        return validator.validate(obj)
    except (OverflowError, ValueError) as exc:  # never let a value crash the consumer
        raise InvalidRecord("out_of_range", f"value out of range: {exc}"[:200]) from None


__all__ = ["REASONS", "RowValidator", "decode_window", "META_COLUMNS"]
