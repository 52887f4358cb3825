"""The emitter produces what a shard hands back (in-memory sink, no broker): outputs with their
provenance headers, dead letters with the original key/value and reasons, offsets tracked,
metrics counted, and the invalid-input guard."""

from __future__ import annotations

import asyncio

import pytest

from taskclf_daemon.emitter import Emitter, InvalidFlood, InvalidRatio
from taskclf_daemon.memory_kafka import MemoryBroker, MemorySink
from taskclf_daemon.metrics import Metrics
from taskclf_daemon.offsets import OffsetTracker
from taskclf_daemon.records import DeadLetter, OutputRecord, SourceRef
from taskclf_daemon.scheduler import Work
from taskclf_daemon.shard import Outputs, ShardResult


def test_ratio_is_over_the_last_window_records_only() -> None:
    g = InvalidRatio(window=10, limit=0.5)
    g.add_batch(4, [0, 1, 2, 3])
    assert g.ratio == 1.0 and not g.exceeded()  # fewer than `window` records seen: no verdict
    g.add_batch(6, [5])
    assert g.ratio == 0.5 and not g.exceeded()  # 5 of 10: not above the limit
    g.add_batch(3, [0, 1])
    assert g.ratio == 0.4  # the first 3 (all bad) fell out
    g.add_batch(10, list(range(6)))
    assert g.ratio == 0.6 and g.exceeded()
    assert not InvalidRatio(window=10, limit=1.0).exceeded()


def _result(outputs: list[OutputRecord], dead: list[DeadLetter]) -> ShardResult:
    outs = Outputs()
    for o in outputs:
        outs.append(*o)
    return ShardResult(outs, dead, {"late": 1}, {("Build", "global"): len(outputs)}, [0.9] * len(outputs), 0, {"predict": 0.001}, 7)


def _emitter(broker: MemoryBroker, sink: MemorySink, limit: float = 1.0, window: int = 10) -> tuple[Emitter, OffsetTracker, Metrics, list[int]]:
    tracker, m, users = OffsetTracker(), Metrics(), [0, 0]
    e = Emitter(sink, tracker, m, output_topic="out", dlq_topic="dlq", max_produce_bytes=4096, invalid=InvalidRatio(window, limit), shard_users=users)
    return e, tracker, m, users


def test_outputs_and_dead_letters_are_produced_and_tracked() -> None:
    async def run() -> None:
        broker = MemoryBroker()
        broker.create("out", 1)
        broker.create("dlq", 1)
        sink = MemorySink(broker, auto_ack=False)
        e, tracker, m, users = _emitter(broker, sink)
        src = SourceRef("in", 3, 17)
        res = _result([OutputRecord(b"u1", b'{"p":1}', b"in:3:16")], [DeadLetter(1, src, b"K" * 3000, b"V" * 3000, "invalid_json", "boom")])
        await e.emit(1, Work(asyncio.get_running_loop().create_future(), 2, {("in", 3): 18}, [5, 6]), res)
        assert len(tracker) == 1 and tracker.in_flight_records == 2 and users == [0, 7]
        assert broker.records("out") == []  # nothing is written before the broker acknowledges
        sink.ack_all()
        await asyncio.sleep(0)
        tracker.collect()
        assert tracker.take_committable() == {("in", 3): 18}
        (out,) = broker.records("out")
        assert (out.key, out.value) == (b"u1", b'{"p":1}') and dict(out.headers)["taskclf-source"] == b"in:3:16"
        assert int(dict(out.headers)["taskclf-processed-ms"]) > 0
        (dl,) = broker.records("dlq")
        h = dict(dl.headers)
        assert h["taskclf-dlq-reason"] == b"invalid_json" and h["taskclf-dlq-detail"] == b"boom"
        assert (h["taskclf-source-topic"], h["taskclf-source-partition"], h["taskclf-source-offset"]) == (b"in", b"3", b"17")
        # too large for max_produce_bytes (4096): cut to fit, and said so
        assert h["taskclf-dlq-truncated"] == b"key,value" and len(dl.key or b"") + len(dl.value or b"") + sum(len(k) + len(v) for k, v in dl.headers) <= 4096
        assert m.dlq.labels("invalid_json")._value.get() == 1
        assert m.records_processed.labels("late")._value.get() == 1
        assert m.records_processed.labels("emitted")._value.get() == 1

    asyncio.run(run())


def test_the_invalid_guard_trips_once_with_a_message_naming_the_fix() -> None:
    async def run() -> None:
        broker = MemoryBroker()
        e, *_ = _emitter(broker, MemorySink(broker), limit=0.5, window=4)
        bad = [DeadLetter(i, SourceRef("in", 0, i), b"k", b"x", "invalid_json", "") for i in range(3)]
        fut = asyncio.get_running_loop().create_future()
        with pytest.raises(InvalidFlood, match="75% of the last 4 records were invalid .* raise max_invalid_ratio"):
            await e.emit(0, Work(fut, 4, {("in", 0): 4}, []), _result([], bad))
        assert e.flood is not None
        await e.emit(0, Work(fut, 4, {("in", 0): 8}, []), _result([], bad))  # set once: no second raise

    asyncio.run(run())
