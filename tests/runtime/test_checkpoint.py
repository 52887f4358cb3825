"""The checkpoint order with real shards and an in-memory broker (no Kafka): the changelog is
written only once every output is acknowledged, offsets are committed only once the changelog
is, and a changelog failure commits nothing and writes the same users again next time -- both
for the whole checkpoint (revoke, shutdown) and the pipelined one (a barrier, then the rest in
the background while newer batches are processed)."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from helpers_rows import GOLDEN_DIR
from taskclf_daemon.artifacts import build_pipeline
from taskclf_daemon.checkpoint import Checkpointer
from taskclf_daemon.emitter import Emitter, InvalidRatio
from taskclf_daemon.errors import TaskclfDaemonError
from taskclf_daemon.memory_kafka import MemoryBroker, MemoryConsumer, MemorySink, MemoryTP
from taskclf_daemon.metrics import Metrics
from taskclf_daemon.offsets import OffsetTracker
from taskclf_daemon.scheduler import Scheduler
from taskclf_daemon.shard import PipelineShard
from taskclf_daemon.workers import LocalShard


@pytest.fixture(scope="module")
def pipe():
    p, _ = build_pipeline(policy=GOLDEN_DIR / "models" / "inference_policy.json")
    return p


async def until(cond, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``cond()`` holds (the shard runs in a thread: no fixed sleep is long enough
    on a loaded machine)."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.01)


class Rig:
    """Scheduler + emitter + checkpointer over one in-process shard and an in-memory broker."""

    def __init__(self, pipe, lines: list[bytes]) -> None:
        self.broker = MemoryBroker()
        for t in ("in", "out", "dlq", "state"):
            self.broker.create(t, 2)
        for line in lines:
            u = orjson.loads(line)["user_id"].encode()
            self.broker.append("in", u[0] % 2, u, line, timestamp=1_775_520_000_000)
        self.consumer = MemoryConsumer(self.broker)
        self.consumer.assign([MemoryTP("in", 0), MemoryTP("in", 1)])
        self.sink = MemorySink(self.broker, auto_ack=False)  # outputs and dead letters
        self.cl_sink = MemorySink(self.broker, auto_ack=False)  # the changelog
        self.hosts = [LocalShard(PipelineShard(pipe))]
        self.sched = Scheduler(self.hosts, "in", 1000)
        self.tracker, self.metrics, users = OffsetTracker(), Metrics(), [0]
        self.emitter = Emitter(self.sink, self.tracker, self.metrics, output_topic="out", dlq_topic="dlq", max_produce_bytes=1_000_000, invalid=InvalidRatio(100, 1.0), shard_users=users)
        self.cp = Checkpointer(hosts=self.hosts, tracker=self.tracker, sink=self.cl_sink, consumer=self.consumer, changelog_topic="state", metrics=self.metrics, finish=self.finish, shard_users=users)

    async def finish(self, deadline: float, interruptible: bool) -> bool:
        for i, q in enumerate(self.sched.queues):
            while q:
                w = self.sched.pop(i)
                await self.emitter.emit(i, w, await w.future)
        return True

    async def feed(self) -> None:
        for tp, recs in (await self.consumer.getmany()).items():
            self.sched.add((tp.topic, tp.partition), recs)
        self.sched.submit(0)

    async def checkpoint_acking(self, *, fail_changelog: bool = False) -> bool:
        """Run a checkpoint; acknowledge the outputs once it waits, then its changelog."""
        task = asyncio.ensure_future(self.cp.run(deadline=time.monotonic() + 30.0))
        await until(lambda: bool(self.sink.pending) or bool(self.cl_sink.pending) or task.done())
        assert self.broker.records("state") == [] or not fail_changelog
        self.sink.ack_all()  # the outputs
        await until(lambda: bool(self.cl_sink.pending) or task.done())
        if fail_changelog:
            self.cl_sink.fail_all(RuntimeError("changelog refused"))
        else:
            self.cl_sink.ack_all()
        return await task


def test_changelog_after_outputs_commit_after_changelog(pipe) -> None:
    lines = [ln for ln in (GOLDEN_DIR / "inputs.jsonl").read_bytes().splitlines() if ln.strip()][:150]

    async def run() -> None:
        rig = Rig(pipe, lines)
        await rig.feed()
        task = asyncio.ensure_future(rig.cp.run(deadline=time.monotonic() + 30.0))
        await until(lambda: bool(rig.sink.pending))
        # Step 1 waits for the outputs: nothing written, nothing committed
        assert not task.done() and rig.broker.records("out") == [] and rig.broker.records("state") == [] and rig.consumer.commits == []
        rig.sink.ack_all()
        await until(lambda: bool(rig.cl_sink.pending))  # the changelog's flush
        # Step 3 waits for the changelog: the outputs are there, the state not yet, no commit
        assert len(rig.broker.records("out")) == 150 and rig.broker.records("state") == [] and rig.consumer.commits == []
        rig.cl_sink.ack_all()
        assert await task is True
        users = {orjson.loads(ln)["user_id"].encode() for ln in lines}
        assert {r.key for r in rig.broker.records("state")} == users
        sizes = {MemoryTP("in", p): len(rig.broker.log[MemoryTP("in", p)]) for p in (0, 1)}
        assert rig.consumer.commits[-1] == {tp: n for tp, n in sizes.items() if n} and sum(sizes.values()) == 150
        assert rig.metrics.checkpoints.labels("ok")._value.get() == 1

    asyncio.run(run())


def test_a_changelog_failure_commits_nothing_and_rewrites_the_same_users(pipe) -> None:
    lines = [ln for ln in (GOLDEN_DIR / "inputs.jsonl").read_bytes().splitlines() if ln.strip()][:60]

    async def run() -> None:
        rig = Rig(pipe, lines)
        await rig.feed()
        with pytest.raises(TaskclfDaemonError, match="writing the state changelog failed.*offsets not committed"):
            await rig.checkpoint_acking(fail_changelog=True)
        assert rig.consumer.commits == [] and rig.broker.records("state") == []
        assert await rig.checkpoint_acking() is True  # the same users again, then the commit
        assert {r.key for r in rig.broker.records("state")} == {orjson.loads(ln)["user_id"].encode() for ln in lines}
        assert len(rig.consumer.commits) == 1

    asyncio.run(run())


def _in_lines(n: int, skip: int = 0) -> list[bytes]:
    return [ln for ln in (GOLDEN_DIR / "inputs.jsonl").read_bytes().splitlines() if ln.strip()][skip : skip + n]


def test_pipelined_checkpoint_lets_processing_go_on_and_commits_only_the_barrier(pipe) -> None:
    first, second = _in_lines(100), _in_lines(50, skip=100)

    async def run() -> None:
        rig = Rig(pipe, first)
        await rig.feed()
        assert await rig.cp.start(deadline=time.monotonic() + 30.0) is True  # the barrier: returns at once
        barrier = {MemoryTP("in", p): len(rig.broker.log[MemoryTP("in", p)]) for p in (0, 1)}
        # outputs not acknowledged: nothing in the changelog, nothing committed -- and the loop
        # goes on: newer records are processed and produced meanwhile
        for line in second:
            u = orjson.loads(line)["user_id"].encode()
            rig.broker.append("in", u[0] % 2, u, line, timestamp=1_775_520_000_000)
        await rig.feed()
        await rig.finish(0.0, False)
        assert rig.broker.records("state") == [] and rig.consumer.commits == [] and not rig.cl_sink.pending
        assert await rig.cp.start(deadline=time.monotonic() + 30.0) is False  # one in flight at a time
        assert rig.metrics.checkpoints.labels("skipped_in_flight")._value.get() == 1
        rig.sink.ack_all()  # every output, the barrier's and the newer ones
        await until(lambda: bool(rig.cl_sink.pending))
        assert rig.consumer.commits == []  # the changelog is not acknowledged yet
        rig.cl_sink.ack_all()
        assert await rig.cp.settle(time.monotonic() + 10.0) is True
        rig.cp.check()
        # the commit is the barrier's positions, not the newer batches' (their state is not durable)
        assert rig.consumer.commits == [{tp: n for tp, n in barrier.items() if n}] and sum(barrier.values()) == 100
        # the changelog holds exactly the users of the barrier's 100 windows
        assert {r.key for r in rig.broker.records("state")} == {orjson.loads(ln)["user_id"].encode() for ln in first}
        # the next barrier covers the newer batches
        assert await rig.cp.start(deadline=time.monotonic() + 30.0) is True
        await until(lambda: bool(rig.cl_sink.pending))
        rig.cl_sink.ack_all()
        assert await rig.cp.settle(time.monotonic() + 10.0) is True
        total = {MemoryTP("in", p): len(rig.broker.log[MemoryTP("in", p)]) for p in (0, 1)}
        assert rig.consumer.commits[-1] == {tp: n for tp, n in total.items() if n} and sum(total.values()) == 150

    asyncio.run(run())


def test_pipelined_checkpoint_failures_are_loud_and_rewrite_the_same_users(pipe) -> None:
    lines = _in_lines(60)

    async def run() -> None:
        rig = Rig(pipe, lines)
        await rig.feed()
        assert await rig.cp.start(deadline=time.monotonic() + 30.0) is True
        rig.sink.ack_all()
        await until(lambda: bool(rig.cl_sink.pending))
        rig.cl_sink.fail_all(RuntimeError("changelog refused"))
        assert await rig.cp.settle(time.monotonic() + 10.0) is False
        with pytest.raises(TaskclfDaemonError, match="writing the state changelog failed.*offsets not committed"):
            rig.cp.check()
        assert rig.consumer.commits == [] and rig.broker.records("state") == []
        assert rig.metrics.checkpoints.labels("changelog_failed")._value.get() == 1
        # the next checkpoint writes the same users again, then commits every position
        assert await rig.checkpoint_acking() is True
        assert {r.key for r in rig.broker.records("state")} == {orjson.loads(ln)["user_id"].encode() for ln in lines}
        assert sum(rig.consumer.commits[-1].values()) == 60

    asyncio.run(run())


def test_pipelined_checkpoint_output_failure_is_fatal_and_commits_nothing(pipe) -> None:
    async def run() -> None:
        rig = Rig(pipe, _in_lines(40))
        await rig.feed()
        assert await rig.cp.start(deadline=time.monotonic() + 30.0) is True
        rig.sink.fail_all(RuntimeError("output refused"))
        assert await rig.cp.settle(time.monotonic() + 10.0) is False
        with pytest.raises(TaskclfDaemonError, match="producing outputs failed, offsets not committed: RuntimeError: output refused"):
            rig.cp.check()
        assert rig.consumer.commits == [] and rig.broker.records("state") == [] and not rig.cl_sink.pending

    asyncio.run(run())
