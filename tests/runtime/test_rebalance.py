"""Assign and revoke with real shards and an in-memory broker (no Kafka): an assignment restores
its users from the changelog (latest record per user, tombstones honoured, unreadable records
counted), a revoke checkpoints and releases, and a failure inside either is reported, never
swallowed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers_rows import GOLDEN_DIR
from taskclf_daemon.artifacts import build_pipeline
from taskclf_daemon.checkpoint import Checkpointer
from taskclf_daemon.memory_kafka import MemoryBroker, MemoryConsumer, MemorySink, MemoryTP
from taskclf_daemon.metrics import Metrics
from taskclf_daemon.offsets import OffsetTracker
from taskclf_daemon.rebalance import Rebalancer
from taskclf_daemon.scheduler import Scheduler
from taskclf_daemon.shard import PipelineShard
from taskclf_daemon.state import UserState
from taskclf_daemon.workers import LocalShard


@pytest.fixture(scope="module")
def pipe():
    p, _ = build_pipeline(policy=GOLDEN_DIR / "models" / "inference_policy.json")
    return p


def _rig(pipe, broker: MemoryBroker, failures: list[str]) -> tuple[Rebalancer, MemoryConsumer, Metrics]:
    consumer, reader = MemoryConsumer(broker), MemoryConsumer(broker)
    hosts = [LocalShard(PipelineShard(pipe)), LocalShard(PipelineShard(pipe))]
    sched = Scheduler(hosts, "in", 100)
    m, users = Metrics(), [0, 0]

    async def finish(deadline: float, interruptible: bool) -> bool:
        return True

    cp = Checkpointer(hosts=hosts, tracker=OffsetTracker(), sink=MemorySink(broker), consumer=consumer, changelog_topic="state", metrics=m, finish=finish, shard_users=users)
    rb = Rebalancer(
        hosts=hosts, scheduler=sched, checkpointer=cp, lock=asyncio.Lock(), consumer=consumer, reader=reader, changelog_topic="state",
        restore_timeout_s=5.0, revoke_budget_s=5.0, metrics=m, on_failure=failures.append, group="g",
    )
    return rb, consumer, m


def _state(windows: int) -> bytes:
    st = UserState(3)
    st.windows_seen = windows
    st.last_ts_us = 1_775_520_000_000_000
    return st.to_bytes()


def test_assign_restores_the_latest_state_of_each_user_and_revoke_releases_it(pipe) -> None:
    broker = MemoryBroker()
    broker.create("in", 4)
    broker.create("state", 4)
    broker.append("state", 1, b"alice", _state(1))
    broker.append("state", 1, b"alice", _state(2))  # the latest wins
    broker.append("state", 2, b"bob", _state(5))
    broker.append("state", 2, b"bob", None)  # tombstoned: gone
    broker.append("state", 3, b"carol", b"{not state")  # unreadable: counted, that user starts empty
    broker.append("state", 0, b"dave", _state(9))  # partition 0 is not assigned here

    async def run() -> None:
        failures: list[str] = []
        rb, consumer, m = _rig(pipe, broker, failures)
        tps = [MemoryTP("in", p) for p in (1, 2, 3)]
        consumer.assign(tps)
        await rb.on_assigned(tps)
        assert failures == [] and rb.assigned == {("in", 1), ("in", 2), ("in", 3)} and rb.restoring == 0
        assert consumer.paused() == set()  # resumed after the restore
        states = {u: st for h in rb.hosts for u, st in h.shard.states.users.items()}  # type: ignore[attr-defined]
        assert set(states) == {"alice"} and states["alice"].windows_seen == 2
        assert m.state_unreadable._value.get() == 1 and m.restored_records._value.get() == 5
        await rb.on_revoked([MemoryTP("in", 1)])
        assert failures == [] and rb.assigned == {("in", 2), ("in", 3)}
        assert sum(st.state_users for st in await asyncio.gather(*(h.stats() for h in rb.hosts))) == 0

    asyncio.run(run())


def test_a_failure_inside_the_assignment_is_reported_and_the_partitions_resumed(pipe, monkeypatch) -> None:
    broker = MemoryBroker()
    broker.create("in", 2)
    broker.create("state", 2)

    async def run() -> None:
        failures: list[str] = []
        rb, consumer, _m = _rig(pipe, broker, failures)

        async def too_slow(keys: Any) -> None:
            raise TimeoutError("restore of [state-0] did not finish in 120s")

        monkeypatch.setattr(rb, "_restore", too_slow)
        tps = [MemoryTP("in", 0)]
        consumer.assign(tps)
        await rb.on_assigned(tps)  # does not raise: aiokafka would swallow it
        assert failures == ["partition assignment (state restore) failed: TimeoutError: restore of [state-0] did not finish in 120s"]
        assert rb.assigned == set() and rb.restoring == 0 and consumer.paused() == set()

    asyncio.run(run())
