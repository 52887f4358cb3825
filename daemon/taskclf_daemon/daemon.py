"""``taskclf-daemon run``: the asyncio service around the pure pipeline -- wiring, the run loop,
shutdown and health.

    poll (getmany) -> scheduler (per-shard pending records -> micro-batches to the shards, which
    decode, validate and run the pipeline in worker processes) -> emitter (outputs + dead
    letters produced, offsets tracked) -> checkpointer (outputs acked -> state changelog ->
    commit); rebalancer (state follows its partition)

Delivery is at-least-once with deterministic outputs: see :mod:`taskclf_daemon.checkpoint` for
the checkpoint order and :mod:`taskclf_daemon.rebalance` for assign/revoke. The daemon process
keeps Kafka, offsets, checkpoints and metrics; per-user state lives in the shards (``shard.py``),
one per pipeline worker, each owning the partitions ``p % n == i`` (``workers.py``).

Not guaranteed: aiokafka does not call the rebalance listener on ``stop()`` (shutdown
checkpoints itself first); records fetched for a partition we no longer own are dropped.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from taskclf_daemon import kafka_io as kio, native
from taskclf_daemon.changelog import changelog_topic_name, ensure_changelog
from taskclf_daemon.checkpoint import Checkpointer
from taskclf_daemon.config import Settings
from taskclf_daemon.drift_monitor import DriftMonitor
from taskclf_daemon.emitter import Emitter, InvalidFlood, InvalidRatio
from taskclf_daemon.errors import TaskclfDaemonError
from taskclf_daemon.feedback import ensure_feedback_topics
from taskclf_daemon.health import HealthServer
from taskclf_daemon.http_api import ApiHandlers
from taskclf_daemon.log import get_logger
from taskclf_daemon.metrics import Metrics
from taskclf_daemon.offsets import OffsetTracker
from taskclf_daemon.pipeline.batch import InferencePipeline
from taskclf_daemon.pump import Pump
from taskclf_daemon.rebalance import Listener, Rebalancer
from taskclf_daemon.reload import Reloader
from taskclf_daemon.scheduler import Scheduler
from taskclf_daemon.workers import make_shards, tune_gc

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_INVALID_FLOOD = 3

#: a pipeline worker that has not answered a batch for this long is taken as hung: fatal
#: (a batch of 1,000 windows takes ~50 ms; a worker paused by the OS or deadlocked never ends)
WORKER_STALL_S = 60.0

__all__ = ["EXIT_FATAL", "EXIT_INVALID_FLOOD", "EXIT_OK", "WORKER_STALL_S", "Daemon", "InvalidFlood", "changelog_topic_name", "serve"]


class Daemon:
    """One consumer-group member running the pipeline: builds the parts, runs the loop."""

    def __init__(self, settings: Settings, pipeline: InferencePipeline, description: dict[str, Any] | None = None, metrics: Metrics | None = None) -> None:
        self.s = settings
        self.pipeline = pipeline
        self.description = description or {}
        self.metrics = metrics or Metrics()
        self.log = get_logger("daemon").bind(group=settings.group_id)
        self.changelog = changelog_topic_name(settings)
        self.shards = make_shards(settings, pipeline)
        self.scheduler = Scheduler(self.shards, settings.input_topic, settings.max_batch_records, settings.feedback_topic)
        #: the HTTP API's handlers (user routes answer once consuming)
        self.api = ApiHandlers(settings, pipeline, self.description, self.shards, self.scheduler)
        #: hot reload (``reload.py``): watches the policy file once consuming, and SIGHUP
        self.reloader = Reloader(settings, self.shards, pipeline, self.metrics, self._swapped)
        self.api.last_reload = lambda: self.reloader.last.document() if self.reloader.last else None
        self._reload_task: asyncio.Task[None] | None = None
        self.tracker = OffsetTracker()
        #: the drift gauges (drift_monitor.py); None with drift_window_size = 0
        self.drift = DriftMonitor(self.shards, self.metrics, settings.drift_refresh_s, self.log) if settings.drift_window_size > 0 else None
        self.shard_users = [0] * len(self.shards)
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._broker_ok = True
        self._last_poll = time.monotonic()
        self._started = False
        self._fatal: str | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self.consumer: Any = None
        self.producer: Any = None
        self.reader: Any = None
        self.emitter: Emitter | None = None
        self.pump: Pump | None = None
        self.checkpointer: Checkpointer | None = None
        self.rebalancer: Rebalancer | None = None
        self.http: HealthServer | None = None
        self.exit_code = EXIT_OK

    # --- health ------------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict[str, Any]]:
        """Liveness: the loop turns and nothing fatal happened. A broker outage is reported
        (``broker_reachable``) but is not a liveness failure: restarting would not help."""
        age = time.monotonic() - self._last_poll
        ok = self._fatal is None and (not self._started or age < self.s.health_poll_timeout_s)
        return ok, {"last_poll_age_s": round(age, 3), "fatal": self._fatal, "broker_reachable": self._broker_ok}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        rb = self.rebalancer
        assigned = len(rb.assigned) if rb else 0
        restoring = bool(rb and rb.restoring)
        ok = self._started and bool(assigned) and self._fatal is None and not self._stop.is_set() and not restoring and self._broker_ok
        self.metrics.ready.set(1 if ok else 0)
        return ok, {"assigned_partitions": assigned, "started": self._started, "restoring": restoring, "broker_reachable": self._broker_ok, "stopping": self._stop.is_set()}

    def request_stop(self) -> None:
        if not self._stop.is_set():
            self.log.info("shutdown_requested")
        self._stop.set()

    def fail(self, reason: str) -> None:
        """A fatal error outside the loop (a rebalance callback): stop with exit 1, /healthz red."""
        self._fatal = reason
        self.exit_code = EXIT_FATAL
        self._stop.set()

    @property
    def state_users(self) -> int:
        return sum(self.shard_users)

    # --- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> int:
        s = self.s
        self.log.info("daemon_starting", config=s.masked(), config_sources={k: v for k, v in s.sources.items() if v != "default"}, inference=self.description, changelog_topic=self.changelog)
        m = self.metrics
        m.set_model(self.pipeline.bundle.bundle_id, self.pipeline.bundle.schema_hash, self.description.get("calibration_method", "none"))
        self._track_backend()
        if self.drift is not None and self.pipeline.reference is None:
            self.log.info("drift_metrics_off", reason="the model bundle has no drift_reference.json", fix="taskclf-daemon reference --model-dir <bundle> --windows <windows.jsonl> writes one")
        try:  # a refused login or certificate is fatal at once, before /healthz is ever served
            await kio.check_security(s, timeout=min(20.0, s.request_timeout_ms / 1000.0))
        except TaskclfDaemonError as exc:
            self._fatal, self.exit_code = str(exc), EXIT_FATAL
            self.log.error("daemon_failed", error=self._fatal)
            return self.exit_code
        if s.http_port:
            self.http = HealthServer(s.http_host, s.http_port, health=self.health, ready=self.readiness, metrics=m.exposition, api=self.api.api())
            port = await self.http.start()
            self.log.info("http_listening", host=s.http_host, port=port)
        try:
            await self._start()
            await self._loop()
        except InvalidFlood as exc:
            self._fatal = str(exc)
            self.exit_code = EXIT_INVALID_FLOOD
            self.log.error("invalid_input_flood", detail=str(exc))
        except (TimeoutError, TaskclfDaemonError, kio.KafkaError, OSError) as exc:
            self._fatal = f"{type(exc).__name__}: {exc}"
            self.exit_code = EXIT_FATAL
            self.log.error("daemon_failed", error=self._fatal)
        finally:
            await self._shutdown()
        return self.exit_code

    async def _start(self) -> None:
        """Workers, topics, clients, and the parts wired to them."""
        s, m = self.s, self.metrics
        infos = await asyncio.gather(*(sh.start() for sh in self.shards))
        tune_gc()
        self.log.info("pipeline_workers_started", workers=s.pipeline_workers, pids=[i.pid for i in infos])
        if s.create_topics:
            created = await kio.ensure_topics(s, [s.input_topic, s.output_topic, s.dlq_topic])
            if created:
                self.log.info("topics_created", topics=created, partitions=s.topic_partitions, replication=s.topic_replication)
        self.producer = kio.make_producer(s)
        await self.producer.start()
        await ensure_changelog(s, self.producer, self.changelog)
        created = await ensure_feedback_topics(s, self.producer)
        if created:
            self.log.info("topics_created", topics=created)
        sink = kio.OutputSink(self.producer)
        await sink.prepare([s.output_topic, s.dlq_topic] + ([s.label_requests_topic] if s.feedback_topic and s.label_requests_topic else []))
        self.reader = kio.make_reader(s)
        await self.reader.start()
        self._probe_task = asyncio.create_task(self._probe_loop())
        self.consumer = kio.make_consumer(s, max_records=s.max_batch_records)
        invalid = InvalidRatio(s.invalid_window, s.max_invalid_ratio)
        self.emitter = Emitter(sink, self.tracker, m, output_topic=s.output_topic, dlq_topic=s.dlq_topic, max_produce_bytes=s.max_produce_bytes, invalid=invalid, shard_users=self.shard_users,
            label_requests_topic=s.label_requests_topic if s.feedback_topic else None,
        )
        # the changelog has a sink of its own (same producer): a pipelined checkpoint flushes it
        # in the background, never taking outputs the emitter has appended but not flushed
        cl_sink = kio.OutputSink(self.producer)
        await cl_sink.prepare([self.changelog])
        self.checkpointer = cp = Checkpointer(hosts=self.shards, tracker=self.tracker, sink=cl_sink, consumer=self.consumer, changelog_topic=self.changelog, metrics=m, finish=self._finish_all, shard_users=self.shard_users)
        self.rebalancer = Rebalancer(
            hosts=self.shards, scheduler=self.scheduler, checkpointer=cp, lock=self._lock, consumer=self.consumer, reader=self.reader,
            changelog_topic=self.changelog, restore_timeout_s=s.restore_timeout_s, revoke_budget_s=0.2 * s.max_poll_interval_ms / 1000.0,
            metrics=m, on_failure=self.fail, group=s.group_id, feedback_topic=s.feedback_topic,
        )
        self.pump = Pump(
            consumer=self.consumer, scheduler=self.scheduler, emitter=self.emitter, rebalancer=self.rebalancer, tracker=self.tracker, lock=self._lock,
            stop=self._stop, metrics=m, max_batch_records=s.max_batch_records, max_in_flight_records=s.max_in_flight_records, collect=cp.collect, alive=self._alive,
        )
        self.api.consumer, self.api.rebalancer = self.consumer, self.rebalancer
        topics = [s.input_topic] + ([s.feedback_topic] if s.feedback_topic else [])
        self.consumer.subscribe(topics, listener=Listener(self.rebalancer))
        await self.consumer.start()
        self._reload_task = asyncio.create_task(self.reloader.run())
        self._started = True
        # native: the C accelerators in force (native.py); [] = the pure-Python reference everywhere
        self.log.info("daemon_started", input_topic=s.input_topic, output_topic=s.output_topic, native=native.in_force())
        if native.STALE:  # compiled from an older source than the Python code: left out, loudly
            self.log.warning("native_stale", modules=sorted(native.STALE), fix="reinstall the package (pip install .) to rebuild its C modules")

    def _swapped(self, pipeline: InferencePipeline, description: dict[str, Any]) -> None:
        """A hot reload put new artifacts in force in every shard."""
        self.pipeline, self.description = pipeline, description
        self.metrics.set_model(pipeline.bundle.bundle_id, pipeline.bundle.schema_hash, description.get("calibration_method", "none"))
        self._track_backend()
        self.api.set_pipeline(pipeline, description)

    def _track_backend(self) -> None:
        """taskclf_model_backend_info follows the bundle in force (its background compile may swap
        the compiled backend in later; a replaced bundle's swap no longer counts)."""
        self.pipeline.bundle.add_backend_listener(lambda b: self.metrics.set_backend(b.backend) if b is self.pipeline.bundle else None)

    def _alive(self) -> None:
        self._last_poll = time.monotonic()

    async def _finish_all(self, deadline: float, interruptible: bool) -> bool:
        """Step 0 of the checkpoint: the pump's (built after the checkpointer)."""
        assert self.pump is not None
        return await self.pump.finish_all(deadline, interruptible)

    async def _loop(self) -> None:
        s = self.s
        assert self.emitter is not None and self.checkpointer is not None and self.pump is not None
        emitter, cp, pump = self.emitter, self.checkpointer, self.pump
        next_checkpoint = time.monotonic() + s.commit_interval_ms / 1000.0
        while not self._stop.is_set():
            if emitter.flood is not None:
                raise InvalidFlood(emitter.flood)
            cp.check()
            self._last_poll = time.monotonic()
            await pump.backpressure()
            data = await pump.poll()
            self._last_poll = time.monotonic()
            if data:
                async with self._lock:
                    await pump.take(data)
            else:
                if self.scheduler.busy():
                    async with self._lock:
                        await pump.finish_ready()
                cp.collect()
            now = time.monotonic()
            if now >= next_checkpoint:
                next_checkpoint = now + s.commit_interval_ms / 1000.0
                async with self._lock:
                    # the barrier only: the checkpoint completes while the loop goes on
                    await cp.start(deadline=now + 10.0)
                self._refresh_gauges()
                if self.drift is not None:
                    self.drift.tick(now)
                stalled = self.scheduler.stalled(WORKER_STALL_S)
                if stalled:
                    raise TaskclfDaemonError(stalled)

    async def _shutdown(self) -> None:
        """Checkpoint, stop the clients and the workers, all within ``shutdown_timeout_s``
        (a few seconds of it are kept for stopping the clients and the workers)."""
        s = self.s
        t0 = time.monotonic()
        end = t0 + s.shutdown_timeout_s
        keep = min(5.0, 0.3 * s.shutdown_timeout_s)

        def left(reserve: float = 0.0) -> float:
            return max(0.05, end - reserve - time.monotonic())

        try:
            if self.checkpointer is not None and self.exit_code in (EXIT_OK, EXIT_INVALID_FLOOD):
                # a rebalance listener may hold the lock (its own checkpoint): bounded wait. After
                # an invalid flood the dead letters are committed too, so a restart goes on
                # after them instead of stopping on the same records again.
                await asyncio.wait_for(self._lock.acquire(), left(keep))
                try:
                    # bounded as a whole: a hung worker never holds the exit
                    await asyncio.wait_for(self.checkpointer.run(deadline=end - keep), left(keep))
                finally:
                    self._lock.release()
        except Exception as exc:  # noqa: BLE001 - shutdown must go on
            self.log.warning("shutdown_checkpoint_failed", error=f"{type(exc).__name__}: {exc}")
        if self.checkpointer is not None:
            self.checkpointer.abandon()
        for task in (self._probe_task, self._reload_task):
            if task is not None:
                task.cancel()
        for name, comp in (("consumer", self.consumer), ("reader", self.reader), ("producer", self.producer)):
            if comp is None:
                continue
            try:
                await asyncio.wait_for(comp.stop(), left(keep / 2))
            except Exception as exc:  # noqa: BLE001
                self.log.warning("client_stop_failed", client=name, error=f"{type(exc).__name__}: {exc}")
        if self.http is not None:
            await self.http.stop()
        if self.drift is not None:
            await self.drift.stop()
        await asyncio.gather(*(sh.stop(timeout=min(2.0, left())) for sh in self.shards), return_exceptions=True)
        self.log.info("daemon_stopped", exit_code=self.exit_code, state_users=self.state_users, shutdown_seconds=round(time.monotonic() - t0, 3))

    def _refresh_gauges(self) -> None:
        """Lag of every assigned partition (from the fetch high-watermark) and readiness."""
        assert self.rebalancer is not None
        nxt = self.rebalancer.next_offset
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)
            pos = nxt.get((tp.topic, tp.partition))
            if hw is not None and pos is not None:
                self.metrics.set_lag(tp.topic, tp.partition, max(0, hw - pos))
        self.readiness()

    async def _probe_loop(self) -> None:
        while True:
            ok = await kio.probe_broker(self.producer, timeout=2.0)
            if ok != self._broker_ok:
                self.log.warning("broker_unreachable") if not ok else self.log.info("broker_reachable")
            self._broker_ok = ok
            self.metrics.broker_up.set(1 if ok else 0)
            await asyncio.sleep(1.0 if not ok else 2.0)


async def serve(daemon: Daemon) -> int:
    """Run ``daemon`` with SIGTERM/SIGINT handlers (a second signal forces exit) and SIGHUP
    (hot reload)."""
    loop = asyncio.get_running_loop()
    hits = {"n": 0}

    def on_signal() -> None:
        hits["n"] += 1
        if hits["n"] > 1:
            daemon.log.warning("forced_exit")
            raise SystemExit(EXIT_FATAL)
        daemon.request_stop()

    handlers = {signal.SIGTERM: on_signal, signal.SIGINT: on_signal, signal.SIGHUP: daemon.reloader.request}
    for sig, handler in handlers.items():
        try:
            loop.add_signal_handler(sig, handler)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread
            pass
    return await daemon.run()
