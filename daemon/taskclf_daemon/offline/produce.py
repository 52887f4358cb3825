"""``taskclf-daemon produce``: the load generator. JSONL file or synthetic windows -> a topic.

Records are keyed by ``user_id`` (Kafka's default partitioner, as the desktop agents would),
sent as fast as possible or at a fixed rate (open loop: the schedule does not wait for acks).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson

from taskclf_daemon import kafka_io as kio
from taskclf_daemon.config import Settings


def records_from_file(lines: Iterable[bytes]) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) per non-empty line; the key is the ``user_id`` when the line has one."""
    for line in lines:
        value = line.rstrip(b"\r\n")
        if not value.strip():
            continue
        key = None
        try:
            obj = orjson.loads(value)
            if isinstance(obj, dict) and isinstance(obj.get("user_id"), str):
                key = obj["user_id"].encode()
        except orjson.JSONDecodeError:
            pass
        yield key, value


def records_from_rows(rows: Iterable[Mapping[str, Any]]) -> Iterator[tuple[bytes | None, bytes]]:
    for r in rows:
        yield str(r["user_id"]).encode(), orjson.dumps(r)


async def produce(
    settings: Settings,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    *,
    rate: float = 0.0,
    progress: Callable[[int, float], None] | None = None,
    create_partitions: int | None = None,
) -> int:
    """Send every record; return the count acknowledged by the broker.

    :param rate: records per second (0 = as fast as possible)
    """
    if create_partitions:
        await kio.ensure_topics(settings, [topic], partitions=create_partitions)
    producer = kio.make_producer(settings)
    await producer.start()
    sink = kio.OutputSink(producer)
    n = 0
    futures: list[asyncio.Future] = []
    try:
        await sink.prepare([topic])
        t0 = time.monotonic()
        chunk = 1 if 0 < rate <= 50 else max(1, int(rate / 200)) if rate else 2000
        last_report = t0
        for key, value in records:
            await sink.append(topic, key, value)
            n += 1
            if n % chunk == 0:
                futures += await sink.flush()
                if rate:
                    ahead = t0 + n / rate - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                if len(futures) > 256:
                    await asyncio.gather(*futures[:-64])
                    futures = futures[-64:]
                now = time.monotonic()
                if progress and now - last_report >= 1.0:
                    progress(n, now - t0)
                    last_report = now
        futures += await sink.flush()
        await asyncio.gather(*futures)
        if progress:
            progress(n, time.monotonic() - t0)
    finally:
        await producer.stop()
    return n
