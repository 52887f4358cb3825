"""The per-user state changelog: a compacted topic, one partition per input partition.

Key ``user_id``, value the user's whole state (``state.UserState.to_bytes``, versioned JSON), a
null value (tombstone) for a user forgotten. Written at every checkpoint (the changed users
only); read back to the high-watermark when a partition is assigned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
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


async def read_latest(reader: Any, topic: str, partitions: Sequence[int], timeout: float) -> tuple[dict[int, list[tuple[int, bytes, bytes]]], int]:
    """The latest value of every live user of ``partitions``, read to the high-watermark, as
    ``{partition: [(partition, key, value), ...]}``, and the number of records read.

    :raises TimeoutError: the end was not reached within ``timeout`` seconds
    """
    tps = [kio.TopicPartition(topic, p) for p in partitions]
    latest: dict[tuple[int, bytes], bytes | None] = {}
    n = 0
    async for msgs in kio.read_partitions_to_end(reader, tps, timeout):
        for msg in msgs:
            if msg.key is not None:
                latest[(msg.partition, msg.key)] = msg.value
        n += len(msgs)
    out: dict[int, list[tuple[int, bytes, bytes]]] = {}
    for (part, key), value in latest.items():
        if value is not None:
            out.setdefault(part, []).append((part, key, value))
    return out, n
