"""The ordered checkpoint: outputs acknowledged -> state changelog -> input offsets committed.

Every ``commit_interval_ms``, before a revoke and at shutdown (the caller holds the daemon's
lock, so no batch is submitted meanwhile):

0. every batch the shards are computing finishes and its outputs are produced;
1. every produced output and dead letter is acknowledged (acks=all);
2. the changelog: one record per user changed since the last checkpoint, tombstones for users
   forgotten -- each state now reflects only windows whose outputs are acknowledged;
3. the changelog is acknowledged (an error aborts: nothing is committed; no answer in time: the
   same users are written again next time);
4. the input offsets of the acknowledged batches are committed.

A crash anywhere re-processes the uncommitted tail; the restored state skips what it already
holds, so outputs are re-emitted byte-identical.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from taskclf_daemon import changelog, kafka_io as kio
from taskclf_daemon.errors import TaskclfDaemonError
from taskclf_daemon.log import get_logger
from taskclf_daemon.metrics import Metrics, observe_many
from taskclf_daemon.offsets import OffsetTracker
from taskclf_daemon.shard import CheckpointData
from taskclf_daemon.wire import Sink
from taskclf_daemon.workers import ShardHost

TP = tuple[str, int]
#: ``finish(deadline, interruptible) -> done``: step 0 (the daemon's, which owns the scheduler)
Finish = Callable[[float, bool], Awaitable[bool]]


class Checkpointer:
    """Runs the numbered checkpoint (module docstring) and commits offsets."""

    def __init__(self, *, hosts: Sequence[ShardHost], tracker: OffsetTracker, sink: Sink, consumer: Any, changelog_topic: str, metrics: Metrics, finish: Finish, shard_users: list[int]) -> None:
        self.hosts = hosts
        self.tracker = tracker
        self.sink = sink
        self.consumer = consumer
        self.changelog_topic = changelog_topic
        self.metrics = metrics
        self.finish = finish
        #: per shard: users in memory (shared with the emitter) and serialized state bytes
        self.shard_users = shard_users
        self.state_bytes = 0
        self._log = get_logger("checkpoint")

    def collect(self) -> None:
        """Move acknowledged batches to committable; observe their end-to-end latency.

        :raises TaskclfDaemonError: a batch's output was refused by the broker
        """
        try:
            done = self.tracker.collect()
        except Exception as exc:
            raise TaskclfDaemonError(f"producing outputs failed, offsets not committed: {type(exc).__name__}: {exc}") from exc
        if done:
            now_ms = time.time() * 1000.0
            lat = [max(0.0, (now_ms - t) / 1000.0) for b in done for t in b.first_ts_ms if t and t > 0]
            observe_many(self.metrics.e2e_latency, lat)
            self.metrics.in_flight.set(self.tracker.in_flight_records)

    async def run(self, deadline: float, only: set[TP] | None = None, interruptible: bool = False) -> bool:
        """One checkpoint; ``only``: just these partitions (a revoke).

        :return: False when it could not complete before ``deadline`` (nothing is written or
            committed then; the next checkpoint retries)
        """
        m = self.metrics
        # Step 0. The batches in the shards finish and their outputs are produced.
        if not await self.finish(deadline, interruptible):
            m.checkpoints.labels("outputs_pending").inc()
            return False
        # Step 1. Every produced output and dead letter acknowledged.
        futs = self.tracker.all_futures()
        if futs:
            await asyncio.wait(futs, timeout=max(0.0, deadline - time.monotonic()))
        self.collect()
        if len(self.tracker):
            m.checkpoints.labels("outputs_pending").inc()
            return False
        # Step 2. Changelog: changed users, then tombstones of users forgotten (retention, capacity).
        parts = None if only is None else sorted(p for _, p in only)
        now_s = int(time.time())
        cps: list[CheckpointData] = list(await asyncio.gather(*(h.checkpoint(parts, now_s) for h in self.hosts)))
        n_upd, n_del = await changelog.write(self.sink, self.changelog_topic, cps)
        for i, cp in enumerate(cps):
            self.shard_users[i] = cp.state_users
            for reason, n in cp.evicted.items():
                m.state_evictions.labels(reason).inc(n)
        self.state_bytes = sum(cp.state_bytes for cp in cps)
        # Step 3. Wait for the changelog; a failure aborts before anything is committed.
        cl_futs = await self.sink.flush()
        if cl_futs:
            done, pending = await asyncio.wait(cl_futs, timeout=max(1.0, deadline - time.monotonic()))
            errors = [f.exception() for f in done if not f.cancelled() and f.exception() is not None]
            if pending or errors:
                # those users' states are written again by the next checkpoint; nothing committed
                await asyncio.gather(*(h.checkpoint_failed() for h in self.hosts))
                m.checkpoints.labels("changelog_failed").inc()
                if errors:
                    raise TaskclfDaemonError(f"writing the state changelog failed ({errors[0]!r}); offsets not committed")
                # not acknowledged in time (a broker stall): retried at the next checkpoint
                self._log.warning("changelog_not_acknowledged", records=n_upd + n_del, pending_batches=len(pending))
                return False
        if n_upd:
            m.changelog_records.labels("update").inc(n_upd)
        if n_del:
            m.changelog_records.labels("tombstone").inc(n_del)
        m.state_bytes.set(self.state_bytes)
        m.state_users.set(sum(self.shard_users))
        # Step 4. Commit the input offsets whose outputs and state are durable.
        await self.commit(only)
        m.checkpoints.labels("ok").inc()
        return True

    async def commit(self, only: set[TP] | None = None) -> None:
        owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        if only is not None:
            owned &= only
        offsets = self.tracker.take_committable(owned)
        if not offsets:
            return
        try:
            await self.consumer.commit({kio.TopicPartition(t, p): o for (t, p), o in offsets.items()})
            self.metrics.commits.labels("ok").inc()
        except (kio.CommitFailedError, kio.IllegalStateError, kio.RebalanceInProgressError) as exc:
            # the group moved on: the new owner replays from the last committed offset
            self.metrics.commits.labels("failed").inc()
            self._log.warning("commit_failed_rebalance", error=type(exc).__name__)
        except kio.KafkaError as exc:
            self.metrics.commits.labels("failed").inc()
            self.tracker.restore(offsets)
            self._log.warning("commit_failed_retrying", error=f"{type(exc).__name__}: {exc}")
