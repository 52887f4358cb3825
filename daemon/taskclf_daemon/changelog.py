"""The per-user state changelog: a compacted topic, one partition per input partition.

Key ``user_id``, value the user's whole state (``state.UserState.to_bytes``, versioned JSON), a
null value (tombstone) for a user forgotten. Written at every checkpoint (the changed users
only); read back to the high-watermark when a partition is assigned, installed chunk by chunk
(:func:`read_chunks`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from taskclf_daemon import kafka_io as kio
from taskclf_daemon.config import Settings
from taskclf_daemon.errors import TaskclfDaemonError
from taskclf_daemon.log import get_logger
from taskclf_daemon.shard import CheckpointData
from taskclf_daemon.wire import Sink


def changelog_topic_name(settings: Settings) -> str:
    return settings.changelog_topic or f"{settings.input_topic}.{settings.group_id}.state"


async def ensure_changelog(settings: Settings, producer: Any, topic: str) -> None:
    """Check (and with ``create_topics``, create) the changelog: compacted, exactly as many
    partitions as the input topic, else a start-up error naming the fix."""
    s = settings
    log = get_logger("changelog")
    n_in = await kio.topic_partition_count(producer, s.input_topic)
    if n_in == 0:
        raise TaskclfDaemonError(f"input topic {s.input_topic!r} does not exist; create it or set create_topics = true")
    if s.create_topics:
        created = await kio.ensure_topics(s, [topic], partitions=n_in, config={"cleanup.policy": "compact"})
        if created:
            log.info("changelog_created", topic=topic, partitions=n_in)
    producer.client.add_topic(topic)
    n_cl = 0
    for _ in range(50):
        n_cl = await kio.topic_partition_count(producer, topic)
        if n_cl:
            break
        await asyncio.sleep(0.1)
    if n_cl == 0 and not s.create_topics:
        raise TaskclfDaemonError(
            f"changelog topic {topic!r} does not exist and create_topics is false; create it compacted "
            f"(cleanup.policy=compact) with {n_in} partitions, like {s.input_topic!r}, or set create_topics = true"
        )
    if n_cl != n_in:
        raise TaskclfDaemonError(
            f"changelog topic {topic!r} has {n_cl} partitions but input topic {s.input_topic!r} has {n_in}; "
            "state must follow its partition: recreate the changelog with the input's partition count or set changelog_topic"
        )


async def write(sink: Sink, topic: str, checkpoints: Sequence[CheckpointData]) -> tuple[int, int]:
    """Append every update and tombstone to the sink (same partition as the input's); returns
    (updates, tombstones). The caller flushes and waits for the acknowledgements."""
    n_upd = n_del = 0
    for cp in checkpoints:
        for part, key, value in cp.updates:
            await sink.append(topic, key, value, partition=part)
        for part, key in cp.tombstones:
            await sink.append(topic, key, None, partition=part)
        n_upd += len(cp.updates)
        n_del += len(cp.tombstones)
    return n_upd, n_del


async def read_chunks(reader: Any, topic: str, partitions: Sequence[int], timeout: float) -> AsyncIterator[tuple[dict[int, list[tuple[int, bytes, bytes | None]]], int]]:
    """``partitions`` read to the high-watermark, chunk by chunk (as fetched), each chunk as
    ``{partition: [(partition, key, value or None for a tombstone), ...]}`` -- the latest record
    of each key within the chunk, in offset order -- and the number of records it held.

    Applying the chunks in order leaves every user at their latest value (a later chunk's
    record replaces an earlier one's, a tombstone removes it), so a restore can install one
    chunk while the next is fetched.

    :raises TimeoutError: the end was not reached within ``timeout`` seconds
    """
    tps = [kio.TopicPartition(topic, p) for p in partitions]
    async for msgs in kio.read_partitions_to_end(reader, tps, timeout):
        latest: dict[int, dict[bytes, bytes | None]] = {}
        for msg in msgs:
            key = msg.key
            if key is not None:
                part = msg.partition
                d = latest.get(part)
                if d is None:
                    d = latest[part] = {}
                d[key] = msg.value
        yield {part: [(part, key, value) for key, value in d.items()] for part, d in latest.items()}, len(msgs)
