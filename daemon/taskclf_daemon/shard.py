"""The state-owning half of the daemon: raw records in, encoded outputs out. No I/O.

A :class:`PipelineShard` owns the per-user state of some input partitions and everything that
touches it: decoding and validating records, the pipeline, the output encoding, the changelog
values, TTL expiry, parking state of revoked partitions and adopting restored state. The daemon
(``daemon.py``) keeps Kafka, offsets, checkpoints and metrics; it talks to one shard per
pipeline worker through :mod:`taskclf_daemon.workers`, which runs shards in this process (a
thread) or in worker processes. Everything that crosses that boundary is plain picklable data
(lists, tuples, bytes, dicts).

A partition belongs to exactly one shard (``partition % n_shards``), so every user's windows
are applied by one shard, in input order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from taskclf_daemon.codec import RowValidator, decode_window
from taskclf_daemon.errors import InvalidRecord
from taskclf_daemon.pipeline.batch import InferencePipeline
from taskclf_daemon.records import FeatureWindow, SourceRef
from taskclf_daemon.state import StateFormatError, UserState


@dataclass(slots=True)
class RawBatch:
    """Records of one poll for one shard, in fetch order (per partition: offset order)."""

    topic: str
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)

    def add(self, partition: int, offset: int, value: bytes | None) -> None:
        self.partitions.append(partition)
        self.offsets.append(offset)
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.values)


@dataclass(slots=True)
class ShardResult:
    """What one :meth:`PipelineShard.process` call hands back to the daemon."""

    #: outputs in input order: (key, value, source header)
    outputs: list[tuple[bytes, bytes, bytes]]
    #: dead letters: (index into the batch, reason, detail)
    dead: list[tuple[int, str, str]]
    #: skipped windows by outcome (``replayed``, ``duplicate``, ``late``)
    skipped: dict[str, int]
    #: (mapped label, calibrator scope) -> count of emitted predictions
    tally: dict[tuple[str, str], int]
    confidences: list[float]
    rejected: int
    timings: dict[str, float]
    state_users: int


@dataclass(slots=True)
class CheckpointData:
    """Changelog records of one checkpoint: updates and tombstones, with their partition."""

    updates: list[tuple[int, bytes, bytes]]  # (partition, key, value)
    tombstones: list[tuple[int, bytes]]  # (partition, key)
    state_users: int
    state_bytes: int


def _key(u: str) -> bytes:
    return u.encode("utf-8", "surrogatepass")


class PipelineShard:
    """Per-user state of some partitions of one input topic, and the pipeline over it."""

    def __init__(self, pipeline: InferencePipeline, max_record_bytes: int, ttl_seconds: float = 0.0) -> None:
        self.pipeline = pipeline
        self.validator = RowValidator(pipeline.bundle.schema)
        self.max_record_bytes = max_record_bytes
        self.states = pipeline.new_state_store()
        self._ttl_us = int(ttl_seconds * 1_000_000) if ttl_seconds > 0 else None
        self._user_part: dict[str, int] = {}
        self._part_users: dict[int, set[str]] = {}
        self._watermark: dict[int, int] = {}
        self._parked: dict[int, dict[str, UserState]] = {}
        self._state_size: dict[str, int] = {}
        self._state_bytes = 0
        #: users handed out by the last :meth:`checkpoint`, re-marked dirty if it fails
        self._in_checkpoint: set[str] = set()

    # --- processing ----------------------------------------------------------------------------
    def process(self, batch: RawBatch) -> ShardResult:
        t0 = time.perf_counter()
        windows: list[FeatureWindow] = []
        dead: list[tuple[int, str, str]] = []
        topic, validator, limit = batch.topic, self.validator, self.max_record_bytes
        user_part, part_users, wm = self._user_part, self._part_users, self._watermark
        for i, (part, off, value) in enumerate(zip(batch.partitions, batch.offsets, batch.values)):
            try:
                if value is None:
                    raise InvalidRecord("not_an_object", "record has no value (tombstone)")
                w = decode_window(value, validator, limit)
            except InvalidRecord as exc:
                dead.append((i, exc.reason, exc.detail))
                continue
            w.source = SourceRef(topic, part, off)
            u = w.user_id
            if user_part.get(u) != part:
                old = user_part.get(u)
                if old is not None:
                    part_users.get(old, set()).discard(u)
                user_part[u] = part
                part_users.setdefault(part, set()).add(u)
            if w.ts_us > wm.get(part, -(1 << 62)):
                wm[part] = w.ts_us
            windows.append(w)
        t1 = time.perf_counter()
        res = self.pipeline.process(windows, self.states)
        skipped: dict[str, int] = {}
        for _w, outcome in res.skipped:
            skipped[outcome] = skipped.get(outcome, 0) + 1
        tally: dict[tuple[str, str], int] = {}
        outputs = []
        confs = []
        rejected = 0
        for p in res.predictions:
            k = (p.label, p.calibrator_scope)
            tally[k] = tally.get(k, 0) + 1
            confs.append(p.confidence)
            rejected += p.is_rejected
            src = p.source
            outputs.append((_key(p.user_id), p.value, f"{src.topic}:{src.partition}:{src.offset}".encode() if src else b""))
        timings = dict(res.timings)
        timings["decode"] = t1 - t0
        return ShardResult(outputs, dead, skipped, tally, confs, rejected, timings, len(self.states))

    # --- checkpoint ----------------------------------------------------------------------------
    def checkpoint(self, only: list[int] | None = None) -> CheckpointData:
        """Serialized state of every user changed since the last checkpoint, and tombstones
        for users idle (event time) past the TTL, who are forgotten here."""
        dirty = self.states.take_dirty()
        expired = self._expire_idle(only)
        updates = []
        for u in dirty:
            st = self.states.users.get(u)
            part = self._user_part.get(u)
            if st is None or part is None or u in expired:
                continue
            value = st.to_bytes()
            updates.append((part, _key(u), value))
            self._state_bytes += len(value) - self._state_size.get(u, 0)
            self._state_size[u] = len(value)
        self._in_checkpoint = dirty
        tombs = [(part, _key(u)) for u, part in expired.items()]
        return CheckpointData(updates, tombs, len(self.states), self._state_bytes)

    def checkpoint_failed(self) -> None:
        """The changelog of the last checkpoint was not acknowledged: write it again next time."""
        self.states.dirty |= {u for u in self._in_checkpoint if u in self.states.users}
        self._in_checkpoint = set()

    def _expire_idle(self, only: list[int] | None) -> dict[str, int]:
        if self._ttl_us is None:
            return {}
        out: dict[str, int] = {}
        for part, users in self._part_users.items():
            if only is not None and part not in only:
                continue
            wm = self._watermark.get(part)
            if wm is None:
                continue
            for u in self.states.expired(users, wm, self._ttl_us):
                out[u] = part
        for u in out:
            self._forget_user(u)
        return out

    def _forget_user(self, u: str) -> None:
        part = self._user_part.pop(u, None)
        if part is not None:
            self._part_users.get(part, set()).discard(u)
        self.states.drop(u)
        self._state_bytes -= self._state_size.pop(u, 0)

    # --- rebalance -----------------------------------------------------------------------------
    def release(self, partitions: list[int], durable: bool) -> int:
        """Forget the users of revoked ``partitions``. With ``durable`` (the checkpoint before
        the revoke succeeded) users whose state is in the changelog are parked: reused without a
        restore if the partition comes back in the next assignment. Returns users parked."""
        parked = 0
        for part in partitions:
            keep: dict[str, UserState] = {}
            for u in self._part_users.pop(part, set()):
                st = self.states.users.get(u)
                if durable and st is not None and u not in self.states.dirty:
                    keep[u] = st
                self._forget_user(u)
            if keep:
                self._parked[part] = keep
                parked += len(keep)
            self._watermark.pop(part, None)
        return parked

    def reuse(self, partitions: list[int]) -> list[int]:
        """Adopt parked state of those of ``partitions`` that have it; drop all other parked
        state (its partition went elsewhere, so it is stale now). Returns the reused ones."""
        reused = []
        for part in partitions:
            keep = self._parked.pop(part, None)
            if keep is None:
                continue
            for u, st in keep.items():
                self._adopt(u, st, part)
            reused.append(part)
        self._parked.clear()
        return reused

    def adopt(self, records: list[tuple[int, bytes, bytes]]) -> tuple[int, list[str]]:
        """Install restored states ``(partition, key, value)`` (latest per user). Returns the
        number of users installed and the errors of unreadable records."""
        sw = self.pipeline.config.smooth_window
        n = 0
        errors = []
        for part, key, value in records:
            try:
                st = UserState.from_bytes(value, sw)
            except StateFormatError as exc:
                errors.append(f"partition {part}: {exc}")
                continue
            u = key.decode("utf-8", "surrogatepass")
            self._adopt(u, st, part)
            self._state_bytes += len(value) - self._state_size.get(u, 0)
            self._state_size[u] = len(value)
            n += 1
        return n, errors

    def _adopt(self, u: str, st: UserState, part: int) -> None:
        self.states.put(u, st)
        self._user_part[u] = part
        self._part_users.setdefault(part, set()).add(u)
        if st.last_ts_us is not None and st.last_ts_us > self._watermark.get(part, -(1 << 62)):
            self._watermark[part] = st.last_ts_us

    def stats(self) -> dict[str, Any]:
        return {"state_users": len(self.states), "state_bytes": self._state_bytes, "parked_partitions": sorted(self._parked)}
