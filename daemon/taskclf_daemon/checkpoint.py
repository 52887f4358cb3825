"""The ordered checkpoint: outputs acknowledged -> state changelog -> input offsets committed.

Every ``commit_interval_ms`` the daemon takes a *barrier* and goes on processing while the rest
of the checkpoint completes in the background (:meth:`Checkpointer.start`); before a revoke and
at shutdown the whole checkpoint runs before the caller goes on (:meth:`Checkpointer.run`). The
caller holds the daemon's lock for the barrier (or the whole synchronous checkpoint), so no
batch is submitted meanwhile:

0. every batch the shards are computing finishes and its outputs are produced;
1. (synchronous: every produced output and dead letter is acknowledged (acks=all));
2. the snapshot: one changelog value per user changed since the last checkpoint, tombstones for
   users forgotten, and the input positions of the batches produced so far;
   -- a pipelined checkpoint returns here; the daemon processes newer records meanwhile --
1'. (pipelined: every output and dead letter produced before the snapshot is acknowledged;
   a producer error is fatal, as for any output);
3. the changelog is written and acknowledged (an error aborts: nothing is committed; no answer
   in time: the same users, and the tombstones, are written again next time);
4. the snapshot's input positions are committed.

So the changelog never holds a state whose windows' outputs are not acknowledged, and no offset
is committed before the state that covers it. At most one checkpoint is in flight; a barrier
due meanwhile is skipped. A crash anywhere re-processes the uncommitted tail; the restored state
skips what it already holds, so outputs are re-emitted byte-identical.
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
    """Runs the numbered checkpoint (module docstring) and commits offsets.

    ``sink`` carries the changelog only (not the outputs' sink: a background flush must never
    take records the emitter has appended but not yet flushed)."""

    def __init__(self, *, hosts: Sequence[ShardHost], tracker: OffsetTracker, sink: Sink, consumer: Any, changelog_topic: str, metrics: Metrics, finish: Finish, shard_users: list[int]) -> None:
        self.hosts = hosts
        self.tracker = tracker
        self.sink = sink
        #: the pipelined checkpoint completing in the background (steps 1', 3, 4)
        self._inflight: asyncio.Task[bool] | None = None
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

    def check(self) -> None:
        """Raise the error of a pipelined checkpoint that failed (the daemon's loop calls this).

        :raises TaskclfDaemonError: an output or the changelog was refused by the broker
        """
        t = self._inflight
        if t is not None and t.done():
            self._inflight = None
            exc = t.exception()
            if exc is not None:
                raise exc

    def abandon(self) -> None:
        """Cancel a pipelined checkpoint still in flight (an exit that cannot wait for it: its
        offsets stay uncommitted, so a restart re-processes them)."""
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
        self._inflight = None

    async def settle(self, deadline: float) -> bool:
        """Wait for the checkpoint in flight (if any) until ``deadline``; False if it is still
        running then or failed (its error stays for :meth:`check`)."""
        t = self._inflight
        if t is None:
            return True
        if not t.done():
            await asyncio.wait([t], timeout=max(0.0, deadline - time.monotonic()))
        return t.done() and not t.cancelled() and t.exception() is None

    async def start(self, deadline: float, interruptible: bool = True) -> bool:
        """The barrier of a pipelined checkpoint (steps 0 and 2; call with the daemon's lock
        held); steps 1', 3 and 4 complete in the background.

        :return: False when no barrier was taken (one is still in flight, or the batches in the
            shards did not finish before ``deadline``)
        """
        if self._inflight is not None:
            if not self._inflight.done():
                self.metrics.checkpoints.labels("skipped_in_flight").inc()
                return False
            self.check()
        if not await self.finish(deadline, interruptible):
            self.metrics.checkpoints.labels("outputs_pending").inc()
            return False
        self.collect()
        futures = self.tracker.all_futures()
        positions = self.tracker.take_positions()
        cps = await self._snapshot(None)
        self._inflight = asyncio.ensure_future(self._complete(futures, positions, cps, None, None))
        return True

    async def run(self, deadline: float, only: set[TP] | None = None, interruptible: bool = False) -> bool:
        """One whole checkpoint before returning (a revoke: ``only`` these partitions; the
        shutdown); a pipelined one in flight completes first.

        :return: False when it could not complete before ``deadline`` (nothing is written or
            committed then; the next checkpoint retries)
        """
        m = self.metrics
        if not await self.settle(deadline):
            self.check()  # it failed: its error; else it is still running
            m.checkpoints.labels("outputs_pending").inc()
            return False
        self.check()
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
        # Step 2. The snapshot.
        positions = self.tracker.take_positions()
        cps = await self._snapshot(None if only is None else sorted(p for _, p in only))
        return await self._complete([], positions, cps, only, deadline)

    async def _snapshot(self, parts: list[int] | None) -> list[CheckpointData]:
        """Step 2: changed users, then tombstones of users forgotten (retention, capacity)."""
        now_s = int(time.time())
        cps: list[CheckpointData] = list(await asyncio.gather(*(h.checkpoint(parts, now_s) for h in self.hosts)))
        for i, cp in enumerate(cps):
            self.shard_users[i] = cp.state_users
            for reason, n in cp.evicted.items():
                self.metrics.state_evictions.labels(reason).inc(n)
            if cp.unreadable:  # loud, not fatal, as at restore: the user started empty
                self.metrics.state_unreadable.inc(len(cp.unreadable))
                for e in cp.unreadable[:10]:
                    self._log.error("state_record_unreadable", error=e)
        self.state_bytes = sum(cp.state_bytes for cp in cps)
        return cps

    async def _complete(self, futures: list[asyncio.Future[Any]], positions: dict[TP, int], cps: list[CheckpointData], only: set[TP] | None, deadline: float | None) -> bool:
        """Steps 1' (``futures``: the snapshot's outputs), 3 and 4. ``deadline`` None: no
        deadline for the outputs (the producer's delivery timeout bounds them)."""
        m = self.metrics
        # Step 1'. The outputs of the snapshot's windows acknowledged: a failure is fatal.
        if futures:
            await asyncio.wait(futures)
            for f in futures:
                if f.cancelled() or f.exception() is not None:
                    await self._failed()
                    err = "cancelled" if f.cancelled() else f"{type(f.exception()).__name__}: {f.exception()}"
                    raise TaskclfDaemonError(f"producing outputs failed, offsets not committed: {err}")
        # Step 3. Write the changelog and wait for it; a failure aborts before anything is committed.
        n_upd, n_del = await changelog.write(self.sink, self.changelog_topic, cps)
        cl_futs = await self.sink.flush()
        if cl_futs:
            wait_s = 30.0 if deadline is None else max(1.0, deadline - time.monotonic())
            done, pending = await asyncio.wait(cl_futs, timeout=wait_s)
            errors = [f.exception() for f in done if not f.cancelled() and f.exception() is not None]
            if pending or errors:
                # those users' states and tombstones are written again by the next checkpoint
                await self._failed()
                self.tracker.restore(positions)
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
        # Step 4. Commit the snapshot's input positions: their outputs and state are durable.
        await self.commit(positions, only)
        m.checkpoints.labels("ok").inc()
        return True

    async def _failed(self) -> None:
        await asyncio.gather(*(h.checkpoint_failed() for h in self.hosts))

    async def commit(self, positions: dict[TP, int], only: set[TP] | None = None) -> None:
        owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        mine = owned if only is None else owned & only
        offsets = {tp: o for tp, o in positions.items() if tp in mine}
        # the other partitions still owned keep their positions for the next commit
        self.tracker.restore({tp: o for tp, o in positions.items() if tp in owned and tp not in mine})
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
