"""The feedback topic in the runtime: topic checks at start, and the catch-up gate.

Label spans (taskclf ``LabelSpan`` JSON, key = user_id) arrive on ``feedback_topic``,
co-partitioned with the input: partition p of both topics belongs to one member and one shard,
so a user's spans reach the shard that holds the user's windows. What a span changes is decided
inside the pipeline at a defined point of that user's window stream (``pipeline/learner.py``):
a span known before its windows are finalised counts the same whenever it arrived.

So the only order that matters is "spans first": when a partition is assigned (a start, a
rebalance, a restart after a crash) its input twin is not fetched until the feedback partition
has been read to the end it had then (:class:`CatchUpGate`), and within a fetch spans are
handed to the shards before windows (``Pump.take``). A replay therefore sees every span a
first run had seen at the same windows, and re-emits the same bytes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from taskclf_daemon import kafka_io as kio
from taskclf_daemon.config import Settings
from taskclf_daemon.errors import TaskclfDaemonError
from taskclf_daemon.log import get_logger

TP = tuple[str, int]


async def ensure_feedback_topics(settings: Settings, producer: Any) -> list[str]:
    """Check (and with ``create_topics``, create) the feedback and label-request topics with the
    input's partition count; the feedback topic must have exactly that many (co-partitioned).

    :return: the topics created
    :raises TaskclfDaemonError: a missing topic without ``create_topics``, or a feedback topic
        with another partition count, naming the fix
    """
    s = settings
    if not s.feedback_topic:
        return []
    n_in = await kio.topic_partition_count(producer, s.input_topic)
    topics = [s.feedback_topic] + ([s.label_requests_topic] if s.label_requests_topic else [])
    created: list[str] = []
    if s.create_topics:
        created = await kio.ensure_topics(s, topics, partitions=n_in)
    for t in topics:
        producer.client.add_topic(t)
    n_fb = 0
    for _ in range(50):  # a topic just created takes a moment to show in the metadata
        n_fb = await kio.topic_partition_count(producer, s.feedback_topic)
        if n_fb or not created:
            break
        await asyncio.sleep(0.1)
    if n_fb == 0:
        raise TaskclfDaemonError(
            f"feedback topic {s.feedback_topic!r} does not exist and create_topics is false; create it with "
            f"{n_in} partitions, like {s.input_topic!r}, or set feedback_topic = \"\" to run without the learning loop"
        )
    if n_fb != n_in:
        raise TaskclfDaemonError(
            f"feedback topic {s.feedback_topic!r} has {n_fb} partitions but input topic {s.input_topic!r} has {n_in}; "
            "a user's spans must reach the member holding the user's windows: recreate it with the input's partition count"
        )
    if s.label_requests_topic and await kio.topic_partition_count(producer, s.label_requests_topic) == 0:
        raise TaskclfDaemonError(f"label-request topic {s.label_requests_topic!r} does not exist; create it or set label_requests_topic = \"\"")
    return created


class CatchUpGate:
    """Input partitions held back (paused) until their feedback twin is read to the end it had
    when they were assigned (at most ``timeout_s``: a stalled feedback partition never stalls the input;
    spans arriving later count from the windows their user has then)."""

    def __init__(self, input_topic: str, feedback_topic: str, timeout_s: float) -> None:
        self.input_topic = input_topic
        self.feedback_topic = feedback_topic
        self.timeout_s = timeout_s
        #: input partition -> (deadline, feedback end offset to reach, None until known)
        self.held: dict[int, tuple[float, int | None]] = {}
        self._log = get_logger("feedback")

    def hold(self, partitions: Iterable[int]) -> None:
        deadline = time.monotonic() + self.timeout_s
        for p in partitions:
            self.held[p] = (deadline, None)

    def forget(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.held.pop(p, None)

    async def update(self, consumer: Any) -> None:
        """Resume the input partitions whose feedback twin is caught up (or past the deadline);
        the rebalancer left them paused."""
        if not self.held:
            return
        now = time.monotonic()
        owned = {(tp.topic, tp.partition): tp for tp in consumer.assignment()}
        release = []
        for p, (deadline, end) in list(self.held.items()):
            ftp = owned.get((self.feedback_topic, p))
            itp = owned.get((self.input_topic, p))
            if ftp is None or itp is None:  # not ours (any more): nothing to wait for
                del self.held[p]
                continue
            if end is None:
                # the end as of the first fetch answer after the assignment (None until then);
                # the last stable offset, so an open transaction cannot hold the gate
                end = consumer.last_stable_offset(ftp)
                if end is None:
                    end = consumer.highwater(ftp)
                if end is not None:
                    self.held[p] = (deadline, end)
            if end is not None and await consumer.position(ftp) >= end:
                release.append(itp)
            elif now >= deadline:
                release.append(itp)
                self._log.warning("feedback_catch_up_timeout", partition=p, timeout_s=self.timeout_s)
        for tp in release:
            del self.held[tp.partition]
        if release:
            consumer.resume(*release)


def orphans(assigned: Iterable[Any], assignment: Iterable[Any], input_topic: str, feedback_topic: str) -> list[Any]:
    """Feedback partitions in ``assigned`` whose input twin is not in ``assignment`` (a group
    still on round-robin during a rolling upgrade): left paused, never processed."""
    inputs = {tp.partition for tp in assignment if tp.topic == input_topic}
    return [tp for tp in assigned if tp.topic == feedback_topic and tp.partition not in inputs]
