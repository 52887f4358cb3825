"""What the daemon's Kafka records look like on the wire: keys, values and headers, in one place.

Pure (no client): the shards build output records with :func:`source_header`; the emitter adds
:func:`output_headers` and builds dead letters with :func:`dead_letter`. The names here are the
topic contract (``docs/`` and the README describe them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from taskclf_daemon.records import DeadLetter, SourceRef

Headers = Sequence[tuple[str, bytes]]


class Sink(Protocol):
    """Where records go: ``kafka_io.OutputSink``, or an in-memory one in tests. ``append``
    batches; ``flush`` submits and returns the futures of everything appended since the last."""

    async def append(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = (), timestamp_ms: int | None = None, partition: int | None = None) -> None: ...

    async def flush(self) -> list[asyncio.Future[Any]]: ...


#: output headers: the input record (``topic:partition:offset``) and the processing time (ms)
SOURCE = "taskclf-source"
PROCESSED_MS = "taskclf-processed-ms"
#: dead-letter headers
DLQ_REASON = "taskclf-dlq-reason"
DLQ_DETAIL = "taskclf-dlq-detail"
DLQ_SOURCE_TOPIC = "taskclf-source-topic"
DLQ_SOURCE_PARTITION = "taskclf-source-partition"
DLQ_SOURCE_OFFSET = "taskclf-source-offset"
DLQ_TRUNCATED = "taskclf-dlq-truncated"
#: longest ``taskclf-dlq-detail`` (characters)
MAX_DETAIL_CHARS = 500
#: bytes kept free for the record framing when a record is checked against ``max_produce_bytes``
#: (a v2 record's own overhead is < 100 bytes; headers are counted separately)
RECORD_OVERHEAD = 512


def source_header(src: SourceRef) -> bytes:
    return f"{src.topic}:{src.partition}:{src.offset}".encode()


def output_headers(source: bytes, processed_ms: bytes) -> list[tuple[str, bytes]]:
    return [(SOURCE, source), (PROCESSED_MS, processed_ms)]


def fit_dead_letter(key: bytes | None, value: bytes | None, limit: int) -> tuple[bytes | None, bytes | None, str]:
    """The key and value of a dead letter cut to ``limit`` bytes together (value first, then the
    key), and which were cut (``""``, ``"value"`` or ``"key,value"``): a dead letter is never
    itself too large to produce. A null key or value (a tombstone) stays null."""
    klen = len(key) if key is not None else 0
    if klen + (len(value) if value is not None else 0) <= limit:
        return key, value, ""
    value = value if value is not None else b""
    if klen <= limit // 2:
        return key, value[: limit - klen], "value"
    half = limit // 2
    return (key or b"")[:half], value[: limit - half], "key,value"


def dead_letter(d: DeadLetter, max_produce_bytes: int) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """Key, value and headers of the dead letter of ``d``: the original key and value (cut to fit
    ``max_produce_bytes``, then flagged in ``taskclf-dlq-truncated``), reason, detail, source."""
    src = d.source
    headers = [
        (DLQ_REASON, d.reason.encode()),
        (DLQ_DETAIL, d.detail[:MAX_DETAIL_CHARS].encode("utf-8", "replace")),
        (DLQ_SOURCE_TOPIC, src.topic.encode()),
        (DLQ_SOURCE_PARTITION, str(src.partition).encode()),
        (DLQ_SOURCE_OFFSET, str(src.offset).encode()),
    ]
    room = max_produce_bytes - RECORD_OVERHEAD - sum(len(k) + len(v) for k, v in headers)
    key, value, cut = fit_dead_letter(d.key, d.value, room)
    if cut:
        headers.append((DLQ_TRUNCATED, cut.encode()))
    return key, value, headers
