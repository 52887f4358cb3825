"""An in-memory stand-in for the Kafka adapter: topics of partitions of records, a consumer with
the calls the daemon makes, a sink with controllable acknowledgements.

For fast unit tests of the scheduler, emitter, checkpointer and rebalancer -- features are
proven against a real broker (tests/daemon/). No threads, no network; deterministic.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from taskclf_daemon.wire import Headers


class MemoryTP(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class MemoryRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = -1
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class MemoryBroker:
    """``topic -> partition -> records`` and committed offsets per group."""

    partitions: dict[str, int] = field(default_factory=dict)
    log: dict[MemoryTP, list[MemoryRecord]] = field(default_factory=dict)
    committed: dict[MemoryTP, int] = field(default_factory=dict)

    def create(self, topic: str, partitions: int) -> None:
        self.partitions[topic] = partitions
        for p in range(partitions):
            self.log.setdefault(MemoryTP(topic, p), [])

    def append(self, topic: str, partition: int, key: bytes | None, value: bytes | None, timestamp: int = -1, headers: Headers = ()) -> MemoryRecord:
        tp = MemoryTP(topic, partition)
        recs = self.log.setdefault(tp, [])
        r = MemoryRecord(topic, partition, len(recs), key, value, timestamp, tuple(headers))
        recs.append(r)
        return r

    def records(self, topic: str) -> list[MemoryRecord]:
        return [r for tp, recs in sorted(self.log.items()) if tp.topic == topic for r in recs]


class MemoryConsumer:
    """The consumer calls the daemon makes: ``assignment``, ``getmany``, ``pause``/``resume``,
    ``seek``, ``commit``, ``highwater``. Assignment is set by the test (:meth:`assign`)."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self._assigned: set[MemoryTP] = set()
        self._paused: set[MemoryTP] = set()
        self._position: dict[MemoryTP, int] = {}
        self.commits: list[dict[Any, int]] = []

    def assign(self, tps: Iterable[MemoryTP]) -> None:
        self._assigned = set(tps)
        for tp in self._assigned:
            self._position.setdefault(tp, self.broker.committed.get(tp, 0))

    def assignment(self) -> set[MemoryTP]:
        return set(self._assigned)

    def pause(self, *tps: Any) -> None:
        self._paused.update(MemoryTP(t.topic, t.partition) for t in tps)

    def resume(self, *tps: Any) -> None:
        self._paused.difference_update(MemoryTP(t.topic, t.partition) for t in tps)

    def paused(self) -> set[MemoryTP]:
        return set(self._paused)

    def seek(self, tp: Any, offset: int) -> None:
        self._position[MemoryTP(tp.topic, tp.partition)] = offset

    async def seek_to_beginning(self, *tps: Any) -> None:
        for tp in tps:
            self.seek(tp, 0)

    async def position(self, tp: Any) -> int:
        return self._position.get(MemoryTP(tp.topic, tp.partition), 0)

    def highwater(self, tp: Any) -> int:
        return len(self.broker.log.get(MemoryTP(tp.topic, tp.partition), []))

    def last_stable_offset(self, tp: Any) -> int:
        return self.highwater(tp)

    async def getmany(self, *tps: Any, timeout_ms: int = 0, max_records: int | None = None) -> dict[MemoryTP, list[MemoryRecord]]:
        want = [MemoryTP(t.topic, t.partition) for t in tps] or sorted(self._assigned)
        out: dict[MemoryTP, list[MemoryRecord]] = {}
        left = max_records if max_records is not None else 1 << 62
        for tp in want:
            if tp not in self._assigned or tp in self._paused or left <= 0:
                continue
            pos = self._position.get(tp, 0)
            recs = self.broker.log.get(tp, [])[pos : pos + left]
            if recs:
                out[tp] = recs
                self._position[tp] = pos + len(recs)
                left -= len(recs)
        if not out:
            await asyncio.sleep(timeout_ms / 1000.0)
        return out

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits.append(dict(offsets))
        for tp, o in offsets.items():
            self.broker.committed[MemoryTP(tp.topic, tp.partition)] = o


class MemorySink:
    """A sink writing into a :class:`MemoryBroker`: every ``flush`` returns futures that are done
    at once (``auto_ack``) or stay pending until :meth:`ack_all` / :meth:`fail_all`."""

    def __init__(self, broker: MemoryBroker, *, auto_ack: bool = True) -> None:
        self.broker = broker
        self.auto_ack = auto_ack
        self._batch: list[tuple[str, int | None, bytes | None, bytes | None, Headers]] = []
        self.pending: list[asyncio.Future[Any]] = []

    async def append(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = (), timestamp_ms: int | None = None, partition: int | None = None) -> None:
        self._batch.append((topic, partition, key, value, headers))

    async def flush(self) -> list[asyncio.Future[Any]]:
        if not self._batch:
            return []
        batch, self._batch = self._batch, []
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: self._write(batch) if not f.cancelled() and f.exception() is None else None)
        if self.auto_ack:
            fut.set_result(None)
        else:
            self.pending.append(fut)
        return [fut]

    def _write(self, batch: list[tuple[str, int | None, bytes | None, bytes | None, Headers]]) -> None:
        for topic, partition, key, value, headers in batch:
            n = self.broker.partitions.get(topic, 1)
            part = partition if partition is not None else (zlib.crc32(key) % n if key is not None else 0)
            self.broker.append(topic, part, key, value, headers=headers)

    def ack_all(self) -> None:
        for f in self.pending:
            if not f.done():
                f.set_result(None)
        self.pending = []

    def fail_all(self, exc: BaseException) -> None:
        for f in self.pending:
            if not f.done():
                f.set_exception(exc)
        self.pending = []
