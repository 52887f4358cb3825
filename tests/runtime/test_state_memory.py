"""What a user costs in memory, and what the ``taskclf_state_bytes`` gauge says it costs.

Measured with tracemalloc (allocation sizes, not time: deterministic on one interpreter): users
with a full 15-row history, restored into a shard from their changelog values (deferred), then
each used once (decoded) -- the ``USER_HEAP_BYTES`` the gauge counts per user must be that cost
(within 10%), and that cost must stay within the 2 KB target (issue 13).
"""

from __future__ import annotations

import tracemalloc
import uuid

import pytest

from helpers_rows import GOLDEN_DIR
from taskclf_daemon.artifacts import build_pipeline
from taskclf_daemon.labels import HISTORY_ROWS
from taskclf_daemon.shard import PipelineShard
from taskclf_daemon.state import USER_HEAP_BYTES, HistoryEntry, UserState

N = 3000
APPS = ["com.sublimetext.4", "com.googlecode.iterm2", "com.google.Chrome", "com.tinyspeck.slackmacgap"]


@pytest.fixture(scope="module")
def pipe():
    p, _ = build_pipeline(policy=GOLDEN_DIR / "models" / "inference_policy.json")
    return p


def _value(i: int) -> bytes:
    """A full-history state as the overlay leaves it (one null keys value, like the golden data)."""
    st = UserState(3)
    t0 = 1_775_462_880_000_000 + i * 60_000_000
    for r in range(HISTORY_ROWS):
        st.history.append(HistoryEntry(t0 + r * 60_000_000, APPS[(i + r) % 4], None if r == 3 else 50.0 + r + i % 7, float(r % 9), 800.0 + 37 * r))
    st.smooth.extend([i % 5, (i + 1) % 5, 2])
    st.session_start_us, st.last_ts_us, st.windows_seen = t0, t0 + 14 * 60_000_000, 1234 + i
    st.last_offset, st.last_partition, st.seen_s = 100_000 + i, i % 4, 1_775_000_000 + i
    return st.to_bytes()


def test_a_user_costs_what_the_gauge_says_and_under_2_kb(pipe) -> None:
    shard = PipelineShard(pipe)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        # exact-size copies, as read from Kafka (orjson's own bytes keep a 4 KB buffer)
        records = [(i % 4, str(uuid.UUID(int=i + 1)).encode(), bytes(bytearray(_value(i)))) for i in range(N)]
        n, errors = shard.adopt(records, 0)
        del records
        deferred = (tracemalloc.get_traced_memory()[0] - before) / N
        assert all(st.deferred for st in shard.states.users.values())
        for st in shard.states.users.values():
            assert len(st.history) == HISTORY_ROWS  # first use: decoded
        used = (tracemalloc.get_traced_memory()[0] - before) / N
    finally:
        tracemalloc.stop()
    assert (n, errors) == (N, [])
    assert not any(st.deferred for st in shard.states.users.values())
    print(f"heap per user: deferred {deferred:.0f} B, used {used:.0f} B, gauge {USER_HEAP_BYTES} B")
    assert used <= 2048 and deferred <= 2048, (used, deferred)
    assert abs(used - USER_HEAP_BYTES) <= 0.1 * USER_HEAP_BYTES, (used, USER_HEAP_BYTES)
    assert shard.state_bytes() == N * USER_HEAP_BYTES == shard.stats().state_bytes
