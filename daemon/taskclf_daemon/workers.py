"""Where shards run: a thread of the daemon process, or pipeline worker processes.

One Python process is bound by the GIL: decoding, the overlay, encoding and serialising would
share one core with the Kafka client. With ``pipeline_workers = N >= 1`` each shard lives in its
own worker process (``spawn``: a fresh interpreter that loads the same artifacts from the same
settings) and the daemon process only moves bytes. Calls to one shard are strictly sequential
(one thread per shard talks to it), so every user's windows are applied in input order.

Both kinds implement :class:`ShardHost`: typed methods, one per :class:`PipelineShard` duty,
checked by the type checker. Over a worker's pipe a call travels as ``(ShardOp, args)``; the
worker answers ``("ok", value)`` or ``("error", message)``, after ``("ready", WorkerInfo)`` or
``("error", message)`` once its pipeline is built. A closed pipe (the daemon died, even by
SIGKILL) ends the worker; a dead worker is a fatal error for the daemon, which exits and is
restarted with its state restored from the changelog.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import gc
import multiprocessing
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from taskclf_daemon.errors import TaskclfDaemonError
from taskclf_daemon.pipeline.drift_window import DriftCounts
from taskclf_daemon.shard import CheckpointData, PipelineShard, RawBatch, ShardLimits, ShardResult, ShardStats, UserInfo
from taskclf_daemon.shard_reload import reload_step

if TYPE_CHECKING:
    from taskclf_daemon.config import Settings
    from taskclf_daemon.pipeline.batch import InferencePipeline

START_TIMEOUT_S = 300.0  # a first lleaves compile takes ~30 s; loading is ~1 s

#: first-generation threshold of the cyclic garbage collector in the daemon and its workers
#: (CPython's default: 700). The hot path allocates a few dozen short-lived, acyclic objects
#: per window (freed by reference counting); at 700 the collector ran every ~20 windows and
#: walked the young objects each time: ~9 of ~39 us per window in a worker (offline profile,
#: 100k windows, 1000 users). Cycles are still collected, just later.
GC_GEN0_THRESHOLD = 50_000



def tune_gc() -> None:
    """Move everything alive now (loaded artifacts, modules) out of the collector's sight
    (``gc.freeze``) and collect the young generation less often (:data:`GC_GEN0_THRESHOLD`)."""
    gc.collect()
    gc.freeze()
    _g0, g1, g2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, g1, g2)


class WorkerError(TaskclfDaemonError):
    """A pipeline worker failed or died."""


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    pid: int
    in_process: bool
    model_backend: str | None = None


class ShardOp(enum.Enum):
    """The duties of a shard, as they travel over a worker's pipe (see :data:`_DISPATCH`)."""

    PROCESS = "process"
    FEEDBACK = "feedback"
    CHECKPOINT = "checkpoint"
    CHECKPOINT_FAILED = "checkpoint_failed"
    RELEASE = "release"
    REUSE = "reuse"
    ADOPT = "adopt"
    ADOPTED = "adopted"
    STATS = "stats"
    USER = "user"
    DRIFT = "drift"
    RELOAD = "reload"


#: what each op calls on the worker's shard
_DISPATCH: dict[ShardOp, Callable[..., Any]] = {
    ShardOp.PROCESS: PipelineShard.process,
    ShardOp.FEEDBACK: PipelineShard.feedback,
    ShardOp.CHECKPOINT: PipelineShard.checkpoint,
    ShardOp.CHECKPOINT_FAILED: PipelineShard.checkpoint_failed,
    ShardOp.RELEASE: PipelineShard.release,
    ShardOp.REUSE: PipelineShard.reuse,
    ShardOp.ADOPT: PipelineShard.adopt,
    ShardOp.ADOPTED: PipelineShard.adopted,
    ShardOp.STATS: PipelineShard.stats,
    ShardOp.USER: PipelineShard.user_info,
    ShardOp.DRIFT: PipelineShard.drift_counts,
    ShardOp.RELOAD: reload_step,
}


class ShardHost(Protocol):
    """One shard, wherever it runs. Calls run one at a time, in call order."""

    name: str

    async def start(self) -> WorkerInfo: ...

    def process(self, batch: RawBatch, now_s: int) -> asyncio.Future[ShardResult]:
        """Submit a micro-batch; the future resolves when the shard has run it."""
        ...

    def feedback(self, batch: RawBatch, now_s: int) -> asyncio.Future[ShardResult]:
        """Submit a batch of label-span records (the feedback topic), like :meth:`process`."""
        ...

    async def checkpoint(self, only: list[int] | None, now_s: int) -> CheckpointData: ...

    async def checkpoint_failed(self) -> None: ...

    async def release(self, partitions: list[int], durable: bool) -> int: ...

    async def reuse(self, partitions: list[int]) -> list[int]: ...

    async def adopt(self, records: list[tuple[int, bytes, bytes | None]], now_s: int) -> tuple[int, list[str]]: ...

    async def adopted(self, partitions: list[int]) -> int:
        """Every chunk of ``partitions`` was adopted (unnamed block records are deleted next)."""

    async def stats(self) -> ShardStats: ...

    async def user_info(self, user_id: str) -> UserInfo | None:
        """What the shard holds about one user (the HTTP API); queued behind its batches."""
        ...

    async def drift_counts(self) -> DriftCounts | None:
        """The shard's drift window summarised (None: drift off or nothing seen yet)."""
    async def reload(self, step: str, arg: Any = None) -> str | None:
        """One step of a hot reload (``shard_reload.py``); queued between its batches."""
        ...

    async def stop(self, timeout: float = 5.0) -> None: ...


class _TypedCalls:
    """The typed :class:`ShardHost` methods on top of one untyped ``_submit(op, *args)``: each
    op's result type is the :data:`_DISPATCH` method's (the casts state it at the pipe)."""

    def _submit(self, op: ShardOp, *args: Any) -> asyncio.Future[Any]:
        raise NotImplementedError

    def process(self, batch: RawBatch, now_s: int) -> asyncio.Future[ShardResult]:
        return self._submit(ShardOp.PROCESS, batch, now_s)

    def feedback(self, batch: RawBatch, now_s: int) -> asyncio.Future[ShardResult]:
        return self._submit(ShardOp.FEEDBACK, batch, now_s)

    async def checkpoint(self, only: list[int] | None, now_s: int) -> CheckpointData:
        return cast(CheckpointData, await self._submit(ShardOp.CHECKPOINT, only, now_s))

    async def checkpoint_failed(self) -> None:
        await self._submit(ShardOp.CHECKPOINT_FAILED)

    async def release(self, partitions: list[int], durable: bool) -> int:
        return cast(int, await self._submit(ShardOp.RELEASE, partitions, durable))

    async def reuse(self, partitions: list[int]) -> list[int]:
        return cast(list[int], await self._submit(ShardOp.REUSE, partitions))

    async def adopt(self, records: list[tuple[int, bytes, bytes | None]], now_s: int) -> tuple[int, list[str]]:
        return cast(tuple[int, list[str]], await self._submit(ShardOp.ADOPT, records, now_s))

    async def adopted(self, partitions: list[int]) -> int:
        return cast(int, await self._submit(ShardOp.ADOPTED, partitions))

    async def stats(self) -> ShardStats:
        return cast(ShardStats, await self._submit(ShardOp.STATS))

    async def user_info(self, user_id: str) -> UserInfo | None:
        return cast(UserInfo | None, await self._submit(ShardOp.USER, user_id))

    async def drift_counts(self) -> DriftCounts | None:
        return cast(DriftCounts | None, await self._submit(ShardOp.DRIFT))
    async def reload(self, step: str, arg: Any = None) -> str | None:
        return cast(str | None, await self._submit(ShardOp.RELOAD, step, arg))


class LocalShard(_TypedCalls):
    """A shard run by one thread of this process."""

    def __init__(self, shard: PipelineShard, name: str = "pipeline") -> None:
        self.shard = shard
        self.name = name
        self._ex = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def start(self) -> WorkerInfo:
        return WorkerInfo(os.getpid(), True, self.shard.pipeline.bundle.backend_info().get("model_backend"))

    def _submit(self, op: ShardOp, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._ex, _DISPATCH[op], self.shard, *args)

    async def stop(self, timeout: float = 5.0) -> None:
        self._ex.shutdown(wait=False)


def _worker_main(conn: Any, settings: Settings) -> None:
    """Entry point of a worker process."""
    import signal

    # the daemon process handles SIGINT/SIGTERM/SIGHUP (also when sent to the whole process group)
    # and stops us by closing the pipe, after its last checkpoint
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a hot reload request, for the daemon process
    try:
        from taskclf_daemon.artifacts import pipeline_from_settings
        from taskclf_daemon.log import configure_logging

        configure_logging(settings.log_level, settings.log_format)  # e.g. the model's backend swap
        pipe, _desc = pipeline_from_settings(settings)
        shard = PipelineShard(pipe, ShardLimits.from_settings(settings))
    except Exception as exc:  # noqa: BLE001 - reported to the daemon, which fails fast
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    tune_gc()
    conn.send(("ready", WorkerInfo(os.getpid(), False, pipe.bundle.backend_info().get("model_backend"))))
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            return  # the daemon is gone
        try:
            reply = ("ok", _DISPATCH[op](shard, *args))
        except Exception as exc:  # noqa: BLE001
            reply = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


class ProcessShard(_TypedCalls):
    """A shard in a worker process."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.name = name
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=_worker_main, args=(child, settings), name=name, daemon=True)
        self._child = child
        self._ex = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.pid: int | None = None

    def _recv(self, timeout: float | None = None) -> Any:
        if timeout is not None and not self._conn.poll(timeout):
            raise WorkerError(f"pipeline worker {self.name} did not start within {timeout:.0f}s")
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(1.0)
            raise WorkerError(f"pipeline worker {self.name} died (exit code {self._proc.exitcode})") from None

    async def start(self) -> WorkerInfo:
        self._proc.start()
        self._child.close()
        self.pid = self._proc.pid
        status, info = await asyncio.get_running_loop().run_in_executor(self._ex, self._recv, START_TIMEOUT_S)
        if status != "ready":
            raise WorkerError(f"pipeline worker {self.name} failed to start: {info}")
        return cast(WorkerInfo, info)

    def _call(self, op: ShardOp, args: tuple[Any, ...]) -> Any:
        try:
            self._conn.send((op, args))
        except (BrokenPipeError, OSError):
            self._proc.join(1.0)
            raise WorkerError(f"pipeline worker {self.name} died (exit code {self._proc.exitcode})") from None
        status, value = self._recv()
        if status != "ok":
            raise WorkerError(f"pipeline worker {self.name}: {op.value} failed: {value}")
        return value

    def _submit(self, op: ShardOp, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._ex, self._call, op, args)

    async def stop(self, timeout: float = 5.0) -> None:
        try:
            self._conn.close()  # the worker sees EOF and returns
        except OSError:
            pass
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._proc.join, timeout)
        if self._proc.is_alive():
            self._proc.kill()
            await loop.run_in_executor(None, self._proc.join, 2.0)
        self._ex.shutdown(wait=False)


def make_shards(settings: Settings, pipeline: InferencePipeline) -> list[ShardHost]:
    """``pipeline_workers`` worker-process shards, or one in-process shard when it is 0."""
    n = int(settings.pipeline_workers)
    if n <= 0:
        return [LocalShard(PipelineShard(pipeline, ShardLimits.from_settings(settings)))]
    return [ProcessShard(settings, f"pipeline-{i}") for i in range(n)]
