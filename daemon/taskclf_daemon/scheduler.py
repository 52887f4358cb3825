"""Fetched records -> per-shard pending buffers -> micro-batches submitted to the shards.

A partition belongs to one shard (``partition % n_shards``). Fetched records wait in that
shard's pending buffer, in fetch order, and go to the shard as one micro-batch (up to
``max_batch_records``) whenever it has room (:data:`SHARD_DEPTH` batches in flight, :data:`BACKLOG_DEPTH` while a backlog waits): under load
batches grow by themselves (small batches cost far more per window), at low load a window waits
for at most one batch. No I/O here beyond calling the shard hosts.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from taskclf_daemon.shard import RawBatch, ShardResult

if TYPE_CHECKING:
    import asyncio

    from taskclf_daemon.workers import ShardHost

TP = tuple[str, int]

#: micro-batches submitted to a shard at a time while records trickle in. Records fetched
#: meanwhile wait in the shard's pending buffer and go as one bigger batch when it finishes: at
#: low load a window waits for at most one batch. Measured (bench_daemon, 2 workers, 2 cores, one
#: run each): depth 1 drained 38.5k windows/s, latency p50/p99 145/649 ms at 19.3k/s offered;
#: depth 2 everywhere: 41.0k, 325/940 ms at 20.5k/s.
SHARD_DEPTH = 1
#: ... and while a backlog waits: a further batch goes to a shard that is still computing when a
#: whole ``max_batch_records`` batch is pending for it, so the worker starts it the moment it
#: finishes the one before instead of waiting for the daemon process to collect the result and
#: submit (it sat idle ~40% of a 300k-window drain). At low load no full batch is ever pending, so
#: latency is that of depth 1. Measured (300k-window drains, 2 workers, 2 cores, alternating
#: runs): 38.7k and 39.5k windows/s at depth 1, 42.4k and 42.1k here (depth 3: 41.3k); at a fixed
#: 21.8k/s offered, p99 652 and 656 ms at depth 1, 254 and 466 ms here.
BACKLOG_DEPTH = 2
#: records fetched but not yet submitted, per shard, before fetching pauses for that shard (in
#: ``max_batch_records`` units). Fetched records are taken out of the Kafka client at once:
#: aiokafka sends the next fetch only once every partition's buffered records are consumed (or
#: 100 ms later), so records left there stall the whole fetch pipeline (measured: pending
#: buffers took a 2-worker drain from 28-31k to 33-39k windows/s).
PENDING_BATCHES = 2
#: a shard's pending records may exceed that up to this factor while another shard still takes
#: records (its partitions are fetched together with the others'); beyond, its partitions are
#: left out of the fetch
HARD_FACTOR = 3


class FetchedRecord(Protocol):
    """What the scheduler reads of a fetched Kafka record (aiokafka's ``ConsumerRecord``)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int | None: ...


class TopicPartitionLike(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...


@dataclass(slots=True)
class Work:
    """One micro-batch submitted to one shard: what the emitter needs besides its result."""

    future: asyncio.Future[ShardResult]
    records: int
    #: one past the last offset of each partition in the batch
    next_offsets: dict[TP, int] = field(default_factory=dict)
    #: the records' Kafka timestamps (ms; -1 = none), for end-to-end latency
    ts_ms: list[int] = field(default_factory=list)
    #: time.monotonic() at submit
    submitted: float = 0.0


class Scheduler:
    """Pending records and in-flight micro-batches of every shard."""

    def __init__(self, hosts: Sequence[ShardHost], topic: str, max_batch_records: int, feedback_topic: str | None = None) -> None:
        self.hosts = hosts
        self.topic = topic
        #: label spans (the learning loop's input): batches of their own, the shard's ``feedback``
        self.feedback_topic = feedback_topic or None
        self.max_batch_records = max_batch_records
        #: per shard: the batches it is computing, oldest first (at most BACKLOG_DEPTH)
        self.queues: list[deque[Work]] = [deque() for _ in hosts]
        #: per shard: fetched records not yet submitted, in fetch order: (partition, records)
        self.pending: list[deque[tuple[TP, list[FetchedRecord]]]] = [deque() for _ in hosts]
        self.pending_n = [0] * len(hosts)

    def shard_of(self, partition: int) -> int:
        return partition % len(self.hosts)

    def busy(self) -> bool:
        return any(self.queues) or any(self.pending_n)

    def add(self, tp: TP, records: list[FetchedRecord]) -> None:
        """Fetched ``records`` of one partition, in offset order."""
        i = self.shard_of(tp[1])
        self.pending[i].append((tp, records))
        self.pending_n[i] += len(records)

    def fetch_plan(self, assignment: Iterable[TopicPartitionLike]) -> list[TopicPartitionLike] | None:
        """Which partitions to fetch: ``[]`` = all, a list = those, ``None`` = none (every shard
        has :data:`PENDING_BATCHES` batches waiting: wait for one to finish a batch)."""
        limit = PENDING_BATCHES * self.max_batch_records
        pend = self.pending_n
        if not any(n < limit for n in pend):
            return None
        if all(n < HARD_FACTOR * limit for n in pend):
            # every partition: a partition left out keeps its fetched records in the client,
            # which then fetches nothing for up to 100 ms
            return []
        return [tp for tp in assignment if pend[self.shard_of(tp.partition)] < HARD_FACTOR * limit] or None

    def submit(self, now_s: int) -> None:
        """Submit pending records as micro-batches to every shard with room in its queue. Each
        shard runs its batches in order, one call at a time, which keeps every user's windows
        in order; shards run in parallel with each other and with this process.

        The daemon calls this only under its checkpoint lock: a batch submitted while a
        checkpoint waits for acks would run in the shard before the checkpoint's ``checkpoint``
        call, so the changelog would hold state of windows whose outputs are not produced yet
        (and a crash would then skip them as already applied)."""
        limit = self.max_batch_records
        for i, pend in enumerate(self.pending):
            q = self.queues[i]
            while pend and (len(q) < SHARD_DEPTH or (len(q) < BACKLOG_DEPTH and self.pending_n[i] >= limit)):
                # a batch holds one topic: windows, or label spans (fetched first: see Pump.take)
                topic = pend[0][0][0]
                b = RawBatch(topic)
                next_offsets: dict[TP, int] = {}
                while pend and len(b) < limit and pend[0][0][0] == topic:
                    tp, msgs = pend[0]
                    take = msgs[: limit - len(b)]
                    if len(take) < len(msgs):
                        pend[0] = (tp, msgs[len(take) :])
                    else:
                        pend.popleft()
                    b.partitions.extend([tp[1]] * len(take))
                    b.offsets.extend([m.offset for m in take])
                    b.values.extend([m.value for m in take])
                    b.keys.extend([m.key for m in take])
                    b.timestamps.extend([m.timestamp if m.timestamp is not None else -1 for m in take])
                    next_offsets[tp] = take[-1].offset + 1
                self.pending_n[i] -= len(b)
                host = self.hosts[i]
                fut = host.feedback(b, now_s) if topic == self.feedback_topic else host.process(b, now_s)
                q.append(Work(fut, len(b), next_offsets, b.timestamps, time.monotonic()))

    def drop(self, keys: set[TP]) -> int:
        """Forget pending records of ``keys`` (revoked: never submitted, never committed)."""
        dropped = 0
        for i, pend in enumerate(self.pending):
            keep = deque((tp, msgs) for tp, msgs in pend if tp not in keys)
            n = sum(len(msgs) for _, msgs in keep)
            dropped += self.pending_n[i] - n
            self.pending[i], self.pending_n[i] = keep, n
        return dropped

    def heads(self) -> list[asyncio.Future[ShardResult]]:
        """The future of every shard's oldest in-flight batch."""
        return [q[0].future for q in self.queues if q]

    def finished(self) -> Iterator[int]:
        """Shards whose oldest batch is done, until none is (pop it with :meth:`pop`)."""
        progress = True
        while progress:
            progress = False
            for i, q in enumerate(self.queues):
                if q and q[0].future.done():
                    yield i
                    progress = True

    def pop(self, i: int) -> Work:
        return self.queues[i].popleft()

    def stalled(self, limit_s: float, now: float | None = None) -> str | None:
        """A description of the first shard whose oldest batch has been running for more than
        ``limit_s`` seconds, or ``None``."""
        now = time.monotonic() if now is None else now
        for i, q in enumerate(self.queues):
            if q and not q[0].future.done() and now - q[0].submitted > limit_s:
                return f"pipeline worker {i} has not answered a batch for {now - q[0].submitted:.0f}s (limit {limit_s:.0f}s)"
        return None
