"""``taskclf-daemon run``: the asyncio service around the pure pipeline.

    poll (getmany) -> per-shard pending records -> micro-batches to the shards (decode/validate
    -> pipeline, in worker processes) -> produce outputs + dead letters (batched) -> checkpoint:
    outputs acked -> state changelog -> commit

The daemon process keeps Kafka, offsets, checkpoints and metrics; per-user state lives in the
shards (``shard.py``), one per pipeline worker, each owning the partitions ``p % n == i``
(``workers.py``).

Delivery is at-least-once with deterministic outputs. Per-user state follows its partition: it
is written to a compacted changelog topic (same partition number as the input partition, key
``user_id``, value the whole versioned state) and restored when a partition is assigned.

Checkpoint order (every ``commit_interval_ms``, on revoke and at shutdown):

1. wait until every produced output and dead letter is acknowledged (acks=all);
2. produce the changelog: one record per user changed since the last checkpoint, tombstones
   for users forgotten (retention, capacity) -- each state now reflects only windows whose outputs are acked;
3. wait for the changelog acks (a failure aborts the checkpoint: nothing is committed);
4. commit the input offsets of the acknowledged batches.

A crash anywhere re-processes the uncommitted tail. A user's state remembers the input offset of
the last window it applied, so windows already applied are skipped (``replayed``) rather than
applied twice, and windows not yet applied are re-emitted byte-identical to the first time.

Not guaranteed: aiokafka does not call ``on_partitions_revoked`` on ``stop()`` (shutdown
checkpoints itself first); records fetched for a partition we no longer own are dropped.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from taskclf_daemon import kafka_io as kio
from taskclf_daemon.config import Settings
from taskclf_daemon.errors import TaskclfDaemonError
from taskclf_daemon.health import HealthServer
from taskclf_daemon.log import get_logger
from taskclf_daemon.metrics import Metrics, observe_many
from taskclf_daemon.offsets import OffsetTracker, PendingBatch
from taskclf_daemon.pipeline.batch import InferencePipeline
from taskclf_daemon.shard import RECORD_OVERHEAD, CheckpointData, RawBatch, ShardResult
from taskclf_daemon.workers import make_shards, tune_gc

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_INVALID_FLOOD = 3

TP = tuple[str, int]

#: micro-batches submitted to a shard at a time. Records fetched meanwhile wait in the shard's
#: pending buffer and go as one bigger batch when it finishes: under load batches grow by
#: themselves (small batches cost far more per window), at low load a window waits for at most
#: one batch. Measured (bench_daemon, 2 workers, 2 cores, one run each): depth 1 drained 38.5k
#: windows/s, latency p50/p99 145/649 ms at 19.3k/s offered; depth 2: 41.0k, 325/940 ms at 20.5k/s.
SHARD_DEPTH = 1
#: records fetched but not yet submitted, per shard, before fetching pauses for that shard (in
#: ``max_batch_records`` units). Fetched records are taken out of the client at once: aiokafka
#: sends the next fetch to a broker only once every partition's buffered records are consumed
#: (or 100 ms later), so records left there stall the whole fetch pipeline.
#: Measured (2 workers, 2 cores, 300k-window drain, one session): one global FIFO of 3 batches
#: 24-27k windows/s (a plain getmany() drains fetched partitions one after another, so runs of
#: batches went to one shard while the other idled); per-shard queues fed straight from the
#: client's buffer 28-31k, the poll then waiting for the broker ~60% of the time; with pending
#: buffers 33-39k.
PENDING_BATCHES = 2
#: a shard's pending records may exceed that up to this factor while another shard still takes
#: records (its partitions are fetched together with the others'); beyond, its partitions are
#: left out of the fetch
HARD_FACTOR = 3
#: a pipeline worker that has not answered a batch for this long is taken as hung: fatal
#: (a batch of 1,000 windows takes ~50 ms; a worker paused by the OS or deadlocked never ends)
WORKER_STALL_S = 60.0


@dataclass(slots=True)
class _Work:
    """One micro-batch submitted to one shard."""

    future: asyncio.Future[ShardResult]
    msgs: list[Any]
    next_offsets: dict[TP, int]
    ts_ms: list[int]
    submitted: float = 0.0  # time.monotonic() at submit


class InvalidFlood(TaskclfDaemonError):
    """Too large a share of the recent input was invalid."""


class _InvalidRatio:
    """Share of invalid records among the last ``window`` records (checked once per batch)."""

    def __init__(self, window: int, limit: float) -> None:
        self.window = window
        self.limit = limit
        self._marks: deque[bool] = deque(maxlen=window)

    def add_batch(self, n: int, bad: list[int]) -> None:
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


def fit_dead_letter(key: bytes | None, value: bytes | None, limit: int) -> tuple[bytes | None, bytes, str]:
    """The key and value of a dead letter cut to ``limit`` bytes together (value first, then the
    key), and which were cut (``""``, ``"value"`` or ``"key,value"``): a dead letter is never
    itself too large to produce."""
    value = value if value is not None else b""
    klen = len(key) if key is not None else 0
    if klen + len(value) <= limit:
        return key, value, ""
    if klen <= limit // 2:
        return key, value[: limit - klen], "value"
    half = limit // 2
    return (key or b"")[:half], value[: limit - half], "key,value"


def changelog_topic_name(settings: Settings) -> str:
    return settings.changelog_topic or f"{settings.input_topic}.{settings.group_id}.state"


class Daemon:
    """One consumer-group member running the pipeline."""

    def __init__(self, settings: Settings, pipeline: InferencePipeline, description: dict[str, Any] | None = None, metrics: Metrics | None = None) -> None:
        self.s = settings
        self.pipeline = pipeline
        self.description = description or {}
        self.metrics = metrics or Metrics()
        self.log = get_logger("daemon").bind(group=settings.group_id)
        self.changelog = changelog_topic_name(settings)
        self.shards = make_shards(settings, pipeline)
        self._shard_users = [0] * len(self.shards)
        self._state_bytes = 0
        self._next_offset: dict[TP, int] = {}
        self._tracker = OffsetTracker()
        #: per shard: the batches it is computing, oldest first (at most SHARD_DEPTH)
        self._queues: list[deque[_Work]] = [deque() for _ in self.shards]
        #: per shard: fetched records not yet submitted, in fetch order: (partition, messages)
        self._pending: list[deque[tuple[Any, list[Any]]]] = [deque() for _ in self.shards]
        self._pending_n = [0] * len(self.shards)
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._flood: str | None = None
        self._invalid = _InvalidRatio(settings.invalid_window, settings.max_invalid_ratio)
        self._assigned: set[TP] = set()
        self._restoring = 0
        self._broker_ok = True
        self._last_poll = time.monotonic()
        self._started = False
        self._fatal: str | None = None
        self._probe_task: asyncio.Task | None = None
        self.consumer: Any = None
        self.producer: Any = None
        self.reader: Any = None
        self.sink: kio.OutputSink | None = None
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
        ok = self._started and bool(self._assigned) and self._fatal is None and not self._stop.is_set() and not self._restoring and self._broker_ok
        self.metrics.ready.set(1 if ok else 0)
        return ok, {
            "assigned_partitions": len(self._assigned),
            "started": self._started,
            "restoring": bool(self._restoring),
            "broker_reachable": self._broker_ok,
            "stopping": self._stop.is_set(),
        }

    def request_stop(self) -> None:
        if not self._stop.is_set():
            self.log.info("shutdown_requested")
        self._stop.set()

    # --- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> int:
        s = self.s
        self.log.info("daemon_starting", config=s.masked(), config_sources={k: v for k, v in s.sources.items() if v != "default"}, inference=self.description, changelog_topic=self.changelog)
        m = self.metrics
        m.set_model(self.pipeline.bundle.bundle_id, self.pipeline.bundle.schema_hash, self.description.get("calibration_method", "none"))
        try:  # a refused login or certificate is fatal at once, before /healthz is ever served
            await kio.check_security(s, timeout=min(20.0, s.request_timeout_ms / 1000.0))
        except TaskclfDaemonError as exc:
            self._fatal, self.exit_code = str(exc), EXIT_FATAL
            self.log.error("daemon_failed", error=self._fatal)
            return self.exit_code
        if s.http_port:
            self.http = HealthServer(s.http_host, s.http_port, health=self.health, ready=self.readiness, metrics=m.exposition)
            port = await self.http.start()
            self.log.info("http_listening", host=s.http_host, port=port)
        try:
            infos = await asyncio.gather(*(sh.start() for sh in self.shards))
            tune_gc()
            self.log.info("pipeline_workers_started", workers=s.pipeline_workers, pids=[i.get("pid") for i in infos])
            if s.create_topics:
                created = await kio.ensure_topics(s, [s.input_topic, s.output_topic, s.dlq_topic])
                if created:
                    self.log.info("topics_created", topics=created, partitions=s.topic_partitions, replication=s.topic_replication)
            self.producer = kio.make_producer(s)
            await self.producer.start()
            await self._ensure_changelog()
            self.sink = kio.OutputSink(self.producer)
            await self.sink.prepare([s.output_topic, s.dlq_topic, self.changelog])
            self.reader = kio.make_reader(s)
            await self.reader.start()
            self._probe_task = asyncio.create_task(self._probe_loop())
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
        except (TimeoutError, TaskclfDaemonError, kio.KafkaError, OSError) as exc:
            self._fatal = f"{type(exc).__name__}: {exc}"
            self.exit_code = EXIT_FATAL
            self.log.error("daemon_failed", error=self._fatal)
        finally:
            await self._shutdown()
        return self.exit_code

    async def _ensure_changelog(self) -> None:
        s = self.s
        n_in = await kio.topic_partition_count(self.producer, s.input_topic)
        if n_in == 0:
            raise TaskclfDaemonError(f"input topic {s.input_topic!r} does not exist; create it or set create_topics = true")
        if s.create_topics:
            created = await kio.ensure_topics(s, [self.changelog], partitions=n_in, config={"cleanup.policy": "compact"})
            if created:
                self.log.info("changelog_created", topic=self.changelog, partitions=n_in)
        self.producer.client.add_topic(self.changelog)
        n_cl = 0
        for _ in range(50):
            n_cl = await kio.topic_partition_count(self.producer, self.changelog)
            if n_cl:
                break
            await asyncio.sleep(0.1)
        if n_cl == 0 and not s.create_topics:
            raise TaskclfDaemonError(
                f"changelog topic {self.changelog!r} does not exist and create_topics is false; create it compacted "
                f"(cleanup.policy=compact) with {n_in} partitions, like {s.input_topic!r}, or set create_topics = true"
            )
        if n_cl != n_in:
            raise TaskclfDaemonError(
                f"changelog topic {self.changelog!r} has {n_cl} partitions but input topic {s.input_topic!r} has {n_in}; "
                "state must follow its partition: recreate the changelog with the input's partition count or set changelog_topic"
            )

    async def _loop(self) -> None:
        s = self.s
        next_checkpoint = time.monotonic() + s.commit_interval_ms / 1000.0
        while not self._stop.is_set():
            if self._flood is not None:
                raise InvalidFlood(self._flood)
            self._last_poll = time.monotonic()
            await self._apply_backpressure()
            data = await self._poll()
            self._last_poll = time.monotonic()
            if data:
                async with self._lock:
                    await self._process(data)
            else:
                if self._busy():
                    async with self._lock:
                        await self._finish_ready()
                self._collect()
            now = time.monotonic()
            if now >= next_checkpoint:
                next_checkpoint = now + s.commit_interval_ms / 1000.0
                async with self._lock:
                    await self._checkpoint(deadline=now + 10.0, interruptible=True)
                self._refresh_gauges()
                self._check_workers()

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
            if self.consumer is not None and self.exit_code in (EXIT_OK, EXIT_INVALID_FLOOD):
                # a rebalance listener may hold the lock (its own checkpoint): bounded wait. After
                # an invalid flood the dead letters are committed too, so a restart goes on
                # after them instead of stopping on the same records again.
                await asyncio.wait_for(self._lock.acquire(), left(keep))
                try:
                    # bounded as a whole: a hung worker never holds the exit
                    await asyncio.wait_for(self._checkpoint(deadline=end - keep), left(keep))
                finally:
                    self._lock.release()
        except Exception as exc:  # noqa: BLE001 - shutdown must go on
            self.log.warning("shutdown_checkpoint_failed", error=f"{type(exc).__name__}: {exc}")
        if self._probe_task is not None:
            self._probe_task.cancel()
        for name, comp in (("consumer", self.consumer), ("reader", self.reader), ("producer", self.producer)):
            if comp is None:
                continue
            try:
                await asyncio.wait_for(comp.stop(), left(keep / 2))
            except Exception as exc:  # noqa: BLE001
                self.log.warning("client_stop_failed", client=name, error=f"{type(exc).__name__}: {exc}")
        if self.http is not None:
            await self.http.stop()
        await asyncio.gather(*(sh.stop(timeout=min(2.0, left())) for sh in self.shards), return_exceptions=True)
        self.log.info("daemon_stopped", exit_code=self.exit_code, state_users=self.state_users, shutdown_seconds=round(time.monotonic() - t0, 3))

    @property
    def state_users(self) -> int:
        return sum(self._shard_users)

    def _shard_of(self, partition: int) -> int:
        return partition % len(self.shards)

    def _refresh_gauges(self) -> None:
        """Lag of every assigned partition (from the fetch high-watermark) and readiness."""
        for tp in self.consumer.assignment():
            key = (tp.topic, tp.partition)
            hw = self.consumer.highwater(tp)
            pos = self._next_offset.get(key)
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

    # --- processing --------------------------------------------------------------------------
    def _busy(self) -> bool:
        return any(self._queues) or any(self._pending_n)

    async def _poll(self) -> dict[Any, list[Any]]:
        """The next fetched records; meanwhile produce the outputs of every batch a shard
        finishes and submit pending records to shards with room. Fetches only for shards whose
        pending records are below ``PENDING_BATCHES`` batches (all partitions while no shard is
        beyond ``HARD_FACTOR`` times that); when none is, waits for a shard.
        Returns ``{}`` at once when a stop is requested."""
        n_sh = len(self.shards)
        limit = PENDING_BATCHES * self.s.max_batch_records
        while not self._stop.is_set():
            if any(self._pending_n):
                async with self._lock:  # never while a checkpoint runs (see _submit_pending)
                    self._submit_pending()
            pend = self._pending_n
            tps: list[Any] | None
            if not any(n < limit for n in pend):
                tps = None
            elif all(n < HARD_FACTOR * limit for n in pend):
                # every partition: a partition left out keeps its fetched records in the client,
                # which then fetches nothing for up to 100 ms
                tps = []
            else:
                tps = [tp for tp in self.consumer.assignment() if pend[tp.partition % n_sh] < HARD_FACTOR * limit] or None
            if tps is None:
                await self._fetch(None, 0)  # no shard can take more: wait for one to finish a batch
                continue
            return await self._fetch(tps, 100)
        return {}

    async def _fetch(self, tps: list[Any] | None, timeout_ms: int) -> dict[Any, list[Any]]:
        """``getmany`` of ``tps`` (``[]``: all assigned partitions; ``None``: no fetch, wait for a
        shard to finish a batch), producing finished batches (and submitting pending records)
        while it waits. A stop request cancels the fetch (``getmany`` also waits for a rebalance
        to complete, however long). Finishing a batch is never interrupted."""
        waits: list[Any] = [asyncio.ensure_future(self._stop.wait())]
        poll = None
        if tps is not None:
            poll = asyncio.ensure_future(self.consumer.getmany(*tps, timeout_ms=timeout_ms, max_records=self.s.max_batch_records))
            waits.append(poll)
        try:
            while True:
                heads = [q[0].future for q in self._queues if q]
                if poll is not None and poll.done():
                    return poll.result()
                if self._stop.is_set() or (poll is None and not heads):
                    return {}
                await asyncio.wait([*waits, *heads], return_when=asyncio.FIRST_COMPLETED)
                if any(f.done() for f in heads):
                    async with self._lock:
                        await self._finish_ready()
                        self._submit_pending()
                    if poll is None:
                        return {}
        finally:
            for f in waits:
                if not f.done():
                    f.cancel()

    async def _process(self, data: dict[Any, list[Any]]) -> None:
        """Take fetched records into the shards' pending buffers; submit what fits."""
        m = self.metrics
        owned = self.consumer.assignment()
        n_sh = len(self.shards)
        for tp, msgs in data.items():
            if not msgs:
                continue
            key = (tp.topic, tp.partition)
            if tp not in owned:
                # revoked meanwhile: its new owner reads these records again
                m.records_processed.labels("dropped_revoked").inc(len(msgs))
                continue
            if key not in self._assigned:
                # owned but its state is still being restored: read these records again later
                self.consumer.seek(tp, msgs[0].offset)
                continue
            m.record_consumed(tp.topic, tp.partition, len(msgs))
            i = tp.partition % n_sh
            self._pending[i].append((tp, msgs))
            self._pending_n[i] += len(msgs)
            self._next_offset[key] = msgs[-1].offset + 1
        self._submit_pending()
        await self._finish_ready()

    def _submit_pending(self) -> None:
        """Submit pending records as micro-batches (up to ``max_batch_records``) to every shard
        with room in its queue. Each shard runs its batches in order, one call at a time, which
        keeps every user's windows in order; shards run in parallel with each other and with
        this process.

        Call with ``self._lock`` held: a batch submitted while a checkpoint waits for acks would
        run in the shard before the checkpoint's ``checkpoint`` call, so the changelog would hold
        state of windows whose outputs are not produced yet (and a crash would then skip them
        as already applied)."""
        limit = self.s.max_batch_records
        for i, pend in enumerate(self._pending):
            q = self._queues[i]
            while pend and len(q) < SHARD_DEPTH:
                b = RawBatch(self.s.input_topic)
                w = _Work(None, [], {}, [])  # type: ignore[arg-type]
                while pend and len(b) < limit:
                    tp, msgs = pend[0]
                    take = msgs[: limit - len(b)]
                    if len(take) < len(msgs):
                        pend[0] = (tp, msgs[len(take):])
                    else:
                        pend.popleft()
                    part = tp.partition
                    b.partitions.extend([part] * len(take))
                    b.offsets.extend([msg.offset for msg in take])
                    b.values.extend([msg.value for msg in take])
                    b.keys.extend([msg.key for msg in take])
                    ts = [msg.timestamp if msg.timestamp is not None else -1 for msg in take]
                    b.timestamps.extend(ts)
                    w.ts_ms.extend(ts)
                    w.msgs.extend(take)
                    w.next_offsets[(tp.topic, part)] = take[-1].offset + 1
                self._pending_n[i] -= len(b)
                w.future = self.shards[i].submit("process", b, int(time.time()))
                w.submitted = time.monotonic()
                q.append(w)

    def _drop_pending(self, keys: set[TP]) -> int:
        """Forget pending records of ``keys`` (revoked: never submitted, never committed)."""
        dropped = 0
        for i, pend in enumerate(self._pending):
            keep = deque((tp, msgs) for tp, msgs in pend if (tp.topic, tp.partition) not in keys)
            n = sum(len(msgs) for _, msgs in keep)
            dropped += self._pending_n[i] - n
            self._pending[i], self._pending_n[i] = keep, n
        return dropped

    async def _finish_ready(self) -> None:
        """Produce the outputs of every finished batch at the head of a shard's queue."""
        progress = True
        while progress:
            progress = False
            for i, q in enumerate(self._queues):
                if q and q[0].future.done():
                    await self._finish_head(i)
                    progress = True

    async def _finish_all(self, deadline: float, interruptible: bool = False) -> bool:
        """Finish every submitted batch; False if one is not done by ``deadline`` (or, when
        ``interruptible``, a stop is requested meanwhile): a hung worker never holds a
        checkpoint, or the exit, for longer than that."""
        stop = asyncio.ensure_future(self._stop.wait()) if interruptible else None
        try:
            for i, q in enumerate(self._queues):
                while q:
                    fut = q[0].future
                    if not fut.done():
                        waits: set[asyncio.Future[Any]] = {fut} if stop is None else {fut, stop}
                        await asyncio.wait(waits, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED)
                        if not fut.done():
                            return False
                    await self._finish_head(i)
            return True
        finally:
            if stop is not None:
                stop.cancel()

    def _check_workers(self) -> None:
        """A pipeline worker that has not answered a batch for :data:`WORKER_STALL_S` is a
        fatal error (exit 1, restart restores its state), never a silent stall."""
        now = time.monotonic()
        for i, q in enumerate(self._queues):
            if q and not q[0].future.done() and now - q[0].submitted > WORKER_STALL_S:
                raise TaskclfDaemonError(f"pipeline worker {i} has not answered a batch for {now - q[0].submitted:.0f}s (limit {WORKER_STALL_S:.0f}s)")

    async def _finish_head(self, i: int) -> None:
        """Produce the outputs and dead letters of shard ``i``'s oldest batch; track its offsets.

        Batches of different shards finish in any order: a partition belongs to one shard, so
        each partition's batches still enter the offset tracker in offset order."""
        w = self._queues[i][0]
        try:
            res: ShardResult = await w.future
        finally:
            self._queues[i].popleft()
        s, m, sink = self.s, self.metrics, self.sink
        assert sink is not None
        processed_ms = str(int(time.time() * 1000)).encode()
        out_topic = s.output_topic
        append = sink.append
        msgs = w.msgs
        for idx, reason, detail in res.dead:
            await self._dead_letter(msgs[idx], reason, detail)
        for key, value, src in res.outputs:
            await append(out_topic, key, value, [("taskclf-source", src), ("taskclf-processed-ms", processed_ms)])
        for outcome, n in res.skipped.items():
            m.records_processed.labels(outcome).inc(n)
        m.record_batch(res.tally, res.confidences, res.rejected, res.timings, len(msgs))
        self._shard_users[i] = res.state_users
        self._invalid.add_batch(len(msgs), [idx for idx, _r, _d in res.dead])
        m.state_users.set(self.state_users)
        futures = await sink.flush()
        self._tracker.add(PendingBatch(futures, w.next_offsets, len(msgs), w.ts_ms))
        m.in_flight.set(self._tracker.in_flight_records)
        if self._invalid.exceeded() and self._flood is None:
            self._flood = (
                f"{self._invalid.ratio:.0%} of the last {self._invalid.window} records were invalid (limit {s.max_invalid_ratio:.0%}); "
                "see the DLQ topic for reasons, fix the producers or raise max_invalid_ratio"
            )
            raise InvalidFlood(self._flood)

    async def _dead_letter(self, msg: Any, reason: str, detail: str) -> None:
        assert self.sink is not None
        headers = [
            ("taskclf-dlq-reason", reason.encode()),
            ("taskclf-dlq-detail", detail[:500].encode("utf-8", "replace")),
            ("taskclf-source-topic", msg.topic.encode()),
            ("taskclf-source-partition", str(msg.partition).encode()),
            ("taskclf-source-offset", str(msg.offset).encode()),
        ]
        room = self.s.max_produce_bytes - RECORD_OVERHEAD - sum(len(k) + len(v) for k, v in headers)
        key, value, cut = fit_dead_letter(msg.key, msg.value, room)
        if cut:
            headers.append(("taskclf-dlq-truncated", cut.encode()))
        await self.sink.append(self.s.dlq_topic, key, value, headers)
        self.metrics.record_dead_letter(reason)
        self.log.debug("record_dead_lettered", reason=reason, detail=detail, topic=msg.topic, partition=msg.partition, offset=msg.offset)

    def _collect(self) -> None:
        """Move acknowledged batches to committable; observe their latency."""
        try:
            done = self._tracker.collect()
        except Exception as exc:
            raise TaskclfDaemonError(f"producing outputs failed, offsets not committed: {type(exc).__name__}: {exc}") from exc
        if done:
            now_ms = time.time() * 1000.0
            lat = [max(0.0, (now_ms - t) / 1000.0) for b in done for t in b.first_ts_ms if t and t > 0]
            observe_many(self.metrics.e2e_latency, lat)
            self.metrics.in_flight.set(self._tracker.in_flight_records)

    async def _checkpoint(self, deadline: float, only: set[TP] | None = None, interruptible: bool = False) -> bool:
        """The ordered checkpoint (module docstring). Call with ``self._lock`` held.

        :return: False when outputs were not all acknowledged before ``deadline`` (nothing is
            written or committed then; the next checkpoint retries)
        """
        assert self.sink is not None
        m = self.metrics
        # Step 0. The batches in the shards finish and their outputs are produced.
        if not await self._finish_all(deadline, interruptible=interruptible):
            m.checkpoints.labels("outputs_pending").inc()
            return False
        # Step 1. Every produced output and dead letter acknowledged.
        futs = self._tracker.all_futures()
        if futs:
            await asyncio.wait(futs, timeout=max(0.0, deadline - time.monotonic()))
        self._collect()
        if len(self._tracker):
            m.checkpoints.labels("outputs_pending").inc()
            return False
        # Step 2. Changelog: changed users, then tombstones of users forgotten (retention, capacity).
        parts = None if only is None else sorted(p for _, p in only)
        now_s = int(time.time())
        cps: list[CheckpointData] = await asyncio.gather(*(sh.call("checkpoint", parts, now_s) for sh in self.shards))
        n_upd = n_del = 0
        for i, cp in enumerate(cps):
            for part, key, value in cp.updates:
                await self.sink.append(self.changelog, key, value, partition=part)
            for part, key in cp.tombstones:
                await self.sink.append(self.changelog, key, None, partition=part)
            n_upd += len(cp.updates)
            n_del += len(cp.tombstones)
            self._shard_users[i] = cp.state_users
            for reason, n in cp.evicted.items():
                m.state_evictions.labels(reason).inc(n)
        self._state_bytes = sum(cp.state_bytes for cp in cps)
        # Step 3. Wait for the changelog; a failure aborts before anything is committed.
        cl_futs = await self.sink.flush()
        if cl_futs:
            done, pending = await asyncio.wait(cl_futs, timeout=max(1.0, deadline - time.monotonic()))
            errors = [f.exception() for f in done if not f.cancelled() and f.exception() is not None]
            if pending or errors:
                # those users' states are written again by the next checkpoint; nothing committed
                await asyncio.gather(*(sh.call("checkpoint_failed") for sh in self.shards))
                m.checkpoints.labels("changelog_failed").inc()
                if errors:
                    raise TaskclfDaemonError(f"writing the state changelog failed ({errors[0]!r}); offsets not committed")
                # not acknowledged in time (a broker stall): retried at the next checkpoint
                self.log.warning("changelog_not_acknowledged", records=n_upd + n_del, pending_batches=len(pending))
                return False
        if n_upd:
            m.changelog_records.labels("update").inc(n_upd)
        if n_del:
            m.changelog_records.labels("tombstone").inc(n_del)
        m.state_bytes.set(self._state_bytes)
        m.state_users.set(self.state_users)
        # Step 4. Commit the input offsets whose outputs and state are durable.
        await self._commit(only)
        m.checkpoints.labels("ok").inc()
        return True

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

    async def _apply_backpressure(self) -> None:
        limit = self.s.max_in_flight_records
        if self._tracker.in_flight_records < limit:
            return
        self.metrics.backpressure.inc()
        parts = list(self.consumer.assignment())
        self.consumer.pause(*parts)
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

    # --- rebalance ---------------------------------------------------------------------------
    async def _fail_loudly(self, what: str, exc: BaseException) -> None:
        """A failure inside a rebalance callback: aiokafka would log and swallow it and go on
        without the partitions' state, so the daemon stops instead (exit 1; ``/healthz`` red at
        once). A restart restores the state from the changelog."""
        self._fatal = f"{what} failed: {type(exc).__name__}: {exc}"
        self.exit_code = EXIT_FATAL
        self.log.error("rebalance_failed", step=what, error=self._fatal)
        self._stop.set()

    async def on_revoked(self, revoked: list[Any]) -> None:
        try:
            await self._on_revoked(revoked)
        except Exception as exc:  # noqa: BLE001 - never swallowed: see _fail_loudly
            await self._fail_loudly("partition revocation", exc)

    async def on_assigned(self, assigned: list[Any]) -> None:
        try:
            await self._on_assigned(assigned)
        except Exception as exc:  # noqa: BLE001 - never swallowed: see _fail_loudly
            await self._fail_loudly("partition assignment (state restore)", exc)

    async def _on_revoked(self, revoked: list[Any]) -> None:
        keys = {(tp.topic, tp.partition) for tp in revoked}
        self.metrics.rebalances.labels("revoked").inc()
        async with self._lock:
            dropped = self._drop_pending(keys)
            if dropped:
                self.metrics.records_processed.labels("dropped_revoked").inc(dropped)
            budget = time.monotonic() + 0.2 * self.s.max_poll_interval_ms / 1000.0
            ok = False
            try:
                ok = await self._checkpoint(deadline=budget)
            except TaskclfDaemonError as exc:
                self.log.error("revoke_checkpoint_failed", error=str(exc))
            by_shard = self._split(keys)
            parked = sum(await asyncio.gather(*(self.shards[i].call("release", parts, ok) for i, parts in by_shard.items())))
            for key in keys:
                self._next_offset.pop(key, None)
                self.metrics.forget_partition(*key)
            self._assigned -= keys
            await self._refresh_state_stats()
        self.log.info("partitions_revoked", partitions=sorted(p for _, p in keys), users_parked=parked)

    def _split(self, keys: set[TP] | list[TP]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for _, p in sorted(keys):
            out.setdefault(self._shard_of(p), []).append(p)
        return out

    async def _refresh_state_stats(self) -> None:
        stats = await asyncio.gather(*(sh.call("stats") for sh in self.shards))
        self._shard_users = [st["state_users"] for st in stats]
        self._state_bytes = sum(st["state_bytes"] for st in stats)
        self.metrics.state_users.set(self.state_users)
        self.metrics.state_bytes.set(self._state_bytes)

    async def _on_assigned(self, assigned: list[Any]) -> None:
        keys = {(tp.topic, tp.partition) for tp in assigned}
        self.metrics.rebalances.labels("assigned").inc()
        # Step 1. Pause before the first await: getmany runs concurrently with this listener.
        if assigned:
            self.consumer.pause(*assigned)
        self._restoring += 1
        reuse: set[int] = set()
        try:
            by_shard = self._split(keys)
            # every shard drops parked state of partitions that went elsewhere
            got = await asyncio.gather(*(sh.call("reuse", by_shard.get(i, [])) for i, sh in enumerate(self.shards)))
            reuse = {p for r in got for p in r}
            todo = sorted(k for k in keys if k[1] not in reuse)
            if todo:
                await self._restore(todo)
            self._assigned |= keys
            await self._refresh_state_stats()
        finally:
            self._restoring -= 1
            owned = self.consumer.assignment()
            self.consumer.resume(*[tp for tp in assigned if tp in owned])
        self.log.info("partitions_assigned", partitions=sorted(p for _, p in keys), reused=sorted(reuse))

    async def _restore(self, keys: list[TP]) -> None:
        """Rebuild the users of ``keys`` from the changelog (latest record per user wins)."""
        t0 = time.monotonic()
        tps = [kio.TopicPartition(self.changelog, p) for _, p in keys]
        latest: dict[tuple[int, bytes], bytes | None] = {}
        n = 0
        async for msgs in kio.read_partitions_to_end(self.reader, tps, self.s.restore_timeout_s):
            for msg in msgs:
                if msg.key is not None:
                    latest[(msg.partition, msg.key)] = msg.value
            n += len(msgs)
        per_shard: dict[int, list[tuple[int, bytes, bytes]]] = {}
        for (part, key), value in latest.items():
            if value is not None:
                per_shard.setdefault(self._shard_of(part), []).append((part, key, value))
        now_s = int(time.time())
        got = await asyncio.gather(*(self.shards[i].call("adopt", recs, now_s) for i, recs in per_shard.items()))
        users = sum(u for u, _ in got)
        errors = [e for _, errs in got for e in errs]
        if errors:
            # loud, not fatal: one corrupt record must not crash-loop the group; that user starts empty
            self.metrics.state_unreadable.inc(len(errors))
            for e in errors[:10]:
                self.log.error("state_record_unreadable", error=e)
        took = time.monotonic() - t0
        self.metrics.restore_duration.observe(took)
        self.metrics.restored_records.inc(n)
        self.log.info("partitions_restored", partitions=sorted(p for _, p in keys), records=n, users=users, unreadable=len(errors), seconds=round(took, 3))


class _Listener(kio.ConsumerRebalanceListener):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.daemon.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
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
