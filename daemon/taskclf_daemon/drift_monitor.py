"""The daemon's drift gauges: every ``drift_refresh_s``, the shards' sliding windows are summed
into the instance's window and taskclf's statistics (spec 10) are exported.

Each shard keeps the slots of its last ``drift_window_size / pipeline_workers`` windows
(:mod:`taskclf_daemon.pipeline.drift_window`) and answers :meth:`ShardHost.drift_counts` with
small count arrays, queued behind its current batch; the refresh runs as its own task so the
poll loop never waits for it. The gauges exist only once a shard has a reference profile (the
bundle's ``drift_reference.json``) and has seen a window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from taskclf_daemon.metrics import Metrics
from taskclf_daemon.pipeline.drift import DRIFT_FEATURES
from taskclf_daemon.pipeline.drift_window import DriftCounts, DriftValues, drift_values, merge_counts
from taskclf_daemon.workers import ShardHost


class DriftMonitor:
    def __init__(self, hosts: Sequence[ShardHost], metrics: Metrics, interval_s: float, log: Any) -> None:
        self.hosts = hosts
        self.metrics = metrics
        self.interval_s = interval_s
        self.log = log
        self.last: DriftValues | None = None
        self._nulls = [np.zeros(len(DRIFT_FEATURES), dtype=np.int64) for _ in hosts]
        self._unseen: list[dict[str, int]] = [{} for _ in hosts]
        self._errors: set[str] = set()
        self._next = 0.0
        self._task: asyncio.Task[DriftValues | None] | None = None

    def tick(self, now: float) -> None:
        """Start a refresh when one is due and none is running (called from the poll loop)."""
        if now < self._next or (self._task is not None and not self._task.done()):
            return
        self._next = now + self.interval_s
        self._task = asyncio.create_task(self.refresh())

    async def refresh(self) -> DriftValues | None:
        """Collect, merge, export; returns the exported values (None: nothing to export yet)."""
        answers = await asyncio.gather(*(h.drift_counts() for h in self.hosts), return_exceptions=True)
        parts: list[DriftCounts | None] = []
        for i, a in enumerate(answers):
            if isinstance(a, BaseException):  # a dead worker is reported by the batch path
                parts.append(None)
                continue
            parts.append(a)
            if a is not None:
                self._count_new(i, a)
        merged = merge_counts(parts)
        if merged is None:
            return None
        if merged.error and merged.error not in self._errors:
            self._errors.add(merged.error)
            self.log.warning("drift_collection_failed", error=merged.error, effect="a pipeline worker stopped collecting drift; predictions are not affected")
        self.last = values = drift_values(merged)
        self.metrics.set_drift(values)
        return values

    def _count_new(self, i: int, c: DriftCounts) -> None:
        new = np.maximum(c.nulls_total - self._nulls[i], 0)
        self._nulls[i] = np.maximum(self._nulls[i], c.nulls_total)
        seen = self._unseen[i]
        unseen = {k: n - seen.get(k, 0) for k, n in c.unseen_total.items()}
        self._unseen[i] = {k: max(n, seen.get(k, 0)) for k, n in c.unseen_total.items()}
        self.metrics.count_drift_inputs(dict(zip(DRIFT_FEATURES, new.tolist())), unseen)

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping anyway
                pass
