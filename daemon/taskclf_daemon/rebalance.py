"""Partitions coming and going: state follows its partition.

On revoke: drop the partitions' pending records, checkpoint them (outputs acked -> changelog ->
commit), then release their users (parked for reuse when the checkpoint succeeded). On assign:
pause the new partitions before the first await (the fetch loop runs concurrently), reuse parked
state or restore it from the changelog, then resume. Any error inside either is fatal -- aiokafka
would log it and carry on without the state, a silent stall -- so :attr:`on_failure` is called
and the daemon stops (exit 1, ``/healthz`` red). aiokafka does not call these on ``stop()``: the
daemon's shutdown checkpoints by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from taskclf_daemon import changelog, kafka_io as kio
from taskclf_daemon.checkpoint import Checkpointer
from taskclf_daemon.errors import TaskclfDaemonError
from taskclf_daemon.feedback import CatchUpGate, orphans
from taskclf_daemon.log import get_logger
from taskclf_daemon.metrics import Metrics
from taskclf_daemon.scheduler import Scheduler
from taskclf_daemon.workers import ShardHost

TP = tuple[str, int]


class Rebalancer:
    """Revoke and assign (module docstring); owns the set of ready partitions."""

    def __init__(
        self,
        *,
        hosts: Sequence[ShardHost],
        scheduler: Scheduler,
        checkpointer: Checkpointer,
        lock: asyncio.Lock,
        consumer: Any,
        reader: Any,
        changelog_topic: str,
        restore_timeout_s: float,
        revoke_budget_s: float,
        metrics: Metrics,
        on_failure: Callable[[str], None],
        group: str,
        feedback_topic: str | None = None,
    ) -> None:
        self.hosts = hosts
        self.scheduler = scheduler
        self.checkpointer = checkpointer
        self.lock = lock
        self.consumer = consumer
        self.reader = reader
        self.changelog_topic = changelog_topic
        self.restore_timeout_s = restore_timeout_s
        self.revoke_budget_s = revoke_budget_s
        self.metrics = metrics
        self.on_failure = on_failure
        #: partitions assigned and restored (ready to process)
        self.assigned: set[TP] = set()
        #: assignments being restored now
        self.restoring = 0
        #: per partition: the next offset to process (for the lag gauge); cleared on revoke
        self.next_offset: dict[TP, int] = {}
        self.feedback_topic = feedback_topic or None
        #: input partitions waiting for their feedback twin to be read (None: no feedback topic)
        self.catch_up = None if self.feedback_topic is None else CatchUpGate(scheduler.topic, self.feedback_topic, restore_timeout_s)
        self._log = get_logger("rebalance").bind(group=group)

    async def on_revoked(self, revoked: list[Any]) -> None:
        try:
            await self._revoke({(tp.topic, tp.partition) for tp in revoked})
        except Exception as exc:  # noqa: BLE001 - never swallowed: see the module docstring
            self._fail("partition revocation", exc)

    async def on_assigned(self, assigned: list[Any]) -> None:
        try:
            await self._assign(assigned)
        except Exception as exc:  # noqa: BLE001 - never swallowed: see the module docstring
            self._fail("partition assignment (state restore)", exc)

    def _fail(self, what: str, exc: BaseException) -> None:
        reason = f"{what} failed: {type(exc).__name__}: {exc}"
        self._log.error("rebalance_failed", step=what, error=reason)
        self.on_failure(reason)

    def _split(self, keys: set[TP] | list[TP]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for _, p in sorted(keys):
            out.setdefault(self.scheduler.shard_of(p), []).append(p)
        return out

    async def _revoke(self, keys: set[TP]) -> None:
        self.metrics.rebalances.labels("revoked").inc()
        async with self.lock:
            dropped = self.scheduler.drop(keys)
            if dropped:
                self.metrics.records_processed.labels("dropped_revoked").inc(dropped)
            ok = False
            try:
                ok = await self.checkpointer.run(deadline=time.monotonic() + self.revoke_budget_s, only=keys)
            except TaskclfDaemonError as exc:
                self._log.error("revoke_checkpoint_failed", error=str(exc))
            parked = sum(await asyncio.gather(*(self.hosts[i].release(parts, ok) for i, parts in self._split(keys).items())))
            for key in keys:
                self.next_offset.pop(key, None)
                self.metrics.forget_partition(*key)
            self.assigned -= keys
            if self.catch_up is not None:
                self.catch_up.forget(p for _, p in keys)
            await self.refresh_stats()
        self._log.info("partitions_revoked", partitions=sorted(p for _, p in keys), users_parked=parked)

    async def _assign(self, assigned: list[Any]) -> None:
        keys = {(tp.topic, tp.partition) for tp in assigned}
        self.metrics.rebalances.labels("assigned").inc()
        # Step 1. Pause before the first await: getmany runs concurrently with this listener.
        if assigned:
            self.consumer.pause(*assigned)
        self.restoring += 1
        reuse: set[int] = set()
        held: set[TP] = set()
        try:
            held = self._feedback_twins(assigned)
            keys -= held
            by_shard = self._split(keys)
            # Step 2. Every shard drops parked state of partitions that went elsewhere.
            got = await asyncio.gather(*(h.reuse(by_shard.get(i, [])) for i, h in enumerate(self.hosts)))
            reuse = {p for r in got for p in r}
            # Step 3. The others are restored from the changelog (a partition's users once,
            # whether its input or its feedback partition -- or both -- came).
            todo = sorted(k for k in keys if k[1] not in reuse)
            if todo:
                await self._restore(todo)
            self.assigned |= keys
            await self.refresh_stats()
        finally:
            self.restoring -= 1
            # Step 4. Resume what we still own -- but not a feedback partition without its input
            # (never), nor an input partition waiting for its feedback twin (the pump resumes it).
            owned = self.consumer.assignment()
            waiting = set() if self.catch_up is None else set(self.catch_up.held)
            self.consumer.resume(*[tp for tp in assigned if tp in owned and (tp.topic, tp.partition) not in held and not (tp.topic == self.scheduler.topic and tp.partition in waiting)])
        self._log.info("partitions_assigned", partitions=sorted({p for _, p in keys}), reused=sorted(reuse))

    def _feedback_twins(self, assigned: list[Any]) -> set[TP]:
        """Hold the new input partitions until their feedback twins are read (the catch-up
        gate); return the feedback partitions assigned without their input twin (left paused)."""
        if self.catch_up is None or self.feedback_topic is None:
            return set()
        owned = list(self.consumer.assignment())
        lonely = orphans(assigned, owned, self.scheduler.topic, self.feedback_topic)
        if lonely:
            self.metrics.feedback_orphans.inc(len(lonely))
            self._log.warning(
                "feedback_partitions_without_input",
                partitions=sorted(tp.partition for tp in lonely),
                fix="every member must run with the same feedback_topic (range assignor); left paused until the next rebalance",
            )
        twins = {tp.partition for tp in owned if tp.topic == self.feedback_topic}
        self.catch_up.hold(tp.partition for tp in assigned if tp.topic == self.scheduler.topic and tp.partition in twins)
        return {(tp.topic, tp.partition) for tp in lonely}

    async def _restore(self, keys: list[TP]) -> None:
        """Rebuild the users of ``keys`` from the changelog (latest record per user wins)."""
        t0 = time.monotonic()
        parts = sorted({p for _, p in keys})
        now_s = int(time.time())
        n = 0
        # Each chunk goes to its shards as soon as it is read and is installed while the next
        # one is fetched: tasks start in creation order, so every shard gets its chunks in
        # offset order (a shard runs its calls one at a time, in call order).
        adopting: list[asyncio.Task[tuple[int, list[str]]]] = []
        try:
            async for by_part, count in changelog.read_chunks(self.reader, self.changelog_topic, parts, self.restore_timeout_s):
                n += count
                per_shard: dict[int, list[tuple[int, bytes, bytes | None]]] = {}
                for part, recs in by_part.items():
                    per_shard.setdefault(self.scheduler.shard_of(part), []).extend(recs)
                adopting += [asyncio.ensure_future(self.hosts[i].adopt(recs, now_s)) for i, recs in per_shard.items()]
        finally:
            got = await asyncio.gather(*adopting, return_exceptions=True)
        done: list[tuple[int, list[str]]] = []
        for r in got:
            if isinstance(r, BaseException):
                raise r
            done.append(r)
        # every chunk is in: block records no restored state names are deleted at the next checkpoint
        await asyncio.gather(*(self.hosts[i].adopted(ps) for i, ps in self._split([(self.changelog_topic, p) for p in parts]).items()))
        users = sum(u for u, _ in done)  # values installed (a user read in two chunks: twice)
        errors = [e for _, errs in done for e in errs]
        if errors:
            # loud, not fatal: one corrupt record must not crash-loop the group; that user starts empty
            self.metrics.state_unreadable.inc(len(errors))
            for e in errors[:10]:
                self._log.error("state_record_unreadable", error=e)
        took = time.monotonic() - t0
        self.metrics.restore_duration.observe(took)
        self.metrics.restored_records.inc(n)
        self._log.info("partitions_restored", partitions=parts, records=n, users=users, unreadable=len(errors), seconds=round(took, 3))

    async def refresh_stats(self) -> None:
        stats = await asyncio.gather(*(h.stats() for h in self.hosts))
        self.checkpointer.shard_users[:] = [st.state_users for st in stats]
        self.checkpointer.state_bytes = sum(st.state_bytes for st in stats)
        self.metrics.state_users.set(sum(self.checkpointer.shard_users))
        self.metrics.state_bytes.set(self.checkpointer.state_bytes)


class Listener(kio.ConsumerRebalanceListener):
    """aiokafka's listener interface on top of a :class:`Rebalancer`."""

    def __init__(self, rebalancer: Rebalancer) -> None:
        self.rebalancer = rebalancer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.rebalancer.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.rebalancer.on_assigned(list(assigned))
