#!/usr/bin/env python3
"""The benchmark's job as a Quix Streams Application (``pip install 'taskclf-daemon[bench]'``).

A StreamingDataFrame over the input topic applies one stateful function per message: it reads
the user's state (the state bytes the daemon's changelog holds) from the message key's State
(RocksDB, backed by the changelog topic Quix creates), runs the daemon's pipeline over the one
window, writes the state back and returns the prediction, which goes to the output topic keyed
by ``user_id``. Quix has no micro-batches: every window is its own model call; outputs are stamped with the processing time (Quix would give them
the input's timestamp). Quix commits
(the producer flushed, the state and the offsets) every ``commit_interval``.

Topics are declared with an explicit ``retention.ms``: Quix gives its changelog topics the
retention of their source topic, and a broker that reports no configs for a topic created
without them (Tansu) would leave it none.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peerlib

STATE_KEY = "user_state"


def _load(state: Any) -> bytes | None:
    # the State serializes values as JSON: the state document is kept as a string
    doc = state.get(STATE_KEY)
    return None if doc is None else doc.encode()


def run(a: argparse.Namespace) -> int:
    from quixstreams import Application, message_context
    from quixstreams.models import TopicConfig

    job = peerlib.Job(a)
    app = Application(broker_address=a.bootstrap_servers, consumer_group=a.group_id, auto_offset_reset="earliest",
                      state_dir=a.state_dir or tempfile.mkdtemp(prefix="quix-state-"), loglevel="WARNING",
                      producer_extra_config={"linger.ms": 5})
    config = TopicConfig(num_partitions=a.partitions, replication_factor=1, extra_config=dict(peerlib.TOPIC_CONFIG))
    source = app.topic(a.input_topic, key_deserializer="bytes", value_deserializer="bytes", config=config)
    sink = app.topic(a.output_topic, key_serializer="bytes", value_serializer="bytes", config=config)

    def classify(value: bytes, state: Any) -> bytes | None:
        ctx = message_context()
        windows = job.decode([(None, value, ctx.partition, ctx.offset)], a.input_topic)
        preds = job.process_with_bytes(windows, lambda _uid: _load(state), lambda _uid, data: state.set(STATE_KEY, data.decode()))
        return preds[0].value if preds else None

    sdf = app.dataframe(source)
    sdf = sdf.apply(classify, stateful=True).filter(lambda v: v is not None)
    # Quix gives an output the input's timestamp; the benchmark measures throughput from the
    # outputs' CreateTime, so stamp them with the processing time as the other systems' producers do
    sdf = sdf.set_timestamp(lambda _value, _key, _ts, _headers: time.time_ns() // 1_000_000)
    sdf.to_topic(sink)
    job.started("quix")
    # stop after --expect outputs; run() then flushes the producer and commits
    app.run(count=a.expect, collect=False)
    job.count(a.expect)
    job.drained()
    return 0


if __name__ == "__main__":
    sys.exit(peerlib.main_guard(run, __doc__.split("\n\n")[0]))
