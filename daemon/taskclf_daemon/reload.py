"""Hot reload: a new model bundle, calibrator store, policy or taxonomy without a restart, every
user's state kept.

**What is watched.** The configured ``policy`` file; without one, taskclf's own locations
beside the configured bundle: ``<models>/inference_policy.json`` when it exists, else
``<models>/active.json`` (``<models>`` = the parent of ``model_dir``). Every
``reload_interval_s`` (taskclf: 60 s; 0 = not watched) the file's signature -- modification time,
size and identity (device, inode) as ``stat`` sees it through symlinks -- is compared with the one
of the last successful load; SIGHUP reloads at once, changed or not.

**What a reload does.** It resolves again with the same settings and the same single rule as the
start (flag > policy > default), so it builds exactly what a restart would: a model dir, store or
threshold set in the configuration keeps winning over the policy (taskclf drops its overrides at
a reload; we do not, so a crash restart after a reload resumes with the same artifacts). It loads
and validates everything in a thread of the daemon process, refuses a bundle whose schema hash or
label set differs from the running one (the per-user state was built for those), then has every
shard load the same resolved paths beside its running pipeline (``shard_reload.py``; a worker
keeps processing meanwhile) and, once every shard has loaded exactly what the daemon process
loaded, swaps them in between micro-batches -- all shards, or none. Per-user history, smoothing
and sessions stay: only the artifacts change.

**Outcomes** (``taskclf_model_reloads_total{result}``): ``ok``; ``error`` (anything failed to
load or a shard disagreed: the running artifacts stay, the reason is logged, and the attempt is
repeated at every interval until it succeeds -- like taskclf, the failed signature is not
remembered, so a bundle still being copied is picked up once complete); ``refused`` (another
schema hash or label set: it needs new state, i.e. a new consumer group or a restart with an
empty changelog). The last attempt is shown by ``GET /v1/model`` as ``last_reload``.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskclf_daemon.artifacts import pipeline_from_resolved, resolve_from_settings
from taskclf_daemon.log import get_logger
from taskclf_daemon.metrics import Metrics
from taskclf_daemon.pipeline.batch import InferencePipeline
from taskclf_daemon.shard_reload import ReloadSpec, pipeline_identity
from taskclf_daemon.timeutil import format_ts_us
from taskclf_daemon.workers import START_TIMEOUT_S, LocalShard, ShardHost

#: the values of ``taskclf_model_reloads_total{result}`` (alert rules rely on them)
RESULTS = ("ok", "error", "refused")
#: how often a reload asks the shards whether they have loaded the new artifacts
STATUS_POLL_S = 0.05

Signature = tuple[int, int, int, int] | None


def watched_file(settings: Any) -> Path | None:
    """The file whose changes trigger a reload (see the module doc); None: nothing to watch."""
    if settings.policy:
        return Path(settings.policy)
    if not settings.model_dir:
        return None
    models = Path(settings.model_dir).resolve().parent
    policy = models / "inference_policy.json"
    return policy if policy.exists() else models / "active.json"


def signature(path: Path | None) -> Signature:
    """Modification time (ns), size, device and inode of ``path`` through symlinks; None when
    it does not exist. A Kubernetes ConfigMap update swaps a symlink to a new file: its inode
    and time change even where the content's time would not."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_dev, st.st_ino)


_USER_FILE = re.compile(r"users/[^\s'\"]+?\.json")
_USER_THRESHOLD = re.compile(r"per_user_reject_thresholds\[[^\]]*\]")


def redact(message: str) -> str:
    """``message`` without user ids: a per-user calibrator file and a per-user threshold entry
    are named by their kind only (logs and ``/v1/model`` carry no user id)."""
    return _USER_THRESHOLD.sub("per_user_reject_thresholds[<user>]", _USER_FILE.sub("users/<user>.json", message))


def refusal(running: InferencePipeline, new: InferencePipeline) -> str | None:
    """Why ``new`` cannot replace ``running`` while keeping the per-user state (None: it can)."""
    a, b = running.bundle, new.bundle
    if a.schema_hash != b.schema_hash:
        return f"bundle {b.bundle_id} has schema hash {b.schema_hash} ({b.schema.version}), the running bundle {a.bundle_id} {a.schema_hash} ({a.schema.version}): the per-user state is built for the running schema; serve it with a new consumer group or restart with an empty changelog"
    la, lb = sorted(a.metadata.get("label_set", [])), sorted(b.metadata.get("label_set", []))
    if la != lb:
        return f"bundle {b.bundle_id} has label set {lb}, the running bundle {la}: the smoothing state holds labels of the running set; serve it with a new consumer group"
    return None


class ReloadFailed(Exception):
    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result


@dataclass(frozen=True)
class Outcome:
    """One reload attempt, as ``/v1/model`` shows it (``last_reload``)."""

    time: str
    trigger: str
    result: str
    model_bundle_id: str
    calibrator_store_id: str | None
    seconds: float
    file: str | None
    error: str | None = None

    def document(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


#: called after a successful swap: (new pipeline, its description)
OnSwap = Callable[[InferencePipeline, dict[str, Any]], None]


class Reloader:
    """Watches the policy file, reloads on a change or SIGHUP (:meth:`request`), one at a time."""

    def __init__(self, settings: Any, shards: Sequence[ShardHost], pipeline: InferencePipeline, metrics: Metrics, on_swap: OnSwap) -> None:
        self.s = settings
        self.shards = shards
        self.pipeline = pipeline
        self.metrics = metrics
        self.on_swap = on_swap
        self.log = get_logger("reload")
        self.path = watched_file(settings)
        #: the signature of the file the running artifacts were loaded from
        self.loaded = signature(self.path)
        self.last: Outcome | None = None
        self._wake = asyncio.Event()
        self._forced = False

    def request(self) -> None:
        """Reload as soon as possible (a signal handler: only sets a flag)."""
        self._forced = True
        self._wake.set()

    async def run(self) -> None:
        """The watch loop (cancel it to stop)."""
        interval = self.s.reload_interval_s
        self.log.info("reload_watching", file=str(self.path) if self.path else None, interval_s=interval or None)
        loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), interval if interval > 0 else None)
            except TimeoutError:
                pass
            self._wake.clear()
            forced, self._forced = self._forced, False
            if not forced:
                if self.s.policy is None and self.s.model_dir:  # taskclf's rule: the policy once it appears
                    self.path = watched_file(self.s)
                sig = await loop.run_in_executor(None, signature, self.path)
                if sig is None or sig == self.loaded:
                    continue
            await self.reload("sighup" if forced else "file")

    async def reload(self, trigger: str) -> Outcome:
        """One attempt: load, check, prepare every shard, commit everywhere or nowhere."""
        t0 = time.monotonic()
        sig = signature(self.path)
        running = self.pipeline
        try:
            spec, new, desc = await asyncio.get_running_loop().run_in_executor(None, self._load)
            why = refusal(running, new)
            if why:
                raise ReloadFailed("refused", why)
            await self._swap(spec, new)
        except ReloadFailed as exc:
            return self._done(trigger, exc.result, t0, running, redact(str(exc)))
        except Exception as exc:  # noqa: BLE001 - a failed reload keeps the running artifacts
            return self._done(trigger, "error", t0, running, redact(f"{type(exc).__name__}: {exc}"))
        self.pipeline = new
        self.loaded = sig
        self.on_swap(new, desc)
        return self._done(trigger, "ok", t0, new, None, previous=running, inference=desc)

    def _load(self) -> tuple[ReloadSpec, InferencePipeline, dict[str, Any]]:
        """Resolve and load in this process (a thread: off the event loop)."""
        resolved = resolve_from_settings(self.s)
        pipe, desc = pipeline_from_resolved(resolved, self.s)
        return ReloadSpec(resolved, self.s), pipe, desc

    async def _swap(self, spec: ReloadSpec, new: InferencePipeline) -> None:
        """Prepare every shard; commit all when every one loaded what we loaded, else abort all."""
        want = "ready " + pipeline_identity(new)
        try:
            await asyncio.gather(*(sh.reload("stage", new) if isinstance(sh, LocalShard) else sh.reload("prepare", spec) for sh in self.shards))
            deadline = time.monotonic() + START_TIMEOUT_S
            pending = list(self.shards)
            while pending:
                states = await asyncio.gather(*(sh.reload("status") for sh in pending))
                for sh, st in zip(pending, states):
                    if st != "loading" and st != want:
                        raise ReloadFailed("error", f"shard {sh.name} did not load the new artifacts: {st if str(st).startswith('error') else f'it loaded {st!r}, the daemon {want!r} (did the files change meanwhile?)'}")
                pending = [sh for sh, st in zip(pending, states) if st == "loading"]
                if pending and time.monotonic() > deadline:
                    raise ReloadFailed("error", f"shards {[sh.name for sh in pending]} did not load within {START_TIMEOUT_S:.0f}s")
                if pending:
                    await asyncio.sleep(STATUS_POLL_S)
        except BaseException:
            await asyncio.shield(asyncio.gather(*(sh.reload("abort") for sh in self.shards), return_exceptions=True))
            raise
        # all or none: once the commits are submitted they run, even if we are cancelled now
        await asyncio.shield(asyncio.gather(*(sh.reload("commit") for sh in self.shards)))

    def _done(
        self, trigger: str, result: str, t0: float, pipe: InferencePipeline, error: str | None, previous: InferencePipeline | None = None, inference: dict[str, Any] | None = None
    ) -> Outcome:
        store = pipe.store
        out = Outcome(
            time=format_ts_us(time.time_ns() // 1000),
            trigger=trigger,
            result=result,
            model_bundle_id=pipe.bundle.bundle_id,
            calibrator_store_id=store.store_id if store is not None else None,
            seconds=round(time.monotonic() - t0, 3),
            file=str(self.path) if self.path else None,
            error=error,
        )
        self.last = out
        self.metrics.model_reloads.labels(result).inc()
        fields = out.document()
        if result == "ok":
            assert previous is not None
            # the resolved settings and their sources, as the start-up line shows them
            self.log.info("model_reloaded", previous_bundle_id=previous.bundle.bundle_id, inference=inference, **fields)
        else:
            self.log.warning("model_reload_failed", **fields)
        return out
