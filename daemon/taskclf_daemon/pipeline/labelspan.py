"""taskclf ``LabelSpan`` records (spec 14): decode, validate, project onto a user's windows.

A span is ``{start_ts, end_ts, label, provenance, user_id?, confidence?, extend_forward?}``:
``start_ts`` inclusive, ``end_ts`` exclusive, both timezone-aware (an ISO-8601 string with an
offset, or epoch seconds) and normalised to UTC; ``label`` one of labels_v1; ``provenance`` a
non-empty string (``"manual"``, ``"weak:app_rule"``, ...); ``confidence`` in [0, 1] or null
(NaN -> null, as taskclf); ``extend_forward`` a boolean (default false; carried, the span's
``end_ts`` is what projection uses). Bounds follow the window decoder's: timestamps in
1970 .. 2199 UTC, ``user_id`` <= 256 characters, other strings <= 1,024.

A bad span raises :class:`~taskclf_daemon.errors.InvalidRecord` with a reason from
:data:`SPAN_REASONS` (the DLQ header), never anything else.

**Projection** (taskclf ``labels/projection.py``, strict containment): a window
``[bucket_start, bucket_start + bucket_seconds)`` gets a label only when it lies wholly inside
exactly one span that applies to its user, and overlaps no other applicable span; windows
overlapping several spans, partially covered or uncovered get none. A span with a ``user_id``
applies to that user's windows only; a span without one applies to any user it is given for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from taskclf_daemon.codec import DEFAULT_MAX_RECORD_BYTES, MAX_STR_CHARS, MAX_USER_ID_CHARS
from taskclf_daemon.errors import InvalidRecord
from taskclf_daemon.labels import DEFAULT_BUCKET_SECONDS, LABEL_INDEX, LABELS
from taskclf_daemon.timeutil import format_ts_us, parse_ts_us

#: every reason a span can be refused with (DLQ header / metric label values)
SPAN_REASONS = ("oversize", "invalid_json", "not_an_object", "missing_field", "wrong_type", "out_of_range", "bad_timestamp", "unknown_label", "key_mismatch")

_FIELDS = ("start_ts", "end_ts", "label", "provenance", "user_id", "confidence", "extend_forward")


@dataclass(frozen=True, slots=True)
class LabelSpan:
    """One validated span; times in epoch microseconds (UTC), ``label`` its alphabetical index."""

    start_us: int
    end_us: int
    label: int
    provenance: str
    user_id: str | None = None
    confidence: float | None = None
    extend_forward: bool = False

    @property
    def label_name(self) -> str:
        return LABELS[self.label]

    def applies_to(self, user_id: str) -> bool:
        return self.user_id is None or self.user_id == user_id

    def contains(self, start_us: int, end_us: int) -> bool:
        """Whether ``[start_us, end_us)`` lies wholly inside the span."""
        return self.start_us <= start_us and end_us <= self.end_us

    def overlaps(self, start_us: int, end_us: int) -> bool:
        return self.start_us < end_us and start_us < self.end_us

    def to_json(self) -> dict[str, Any]:
        """taskclf's LabelSpan JSON (UTC ``Z`` timestamps); optional fields only when set."""
        d: dict[str, Any] = {"start_ts": format_ts_us(self.start_us), "end_ts": format_ts_us(self.end_us), "label": self.label_name, "provenance": self.provenance}
        if self.user_id is not None:
            d["user_id"] = self.user_id
        if self.confidence is not None:
            d["confidence"] = self.confidence
        if self.extend_forward:
            d["extend_forward"] = True
        return d


def _aware_ts(obj: dict[str, Any], name: str) -> int:
    if name not in obj or obj[name] is None:
        raise InvalidRecord("missing_field", f"field {name!r} is required")
    v = obj[name]
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise InvalidRecord("wrong_type", f"field {name!r} must be an ISO-8601 string or epoch seconds, got {type(v).__name__}")
    if isinstance(v, str):
        s = v.strip()
        # aware: a trailing Z or a +HH:MM / -HH:MM offset after the time part
        tail = s[10:] if len(s) > 10 else ""
        if not (tail.endswith(("Z", "z")) or "+" in tail or "-" in tail):
            raise InvalidRecord("bad_timestamp", f"field {name!r}: {s[:40]!r} has no UTC offset (taskclf needs aware timestamps)")
    try:
        return parse_ts_us(v)
    except ValueError as exc:
        raise InvalidRecord("bad_timestamp", f"field {name!r}: {exc}") from None


def _string(obj: dict[str, Any], name: str, limit: int, required: bool) -> str | None:
    v = obj.get(name)
    if v is None:
        if required:
            raise InvalidRecord("missing_field", f"field {name!r} is required")
        return None
    if type(v) is not str:
        raise InvalidRecord("wrong_type", f"field {name!r} must be a string, got {type(v).__name__}")
    if not v:
        raise InvalidRecord("out_of_range", f"field {name!r} must not be empty")
    if len(v) > limit:
        raise InvalidRecord("out_of_range", f"field {name!r} is {len(v)} characters long, limit {limit}")
    return v


def span_from_obj(obj: Any) -> LabelSpan:
    """Validate a decoded JSON value as a LabelSpan.

    :raises InvalidRecord: with a reason from :data:`SPAN_REASONS`
    """
    if not isinstance(obj, dict):
        raise InvalidRecord("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    start = _aware_ts(obj, "start_ts")
    end = _aware_ts(obj, "end_ts")
    if end <= start:
        raise InvalidRecord("bad_timestamp", "field 'end_ts' must be after 'start_ts'")
    label = _string(obj, "label", MAX_STR_CHARS, True)
    assert label is not None
    if label not in LABEL_INDEX:
        raise InvalidRecord("unknown_label", f"field 'label' is {label[:40]!r}, not one of labels_v1 ({', '.join(LABELS)})")
    provenance = _string(obj, "provenance", MAX_STR_CHARS, True)
    assert provenance is not None
    user_id = _string(obj, "user_id", MAX_USER_ID_CHARS, False)
    conf = obj.get("confidence")
    if conf is not None:
        if isinstance(conf, bool) or not isinstance(conf, (int, float)):
            raise InvalidRecord("wrong_type", f"field 'confidence' must be a number or null, got {type(conf).__name__}")
        if math.isnan(conf):
            conf = None
        elif not 0.0 <= conf <= 1.0:
            raise InvalidRecord("out_of_range", f"field 'confidence'={conf!r} outside [0, 1]")
        else:
            conf = float(conf)
    ext = obj.get("extend_forward", False)
    if ext is None:
        ext = False
    if type(ext) is not bool:
        raise InvalidRecord("wrong_type", f"field 'extend_forward' must be a boolean, got {type(ext).__name__}")
    return LabelSpan(start, end, LABEL_INDEX[label], provenance, user_id, conf, ext)


def decode_span(data: bytes, max_bytes: int = DEFAULT_MAX_RECORD_BYTES, key: bytes | None = None) -> LabelSpan:
    """Decode one LabelSpan record (a Kafka value or a JSONL line).

    ``NaN`` is accepted for ``confidence`` only (taskclf writes it; it becomes null). With a
    ``key`` (the feedback topic's record key), a span must name that user: ``user_id`` absent or
    different is ``key_mismatch`` -- the topic is keyed and co-partitioned by user.

    :raises InvalidRecord: with a reason from :data:`SPAN_REASONS`
    """
    if len(data) > max_bytes:
        raise InvalidRecord("oversize", f"record is {len(data)} bytes, limit {max_bytes}")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        obj = _loads_with_nan(data, exc)
    span = span_from_obj(obj)
    if key is not None:
        try:
            k = key.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRecord("key_mismatch", "record key is not UTF-8") from None
        if span.user_id != k:
            raise InvalidRecord("key_mismatch", f"record key {k[:40]!r} differs from user_id {(span.user_id or '')[:40]!r} (the feedback topic is keyed by user_id)")
    return span


def _loads_with_nan(data: bytes, exc: Exception) -> Any:
    """taskclf may write ``"confidence": NaN``; accept that literal there, nowhere else."""
    import json

    try:
        obj = json.loads(data, parse_constant=lambda c: float("nan") if c == "NaN" else _bad_constant(c))
    except (ValueError, RecursionError):
        raise InvalidRecord("invalid_json", str(exc)[:200]) from None
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k != "confidence" and _has_nan(v):
                raise InvalidRecord("invalid_json", f"NaN is accepted for 'confidence' only (found in {str(k)[:40]!r})")
    return obj


def _bad_constant(c: str) -> float:
    raise ValueError(f"{c} is not JSON")


def _has_nan(v: Any) -> bool:
    if isinstance(v, float):
        return v != v
    if isinstance(v, dict):
        return any(_has_nan(x) for x in v.values())
    if isinstance(v, list):
        return any(_has_nan(x) for x in v)
    return False


def window_label(spans: Iterable[LabelSpan], user_id: str, start_us: int, bucket_us: int = DEFAULT_BUCKET_SECONDS * 1_000_000) -> int | None:
    """The label index of one window under strict containment, or ``None``."""
    end_us = start_us + bucket_us
    found: int | None = None
    hits = 0
    for s in spans:
        if not s.applies_to(user_id) or not s.overlaps(start_us, end_us):
            continue
        hits += 1
        if hits > 1 or not s.contains(start_us, end_us):
            return None
        found = s.label
    return found


def project(spans: Sequence[LabelSpan], user_id: str, starts_us: Sequence[int], bucket_us: int = DEFAULT_BUCKET_SECONDS * 1_000_000) -> list[int | None]:
    """Labels of the user's windows (by ``bucket_start`` in epoch microseconds), strict containment.

    Spans are sorted by start once; each window looks only at spans that can overlap it.
    """
    mine = sorted((s for s in spans if s.applies_to(user_id)), key=lambda s: (s.start_us, s.end_us))
    if not mine:
        return [None] * len(starts_us)
    import bisect

    starts = [s.start_us for s in mine]
    longest = max(s.end_us - s.start_us for s in mine)
    out: list[int | None] = []
    for t in starts_us:
        end = t + bucket_us
        hi = bisect.bisect_left(starts, end)
        lo = bisect.bisect_right(starts, t - longest)
        out.append(window_label(mine[lo:hi], user_id, t, bucket_us))
    return out
