#!/usr/bin/env python3
"""The benchmark's job as a FastStream service (``pip install 'taskclf-daemon[bench]'``).

A batch subscriber (up to ``--batch`` records per call, the daemon's micro-batch), manual
acknowledgement: the batch is decoded, run through the daemon's pipeline with the users' state
held in this process (FastStream has no state store of its own), the predictions published with
``publish_batch`` -- one batch per output partition, keyed by ``user_id`` and the partition chosen
from that key as Kafka's default partitioner would, so each user's outputs stay in order on one
partition --
and only then is the batch acknowledged (the offsets committed): at-least-once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peerlib


def output_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2 of the key) as the Java client and aiokafka use it."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def run(a: argparse.Namespace) -> int:
    from faststream import AckPolicy, FastStream
    from faststream.kafka import KafkaBroker, KafkaMessage, KafkaPublishMessage

    job = peerlib.Job(a)
    store = job.pipeline.new_state_store()
    # a whole micro-batch's outputs for one partition go in one producer batch (aiokafka's 16 KB
    # default would overflow): the size the daemon's producer uses
    broker = KafkaBroker(a.bootstrap_servers, client_id=f"peer-{a.group_id}", linger_ms=5, max_batch_size=1 << 20, max_request_size=1 << 21)
    app = FastStream(broker)
    parts: dict[bytes, int] = {}

    @broker.subscriber(a.input_topic, group_id=a.group_id, batch=True, max_records=job.batch, batch_timeout_ms=50,
                       auto_offset_reset="earliest", ack_policy=AckPolicy.MANUAL)
    async def handle(msg: KafkaMessage) -> None:
        raw = msg.raw_message
        records = raw if isinstance(raw, tuple) else (raw,)
        windows = job.decode(((r.key, r.value, r.partition, r.offset) for r in records), a.input_topic)
        by_partition: dict[int, list[KafkaPublishMessage]] = defaultdict(list)
        for p in job.process_with_store(windows, store):
            key = p.user_id.encode()
            part = parts.get(key)
            if part is None:
                part = parts[key] = output_partition(key, a.partitions)
            by_partition[part].append(KafkaPublishMessage(p.value, key=key))
        if by_partition:
            await asyncio.gather(*(broker.publish_batch(*values, topic=a.output_topic, partition=part) for part, values in by_partition.items()))
        await msg.ack()
        if job.count(len(records)):
            job.drained()

    @app.after_startup
    async def started() -> None:
        job.started("faststream")

    asyncio.run(app.run())
    return 0


if __name__ == "__main__":
    sys.exit(peerlib.main_guard(run, __doc__.split("\n\n")[0]))
