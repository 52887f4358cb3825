"""``taskclf-daemon run``: the asyncio service around the pure pipeline.

    poll (getmany) -> decode/validate -> pipeline in a worker thread -> produce outputs + dead
    letters (batched) -> track acks -> commit acknowledged offsets

Delivery is at-least-once with deterministic outputs: offsets are committed only up to the
highest offset whose outputs *and* dead letters the broker has acknowledged (acks=all), on a
timer, on revoke and on shutdown. A crash between produce and commit re-emits byte-identical
records that downstream can deduplicate on (user_id, bucket_start_ts).

Guarantees and non-guarantees:

* per-user order is the partition order; one micro-batch is processed at a time (the pipeline
  mutates per-user state), while its acks overlap the next batch's work;
* records fetched for a partition we no longer own are dropped (their new owner re-reads them);
* ``on_partitions_revoked`` is not called by aiokafka on ``stop()``: shutdown drains and commits
  itself before stopping the consumer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import time
from collections import deque
from typing import Any

from taskclf_daemon import kafka_io as kio
from taskclf_daemon.codec import RowValidator, decode_window
from taskclf_daemon.config import Settings
from taskclf_daemon.errors import InvalidRecord, TaskclfDaemonError
from taskclf_daemon.health import HealthServer
from taskclf_daemon.log import get_logger
from taskclf_daemon.metrics import Metrics
from taskclf_daemon.offsets import OffsetTracker, PendingBatch
from taskclf_daemon.pipeline.batch import InferencePipeline
from taskclf_daemon.records import FeatureWindow, SourceRef

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_INVALID_FLOOD = 3

TP = tuple[str, int]


class InvalidFlood(TaskclfDaemonError):
    """Too large a share of the recent input was invalid."""


class _InvalidRatio:
    """Share of invalid records among the last ``window`` records."""

    def __init__(self, window: int, limit: float) -> None:
        self.window = window
        self.limit = limit
        self._marks: deque[bool] = deque(maxlen=window)
        self._bad = 0

    def add(self, bad: bool) -> None:
        if len(self._marks) == self.window and self._marks[0]:
            self._bad -= 1
        self._marks.append(bad)
        self._bad += bad

    @property
    def ratio(self) -> float:
        return self._bad / len(self._marks) if self._marks else 0.0

    def exceeded(self) -> bool:
        return self.limit < 1.0 and len(self._marks) >= self.window and self.ratio > self.limit


class Daemon:
    """One consumer-group member running the pipeline."""

    def __init__(self, settings: Settings, pipeline: InferencePipeline, description: dict[str, Any] | None = None, metrics: Metrics | None = None) -> None:
        self.s = settings
        self.pipeline = pipeline
        self.description = description or {}
        self.metrics = metrics or Metrics()
        self.log = get_logger("daemon").bind(group=settings.group_id)
        self.validator = RowValidator(pipeline.bundle.schema)
        self.states = pipeline.new_state_store()
        self._user_tp: dict[str, TP] = {}
        self._tracker = OffsetTracker()
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")
        self._invalid = _InvalidRatio(settings.invalid_window, settings.max_invalid_ratio)
        self._assigned: set[TP] = set()
        self._paused = False
        self._last_poll = time.monotonic()
        self._started = False
        self._fatal: str | None = None
        self.consumer: Any = None
        self.producer: Any = None
        self.sink: kio.OutputSink | None = None
        self.http: HealthServer | None = None
        self.exit_code = EXIT_OK

    # --- health ------------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - self._last_poll
        ok = self._fatal is None and (not self._started or age < self.s.health_poll_timeout_s)
        return ok, {"last_poll_age_s": round(age, 3), "fatal": self._fatal}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        ok = self._started and bool(self._assigned) and self._fatal is None and not self._stop.is_set()
        self.metrics.ready.set(1 if ok else 0)
        return ok, {"assigned_partitions": len(self._assigned), "started": self._started, "stopping": self._stop.is_set()}

    def request_stop(self) -> None:
        if not self._stop.is_set():
            self.log.info("shutdown_requested")
        self._stop.set()

    # --- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> int:
        s = self.s
        self.log.info("daemon_starting", config=s.masked(), config_sources={k: v for k, v in s.sources.items() if v != "default"}, inference=self.description)
        m = self.metrics
        m.set_model(self.pipeline.bundle.bundle_id, self.pipeline.bundle.schema_hash, self.description.get("calibration_method", "none"))
        if s.http_port:
            self.http = HealthServer(s.http_host, s.http_port, health=self.health, ready=self.readiness, metrics=m.exposition)
            port = await self.http.start()
            self.log.info("http_listening", host=s.http_host, port=port)
        try:
            if s.create_topics:
                created = await kio.ensure_topics(s, [s.input_topic, s.output_topic, s.dlq_topic])
                if created:
                    self.log.info("topics_created", topics=created, partitions=s.topic_partitions, replication=s.topic_replication)
            self.producer = kio.make_producer(s)
            await self.producer.start()
            self.sink = kio.OutputSink(self.producer)
            await self.sink.prepare([s.output_topic, s.dlq_topic])
            self.consumer = kio.make_consumer(s, max_records=s.max_batch_records)
            self.consumer.subscribe([s.input_topic], listener=_Listener(self))
            await self.consumer.start()
            self._started = True
            self.log.info("daemon_started", input_topic=s.input_topic, output_topic=s.output_topic)
            await self._loop()
        except InvalidFlood as exc:
            self._fatal = str(exc)
            self.exit_code = EXIT_INVALID_FLOOD
            self.log.error("invalid_input_flood", detail=str(exc))
        except (TaskclfDaemonError, kio.KafkaError, OSError) as exc:
            self._fatal = f"{type(exc).__name__}: {exc}"
            self.exit_code = EXIT_FATAL
            self.log.error("daemon_failed", error=self._fatal)
        finally:
            await self._shutdown()
        return self.exit_code

    async def _loop(self) -> None:
        s = self.s
        next_commit = time.monotonic() + s.commit_interval_ms / 1000.0
        while not self._stop.is_set():
            self._last_poll = time.monotonic()
            await self._apply_backpressure()
            data = await self.consumer.getmany(timeout_ms=100, max_records=s.max_batch_records)
            self._last_poll = time.monotonic()
            if data:
                async with self._lock:
                    await self._process(data)
            now = time.monotonic()
            if now >= next_commit:
                next_commit = now + s.commit_interval_ms / 1000.0
                self._collect()
                await self._commit()

    async def _shutdown(self) -> None:
        s = self.s
        deadline = time.monotonic() + s.shutdown_timeout_s
        try:
            if self.consumer is not None and self._fatal is None:
                async with self._lock:
                    await self._drain(deadline)
                    await self._commit()
        except Exception as exc:  # noqa: BLE001 - shutdown must go on
            self.log.warning("shutdown_drain_failed", error=f"{type(exc).__name__}: {exc}")
        for name, comp in (("consumer", self.consumer), ("producer", self.producer)):
            if comp is None:
                continue
            try:
                await asyncio.wait_for(comp.stop(), max(1.0, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001
                self.log.warning("client_stop_failed", client=name, error=f"{type(exc).__name__}: {exc}")
        if self.http is not None:
            await self.http.stop()
        self._executor.shutdown(wait=False)
        self.log.info("daemon_stopped", exit_code=self.exit_code, state_users=len(self.states))

    # --- processing --------------------------------------------------------------------------
    async def _process(self, data: dict[Any, list[Any]]) -> None:
        s, m, sink = self.s, self.metrics, self.sink
        assert sink is not None
        owned = self.consumer.assignment()
        windows: list[FeatureWindow] = []
        next_offsets: dict[TP, int] = {}
        ts_ms: list[int] = []
        n_records = 0
        for tp, msgs in data.items():
            if not msgs:
                continue
            if tp not in owned:
                m.records_processed.labels("dropped_revoked").inc(len(msgs))
                continue
            key = (tp.topic, tp.partition)
            m.record_consumed(tp.topic, tp.partition, len(msgs))
            for msg in msgs:
                n_records += 1
                ts_ms.append(msg.timestamp)
                try:
                    if msg.value is None:
                        raise InvalidRecord("not_an_object", "record has no value (tombstone)")
                    w = decode_window(msg.value, self.validator, s.max_record_bytes)
                except InvalidRecord as exc:
                    self._invalid.add(True)
                    await self._dead_letter(msg, exc)
                    continue
                self._invalid.add(False)
                w.source = SourceRef(tp.topic, tp.partition, msg.offset)
                self._user_tp[w.user_id] = key
                windows.append(w)
            next_offsets[key] = msgs[-1].offset + 1
            hw = self.consumer.highwater(tp)
            if hw is not None:
                m.set_lag(tp.topic, tp.partition, max(0, hw - (msgs[-1].offset + 1)))
        if self._invalid.exceeded():
            raise InvalidFlood(
                f"{self._invalid.ratio:.0%} of the last {self._invalid.window} records were invalid (limit {s.max_invalid_ratio:.0%}); "
                "see the DLQ topic for reasons, fix the producers or raise max_invalid_ratio"
            )
        if windows:
            loop = asyncio.get_running_loop()
            res = await loop.run_in_executor(self._executor, self.pipeline.process, windows, self.states)
            processed_ms = str(int(time.time() * 1000)).encode()
            for w, p in zip(windows, res.predictions):
                src = w.source
                headers = [
                    ("taskclf-source", f"{src.topic}:{src.partition}:{src.offset}".encode()) if src else ("taskclf-source", b""),
                    ("taskclf-processed-ms", processed_ms),
                ]
                await sink.append(s.output_topic, w.user_id.encode("utf-8", "surrogatepass"), p.value, headers)
            m.record_predictions(res.predictions, res.timings, len(windows))
            m.state_users.set(len(self.states))
        futures = await sink.flush()
        if n_records:
            self._tracker.add(PendingBatch(futures, next_offsets, len(windows), ts_ms))
            m.in_flight.set(self._tracker.in_flight_records)

    async def _dead_letter(self, msg: Any, exc: InvalidRecord) -> None:
        assert self.sink is not None
        headers = [
            ("taskclf-dlq-reason", exc.reason.encode()),
            ("taskclf-dlq-detail", exc.detail[:500].encode("utf-8", "replace")),
            ("taskclf-source-topic", msg.topic.encode()),
            ("taskclf-source-partition", str(msg.partition).encode()),
            ("taskclf-source-offset", str(msg.offset).encode()),
        ]
        value = msg.value if msg.value is not None else b""
        if len(value) > self.s.max_record_bytes:
            value = value[: self.s.max_record_bytes]
            headers.append(("taskclf-dlq-truncated", b"1"))
        await self.sink.append(self.s.dlq_topic, msg.key, value, headers)
        self.metrics.record_dead_letter(exc.reason)
        self.log.debug("record_dead_lettered", reason=exc.reason, detail=exc.detail, topic=msg.topic, partition=msg.partition, offset=msg.offset)

    def _collect(self) -> None:
        """Move acknowledged batches to committable; observe their latency."""
        try:
            done = self._tracker.collect()
        except Exception as exc:
            raise TaskclfDaemonError(f"producing outputs failed, offsets not committed: {type(exc).__name__}: {exc}") from exc
        if done:
            now_ms = time.time() * 1000.0
            for b in done:
                for t in b.first_ts_ms:
                    if t and t > 0:
                        self.metrics.e2e_latency.observe(max(0.0, (now_ms - t) / 1000.0))
            self.metrics.in_flight.set(self._tracker.in_flight_records)

    async def _commit(self, only: set[TP] | None = None) -> None:
        owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        if only is not None:
            owned &= only
        offsets = self._tracker.take_committable(owned)
        if not offsets:
            return
        try:
            await self.consumer.commit({kio.TopicPartition(t, p): o for (t, p), o in offsets.items()})
            self.metrics.commits.labels("ok").inc()
        except (kio.CommitFailedError, kio.IllegalStateError, kio.RebalanceInProgressError) as exc:
            # the group moved on: the new owner replays from the last committed offset
            self.metrics.commits.labels("failed").inc()
            self.log.warning("commit_failed_rebalance", error=type(exc).__name__)
        except kio.KafkaError as exc:
            self.metrics.commits.labels("failed").inc()
            self._tracker.restore(offsets)
            self.log.warning("commit_failed_retrying", error=f"{type(exc).__name__}: {exc}")

    async def _drain(self, deadline: float) -> None:
        """Wait for every produced record to be acknowledged (until ``deadline``)."""
        futs = self._tracker.all_futures()
        if futs:
            timeout = max(0.0, deadline - time.monotonic())
            await asyncio.wait(futs, timeout=timeout)
        self._collect()

    async def _apply_backpressure(self) -> None:
        limit = self.s.max_in_flight_records
        if self._tracker.in_flight_records < limit:
            return
        self.metrics.backpressure.inc()
        parts = list(self.consumer.assignment())
        self.consumer.pause(*parts)
        self._paused = True
        try:
            while self._tracker.in_flight_records >= limit and not self._stop.is_set():
                oldest = self._tracker.oldest()
                if oldest is None:
                    break
                await asyncio.wait(oldest.futures, timeout=1.0)
                self._last_poll = time.monotonic()
                self._collect()
        finally:
            self.consumer.resume(*[tp for tp in parts if tp in self.consumer.assignment()])
            self._paused = False

    # --- rebalance ---------------------------------------------------------------------------
    async def on_revoked(self, revoked: list[Any]) -> None:
        keys = {(tp.topic, tp.partition) for tp in revoked}
        self.metrics.rebalances.labels("revoked").inc()
        async with self._lock:
            budget = time.monotonic() + 0.2 * self.s.max_poll_interval_ms / 1000.0
            try:
                await self._drain(budget)
                await self._commit(keys)
            except TaskclfDaemonError as exc:
                self.log.error("revoke_checkpoint_failed", error=str(exc))
            dropped = [u for u, tp in self._user_tp.items() if tp in keys]
            for u in dropped:
                self._user_tp.pop(u, None)
                self.states.users.pop(u, None)
            for t, p in keys:
                self.metrics.forget_partition(t, p)
            self._assigned -= keys
            self.metrics.state_users.set(len(self.states))
        self.log.info("partitions_revoked", partitions=sorted(p for _, p in keys), users_dropped=len(dropped))

    async def on_assigned(self, assigned: list[Any]) -> None:
        keys = {(tp.topic, tp.partition) for tp in assigned}
        self.metrics.rebalances.labels("assigned").inc()
        self._assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()} | keys
        self.log.info("partitions_assigned", partitions=sorted(p for _, p in keys))


class _Listener(kio.ConsumerRebalanceListener):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def on_partitions_revoked(self, revoked):  # type: ignore[no-untyped-def]
        await self.daemon.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned):  # type: ignore[no-untyped-def]
        await self.daemon.on_assigned(list(assigned))


async def serve(daemon: Daemon) -> int:
    """Run ``daemon`` with SIGTERM/SIGINT handlers (a second signal forces exit)."""
    loop = asyncio.get_running_loop()
    hits = {"n": 0}

    def on_signal() -> None:
        hits["n"] += 1
        if hits["n"] > 1:
            daemon.log.warning("forced_exit")
            raise SystemExit(EXIT_FATAL)
        daemon.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread
            pass
    return await daemon.run()
