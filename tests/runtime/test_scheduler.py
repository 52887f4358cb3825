"""The scheduler cuts fetched records into micro-batches for its shards (fake hosts, no broker):
batches of at most ``max_batch_records``, in fetch order, only while the shard has room
(``SHARD_DEPTH``, ``BACKLOG_DEPTH`` with a whole batch pending); revoked partitions' pending records are forgotten; the fetch plan leaves out
shards with too much pending; a batch silent past the stall limit is reported."""

from __future__ import annotations

import asyncio
from typing import Any

from taskclf_daemon import scheduler as smod
from taskclf_daemon.memory_kafka import MemoryRecord, MemoryTP
from taskclf_daemon.scheduler import Scheduler
from taskclf_daemon.shard import RawBatch


class FakeHost:
    def __init__(self) -> None:
        self.batches: list[RawBatch] = []
        self.now: list[int] = []

    def process(self, batch: RawBatch, now_s: int) -> asyncio.Future[Any]:
        self.batches.append(batch)
        self.now.append(now_s)
        return asyncio.get_running_loop().create_future()


def _sched(max_batch: int) -> tuple[Scheduler, list[FakeHost]]:
    hosts = [FakeHost(), FakeHost()]
    return Scheduler(hosts, "in", max_batch), hosts  # type: ignore[arg-type]


def _fetch(s: Scheduler, part: int, first: int, n: int) -> None:
    s.add(("in", part), [MemoryRecord("in", part, o, b"u%d" % o, f"{part}:{o}".encode(), 1000 + o) for o in range(first, first + n)])


def test_batches_respect_size_depth_and_fetch_order(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(smod, "SHARD_DEPTH", 2)  # (the default is 1; the logic is the same)

    async def run() -> None:
        s, (s0, s1) = _sched(max_batch=5)
        _fetch(s, 0, 0, 7)
        _fetch(s, 2, 100, 3)
        _fetch(s, 0, 7, 9)
        _fetch(s, 1, 0, 4)
        s.submit(now_s=42)
        # shard 0: 19 records -> SHARD_DEPTH batches of 5 now, the rest stays pending
        assert [len(b) for b in s0.batches] == [5, 5] and s.pending_n[0] == 9
        first, second = s0.batches
        assert list(zip(first.partitions, first.offsets, strict=True)) == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]
        assert list(zip(second.partitions, second.offsets, strict=True)) == [(0, 5), (0, 6), (2, 100), (2, 101), (2, 102)]
        # everything a record carries travels with it: key, value, Kafka timestamp
        assert second.keys == [b"u5", b"u6", b"u100", b"u101", b"u102"] and second.values[2] == b"2:100"
        assert second.timestamps == [1005, 1006, 1100, 1101, 1102] and s0.now == [42, 42]
        w = s.queues[0][1]
        assert w.next_offsets == {("in", 0): 7, ("in", 2): 103} and w.records == 5 and w.ts_ms == second.timestamps
        # shard 1: one batch of its 4 records
        assert [list(b.offsets) for b in s1.batches] == [[0, 1, 2, 3]] and s.pending_n[1] == 0
        # a finished head makes room: the next batch continues where the last one stopped
        s.pop(0)
        s.submit(now_s=43)
        order = [(0, o) for o in range(7)] + [(2, o) for o in range(100, 103)] + [(0, o) for o in range(7, 16)]
        handed = [(p, o) for b in s0.batches for p, o in zip(b.partitions, b.offsets, strict=True)]
        assert len(s0.batches) == 3 and handed == order[:15] and s.pending_n[0] == 4

    asyncio.run(run())


def test_a_backlog_gets_a_second_full_batch_a_trickle_waits() -> None:
    """Default depths: while a shard computes, records fewer than a whole batch wait (low load:
    one batch in flight); a whole batch pending goes at once, so the worker never idles between
    batches of a backlog; never more than BACKLOG_DEPTH, never a partial second batch."""
    assert (smod.SHARD_DEPTH, smod.BACKLOG_DEPTH) == (1, 2)

    async def run() -> None:
        s, (s0, _s1) = _sched(max_batch=5)
        _fetch(s, 0, 0, 3)
        s.submit(0)
        assert [len(b) for b in s0.batches] == [3]
        _fetch(s, 0, 3, 4)  # 4 < 5 pending: a trickle waits for the first batch
        s.submit(0)
        assert [len(b) for b in s0.batches] == [3] and s.pending_n[0] == 4
        _fetch(s, 0, 7, 8)  # 12 pending: one whole batch goes now, the 7 left wait (depth 2 reached)
        s.submit(0)
        assert [len(b) for b in s0.batches] == [3, 5] and s.pending_n[0] == 7
        assert list(s0.batches[1].offsets) == [3, 4, 5, 6, 7]
        s.pop(0)  # the first finishes: room for one more (depth 1 always, 2 with a backlog)
        s.submit(0)
        assert [len(b) for b in s0.batches] == [3, 5, 5] and s.pending_n[0] == 2
        s.pop(0)
        s.submit(0)  # 2 pending, one batch in flight: they wait
        assert len(s0.batches) == 3 and s.pending_n[0] == 2
        s.pop(0)
        s.submit(0)  # nothing in flight: the partial batch goes
        assert [len(b) for b in s0.batches] == [3, 5, 5, 2] and s.pending_n[0] == 0

    asyncio.run(run())


def test_drop_forgets_only_revoked_partitions() -> None:
    s, _ = _sched(max_batch=5)
    _fetch(s, 0, 0, 7)
    _fetch(s, 2, 0, 3)
    _fetch(s, 1, 0, 4)
    assert s.drop({("in", 2), ("in", 1)}) == 7
    assert s.pending_n == [7, 0]
    assert [tp for tp, _ in s.pending[0]] == [("in", 0)]
    assert s.busy()


def test_nothing_submitted_without_room(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(smod, "SHARD_DEPTH", 3)

    async def run() -> None:
        s, (s0, _s1) = _sched(max_batch=2)
        _fetch(s, 0, 0, 7)
        s.submit(0)
        s.submit(0)  # idempotent while the queue is full
        assert len(s0.batches) == 3 and s.pending_n[0] == 1

    asyncio.run(run())


def test_fetch_plan_leaves_out_shards_with_too_much_pending() -> None:
    s, _ = _sched(max_batch=10)
    parts = [MemoryTP("in", p) for p in range(4)]
    assert s.fetch_plan(parts) == []  # nothing pending: every partition
    _fetch(s, 0, 0, smod.PENDING_BATCHES * 10)  # shard 0 at its soft limit, shard 1 empty
    assert s.fetch_plan(parts) == []
    _fetch(s, 0, 100, (smod.HARD_FACTOR - 1) * smod.PENDING_BATCHES * 10)  # shard 0 at the hard limit
    assert s.fetch_plan(parts) == [MemoryTP("in", 1), MemoryTP("in", 3)]
    _fetch(s, 1, 0, smod.PENDING_BATCHES * 10)
    assert s.fetch_plan(parts) is None  # no shard can take more


def test_finished_yields_done_heads_and_stalled_names_the_silent_shard() -> None:
    async def run() -> None:
        s, _ = _sched(max_batch=5)
        _fetch(s, 0, 0, 3)
        _fetch(s, 1, 0, 3)
        s.submit(0)
        assert list(s.finished()) == []
        s.queues[1][0].future.set_result(None)
        assert [i for i in s.finished() if s.pop(i)] == [1]
        w = s.queues[0][0]
        assert s.stalled(60.0, now=w.submitted + 59.0) is None
        assert s.stalled(60.0, now=w.submitted + 61.0) == "pipeline worker 0 has not answered a batch for 61s (limit 60s)"
        w.future.set_result(None)
        assert s.stalled(60.0, now=w.submitted + 600.0) is None

    asyncio.run(run())
