"""Which users to forget (drop from memory, tombstone in the changelog): pure, no I/O.

Forgetting never reads event time -- no window, however far in the future, can evict anyone
else -- and never touches a user whose state is being written (``dirty``): idle users not seen
for ``retention_s`` (processing time), then, beyond ``capacity`` users, the least recently seen
down to 90% of it.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Mapping

from taskclf_daemon.state import UserState

#: after a capacity eviction the shard holds this share of ``capacity`` users
CAPACITY_FILL = 0.9


def choose_forgotten(
    users: Mapping[str, UserState],
    user_part: Mapping[str, int],
    dirty: Collection[str],
    *,
    now_s: int,
    retention_s: float,
    capacity: int,
    only: Collection[int] | None = None,
) -> tuple[dict[str, int], dict[str, int]]:
    """``(user -> partition to tombstone, counts by reason)``; ``retention_s``/``capacity`` 0 =
    off; ``only``: just users of these partitions, and no capacity eviction (a revoke)."""
    out: dict[str, int] = {}
    counts: dict[str, int] = {}
    if retention_s > 0:
        cutoff = now_s - retention_s
        for u, part in user_part.items():
            if only is not None and part not in only:
                continue
            st = users.get(u)
            if st is not None and st.seen_s < cutoff and u not in dirty:
                out[u] = part
        if out:
            counts["idle"] = len(out)
    if capacity > 0 and only is None and len(users) - len(out) > capacity:
        n = len(users) - len(out) - int(capacity * CAPACITY_FILL)
        candidates = ((st.seen_s, u) for u, st in users.items() if u not in out and u not in dirty)
        victims = [u for _s, u in heapq.nsmallest(n, candidates) if u in user_part]
        out.update((u, user_part[u]) for u in victims)
        if victims:
            counts["capacity"] = len(victims)
    return out, counts
