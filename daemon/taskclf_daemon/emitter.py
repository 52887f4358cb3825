"""A finished micro-batch -> produced outputs and dead letters, tracked offsets and metrics.

The emitter appends a shard's results to the sink (outputs to ``output_topic``, dead letters to
``dlq_topic``), hands the batch's producer futures and next offsets to the offset tracker, counts
everything, and keeps the invalid-input guard. No processing logic: the shard already decided
every record's fate.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

from taskclf_daemon.errors import TaskclfDaemonError
from taskclf_daemon.log import get_logger
from taskclf_daemon.metrics import Metrics
from taskclf_daemon.offsets import OffsetTracker, PendingBatch
from taskclf_daemon.records import DeadLetter
from taskclf_daemon.scheduler import Work
from taskclf_daemon.shard import ShardResult
from taskclf_daemon.wire import Sink, dead_letter, output_headers


class InvalidFlood(TaskclfDaemonError):
    """Too large a share of the recent input was invalid."""


class InvalidRatio:
    """Share of invalid records among the last ``window`` records (checked once per batch)."""

    def __init__(self, window: int, limit: float) -> None:
        self.window = window
        self.limit = limit
        self._marks: deque[bool] = deque(maxlen=window)

    def add_batch(self, n: int, bad: Sequence[int]) -> None:
        """``n`` records in order, of which those at the indices ``bad`` were invalid."""
        marks = [False] * n
        for i in bad:
            marks[i] = True
        self._marks.extend(marks)

    @property
    def ratio(self) -> float:
        return sum(self._marks) / len(self._marks) if self._marks else 0.0

    def exceeded(self) -> bool:
        return self.limit < 1.0 and len(self._marks) >= self.window and self.ratio > self.limit


class Emitter:
    """Produces what the shards hand back; see the module docstring."""

    def __init__(
        self,
        sink: Sink,
        tracker: OffsetTracker,
        metrics: Metrics,
        *,
        output_topic: str,
        dlq_topic: str,
        max_produce_bytes: int,
        invalid: InvalidRatio,
        shard_users: list[int],
        label_requests_topic: str | None = None,
    ) -> None:
        self.sink = sink
        self.tracker = tracker
        self.metrics = metrics
        self.output_topic = output_topic
        self.dlq_topic = dlq_topic
        self.label_requests_topic = label_requests_topic or None
        self.max_produce_bytes = max_produce_bytes
        self.invalid = invalid
        #: why the daemon must stop for invalid input (set once), else None
        self.flood: str | None = None
        #: users in memory per shard, as last reported (shared with the checkpointer)
        self.shard_users = shard_users
        #: users on a personal model per shard, as last reported
        self._personal = [0] * len(shard_users)
        self._log = get_logger("emitter")

    async def emit(self, shard: int, work: Work, res: ShardResult) -> None:
        """Produce ``res`` (the result of ``work``); track its offsets.

        :raises InvalidFlood: the first time the invalid-input guard trips
        """
        m, sink = self.metrics, self.sink
        for d in res.dead:
            await self._dead_letter(d)
        processed_ms = str(int(time.time() * 1000)).encode()
        out_topic = self.output_topic
        append = sink.append
        outs = res.outputs
        for key, value, source in zip(outs.keys, outs.values, outs.sources, strict=True):
            await append(out_topic, key, value, output_headers(source, processed_ms))
        req = res.requests
        if req.keys and self.label_requests_topic is not None:
            # acknowledged with the batch's outputs: a request is never lost by a restart
            for key, value, source in zip(req.keys, req.values, req.sources, strict=True):
                await append(self.label_requests_topic, key, value, output_headers(source, processed_ms))
            m.label_requests.inc(len(req.keys))
        for outcome, kind, gain, cands in res.refits:
            m.personal_refits.labels(outcome).inc()
            if kind:
                m.personal_adoptions.labels(kind).inc()
            if gain is not None:
                m.personal_gain.observe(gain)
            for ck, ok in cands:
                if not ok:
                    m.personal_refused.labels(ck).inc()
        if res.refits or res.personal_users != self._personal[shard]:
            self._personal[shard] = res.personal_users
            m.personal_users.set(sum(self._personal))
        for outcome, n in res.skipped.items():
            m.records_processed.labels(outcome).inc(n)
        m.record_batch(res.tally, res.confidences, res.rejected, res.timings, work.records)
        self.shard_users[shard] = res.state_users
        m.state_users.set(sum(self.shard_users))
        self.invalid.add_batch(work.records, [d.position for d in res.dead])
        futures = await sink.flush()
        self.tracker.add(PendingBatch(futures, work.next_offsets, work.records, work.ts_ms))
        m.in_flight.set(self.tracker.in_flight_records)
        if self.invalid.exceeded() and self.flood is None:
            self.flood = (
                f"{self.invalid.ratio:.0%} of the last {self.invalid.window} records were invalid (limit {self.invalid.limit:.0%}); "
                "see the DLQ topic for reasons, fix the producers or raise max_invalid_ratio"
            )
            raise InvalidFlood(self.flood)

    async def _dead_letter(self, d: DeadLetter) -> None:
        key, value, headers = dead_letter(d, self.max_produce_bytes)
        await self.sink.append(self.dlq_topic, key, value, headers)
        self.metrics.record_dead_letter(d.reason)
        self._log.debug("record_dead_lettered", reason=d.reason, detail=d.detail, topic=d.source.topic, partition=d.source.partition, offset=d.source.offset)
