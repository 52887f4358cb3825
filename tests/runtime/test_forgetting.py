"""forgetting.choose_forgotten: exactly which users are forgotten, and why (pure, no shard)."""

from __future__ import annotations

from taskclf_daemon.forgetting import CAPACITY_FILL, choose_forgotten
from taskclf_daemon.state import UserState


def _users(seen: dict[str, int]) -> dict[str, UserState]:
    out = {}
    for u, s in seen.items():
        st = UserState(3)
        st.seen_s = s
        out[u] = st
    return out


def test_idle_users_are_those_not_seen_for_more_than_the_retention() -> None:
    now = 10_000
    seen = {"at": now - 3600, "past": now - 3601, "old": 5, "new": now}
    users = _users(seen)
    part = {"at": 0, "past": 1, "old": 2, "new": 0}
    out, counts = choose_forgotten(users, part, set(), now_s=now, retention_s=3600, capacity=0)
    assert out == {"past": 1, "old": 2} and counts == {"idle": 2}  # exactly 3600 s: kept
    # a fractional retention: 3601 s is more than 3600.5 s, 3600 s is not
    out, _ = choose_forgotten(users, part, set(), now_s=now, retention_s=3600.5, capacity=0)
    assert out == {"past": 1, "old": 2}
    # retention 0 = off; nothing idle = no count at all
    assert choose_forgotten(users, part, set(), now_s=now, retention_s=0, capacity=0) == ({}, {})
    assert choose_forgotten(users, part, set(), now_s=now, retention_s=10**6, capacity=0) == ({}, {})
    # the smallest retentions count too: 1 s and half a second
    out, _ = choose_forgotten(users, part, set(), now_s=now, retention_s=1, capacity=0)
    assert out == {"at": 0, "past": 1, "old": 2}
    assert choose_forgotten(users, part, set(), now_s=now, retention_s=0.5, capacity=0)[0] == out


def test_dirty_unknown_and_other_partitions_users_are_never_idle_forgotten() -> None:
    users = _users({"a": 0, "b": 0, "c": 0})
    part = {"a": 0, "b": 1, "c": 2, "ghost": 0}  # "ghost" has no state (already dropped)
    out, counts = choose_forgotten(users, part, {"b"}, now_s=10_000, retention_s=60, capacity=0)
    assert out == {"a": 0, "c": 2} and counts == {"idle": 2}
    out, counts = choose_forgotten(users, part, set(), now_s=10_000, retention_s=60, capacity=0, only={1, 2})
    assert out == {"b": 1, "c": 2} and counts == {"idle": 2}


def test_capacity_forgets_the_least_recently_seen_clean_users_down_to_90_percent() -> None:
    assert CAPACITY_FILL == 0.9
    seen = {f"u{i}": 100 + i for i in range(12)}
    users = _users(seen)
    part = {u: i % 3 for i, u in enumerate(seen)}
    # 12 users, capacity 10: down to int(10 * 0.9) = 9, the three seen least recently
    out, counts = choose_forgotten(users, part, set(), now_s=200, retention_s=0, capacity=10)
    assert out == {"u0": 0, "u1": 1, "u2": 2} and counts == {"capacity": 3}
    # exactly at capacity: nothing
    assert choose_forgotten(users, part, set(), now_s=200, retention_s=0, capacity=12) == ({}, {})
    # 12 > 11: down to int(9.9) = 9
    assert list(choose_forgotten(users, part, set(), now_s=200, retention_s=0, capacity=11)[0]) == ["u0", "u1", "u2"]
    # dirty users are skipped (the next least recent go instead); users without a partition
    # are not tombstoned (they count towards the number, though)
    out, counts = choose_forgotten(users, {u: p for u, p in part.items() if u != "u3"}, {"u0", "u1"}, now_s=200, retention_s=0, capacity=10)
    assert out == {"u2": 2, "u4": 1} and counts == {"capacity": 2}
    # capacity 1: down to int(0.9) = 0, every clean user
    out, counts = choose_forgotten(users, part, {"u11"}, now_s=200, retention_s=0, capacity=1)
    assert set(out) == set(seen) - {"u11"} and counts == {"capacity": 11}
    # a revoke (only=...) never evicts for capacity
    assert choose_forgotten(users, part, set(), now_s=200, retention_s=0, capacity=1, only={0}) == ({}, {})


def test_idle_users_count_against_the_capacity_first() -> None:
    seen = {f"u{i}": (0 if i < 2 else 1000 + i) for i in range(12)}
    users = _users(seen)
    part = dict.fromkeys(seen, 0)
    # 2 idle leave 10 = capacity: no capacity eviction
    out, counts = choose_forgotten(users, part, set(), now_s=1100, retention_s=500, capacity=10)
    assert out == {"u0": 0, "u1": 0} and counts == {"idle": 2}
    # capacity 9: 10 left > 9, down to int(8.1) = 8: two more, the least recently seen
    out, counts = choose_forgotten(users, part, set(), now_s=1100, retention_s=500, capacity=9)
    assert out == {"u0": 0, "u1": 0, "u2": 0, "u3": 0} and counts == {"idle": 2, "capacity": 2}
