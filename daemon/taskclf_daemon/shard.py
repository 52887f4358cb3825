"""The state-owning half of the daemon: raw records in, encoded outputs out. No I/O.

A :class:`PipelineShard` owns the per-user state of some input partitions and everything that
touches it: decoding and validating records, the pipeline, the output encoding, the changelog
values, forgetting idle users, parking state of revoked partitions and adopting restored state. The daemon
(``daemon.py``) keeps Kafka, offsets, checkpoints and metrics; it talks to one shard per
pipeline worker through :mod:`taskclf_daemon.workers`, which runs shards in this process (a
thread) or in worker processes. Everything that crosses that boundary is plain picklable data
(lists, tuples, bytes, dicts).

A partition belongs to exactly one shard (``partition % n_shards``), so every user's windows
are applied by one shard, in input order.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor

from taskclf_daemon.codec import RowValidator, decode_window
from taskclf_daemon.errors import InvalidRecord
from taskclf_daemon.forgetting import choose_forgotten
from taskclf_daemon.pipeline.batch import BatchResult, InferencePipeline, PredictionColumns
from taskclf_daemon.pipeline.drift_window import DriftCounts, DriftTap
from taskclf_daemon.pipeline.evidence import BLOCK_BYTES
from taskclf_daemon.pipeline.label_requests import ASK_BELOW, ELIGIBLE_ASKS_PER_DAY, MAX_ASKS_PER_DAY, AskBudget, encode_request, should_ask
from taskclf_daemon.pipeline.labelspan import decode_span
from taskclf_daemon.records import DeadLetter, FeatureWindow, SourceRef
from taskclf_daemon.shard_data import CheckpointData, Outputs, RawBatch, ShardLimits, ShardResult, ShardStats, UserInfo
from taskclf_daemon.state import USER_HEAP_BYTES, Snapshot, StateFormatError, UserState
from taskclf_daemon.state_blocks import BlockLedger, block_key, parse_block_key
from taskclf_daemon.timeutil import format_ts_us
from taskclf_daemon.wire import RECORD_OVERHEAD, source_header

__all__ = ["RECENT_WINDOWS", "CheckpointData", "Outputs", "PipelineShard", "RawBatch", "ShardLimits", "ShardResult", "ShardStats", "UserInfo"]

#: builds a named tuple without its Python-level ``__new__`` (the same object)
_new_tuple = tuple.__new__


def _key(u: str) -> bytes:
    return u.encode("utf-8", "surrogatepass")


def _dead(batch: RawBatch, i: int, reason: str, detail: str) -> DeadLetter:
    """The dead letter of record ``i`` of ``batch``."""
    return DeadLetter(i, SourceRef(batch.topic, batch.partitions[i], batch.offsets[i]), batch.keys[i], batch.values[i], reason, detail)


def _error_detail(exc: BaseException) -> str:
    """What a dead letter says about an unexpected exception: its type and a short message,
    never a traceback (the record itself is in the dead letter)."""
    msg = str(exc).replace("\n", " ")[:160]
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


#: how often (processing-time seconds) the retention sweep looks at every user
SWEEP_INTERVAL_S = 60
#: labels of this many last outputs per user are kept for the HTTP API's label mix
RECENT_WINDOWS = 20


class PipelineShard:
    """Per-user state of some partitions of one input topic, and the pipeline over it.

    No single record can stop it: a record that fails to decode, or whose processing raises
    anything at all, is handed back as a dead letter and the rest of its batch goes on (the
    batch is re-run one window at a time, every user's state as it was before the batch).
    """

    def __init__(self, pipeline: InferencePipeline, limits: ShardLimits | None = None) -> None:
        self.pipeline = pipeline
        self.limits = limits = limits or ShardLimits()
        self.validator = RowValidator(pipeline.bundle.schema)
        self.states = pipeline.new_state_store()
        self._ahead_us = int(limits.max_event_ahead_s * 1_000_000) if limits.max_event_ahead_s > 0 else None
        #: largest key + value of a produced record (outputs, changelog values); None = no limit
        self._max_record = limits.max_produce_bytes - RECORD_OVERHEAD if limits.max_produce_bytes else None
        self._user_part: dict[str, int] = {}
        self._part_users: dict[int, set[str]] = {}
        self._parked: dict[int, dict[str, UserState]] = {}
        #: the changelog value length of users with learning state (their share of state_bytes)
        self._learn_size: dict[str, int] = {}
        self._learn_bytes = 0
        self._next_sweep = 0
        #: users handed out by the last :meth:`checkpoint`, re-marked dirty if it fails
        self._in_checkpoint: set[str] = set()
        #: tombstones (user -> partition) of the last checkpoint, and those of failed ones to
        #: write again (a user forgotten must not come back from the changelog on a restore)
        self._tombs_in_checkpoint: dict[str, int] = {}
        self._tombs_again: dict[str, int] = {}
        #: for the HTTP API only (``keep_recent``), in memory only -- not in the changelog, so
        #: empty again after a restore: user -> last output value (~1 KB) and user -> labels of
        #: the last :data:`RECENT_WINDOWS` outputs (~0.8 KB); bounded by the users in memory,
        #: dropped with the user
        self._keep_recent = limits.keep_recent
        self._last_value: dict[str, bytes] = {}
        self._last_labels: dict[str, deque[str]] = {}
        #: the drift sliding window (pipeline/drift_window.py); None = off
        self._drift = DriftTap(limits.drift_window) if limits.drift_window > 0 else None
        #: label requests for unsure windows (a label-request topic is configured)
        self._asking = limits.label_requests
        #: refits run in one background thread, off the batches (in force at a defined later
        #: window of the user, so the thread's timing never shows in an output)
        self._refits_pool: ThreadPoolExecutor | None = None
        #: the learning states' sealed blocks in the changelog (state_blocks.py)
        self._blocks = BlockLedger()
        #: block records read by a restore in progress (user key -> (stream, n) -> (partition,
        #: value)), until :meth:`adopted`
        self._restored_blocks: dict[bytes, dict[tuple[str, int], tuple[int, bytes]]] = {}
        self._background_refits(pipeline)
        #: users served by a personal model (for the gauge)
        self._personal: set[str] = set()

    # --- processing ----------------------------------------------------------------------------
    def process(self, batch: RawBatch, now_s: int = 0) -> ShardResult:
        """Decode, check and run one batch. ``now_s``: processing time (epoch seconds), kept
        per user for retention only -- never an input of an output."""
        t0 = time.perf_counter()
        windows: list[FeatureWindow] = []
        index: list[int] = []
        dead: list[DeadLetter] = []
        topic, validator, limit, ahead = batch.topic, self.validator, self.limits.max_record_bytes, self._ahead_us
        user_part = self._user_part
        for i, (part, off, value, key, kts) in enumerate(zip(batch.partitions, batch.offsets, batch.values, batch.keys, batch.timestamps)):
            try:
                if value is None:
                    raise InvalidRecord("not_an_object", "record has no value (tombstone)")
                w = decode_window(value, validator, limit)
                u = w.user_id
                if key is None or key != u.encode():
                    raise InvalidRecord(
                        "key_mismatch",
                        "record has no key" if key is None else f"record key ({len(key)} bytes) is not the UTF-8 of user_id ({len(u.encode())} bytes)",
                    )
                if ahead is not None and kts >= 0 and w.ts_us > kts * 1000 + ahead:
                    raise InvalidRecord(
                        "event_time_ahead",
                        f"bucket_start_ts is {(w.ts_us - kts * 1000) / 3.6e9:.1f} h after the record's Kafka timestamp (limit {ahead / 3.6e9:g} h)",
                    )
            except InvalidRecord as exc:
                dead.append(DeadLetter(i, SourceRef(topic, part, off), key, value, exc.reason, exc.detail))
                continue
            except Exception as exc:  # noqa: BLE001 - one record never stops the shard
                dead.append(DeadLetter(i, SourceRef(topic, part, off), key, value, "processing_error", _error_detail(exc)))
                continue
            w.source = _new_tuple(SourceRef, (topic, part, off))  # SourceRef(...) without its Python-level __new__
            if user_part.get(u) != part:
                self._own(u, part)
            windows.append(w)
            index.append(i)
        t1 = time.perf_counter()
        res = self._run(windows, index, dead, batch)
        t2 = time.perf_counter()
        if self._drift is not None:
            self._drift.observe(self.pipeline.bundle, self.pipeline.reference, res.arrays)
        t3 = time.perf_counter()
        users = self.states.users
        for w in windows:
            st = users.get(w.user_id)
            if st is not None:
                st.seen_s = now_s
        skipped: dict[str, int] = {}
        for _w, outcome in res.skipped:
            skipped[outcome] = skipped.get(outcome, 0) + 1
        cols = res.columns
        uids, values = cols.user_ids, cols.values
        keys = [_key(u) for u in uids]
        max_out = self._max_record
        if max_out is not None and keys and max(map(len, keys)) + max(map(len, values)) > max_out:
            cols, keys = self._drop_oversize(cols, keys, max_out, index, windows, dead, batch)
            uids, values = cols.user_ids, cols.values
        tally = dict(Counter(zip(cols.labels, cols.scopes)))
        topic_b = topic.encode()
        sources = [b"" if src is None else b"%b:%d:%d" % (topic_b if src.topic == topic else src.topic.encode(), src.partition, src.offset) for src in cols.sources]
        outputs = Outputs(keys, values, sources)
        if self._keep_recent:  # ~0.1 us per output
            last_labels = self._last_labels
            self._last_value.update(zip(uids, values))
            for u, label in zip(uids, cols.labels):
                ring = last_labels.get(u)
                if ring is None:
                    ring = last_labels[u] = deque(maxlen=RECENT_WINDOWS)
                ring.append(label)
        requests = self._label_requests(cols) if self._asking else Outputs()
        refits = self._refits()
        dead.sort(key=lambda d: d.position)
        timings = dict(res.timings)
        timings["decode"] = t1 - t0
        if self._drift is not None:
            timings["drift"] = t3 - t2
        return ShardResult(outputs, dead, skipped, tally, cols.confidences, sum(cols.rejected), timings, len(self.states), requests, refits, len(self._personal))

    def _drop_oversize(
        self, cols: PredictionColumns, keys: list[bytes], max_out: int, index: list[int], windows: list[FeatureWindow], dead: list[DeadLetter], batch: RawBatch
    ) -> tuple[PredictionColumns, list[bytes]]:
        """``cols`` without the outputs larger than ``max_out`` (key + value), each dead-lettered
        (``output_too_large``) instead. Rare: linear searches are fine."""
        keep = []
        for j, (key, value, src) in enumerate(zip(keys, cols.values, cols.sources)):
            size = len(key) + len(value)
            if size > max_out:
                at = next(i for i, w in zip(index, windows) if w.source is src)
                dead.append(_dead(batch, at, "output_too_large", f"the prediction would be {size} bytes, limit {max_out}"))
                continue
            keep.append(j)
        return cols.select(keep), [keys[j] for j in keep]

    def _label_requests(self, cols: PredictionColumns) -> Outputs:
        """taskclf LabelRequests for the unsure windows of ``cols``, within each user's
        daily budget (``pipeline/label_requests.py``): the full quota while the user is short of
        evidence for a personal model, a smaller one after."""
        out = Outputs()
        users = self.states.users
        for j, conf in enumerate(cols.confidences):
            if not conf < ASK_BELOW:
                continue
            u = cols.user_ids[j]
            st = users.get(u)
            if st is None:
                continue
            budget = st.asks if st.asks is not None else AskBudget()
            quota = ELIGIBLE_ASKS_PER_DAY if cols.eligible[j] else MAX_ASKS_PER_DAY
            ts_us, src = cols.ts_us[j], cols.sources[j]
            if should_ask(budget, ts_us, conf, quota):
                st.asks = budget
                out.append(_key(u), encode_request(u, ts_us, conf, cols.core_ids[j]), source_header(src) if src else b"")
        return out

    def _refits(self) -> list[tuple[str, str, float | None, tuple[tuple[str, bool], ...]]]:
        """The learner's refits since the last call, summarised for metrics (no user ids)."""
        learner = self.pipeline.learner
        if learner is None or not learner.decisions:
            return []
        out = []
        for u, d in learner.take_decisions():
            cands = tuple((c.kind, c.qualifies) for c in d.candidates)
            st = self.states.users.get(u)
            if st is not None and st.learn is not None and st.learn.model is not None:
                self._personal.add(u)
            else:
                self._personal.discard(u)
            if d.adopted is not None:
                best = next((c for c in d.candidates if c.kind == d.adopted.kind), None)
                gain = None if best is None or d.in_force_scores is None else d.in_force_scores.nll - best.scores.nll
                out.append(("adopted", d.adopted.kind, gain, cands))
            else:
                out.append(("reverted" if d.revert_to_global else "kept", "", None, cands))
        return out

    def feedback(self, batch: RawBatch, now_s: int = 0) -> ShardResult:
        """Label-span records of the feedback topic (key = user_id): each span goes to its
        user's learning state (``pipeline/learner.py``), where it labels that user's windows at
        a defined point of their stream; a bad one is a dead letter with the reason. No outputs.
        ``skipped`` counts ``span_accepted`` and ``span_ignored`` (a duplicate, or too late:
        its windows were finalised without it)."""
        dead: list[DeadLetter] = []
        learner = self.pipeline.learner
        counts = {"span_accepted": 0, "span_ignored": 0}
        limit = self.limits.max_record_bytes
        for i, (part, value, key) in enumerate(zip(batch.partitions, batch.values, batch.keys)):
            try:
                if value is None:
                    raise InvalidRecord("not_an_object", "record has no value (tombstone)")
                if learner is None:
                    raise InvalidRecord("processing_error", "the learning loop is off in this worker")
                span = decode_span(value, limit, key)
                u = span.user_id
                assert u is not None  # decode_span with a key: user_id == key
                st = self.states.users.get(u)
                snap = None if st is None else st.snapshot()
                try:
                    ok = learner.add_span(span, self.states, u)
                except Exception:
                    self._undo(u, snap)
                    raise
            except InvalidRecord as exc:
                dead.append(_dead(batch, i, exc.reason, exc.detail))
                continue
            except Exception as exc:  # noqa: BLE001 - one record never stops the shard
                dead.append(_dead(batch, i, "processing_error", _error_detail(exc)))
                continue
            self._own(u, part)
            self.states.get(u).seen_s = now_s
            counts["span_accepted" if ok else "span_ignored"] += 1
        return ShardResult(Outputs(), dead, {k: n for k, n in counts.items() if n}, {}, [], 0, {}, len(self.states))

    def _own(self, u: str, part: int) -> None:
        """Record that user ``u`` belongs to partition ``part`` (its changelog partition)."""
        user_part = self._user_part
        if user_part.get(u) != part:
            old = user_part.get(u)
            if old is not None:
                self._part_users.get(old, set()).discard(u)
            user_part[u] = part
            self._part_users.setdefault(part, set()).add(u)

    def _run(self, windows: list[FeatureWindow], index: list[int], dead: list[DeadLetter], batch: RawBatch) -> BatchResult:
        """The pipeline over ``windows``; if it raises, every user's state goes back to before
        the batch and the windows run one at a time, a failing one dead-lettered
        (``processing_error``) with its user's state as before it."""
        users = self.states.users
        snaps: dict[str, Snapshot | None] = {}
        for w in windows:
            u = w.user_id
            if u not in snaps:
                st = users.get(u)
                snaps[u] = None if st is None else st.snapshot()
        try:
            return self.pipeline.process(windows, self.states)
        except Exception:  # noqa: BLE001 - isolate the record that caused it, below
            if self.pipeline.learner is not None:
                self.pipeline.learner.take_decisions()  # undone below with the states
        for u, snap in snaps.items():
            self._undo(u, snap)
        preds = PredictionColumns()
        skipped: list[tuple[FeatureWindow, str]] = []
        timings: dict[str, float] = {}
        for i, w in zip(index, windows):
            st = users.get(w.user_id)
            snap = None if st is None else st.snapshot()
            try:
                r = self.pipeline.process([w], self.states)
            except Exception as exc:  # noqa: BLE001
                self._undo(w.user_id, snap)
                dead.append(_dead(batch, i, "processing_error", _error_detail(exc)))
                continue
            preds.extend(r.columns)
            skipped += r.skipped
            for k, v in r.timings.items():
                timings[k] = timings.get(k, 0.0) + v
        return BatchResult(preds, timings, skipped)

    def _undo(self, u: str, snap: Snapshot | None) -> None:
        if snap is None:  # the user had no state before: none now either
            self._forget_user(u)
        else:
            self.states.get(u).restore(snap)

    # --- checkpoint ----------------------------------------------------------------------------
    def checkpoint(self, only: list[int] | None = None, now_s: int = 0) -> CheckpointData:
        """Serialized state of every user changed since the last checkpoint, and tombstones for
        users forgotten now: not seen for ``state_retention_s`` (processing time), the least
        recently seen beyond ``max_state_users``, or a state too large to write.

        Forgetting never looks at another user's event time, so no window, however far in the
        future, can evict anyone else."""
        dirty = self.states.take_dirty()
        ledger = self._blocks
        ledger.begin()
        evicted, counts, block_tombs = self._evict(only, now_s, dirty)
        updates: list[tuple[int, bytes, bytes]] = []
        max_rec = self._max_record
        oversize = 0
        for u in dirty:
            st = self.states.users.get(u)
            part = self._user_part.get(u)
            if st is None or part is None or u in evicted:
                continue
            key = _key(u)
            if st.learn is None:
                value, size = st.to_bytes(), 0
            else:  # sealed blocks first, then the record naming them, then deletes
                blocks, sealed, gone = ledger.plan(key, part, st.learn)
                value, size = st.to_bytes(sealed), sum(len(r) * BLOCK_BYTES[t] for t, r in sealed.items())
                updates += blocks
                block_tombs += gone
            if max_rec is not None and len(key) + len(value) > max_rec:
                evicted[u] = part
                block_tombs += ledger.retire(key, part)
                self._forget_user(u)
                oversize += 1
                continue
            updates.append((part, key, value))
            self._note_size(u, st, size + len(value))
        self._in_checkpoint = dirty
        for u, part in list(self._tombs_again.items()):
            if only is None or part in only:
                del self._tombs_again[u]
                if u not in self.states.users:  # back meanwhile: its new state is written instead
                    evicted.setdefault(u, part)
        self._tombs_in_checkpoint = evicted
        tombs = [(part, _key(u)) for u, part in evicted.items()] + block_tombs + ledger.take_stale(only)
        if oversize:
            counts["oversize"] = oversize
        unreadable, self.states.unreadable = self.states.unreadable, []
        return CheckpointData(updates, tombs, len(self.states), self.state_bytes(), counts, unreadable)

    def checkpoint_failed(self) -> None:
        """The changelog of the last checkpoint was not acknowledged: write it again next time."""
        self.states.dirty |= {u for u in self._in_checkpoint if u in self.states.users}
        self._in_checkpoint = set()
        self._tombs_again.update(self._tombs_in_checkpoint)
        self._tombs_in_checkpoint = {}
        self._blocks.failed()

    def _evict(self, only: list[int] | None, now_s: int, dirty: set[str]) -> tuple[dict[str, int], dict[str, int], list[tuple[int, bytes]]]:
        """Forget the users :func:`choose_forgotten` picks (the retention sweep at most every
        :data:`SWEEP_INTERVAL_S`); returns ``user -> partition`` to tombstone, counts and the
        tombstones of their ring blocks."""
        sweep = now_s >= self._next_sweep
        if sweep and only is None:
            self._next_sweep = now_s + SWEEP_INTERVAL_S
        lim = self.limits
        out, counts = choose_forgotten(
            self.states.users, self._user_part, dirty, now_s=now_s, retention_s=lim.state_retention_s if sweep else 0.0, capacity=lim.max_state_users, only=only
        )
        block_tombs = []
        for u, part in out.items():
            block_tombs += self._blocks.retire(_key(u), part)
            self._forget_user(u)
        return out, counts, block_tombs

    def _forget_user(self, u: str) -> None:
        part = self._user_part.pop(u, None)
        if part is not None:
            self._part_users.get(part, set()).discard(u)
        self.states.drop(u)
        self._learn_bytes -= self._learn_size.pop(u, 0)
        self._last_value.pop(u, None)
        self._last_labels.pop(u, None)
        self._personal.discard(u)
        self._blocks.drop(_key(u))
        if self.pipeline.learner is not None:
            self.pipeline.learner.forget(u)

    # --- rebalance -----------------------------------------------------------------------------
    def release(self, partitions: list[int], durable: bool) -> int:
        """Forget the users of revoked ``partitions``. With ``durable`` (the checkpoint before
        the revoke succeeded) users whose state is in the changelog are parked: reused without a
        restore if the partition comes back in the next assignment. Returns users parked."""
        parked = 0
        gone = set(partitions)
        self._tombs_again = {u: p for u, p in self._tombs_again.items() if p not in gone}
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

    def adopt(self, records: list[tuple[int, bytes, bytes | None]], now_s: int = 0) -> tuple[int, list[str]]:
        """Install restored states ``(partition, key, value)``, a changelog chunk after the
        other in offset order (a later value replaces an earlier one; a tombstone, value None,
        forgets the user). Returns the number of values installed and the errors of unreadable
        records."""
        n = 0
        restore = self.states.restore
        errors = []
        buf = self._restored_blocks
        states = []
        for part, key, value in records:  # the chunk's blocks first: a state record's blocks precede it
            bk = parse_block_key(key)
            if bk is None:
                states.append((part, key, value))
                continue
            mine = buf.setdefault(bk[0], {})
            if value is None:
                mine.pop((bk[1], bk[2]), None)
            else:
                mine[(bk[1], bk[2])] = (part, value)
        for part, key, value in states:
            u = key.decode("utf-8", "surrogatepass")
            if value is None:
                if u in self.states.users:
                    self._forget_user(u)
                continue
            mine = buf.get(key, {})
            try:
                st = restore(u, value, part, now_s, {tb: v for tb, (_p, v) in mine.items()} if mine else None)
            except StateFormatError as exc:
                errors.append(f"partition {part}: {exc}")
                continue
            self._own_state(u, st, part)
            named = {} if st.learn is None else st.learn.sealed()
            self._note_size(u, st, len(value) + sum(len(r) * BLOCK_BYTES[t] for t, r in named.items()))
            n += 1
        return n, errors

    def adopted(self, partitions: list[int]) -> int:
        """``partitions`` are restored (every chunk adopted): block records their users' states
        do not name are deleted at the next checkpoint (left by a crash mid-checkpoint). Returns
        how many."""
        buf, stale, known, n = self._restored_blocks, self._blocks.stale, self._blocks.known, 0
        mine_parts = set(partitions)
        for user_key in list(buf):
            blocks = buf[user_key]
            ranges = known.get(user_key, {})
            for (t, b), (part, _v) in list(blocks.items()):
                if part in mine_parts:
                    del blocks[(t, b)]
                    if b not in ranges.get(t, (range(0), range(0)))[1]:
                        stale[(part, block_key(user_key, t, b))] = None
                        n += 1
            if not blocks:
                del buf[user_key]
        return n

    def _adopt(self, u: str, st: UserState, part: int) -> None:
        self.states.put(u, st)
        self._own_state(u, st, part)

    def _own_state(self, u: str, st: UserState, part: int) -> None:
        if st.learn is not None and st.learn.model is not None:
            self._personal.add(u)
        self._blocks.restored(_key(u), st.learn)
        self._user_part[u] = part
        members = self._part_users.get(part)
        if members is None:
            members = self._part_users[part] = set()
        members.add(u)

    def _note_size(self, u: str, st: UserState, value_len: int) -> None:
        """Keep the learning share of :meth:`state_bytes` (a deferred state has ``learn`` None)."""
        if st.learn is not None:
            self._learn_bytes += value_len - self._learn_size.get(u, 0)
            self._learn_size[u] = value_len
        elif u in self._learn_size:
            self._learn_bytes -= self._learn_size.pop(u)

    def state_bytes(self) -> int:
        """Estimated heap of the user state held (``taskclf_state_bytes``; ``docs/state.md``):
        :data:`USER_HEAP_BYTES` per user in memory or parked, plus the changelog value length of
        each user with learning state (as of its last checkpoint or restore)."""
        parked = sum(len(k) for k in self._parked.values())
        return (len(self.states) + parked) * USER_HEAP_BYTES + self._learn_bytes

    def stats(self) -> ShardStats:
        return ShardStats(len(self.states), self.state_bytes(), sorted(self._parked))

    def drift_counts(self) -> DriftCounts | None:
        """This shard's drift window summarised; None when drift is off or nothing was seen yet."""
        return None if self._drift is None else self._drift.counts()

    # --- hot reload ----------------------------------------------------------------------------
    def swap_pipeline(self, pipeline: InferencePipeline) -> str:
        """Run the next batches with ``pipeline`` (a hot reload): every user's state is kept, so
        it must read that state as the running one does (same schema, same smoothing window).
        Returns the new bundle id."""
        old = self.pipeline
        if (pipeline.bundle.schema_hash, pipeline.config.smooth_window) != (old.bundle.schema_hash, old.config.smooth_window):
            raise ValueError(f"cannot swap in bundle {pipeline.bundle.bundle_id}: its schema or smoothing window differs from the running one")
        if old.learner is not None and pipeline.learner is not None:
            pipeline.learner.adopt_fits(old.learner)
        self.pipeline = pipeline
        self._background_refits(pipeline)
        return pipeline.bundle.bundle_id

    def _background_refits(self, pipeline: InferencePipeline) -> None:
        learner = pipeline.learner
        if learner is not None and learner.executor is None:
            if self._refits_pool is None:
                self._refits_pool = ThreadPoolExecutor(1, thread_name_prefix="taskclf-refit")
            learner.executor = self._refits_pool

    # --- the HTTP API --------------------------------------------------------------------------
    def user_info(self, user_id: str) -> UserInfo | None:
        """What this shard holds about ``user_id``; None if the user is not in memory."""
        st = self.states.users.get(user_id)
        part = self._user_part.get(user_id)
        if st is None or part is None:
            return None
        store = self.pipeline.store
        if store is None:
            scope, kind, method = "none", "identity", None
        else:
            cal, scope = store.get(user_id)
            kind, method = cal.kind, store.method
        last_ts = None if st.last_ts_us is None else format_ts_us(st.last_ts_us)
        labels = tuple(self._last_labels.get(user_id, ()))
        learner = self.pipeline.learner
        prof = None if learner is None else learner.profile(self.states, user_id)
        if prof is not None and st.learn is not None and st.learn.model is not None:
            scope, kind = "user", st.learn.model.kind
        return UserInfo(user_id, part, st.windows_seen, last_ts, scope, kind, method, labels, self._last_value.get(user_id), prof)
