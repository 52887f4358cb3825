"""The only module that imports aiokafka: client factories, topic creation, the batch sink.

Output records are appended to one ``BatchBuilder`` per (topic, partition) and submitted with
``send_batch`` (several times cheaper per record in Python than ``send()``); the partition of a
key is Kafka's default murmur2 partitioner, as the Java client and aiokafka compute it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    RebalanceInProgressError,
    TopicAlreadyExistsError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner

from taskclf_daemon.config import Settings

__all__ = [
    "AIOKafkaConsumer",
    "AIOKafkaProducer",
    "ConsumerRebalanceListener",
    "TopicPartition",
    "CommitFailedError",
    "IllegalStateError",
    "KafkaConnectionError",
    "KafkaError",
    "RebalanceInProgressError",
    "OutputSink",
    "client_kwargs",
    "make_consumer",
    "make_producer",
    "make_reader",
    "read_partitions_to_end",
    "probe_broker",
    "topic_partition_count",
    "ensure_topics",
]

Headers = Sequence[tuple[str, bytes]]


def client_kwargs(s: Settings) -> dict[str, Any]:
    """Connection and security options shared by consumer, producer and admin client."""
    kw: dict[str, Any] = {
        "bootstrap_servers": s.bootstrap_servers,
        "client_id": s.client_id,
        "security_protocol": s.security_protocol,
        "request_timeout_ms": s.request_timeout_ms,
    }
    if s.security_protocol in ("SSL", "SASL_SSL"):
        kw["ssl_context"] = create_ssl_context(
            cafile=s.ssl_cafile, certfile=s.ssl_certfile, keyfile=s.ssl_keyfile, password=s.ssl_password
        )
    if s.security_protocol.startswith("SASL"):
        kw["sasl_mechanism"] = s.sasl_mechanism
        kw["sasl_plain_username"] = s.sasl_username
        kw["sasl_plain_password"] = s.sasl_password
    return kw


def make_consumer(s: Settings, *, max_records: int) -> AIOKafkaConsumer:
    kw = client_kwargs(s)
    kw.pop("request_timeout_ms")
    return AIOKafkaConsumer(
        **kw,
        group_id=s.group_id,
        group_instance_id=s.group_instance_id,
        enable_auto_commit=False,
        auto_offset_reset=s.auto_offset_reset,
        fetch_max_wait_ms=s.fetch_max_wait_ms,
        max_partition_fetch_bytes=max(1 << 20, s.max_record_bytes + 1024),
        fetch_max_bytes=64 << 20,
        session_timeout_ms=s.session_timeout_ms,
        heartbeat_interval_ms=max(1000, s.session_timeout_ms // 10),
        max_poll_interval_ms=s.max_poll_interval_ms,
        max_poll_records=max_records,
        isolation_level="read_committed",
    )


def make_reader(s: Settings) -> AIOKafkaConsumer:
    """A group-less consumer for explicit ``assign()`` reads (changelog restore)."""
    kw = client_kwargs(s)
    kw.pop("request_timeout_ms")
    return AIOKafkaConsumer(
        **kw,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=min(s.fetch_max_wait_ms, 50),
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
        isolation_level="read_committed",
    )


async def read_partitions_to_end(reader: AIOKafkaConsumer, tps: list[TopicPartition], timeout: float) -> AsyncIterator[list[Any]]:
    """Yield record lists from the beginning of ``tps`` until each reaches its high watermark.

    Uses the fetch high-watermark (``highwater``), which is right on every broker, instead of
    ``end_offsets`` (wrong on Tansu).
    :raises asyncio.TimeoutError: when the end is not reached within ``timeout`` seconds
    """
    if not tps:
        return
    reader.assign(tps)
    await reader.seek_to_beginning(*tps)
    remaining = set(tps)
    deadline = asyncio.get_running_loop().time() + timeout
    while remaining:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"restore of {sorted(str(t) for t in remaining)} did not finish in {timeout}s")
        data = await reader.getmany(*remaining, timeout_ms=200, max_records=10000)
        for msgs in data.values():
            if msgs:
                yield msgs
        for tp in list(remaining):
            hw = reader.highwater(tp)
            if hw is not None and await reader.position(tp) >= hw:
                remaining.discard(tp)
    reader.assign([])


async def probe_broker(producer: AIOKafkaProducer, timeout: float = 5.0) -> bool:
    """True when a metadata round trip to the cluster succeeds within ``timeout``."""
    try:
        return bool(await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout))
    except (TimeoutError, KafkaError, OSError):
        return False


async def topic_partition_count(producer: AIOKafkaProducer, topic: str) -> int:
    parts = await producer.partitions_for(topic)
    return len(parts or ())


def make_producer(s: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **client_kwargs(s),
        acks="all",
        linger_ms=s.linger_ms,
        max_batch_size=1 << 20,
        max_request_size=max(1 << 20, 2 * s.max_record_bytes + 4096),
        enable_idempotence=False,  # not supported by every broker (Tansu); at-least-once + dedup keys
    )


async def ensure_topics(s: Settings, topics: Iterable[str], *, partitions: int | None = None, config: Mapping[str, str] | None = None) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    admin = AIOKafkaAdminClient(**client_kwargs(s))
    await admin.start()
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name=t, num_partitions=partitions or s.topic_partitions, replication_factor=s.topic_replication, topic_configs=dict(config or {}))
            for t in dict.fromkeys(topics)
            if t not in existing
        ]
        for nt in new:
            try:
                await admin.create_topics([nt])
                created.append(nt.name)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
    return created


class OutputSink:
    """Accumulates keyed records per (topic, partition) and submits them as batches."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._partitions: dict[str, list[int]] = {}
        self._part_cache: dict[tuple[str, bytes], int] = {}
        self._builders: dict[tuple[str, int], Any] = {}
        self._futures: list[asyncio.Future] = []
        self._partitioner = DefaultPartitioner()

    async def prepare(self, topics: Iterable[str]) -> None:
        for t in topics:
            parts = await self._producer.partitions_for(t)
            if not parts:
                raise KafkaError(f"topic {t!r} has no partitions (does it exist?)")
            self._partitions[t] = sorted(parts)

    def partition_for(self, topic: str, key: bytes) -> int:
        ck = (topic, key)
        p = self._part_cache.get(ck)
        if p is None:
            parts = self._partitions[topic]
            p = self._part_cache[ck] = self._partitioner(key, parts, parts)
            if len(self._part_cache) > 200_000:  # keys are user ids of at most 1 KiB
                self._part_cache.clear()
        return p

    async def append(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = (), timestamp_ms: int | None = None, partition: int | None = None) -> None:
        """Add a record; its partition is ``partition`` if given, else the key's default partition."""
        if partition is not None:
            part = partition
        else:
            part = self.partition_for(topic, key) if key is not None else self._partitions[topic][0]
        tp = (topic, part)
        b = self._builders.get(tp)
        if b is None:
            b = self._builders[tp] = self._producer.create_batch()
        ts = None if timestamp_ms is None else timestamp_ms / 1000.0
        if b.append(key=key, value=value, timestamp=ts, headers=list(headers)) is None:
            await self._submit(tp)
            b = self._builders[tp] = self._producer.create_batch()
            if b.append(key=key, value=value, timestamp=ts, headers=list(headers)) is None:
                raise KafkaError(f"record of {len(value or b'')} bytes does not fit an empty batch")

    async def _submit(self, tp: tuple[str, int]) -> None:
        b = self._builders.pop(tp)
        if b.record_count():
            fut = await self._producer.send_batch(b, tp[0], partition=tp[1])
            self._futures.append(fut)

    async def flush(self) -> list[asyncio.Future]:
        """Submit every open batch; return the futures of all batches submitted since last flush."""
        for tp in list(self._builders):
            await self._submit(tp)
        futs, self._futures = self._futures, []
        return futs
