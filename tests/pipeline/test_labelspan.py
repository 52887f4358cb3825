"""LabelSpan decoding (spec 14) and taskclf's strict-containment projection."""

from __future__ import annotations

import random

import orjson
import pytest

from taskclf_daemon.errors import InvalidRecord
from taskclf_daemon.labels import LABEL_INDEX
from taskclf_daemon.pipeline.labelspan import SPAN_REASONS, LabelSpan, decode_span, project, span_from_obj, window_label
from taskclf_daemon.timeutil import parse_ts_us

M = 60_000_000
T0 = parse_ts_us("2026-03-09T10:00:00Z")
GOOD = {"start_ts": "2026-03-09T10:00:00Z", "end_ts": "2026-03-09T10:30:00+00:00", "label": "Build", "provenance": "manual", "user_id": "u1", "confidence": 0.8}


def test_valid_span_normalised_to_utc_and_round_trips() -> None:
    s = decode_span(orjson.dumps({**GOOD, "start_ts": "2026-03-09T12:00:00+02:00"}), key=b"u1")
    assert (s.start_us, s.end_us, s.label, s.label_name, s.user_id, s.confidence, s.extend_forward) == (T0, T0 + 30 * M, LABEL_INDEX["Build"], "Build", "u1", 0.8, False)
    assert s.to_json() == {"start_ts": "2026-03-09T10:00:00Z", "end_ts": "2026-03-09T10:30:00Z", "label": "Build", "provenance": "manual", "user_id": "u1", "confidence": 0.8}
    assert span_from_obj(s.to_json()) == s
    # epoch seconds are aware; optional fields absent; extend_forward carried
    s2 = span_from_obj({"start_ts": T0 // 1_000_000, "end_ts": T0 // 1_000_000 + 60, "label": "Meet", "provenance": "weak:app_rule", "extend_forward": True})
    assert (s2.user_id, s2.confidence, s2.extend_forward, s2.end_us - s2.start_us) == (None, None, True, M)


def test_nan_confidence_is_none_and_nan_elsewhere_is_refused() -> None:
    s = decode_span(b'{"start_ts": "2026-03-09T10:00:00Z", "end_ts": "2026-03-09T10:01:00Z", "label": "Debug", "provenance": "manual", "confidence": NaN}')
    assert s.confidence is None and s.label_name == "Debug"
    with pytest.raises(InvalidRecord) as e:
        decode_span(b'{"start_ts": NaN, "end_ts": "2026-03-09T10:01:00Z", "label": "Debug", "provenance": "manual"}')
    assert e.value.reason == "invalid_json"


@pytest.mark.parametrize(
    ("change", "reason", "detail"),
    [
        ({"start_ts": "2026-03-09T10:00:00"}, "bad_timestamp", "has no UTC offset"),
        ({"end_ts": "2026-03-09T10:00:00Z"}, "bad_timestamp", "must be after"),
        ({"end_ts": "2300-01-01T00:00:00Z"}, "bad_timestamp", "outside the accepted range"),
        ({"end_ts": None}, "missing_field", "'end_ts' is required"),
        ({"start_ts": True}, "wrong_type", "'start_ts'"),
        ({"label": "Coding"}, "unknown_label", "not one of labels_v1"),
        ({"label": 3}, "wrong_type", "'label' must be a string"),
        ({"provenance": ""}, "out_of_range", "must not be empty"),
        ({"provenance": None}, "missing_field", "'provenance' is required"),
        ({"user_id": "u" * 257}, "out_of_range", "limit 256"),
        ({"confidence": 1.5}, "out_of_range", "outside [0, 1]"),
        ({"confidence": "high"}, "wrong_type", "'confidence'"),
        ({"extend_forward": "yes"}, "wrong_type", "'extend_forward'"),
    ],
)
def test_bad_spans_get_a_reason(change: dict, reason: str, detail: str) -> None:
    with pytest.raises(InvalidRecord) as e:
        span_from_obj({**GOOD, **change})
    assert e.value.reason == reason and reason in SPAN_REASONS
    assert detail in e.value.detail


def test_record_level_refusals() -> None:
    for data, reason in [(b"{nope", "invalid_json"), (b"[1]", "not_an_object"), (b"null", "not_an_object"), (b"x" * 101, "oversize")]:
        with pytest.raises(InvalidRecord) as e:
            decode_span(data, max_bytes=100)
        assert e.value.reason == reason
    for key in (b"u2", b"\xff", b""):
        with pytest.raises(InvalidRecord) as e:
            decode_span(orjson.dumps(GOOD), key=key)
        assert e.value.reason == "key_mismatch"
    with pytest.raises(InvalidRecord) as e:  # keyed topic: a span must name its user
        decode_span(orjson.dumps({k: v for k, v in GOOD.items() if k != "user_id"}), key=b"u1")
    assert e.value.reason == "key_mismatch"


def _span(a: int, b: int, label: str = "Build", user: str | None = None) -> LabelSpan:
    return LabelSpan(T0 + a * M, T0 + b * M, LABEL_INDEX[label], "manual", user)


def test_strict_containment() -> None:
    spans = [_span(0, 10, "Build"), _span(10, 20, "Debug"), _span(25, 35, "Meet"), _span(30, 40, "Write"), _span(50, 60, "Review", user="other")]
    starts = [T0 + m * M for m in range(-1, 62)]
    got = dict(zip(range(-1, 62), project(spans, "me", starts)))
    assert got[-1] is None  # uncovered
    assert got[0] == got[9] == LABEL_INDEX["Build"]  # start inclusive
    assert got[10] == got[19] == LABEL_INDEX["Debug"]  # end exclusive: minute 10 is Debug's only
    assert got[20] is None and got[24] is None
    assert got[25] == got[29] == LABEL_INDEX["Meet"]
    assert all(got[m] is None for m in range(30, 35))  # inside two spans
    assert got[35] == got[39] == LABEL_INDEX["Write"]
    assert all(got[m] is None for m in range(50, 60))  # another user's span
    assert project(spans, "other", [T0 + 55 * M]) == [LABEL_INDEX["Review"]]
    # partial cover: a 60-s window starting 30 s before a span's end
    assert window_label([_span(0, 10)], "me", T0 + 9 * M + 30_000_000) is None
    # a window overlapping a second span only partly is dropped too
    assert window_label([_span(0, 10), LabelSpan(T0 + 5 * M + 30_000_000, T0 + 20 * M, 1, "m")], "me", T0 + 5 * M) is None


def test_project_equals_brute_force_on_random_spans() -> None:
    rnd = random.Random(5)
    spans = []
    for _ in range(60):
        a = rnd.randrange(0, 600)
        spans.append(_span(a, a + rnd.randrange(1, 40), rnd.choice(list(LABEL_INDEX)), user=rnd.choice([None, "me", "you"])))
    starts = [T0 + m * M + rnd.choice([0, 0, 0, 30_000_000]) for m in range(0, 660)]
    assert project(spans, "me", starts) == [window_label(spans, "me", t) for t in starts]
    assert sum(x is not None for x in project(spans, "me", starts)) > 100
