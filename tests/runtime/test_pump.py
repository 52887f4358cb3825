"""The pump's backpressure (no broker): past ``max_in_flight_records`` unacknowledged records it
pauses every partition until acknowledgements bring the count down, then resumes them -- also
when the oldest batch has no producer future at all (a batch of label spans, or one whose
records were all skipped): such a batch is complete at once. Found by a 300k-window drain with a
30k-span feedback backlog, where ``asyncio.wait([])`` raised and the daemon exited."""

from __future__ import annotations

import asyncio
from typing import Any

from taskclf_daemon.memory_kafka import MemoryTP
from taskclf_daemon.metrics import Metrics
from taskclf_daemon.offsets import OffsetTracker, PendingBatch
from taskclf_daemon.pump import Pump


class FakeConsumer:
    def __init__(self, parts: list[MemoryTP]) -> None:
        self._assigned = set(parts)
        self._paused: set[MemoryTP] = set()
        self.pauses: list[set[MemoryTP]] = []

    def assignment(self) -> set[MemoryTP]:
        return set(self._assigned)

    def paused(self) -> set[MemoryTP]:
        return set(self._paused)

    def pause(self, *tps: MemoryTP) -> None:
        self._paused |= set(tps)
        self.pauses.append(set(tps))

    def resume(self, *tps: MemoryTP) -> None:
        self._paused -= set(tps)


def _pump(consumer: FakeConsumer, tracker: OffsetTracker, metrics: Metrics, limit: int) -> Pump:
    def collect() -> None:
        tracker.collect()

    return Pump(consumer=consumer, scheduler=None, emitter=None, rebalancer=None, tracker=tracker, lock=asyncio.Lock(),  # type: ignore[arg-type]
                stop=asyncio.Event(), metrics=metrics, max_batch_records=10, max_in_flight_records=limit,
                collect=collect, alive=lambda: None)  # fmt: skip


def _count(metrics: Metrics) -> float:
    return float(metrics.registry.get_sample_value("taskclf_backpressure_pauses_total") or 0.0)


def test_backpressure_waits_for_acks_then_resumes() -> None:
    async def run() -> None:
        parts = [MemoryTP("in", 0), MemoryTP("in", 1), MemoryTP("fb", 0)]
        consumer = FakeConsumer(parts)
        consumer._paused.add(MemoryTP("fb", 0))  # held by the catch-up gate: stays paused
        tracker, metrics = OffsetTracker(), Metrics()
        loop = asyncio.get_running_loop()
        acks = [loop.create_future(), loop.create_future()]
        tracker.add(PendingBatch([acks[0]], {("in", 0): 5}, records=6))
        tracker.add(PendingBatch([acks[1]], {("in", 1): 9}, records=4))
        pump = _pump(consumer, tracker, metrics, limit=8)
        task = asyncio.ensure_future(pump.backpressure())
        await asyncio.sleep(0.05)
        assert not task.done() and consumer.pauses == [{MemoryTP("in", 0), MemoryTP("in", 1)}]
        acks[0].set_result(None)  # 4 records left in flight < 8: resume
        await asyncio.wait_for(task, 2.0)
        assert consumer.paused() == {MemoryTP("fb", 0)} and tracker.in_flight_records == 4
        assert tracker.take_committable() == {("in", 0): 5} and _count(metrics) == 1.0
        await pump.backpressure()  # below the limit: nothing to do
        assert _count(metrics) == 1.0

    asyncio.run(run())


def test_backpressure_passes_batches_without_outputs() -> None:
    async def run() -> None:
        consumer = FakeConsumer([MemoryTP("in", 0), MemoryTP("fb", 0)])
        tracker, metrics = OffsetTracker(), Metrics()
        # 30 label spans, then 5 windows whose outputs are acknowledged
        tracker.add(PendingBatch([], {("fb", 0): 30}, records=30))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        tracker.add(PendingBatch([done], {("in", 0): 5}, records=5))
        await asyncio.wait_for(_pump(consumer, tracker, metrics, limit=20).backpressure(), 2.0)
        assert tracker.in_flight_records == 0 and consumer.paused() == set()
        assert tracker.take_committable() == {("fb", 0): 30, ("in", 0): 5}

    asyncio.run(run())
