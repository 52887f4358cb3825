"""How the daemon cuts fetched records into micro-batches for its shards (no broker: fake shards).

Fetched records wait in per-shard pending buffers; ``_submit_pending`` hands them out in batches
of at most ``max_batch_records``, in fetch order, while the shard's queue has room
(``SHARD_DEPTH``); ``_drop_pending`` forgets the records of revoked partitions.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

from taskclf_daemon import daemon as dmod
from taskclf_daemon.config import load_settings


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    value: bytes
    timestamp: int = 0
    key: bytes = b"u"


class FakeShard:
    def __init__(self) -> None:
        self.batches: list[Any] = []

    def submit(self, method: str, *args: Any) -> asyncio.Future[Any]:
        assert method == "process"
        self.batches.append(args[0])
        return asyncio.get_running_loop().create_future()


def _daemon(max_batch: int) -> tuple[dmod.Daemon, list[FakeShard]]:
    s = load_settings(None, env={}, flags={"max_batch_records": max_batch, "pipeline_workers": 0}, require_model=False)
    d = dmod.Daemon.__new__(dmod.Daemon)  # no pipeline, no clients: only the batching state
    d.s = s
    fakes = [FakeShard(), FakeShard()]
    d.shards = fakes
    d._queues = [deque(), deque()]
    d._pending = [deque(), deque()]
    d._pending_n = [0, 0]
    return d, fakes


def _fetch(d: dmod.Daemon, part: int, first: int, n: int) -> None:
    tp = TP("in", part)
    msgs = [Msg("in", part, o, f"{part}:{o}".encode()) for o in range(first, first + n)]
    i = part % 2
    d._pending[i].append((tp, msgs))
    d._pending_n[i] += n


def test_batches_respect_size_depth_and_fetch_order(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(dmod, "SHARD_DEPTH", 2)  # (the default is 1; the logic is the same)

    async def run() -> None:
        d, (s0, s1) = _daemon(max_batch=5)
        _fetch(d, 0, 0, 7)
        _fetch(d, 2, 100, 3)
        _fetch(d, 0, 7, 9)
        _fetch(d, 1, 0, 4)
        d._submit_pending()
        # shard 0: 19 records -> SHARD_DEPTH batches of 5 now, the rest stays pending
        assert [len(b) for b in s0.batches] == [5] * dmod.SHARD_DEPTH
        assert d._pending_n[0] == 19 - 5 * dmod.SHARD_DEPTH
        first = s0.batches[0]
        assert list(zip(first.partitions, first.offsets)) == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]
        second = s0.batches[1]
        assert list(zip(second.partitions, second.offsets)) == [(0, 5), (0, 6), (2, 100), (2, 101), (2, 102)]
        assert d._queues[0][1].next_offsets == {("in", 0): 7, ("in", 2): 103}
        assert [m.offset for m in d._queues[0][1].msgs] == [5, 6, 100, 101, 102]
        # shard 1: one batch of its 4 records
        assert [list(b.offsets) for b in s1.batches] == [[0, 1, 2, 3]] and d._pending_n[1] == 0
        # a finished head makes room: the next batch continues where the last one stopped
        d._queues[0].popleft()
        d._submit_pending()
        order = [(0, o) for o in range(7)] + [(2, o) for o in range(100, 103)] + [(0, o) for o in range(7, 16)]
        handed = [(p, o) for b in s0.batches for p, o in zip(b.partitions, b.offsets)]
        assert len(s0.batches) == dmod.SHARD_DEPTH + 1 and all(len(b) <= 5 for b in s0.batches)
        assert handed == order[: len(handed)] and len(handed) + d._pending_n[0] == 19

    asyncio.run(run())


def test_drop_pending_forgets_only_revoked_partitions() -> None:
    d, _ = _daemon(max_batch=5)
    _fetch(d, 0, 0, 7)
    _fetch(d, 2, 0, 3)
    _fetch(d, 1, 0, 4)
    assert d._drop_pending({("in", 2), ("in", 1)}) == 7
    assert d._pending_n == [7, 0]
    assert [tp.partition for tp, _ in d._pending[0]] == [0]
    assert d._busy()  # pending records keep the daemon busy


def test_nothing_submitted_without_room(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    depth = 3
    monkeypatch.setattr(dmod, "SHARD_DEPTH", depth)

    async def run() -> None:
        d, (s0, _s1) = _daemon(max_batch=2)
        _fetch(d, 0, 0, 2 * depth + 1)
        d._submit_pending()
        d._submit_pending()  # idempotent while the queue is full
        assert len(s0.batches) == depth and d._pending_n[0] == 1

    asyncio.run(run())
