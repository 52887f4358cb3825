#!/usr/bin/env python3
"""The benchmark's job as a Faust (faust-streaming) worker (``pip install 'taskclf-daemon[bench]'``).

One agent over the input topic takes up to ``--batch`` events at a time
(``stream.take_events``), runs the daemon's pipeline over them with each user's state read from
and written back to a Faust Table (``user_id`` -> the state bytes the daemon's changelog holds;
in memory, backed by its changelog topic, co-partitioned with the input through the key), and
sends each prediction keyed by ``user_id``. Faust acknowledges the events once the agent has
taken the next batch and commits acknowledged offsets every ``broker_commit_interval``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peerlib


def run(a: argparse.Namespace) -> int:
    import faust

    job = peerlib.Job(a)
    app = faust.App(a.group_id, broker=f"kafka://{a.bootstrap_servers}", store="memory://", topic_partitions=a.partitions,
                    topic_replication_factor=1, consumer_auto_offset_reset="earliest", web_enabled=False,
                    producer_linger=0.005, producer_max_batch_size=1 << 20, producer_max_request_size=1 << 21,
                    key_serializer="raw", value_serializer="raw")
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes}
    source = app.topic(a.input_topic, partitions=a.partitions, **raw)
    sink = app.topic(a.output_topic, partitions=a.partitions, **raw)
    # use_partitioner: a changelog record goes where the key's input records are (the same
    # murmur2 of the same user_id bytes), not to the partition of whichever event is current
    states = app.Table("user_state", default=None, partitions=a.partitions, use_partitioner=True, **raw)

    def load(uid: str) -> bytes | None:
        return states.get(uid.encode())

    def save(uid: str, data: bytes) -> None:
        states[uid.encode()] = data

    @app.agent(source)
    async def classify(stream: Any) -> None:
        async for events in stream.take_events(job.batch, within=0.05):
            records = [(e.message.key, e.message.value, e.message.partition, e.message.offset) for e in events]
            for p in job.process_with_bytes(job.decode(records, a.input_topic), load, save):
                await sink.send(key=p.user_id.encode(), value=p.value)
            if job.count(len(events)):
                await app.producer.flush()
                job.drained()

    @app.task
    async def quiet_logs() -> None:
        # the worker configures logging with the root logger at DEBUG whatever its loglevel:
        # every record of aiokafka and faust would be formatted
        logging.getLogger().setLevel(logging.WARNING)
        job.started("faust")

    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(peerlib.main_guard(run, __doc__.split("\n\n")[0]))
