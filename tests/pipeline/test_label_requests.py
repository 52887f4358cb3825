"""Label requests: which windows are asked about, how often, and the exact record."""

from __future__ import annotations

import orjson

from taskclf_daemon.pipeline.label_requests import ASK_BELOW, AskBudget, encode_request, request_id, should_ask

DAY = 86_400_000_000
T0 = 1_775_520_000_000_000  # 2026-04-07T00:00:00Z


def test_only_unsure_windows_are_asked_strictly_below_the_threshold() -> None:
    b = AskBudget()
    assert should_ask(b, T0, 0.549999, 20) is True
    assert should_ask(b, T0 + 60_000_000, ASK_BELOW, 20) is False  # equal: sure enough
    assert should_ask(b, T0 + 120_000_000, 0.9, 20) is False
    assert b == AskBudget(T0 // DAY, 1)


def test_quota_per_utc_day_of_event_time_resets_at_midnight() -> None:
    b = AskBudget()
    asked = [should_ask(b, T0 + i * 60_000_000, 0.3, 20) for i in range(25)]
    assert asked == [True] * 20 + [False] * 5
    # 23:59 the same day: still over quota; 00:00 the next day: asked again
    assert should_ask(b, T0 + DAY - 60_000_000, 0.3, 20) is False
    assert should_ask(b, T0 + DAY, 0.3, 20) is True
    assert b.asked == 1 and b.day == T0 // DAY + 1
    # a smaller quota (an eligible user) stops earlier
    e = AskBudget()
    assert sum(should_ask(e, T0 + i * 60_000_000, 0.1, 5) for i in range(10)) == 5


def test_budget_round_trip_and_garbage() -> None:
    b = AskBudget(20_550, 7)
    assert AskBudget.from_obj(orjson.loads(orjson.dumps(b.to_obj()))) == b
    for bad in (None, [1], [1, "2"], [True, 2], {"day": 1}):
        assert AskBudget.from_obj(bad) == AskBudget()


def test_request_record_is_taskclfs_shape_and_deterministic() -> None:
    v = encode_request("alice", T0 + 3_600_000_000, 0.412345, 2)
    rec = orjson.loads(v)
    assert list(rec) == ["request_id", "user_id", "bucket_start_ts", "bucket_end_ts", "reason", "confidence", "predicted_label", "created_at", "status"]
    assert rec["bucket_start_ts"] == "2026-04-07T01:00:00Z" and rec["bucket_end_ts"] == "2026-04-07T01:01:00Z"
    assert rec["created_at"] == rec["bucket_end_ts"] and rec["reason"] == "low_confidence" and rec["status"] == "pending"
    assert rec["confidence"] == 0.412345 and rec["predicted_label"] == "Communicate"
    assert rec["request_id"] == request_id("alice", "2026-04-07T01:00:00Z")
    assert len(rec["request_id"]) == 36 and rec["request_id"][14] == "5"  # a UUID-5
    assert encode_request("alice", T0 + 3_600_000_000, 0.412345, 2) == v  # same bytes every time
    assert request_id("bob", "2026-04-07T01:00:00Z") != rec["request_id"]


def test_request_id_is_the_uuid5_of_user_and_window() -> None:
    import random
    import uuid

    from taskclf_daemon.pipeline.label_requests import _NAMESPACE

    rnd = random.Random(5)
    for i in range(2000):
        user = "".join(rnd.choice("ab-_\u00e9\u2603\U0001f600 \x00\"\\") for _ in range(rnd.randint(1, 40)))
        ts = f"2026-04-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z"
        assert request_id(user, ts) == str(uuid.uuid5(_NAMESPACE, f"{user}\x00{ts}"))
    assert request_id("alice", "2026-04-07T01:00:00Z") == str(uuid.uuid5(_NAMESPACE, "alice\x002026-04-07T01:00:00Z"))
