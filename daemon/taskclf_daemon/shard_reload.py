"""The shard's side of a hot reload: load the new artifacts beside the running pipeline, then
swap them in between two micro-batches -- in every shard, or in none.

The daemon process (``reload.py``) resolves the policy once and sends every shard the same
:class:`ReloadSpec` (the resolved paths and thresholds, not the policy file, so a file that
changes again meanwhile cannot split the shards). A reload is three steps over
:data:`~taskclf_daemon.workers.ShardOp.RELOAD`, each a quick call queued between batches:

1. ``prepare``: start loading in a background thread of the shard's process and return at once
   (the shard keeps processing batches with the running pipeline meanwhile);
2. ``status``: ``loading``, ``ready <bundle id> <store id>`` or ``error <why>`` (polled);
3. ``commit`` (every shard is ready and loaded what the daemon process loaded) or ``abort``.

The in-process shard (``pipeline_workers = 0``) skips the load: ``stage`` hands it the pipeline
the daemon process already built.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

from taskclf_daemon.pipeline.batch import InferencePipeline
from taskclf_daemon.pipeline.policy import ResolvedInference
from taskclf_daemon.shard import PipelineShard

__all__ = ["ReloadSpec", "pipeline_identity", "reload_step"]


@dataclass(frozen=True)
class ReloadSpec:
    """What a shard loads: the resolved artifacts and the daemon's settings (taxonomy,
    smoothing, backend; the same ones the running pipeline was built with)."""

    resolved: ResolvedInference
    settings: Any


def pipeline_identity(pipeline: InferencePipeline) -> str:
    """``<bundle id> <store id or ->``: what the daemon checks every shard loaded."""
    store = pipeline.store
    return f"{pipeline.bundle.bundle_id} {store.store_id if store is not None else '-'}"


class _Slot:
    """The pipeline being loaded for one shard (at most one reload at a time)."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.pipeline: InferencePipeline | None = None
        self.error: str | None = None

    def load(self, spec: ReloadSpec) -> None:
        from taskclf_daemon.artifacts import pipeline_from_resolved

        try:
            self.pipeline, _desc = pipeline_from_resolved(spec.resolved, spec.settings)
        except Exception as exc:  # noqa: BLE001 - reported by ``status``; the reload fails, the shard goes on
            self.error = f"{type(exc).__name__}: {exc}"


_SLOTS: weakref.WeakKeyDictionary[PipelineShard, _Slot] = weakref.WeakKeyDictionary()


def reload_step(shard: PipelineShard, step: str, arg: Any = None) -> str | None:
    """One step of a reload on ``shard`` (see the module doc); raises ``ValueError`` for an
    unknown step or a commit without a loaded pipeline."""
    if step in ("prepare", "stage"):
        slot = _SLOTS[shard] = _Slot()
        if step == "stage":
            slot.pipeline = arg
        else:
            slot.thread = threading.Thread(target=slot.load, args=(arg,), name="reload-load", daemon=True)
            slot.thread.start()
        return None
    slot = _SLOTS.get(shard) or _Slot()
    if step == "status":
        if slot.thread is not None and slot.thread.is_alive():
            return "loading"
        if slot.pipeline is not None:
            return "ready " + pipeline_identity(slot.pipeline)
        return f"error {slot.error or 'nothing is being loaded'}"
    if step == "commit":
        if slot.pipeline is None:
            raise ValueError("commit without a loaded pipeline")
        _SLOTS.pop(shard, None)
        return shard.swap_pipeline(slot.pipeline)
    if step == "abort":
        _SLOTS.pop(shard, None)  # a load still running finishes into the dropped slot
        return None
    raise ValueError(f"unknown reload step {step!r}")
