"""The record pump: fetch (``getmany``) -> scheduler -> shards -> emitter, with backpressure.

It fetches only the partitions the scheduler has room for, takes fetched records out of the
client at once, submits micro-batches to free shards and emits every batch a shard finishes --
also while a fetch is waiting. A stop request cancels a fetch; finishing a batch is never
interrupted. Everything that submits or emits runs under the daemon's lock, so it never
interleaves with a checkpoint or a rebalance.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from taskclf_daemon.emitter import Emitter
from taskclf_daemon.metrics import Metrics
from taskclf_daemon.offsets import OffsetTracker
from taskclf_daemon.rebalance import Rebalancer
from taskclf_daemon.scheduler import Scheduler


class Pump:
    """Moves records from the consumer to the emitter (module docstring)."""

    def __init__(
        self,
        *,
        consumer: Any,
        scheduler: Scheduler,
        emitter: Emitter,
        rebalancer: Rebalancer,
        tracker: OffsetTracker,
        lock: asyncio.Lock,
        stop: asyncio.Event,
        metrics: Metrics,
        max_batch_records: int,
        max_in_flight_records: int,
        collect: Callable[[], None],
        alive: Callable[[], None],
    ) -> None:
        self.consumer = consumer
        self.scheduler = scheduler
        self.emitter = emitter
        self.rebalancer = rebalancer
        self.tracker = tracker
        self.lock = lock
        self.stop = stop
        self.metrics = metrics
        self.max_batch_records = max_batch_records
        self.max_in_flight_records = max_in_flight_records
        #: moves acknowledged batches to committable (the checkpointer's)
        self.collect = collect
        #: tells the daemon the loop still turns (liveness)
        self.alive = alive

    async def poll(self) -> dict[Any, list[Any]]:
        """The next fetched records; meanwhile emit every batch a shard finishes and submit
        pending records to shards with room. When no shard has room, waits for one to finish a
        batch. Returns ``{}`` at once when a stop is requested."""
        sch = self.scheduler
        while not self.stop.is_set():
            if any(sch.pending_n):
                async with self.lock:  # never while a checkpoint runs (see Scheduler.submit)
                    sch.submit(int(time.time()))
            tps = sch.fetch_plan(self.consumer.assignment())
            gate = self.rebalancer.catch_up
            if gate is not None and gate.held:
                # paused input partitions wait for their feedback twin (taskclf_daemon.feedback)
                await gate.update(self.consumer)
            if tps is None:
                await self._fetch(None, 0)  # no shard can take more: wait for one to finish a batch
                continue
            return await self._fetch(tps, 100)
        return {}

    async def _fetch(self, tps: list[Any] | None, timeout_ms: int) -> dict[Any, list[Any]]:
        """``getmany`` of ``tps`` (``[]``: all assigned partitions; ``None``: no fetch, wait for a
        shard to finish a batch), emitting finished batches (and submitting pending records)
        while it waits. A stop request cancels the fetch (``getmany`` also waits for a rebalance
        to complete, however long)."""
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.stop.wait())]
        poll = None
        if tps is not None:
            poll = asyncio.ensure_future(self.consumer.getmany(*tps, timeout_ms=timeout_ms, max_records=self.max_batch_records))
            waits.append(poll)
        try:
            while True:
                heads = self.scheduler.heads()
                if poll is not None and poll.done():
                    return poll.result()
                if self.stop.is_set() or (poll is None and not heads):
                    return {}
                await asyncio.wait([*waits, *heads], return_when=asyncio.FIRST_COMPLETED)
                if any(f.done() for f in heads):
                    async with self.lock:
                        await self.finish_ready()
                        self.scheduler.submit(int(time.time()))
                    if poll is None:
                        return {}
        finally:
            for f in waits:
                if not f.done():
                    f.cancel()

    async def take(self, data: dict[Any, list[Any]]) -> None:
        """Fetched records into the scheduler (owned, restored partitions only); submit what
        fits; emit what is finished. Call with the lock held."""
        m, rb = self.metrics, self.rebalancer
        owned = self.consumer.assignment()
        fb = rb.feedback_topic
        # label spans before windows: a span fetched with the windows it labels counts for them
        items = sorted(data.items(), key=lambda kv: kv[0].topic != fb) if fb is not None else data.items()
        for tp, msgs in items:
            if not msgs:
                continue
            key = (tp.topic, tp.partition)
            if tp not in owned:
                # revoked meanwhile: its new owner reads these records again
                m.records_processed.labels("dropped_revoked").inc(len(msgs))
                continue
            if key not in rb.assigned:
                # owned but its state is still being restored: read these records again later
                self.consumer.seek(tp, msgs[0].offset)
                continue
            m.record_consumed(tp.topic, tp.partition, len(msgs))
            self.scheduler.add(key, msgs)
            rb.next_offset[key] = msgs[-1].offset + 1
        self.scheduler.submit(int(time.time()))
        await self.finish_ready()

    async def finish_ready(self) -> None:
        """Emit every finished batch at the head of a shard's queue."""
        sch = self.scheduler
        for i in sch.finished():
            w = sch.pop(i)
            await self.emitter.emit(i, w, await w.future)

    async def finish_all(self, deadline: float, interruptible: bool = False) -> bool:
        """Emit every submitted batch; False if one is not done by ``deadline`` (or, when
        ``interruptible``, a stop is requested meanwhile): a hung worker never holds a
        checkpoint, or the exit, for longer than that. Step 0 of the checkpoint."""
        stop = asyncio.ensure_future(self.stop.wait()) if interruptible else None
        try:
            for i, q in enumerate(self.scheduler.queues):
                while q:
                    fut = q[0].future
                    if not fut.done():
                        waits: set[asyncio.Future[Any]] = {fut} if stop is None else {fut, stop}
                        await asyncio.wait(waits, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED)
                        if not fut.done():
                            return False
                    w = self.scheduler.pop(i)
                    await self.emitter.emit(i, w, await w.future)
            return True
        finally:
            if stop is not None:
                stop.cancel()

    async def backpressure(self) -> None:
        """Pause every partition while ``max_in_flight_records`` outputs await acknowledgement."""
        limit = self.max_in_flight_records
        if self.tracker.in_flight_records < limit:
            return
        self.metrics.backpressure.inc()
        # only what is not paused already (input partitions held for their feedback twin,
        # feedback partitions without their input: those stay paused)
        paused = self.consumer.paused()
        parts = [tp for tp in self.consumer.assignment() if tp not in paused]
        self.consumer.pause(*parts)
        try:
            while not self.stop.is_set():
                # complete batches leave the count first: then the oldest one left has an
                # unacknowledged output to wait for (a batch without outputs -- label spans,
                # all skipped -- is complete at once)
                self.collect()
                oldest = self.tracker.oldest()
                if self.tracker.in_flight_records < limit or oldest is None:
                    break
                await asyncio.wait(oldest.futures, timeout=1.0)
                self.alive()
        finally:
            self.consumer.resume(*[tp for tp in parts if tp in self.consumer.assignment()])
