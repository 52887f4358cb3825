"""A user's learning state: recent windows, known label spans, labelled evidence, the model in force.

Lifecycle of a window (all in the user's event time, i.e. ``bucket_start_ts`` of its windows):

1. applied by the pipeline -> its raw probabilities and head extras enter the **recent ring**
   (float32, 64 bytes) -- at most :attr:`LearnConfig.ring_cap` windows;
2. **finalised** once the user's newest window is ``label_wait_s`` (default 1 h) past its end,
   or when it is pushed out of the full ring: it is labelled from the **known spans** by
   strict containment (:func:`~taskclf_daemon.pipeline.labelspan.window_label`) and, if
   labelled, appended to the **evidence** (newest :attr:`LearnConfig.evidence_cap` = 2,000
   kept). A span must therefore arrive within the bounded wait after its windows (or any time
   before them); a later one finds its windows finalised and labels nothing.

Known spans are kept (at most ``max_spans``, the ones ending last) until no unfinalised window
can overlap them; an identical span delivered twice (at-least-once) counts once.

Serialisation (:meth:`UserLearning.to_obj`, a JSON object inside the user state): timestamps
int64 and labels uint8 and features float32, little-endian, base64 -- deterministic and compact
(~100 bytes per evidence window: ~200 KB at the cap). Values are float32 from the moment they
enter the ring, so a restored state is exactly the state that was written.
"""

from __future__ import annotations

import base64
import bisect
import itertools
import struct
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from taskclf_daemon.labels import DEFAULT_BUCKET_SECONDS, N_LABELS
from taskclf_daemon.pipeline.head_features import N_EXTRAS
from taskclf_daemon.pipeline.labelspan import LabelSpan
from taskclf_daemon.pipeline.personal_model import PersonalModel
from taskclf_daemon.pipeline.personalize import Evidence

WIDTH = N_LABELS + N_EXTRAS
_F32 = np.dtype("<f4")
_I64 = np.dtype("<i8")
#: In the changelog, the older parts of a user's recent ring and evidence are records of their
#: own -- sealed blocks, written once, deleted once no longer held -- so a user's state record
#: carries only the newest windows of each (see :meth:`UserLearning.to_obj`): the ring in blocks
#: of RING_BLOCK windows (stream ``r``), the evidence in blocks of EVIDENCE_BLOCK labelled windows
#: (stream ``e``).
RING_BLOCK = 8
EVIDENCE_BLOCK = 32
BLOCK_SIZES = {"r": RING_BLOCK, "e": EVIDENCE_BLOCK}
_MAGIC = {"r": b"TCRB\x01", "e": b"TCEB\x01"}
_NAME = {"r": "ring", "e": "evidence"}
#: bytes per item of a block record: time (int64) [+ label (uint8)] + values (float32)
_ITEM = {"r": 8 + WIDTH * 4, "e": 8 + 1 + WIDTH * 4}
#: bytes of a full block record value, per stream
BLOCK_BYTES = {t: len(_MAGIC[t]) + 8 + BLOCK_SIZES[t] * _ITEM[t] for t in BLOCK_SIZES}
# journal entries: (code,) or (code, item); the code says how to undo the change
_RING_POP = ("rp",)  # a window was appended: pop it
_RING_PUSH_LEFT = "ra"  # (code, item): a window was popped from the left: put it back
_EV_POP = ("ep",)  # a labelled window was appended: pop it
_EV_PUSH_LEFT = "ea"  # (code, item): the oldest labelled window was dropped: put it back


@dataclass(frozen=True)
class LearnConfig:
    #: labelled windows kept per user (newest); the refit's evidence
    evidence_cap: int = 2000
    #: unfinalised windows kept per user (bounds memory when a user's labels never come)
    ring_cap: int = 120
    #: how long (event time) a window waits for its label span before it is finalised
    label_wait_s: float = 3600.0
    #: known label spans kept per user
    max_spans: int = 64
    bucket_seconds: int = DEFAULT_BUCKET_SECONDS
    #: refit after this many new labelled windows (once eligible) ...
    refit_every: int = 200
    #: ... or when this much event time passed since the last refit (taskclf's 7-day cadence)
    refit_days: float = 7.0
    #: a refit started at a user's window is in force from the user's window this many windows
    #: later (the fit runs meanwhile, off the batch; 1 = the next window)
    adopt_lag: int = 10

    #: a window is finalised once the user's newest window starts this much later (derived)
    wait_us: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "wait_us", int(self.label_wait_s * 1_000_000) + self.bucket_seconds * 1_000_000)


class PendingRefit(NamedTuple):
    """A refit started at a window of the user and not yet in force.

    The candidates are fitted on the evidence as it was at the trigger (the items numbered
    ``labels - n_evidence .. labels - 1`` in the order they were labelled: kept, even past the
    cap, until the refit is applied) against ``in_force`` then; the decision takes effect at the
    user's window number ``at`` (counted by :attr:`UserLearning.windows`), whatever the refit's
    wall time -- so a replay applies it at the same window, and a restart (where the fit in
    flight is lost) fits the same evidence again."""

    at: int
    ts_us: int
    labels: int
    n_evidence: int


class UserLearning:
    """Mutated only by :class:`~taskclf_daemon.pipeline.learner.Learner`, in the user's order.

    Undo (the shard re-runs a failed batch window by window): :meth:`snapshot` is O(1) -- it
    starts a journal of the ring and evidence changes that :meth:`restore` plays back; the
    spans list is replaced, never changed in place."""

    __slots__ = ("ring", "spans", "evidence", "labels_total", "labels_at_fit", "last_fit_us", "last_ts_us", "model", "decision", "eligible", "windows", "pending", "_log")

    def __init__(self, cfg: LearnConfig) -> None:
        self.ring: deque[tuple[int, bytes]] = deque()
        self.spans: list[LabelSpan] = []
        self.evidence: deque[tuple[int, int, bytes]] = deque()
        self.labels_total = 0
        self.labels_at_fit = 0
        self.last_fit_us: int | None = None
        self.last_ts_us: int | None = None
        #: the adopted personal model (None: the global calibrator is in force)
        self.model: PersonalModel | None = None
        #: the last refit's decision JSON (what the HTTP API shows)
        self.decision: dict[str, Any] | None = None
        #: the evidence passed eligibility at the last check (cheap re-check gate)
        self.eligible = False
        #: windows applied since the learning state began (the clock of :class:`PendingRefit`)
        self.windows = 0
        #: the refit started and not yet in force
        self.pending: PendingRefit | None = None
        #: undo journal since the last :meth:`snapshot` (None: not journaling)
        self._log: list[tuple[Any, ...]] | None = None

    # --- spans and windows -------------------------------------------------------------------
    def add_span(self, span: LabelSpan, cfg: LearnConfig) -> bool:
        """Remember a span; False when it is a duplicate or too old to label any window."""
        if span in self.spans:
            return False
        if self.last_ts_us is not None and span.end_us <= self._finalised_before():
            return False
        keys = [(s.start_us, s.end_us) for s in self.spans]
        at = bisect.bisect_right(keys, (span.start_us, span.end_us))
        spans = [*self.spans[:at], span, *self.spans[at:]]
        if len(spans) > cfg.max_spans:
            drop = min(range(len(spans)), key=lambda i: (spans[i].end_us, i))
            del spans[drop]
        self.spans = spans
        return True

    def _finalised_before(self) -> int:
        """Windows starting before this instant are finalised (or will be at once)."""
        assert self.last_ts_us is not None
        return self.ring[0][0] if self.ring else self.last_ts_us + 1

    def add_window(self, user_id: str, ts_us: int, blob: bytes, cfg: LearnConfig) -> int:
        """Record an applied window (``blob``: its raw probabilities and head extras as
        little-endian float32, :data:`WIDTH` values); finalise what is due. Returns labelled
        windows added. Spans no window can meet any more stay until :meth:`prune_spans`."""
        added = 0
        ring, log = self.ring, self._log
        while len(ring) >= cfg.ring_cap:
            added += self._finalise(user_id, self._pop_ring(), cfg)
        ring.append((ts_us, blob))
        if log is not None:
            log.append(_RING_POP)
        self.windows += 1
        last = self.last_ts_us
        if last is None or ts_us > last:
            last = self.last_ts_us = ts_us
        horizon = last - cfg.wait_us
        while ring and ring[0][0] <= horizon:
            item = ring.popleft()
            if log is not None:
                log.append((_RING_PUSH_LEFT, item))
            if self.spans:
                added += self._finalise(user_id, item, cfg)
        return added

    def prune_spans(self) -> None:
        """Drop the spans that end before every unfinalised window (they can label nothing)."""
        spans = self.spans
        if spans and self.last_ts_us is not None:
            cut = self._finalised_before()
            if min(s.end_us for s in spans) <= cut:
                self.spans = [s for s in spans if s.end_us > cut]

    def _pop_ring(self) -> tuple[int, bytes]:
        item = self.ring.popleft()
        if self._log is not None:
            self._log.append((_RING_PUSH_LEFT, item))
        return item

    def _finalise(self, user_id: str, item: tuple[int, bytes], cfg: LearnConfig) -> int:
        ts, blob = item
        if not self.spans:
            return 0
        # window_label's strict containment, over the spans sorted by start (stop at the first
        # span starting after the window)
        end = ts + cfg.bucket_seconds * 1_000_000
        lab: int | None = None
        for s in self.spans:
            if s.start_us >= end:
                break
            if s.end_us <= ts or not (s.user_id is None or s.user_id == user_id):
                continue
            if lab is not None or not (s.start_us <= ts and end <= s.end_us):
                return 0
            lab = s.label
        if lab is None:
            return 0
        self.evidence.append((ts, lab, blob))
        log = self._log
        if log is not None:
            log.append(_EV_POP)
        self.labels_total += 1
        if self.pending is None:
            self.trim_evidence(cfg)
        return 1

    def trim_evidence(self, cfg: LearnConfig) -> None:
        """Keep the newest ``evidence_cap`` labelled windows (not while a refit is pending:
        it may still need older ones)."""
        ev, log = self.evidence, self._log
        while len(ev) > cfg.evidence_cap:
            item = ev.popleft()
            if log is not None:
                log.append((_EV_PUSH_LEFT, item))

    def evidence_arrays(self, items: Iterable[tuple[int, int, bytes]] | None = None) -> Evidence:
        ev = list(self.evidence if items is None else items)
        n = len(ev)
        ts = np.fromiter((e[0] for e in ev), dtype=np.int64, count=n)
        y = np.fromiter((e[1] for e in ev), dtype=np.int64, count=n)
        vals = np.frombuffer(b"".join(e[2] for e in ev), dtype=_F32).astype(np.float64).reshape(n, WIDTH)
        return Evidence(ts, y, vals[:, :N_LABELS], vals[:, N_LABELS:])

    def pending_evidence(self) -> Evidence:
        """The evidence the pending refit fits (as it was at the trigger)."""
        p = self.pending
        assert p is not None
        first = (p.labels - p.n_evidence) - (self.labels_total - len(self.evidence))
        if first < 0:
            raise ValueError("the pending refit's evidence is no longer held")
        return self.evidence_arrays(itertools.islice(self.evidence, first, first + p.n_evidence))

    def due(self, ts_us: int, cfg: LearnConfig) -> bool:
        """Whether a refit is due now (eligibility is checked by the caller)."""
        if self.pending is not None:
            return False
        new = self.labels_total - self.labels_at_fit
        if self.last_fit_us is None:
            return new > 0 and len(self.evidence) >= 1
        return new >= cfg.refit_every or (new > 0 and ts_us - self.last_fit_us >= cfg.refit_days * 86_400_000_000)

    # --- undo (the shard re-runs a failed batch window by window) -----------------------------
    def snapshot(self) -> tuple[Any, ...]:
        log: list[tuple[Any, ...]] = []
        self._log = log
        return (log, self.spans, self.labels_total, self.labels_at_fit, self.last_fit_us, self.last_ts_us, self.model, self.decision, self.eligible, self.windows, self.pending)

    def restore(self, snap: tuple[Any, ...]) -> None:
        log: list[tuple[Any, ...]] = snap[0]
        if self._log is None or log is not self._log:
            raise RuntimeError("restore() must get the latest snapshot() of this learning state")
        ring, ev = self.ring, self.evidence
        for op in reversed(log):
            code = op[0]
            if code == _RING_POP[0]:
                ring.pop()
            elif code == _RING_PUSH_LEFT:
                ring.appendleft(op[1])
            elif code == _EV_POP[0]:
                ev.pop()
            else:
                ev.appendleft(op[1])
        log.clear()
        (_, self.spans, self.labels_total, self.labels_at_fit, self.last_fit_us, self.last_ts_us, self.model, self.decision, self.eligible, self.windows, self.pending) = snap

    # --- sealed blocks (the shard writes them as changelog records of their own) -------------
    def ring_first(self) -> int:
        """Number (0-based, counted by :attr:`windows`) of the oldest window in the ring."""
        return self.windows - len(self.ring)

    def evidence_first(self) -> int:
        """Number (0-based, counted by :attr:`labels_total`) of the oldest evidence window."""
        return self.labels_total - len(self.evidence)

    def sealed(self) -> dict[str, range]:
        """Per stream, the blocks that are full and still hold something: ring block ``b`` =
        windows ``b * RING_BLOCK`` .. ``+ RING_BLOCK - 1`` (some may be finalised already),
        evidence block ``b`` = labelled windows ``b * EVIDENCE_BLOCK`` .. likewise."""
        return {
            "r": range(self.ring_first() // RING_BLOCK, self.windows // RING_BLOCK),
            "e": range(self.evidence_first() // EVIDENCE_BLOCK, self.labels_total // EVIDENCE_BLOCK),
        }

    def block_value(self, stream: str, b: int) -> bytes:
        """Block ``b`` of ``stream``, the items still held: magic, number of the first (int64),
        times (int64), [labels (uint8),] values (float32); little-endian."""
        size = BLOCK_SIZES[stream]
        first, end, items = (self.ring_first(), self.windows, self.ring) if stream == "r" else (self.evidence_first(), self.labels_total, self.evidence)
        lo, hi = max(b * size, first), (b + 1) * size
        if not lo < hi <= end:
            raise ValueError(f"{_NAME[stream]} block {b} is not sealed or holds nothing")
        got: list[Any] = list(itertools.islice(items, lo - first, hi - first))
        head = _MAGIC[stream] + _int64s([lo, *[x[0] for x in got]])
        if stream == "e":
            head += bytes([x[1] for x in got])
        return head + b"".join([x[-1] for x in got])

    # --- serialisation -----------------------------------------------------------------------
    def to_obj(self, sealed: Mapping[str, range] | None = None) -> dict[str, Any]:
        """The state as a JSON object. ``sealed``: the blocks (:meth:`sealed`, written with
        :meth:`block_value`) kept as records of their own: the object then holds only the items
        after them and names them (``r0``/``bk``: the ring's first window number and blocks,
        ``e0``/``ek``: the evidence's)."""
        ring: list[Any] | deque[Any] = self.ring
        ev: list[Any] | deque[Any] = self.evidence
        ext: dict[str, Any] = {}
        if sealed is not None:
            if dict(sealed) != self.sealed():
                raise ValueError("the sealed blocks given are not the state's")
            if sealed["r"]:
                first = self.ring_first()
                ring = list(itertools.islice(ring, sealed["r"].stop * RING_BLOCK - first, None))
                ext.update(r0=first, bk=[sealed["r"].start, sealed["r"].stop])
            if sealed["e"]:
                first = self.evidence_first()
                ev = list(itertools.islice(ev, sealed["e"].stop * EVIDENCE_BLOCK - first, None))
                ext.update(e0=first, ek=[sealed["e"].start, sealed["e"].stop])
        return {
            "rt": _b64(_int64s([r[0] for r in ring])),
            "rb": _b64(b"".join([r[1] for r in ring])),
            "et": _b64(_int64s([e[0] for e in ev])),
            "el": _b64(bytes([e[1] for e in ev])),
            "eb": _b64(b"".join([e[2] for e in ev])),
            **ext,
            "s": [[s.start_us, s.end_us, s.label, s.provenance, s.user_id, s.confidence, s.extend_forward] for s in self.spans],
            "n": self.labels_total,
            "nf": self.labels_at_fit,
            "lf": self.last_fit_us,
            "lt": self.last_ts_us,
            "g": self.eligible,
            "m": None if self.model is None else self.model.to_json(),
            "d": self.decision,
            "w": self.windows,
            "p": None if self.pending is None else list(self.pending),
        }

    @classmethod
    def from_obj(cls, d: Any, cfg: LearnConfig, blocks: Mapping[tuple[str, int], bytes] | None = None) -> UserLearning:
        """Inverse of :meth:`to_obj`, ``blocks`` the block records by (stream, number) (needed
        when the object names some); raises ValueError/KeyError/TypeError when malformed."""
        if not isinstance(d, dict):
            raise TypeError("learning state must be an object")
        st = cls(cfg)
        step = WIDTH * 4
        for stream, first_key, range_key, into in (("r", "r0", "bk", st.ring), ("e", "e0", "ek", st.evidence)):
            if d.get(range_key) is not None:
                first, (b0, b1) = int(d[first_key]), d[range_key]
                for b in range(int(b0), int(b1)):
                    v = (blocks or {}).get((stream, b))
                    if v is None:
                        raise ValueError(f"{_NAME[stream]} block {b} of the learning state is missing from the changelog")
                    into.extend(_block_items(stream, v, b, first))
        rt = np.frombuffer(_unb64(d["rt"]), dtype=_I64).tolist()
        rb = _unb64(d["rb"])
        if len(rb) != len(rt) * step:
            raise ValueError("learning state arrays do not fit together")
        st.ring.extend((t, rb[i * step : (i + 1) * step]) for i, t in enumerate(rt))
        et = np.frombuffer(_unb64(d["et"]), dtype=_I64).tolist()
        el = _unb64(d["el"])
        eb = _unb64(d["eb"])
        if len(el) != len(et) or len(eb) != len(et) * step:
            raise ValueError("learning state arrays do not fit together")
        st.evidence.extend((t, el[i], eb[i * step : (i + 1) * step]) for i, t in enumerate(et))
        if any(e[1] >= N_LABELS for e in st.evidence):
            raise ValueError("an evidence label is out of range")
        st.spans = sorted((LabelSpan(int(a), int(b), int(c), str(p), None if u is None else str(u), None if f is None else float(f), bool(x)) for a, b, c, p, u, f, x in d["s"]), key=lambda s: (s.start_us, s.end_us))
        st.labels_total = int(d["n"])
        st.labels_at_fit = int(d["nf"])
        st.last_fit_us = None if d["lf"] is None else int(d["lf"])
        st.last_ts_us = None if d["lt"] is None else int(d["lt"])
        st.eligible = bool(d.get("g", False))
        st.model = None if d["m"] is None else PersonalModel.from_json(d["m"])
        st.decision = d["d"]
        st.windows = int(d.get("w", len(st.ring)))  # absent in the first format-3 states: no refit pending
        if (d.get("bk") is not None and st.ring_first() != int(d["r0"])) or st.windows < len(st.ring):
            raise ValueError("the ring does not fit the window count")
        if (d.get("ek") is not None and st.evidence_first() != int(d["e0"])) or st.labels_total < len(st.evidence):
            raise ValueError("the evidence does not fit the labelled window count")
        p = d.get("p")
        st.pending = None if p is None else PendingRefit(*(int(x) for x in p))
        if st.pending is not None and not 0 <= st.pending.labels - st.pending.n_evidence - (st.labels_total - len(st.evidence)) <= len(st.evidence) - st.pending.n_evidence:
            raise ValueError("the pending refit's evidence is not in the learning state")
        return st


def _block_items(stream: str, v: bytes, b: int, first: int) -> list[Any]:
    """The items numbered >= ``first`` of block record ``v`` (block ``b`` of ``stream``)."""
    magic, size, item = _MAGIC[stream], BLOCK_SIZES[stream], _ITEM[stream]
    if not v.startswith(magic) or (len(v) - len(magic) - 8) % item:
        raise ValueError(f"{_NAME[stream]} block {b}: not a {_NAME[stream]} block record")
    lo = int(np.frombuffer(v, dtype=_I64, count=1, offset=len(magic))[0])
    n = (len(v) - len(magic) - 8) // item
    start = max(b * size, first)
    if not b * size <= lo <= start or lo + n != (b + 1) * size:
        raise ValueError(f"{_NAME[stream]} block {b}: holds items {lo}..{lo + n - 1}, needs {start}..{(b + 1) * size - 1}")
    at = len(magic) + 8
    ts = np.frombuffer(v, dtype=_I64, count=n, offset=at).tolist()
    at += 8 * n
    w = WIDTH * 4
    if stream == "r":
        return [(ts[i], v[at + i * w : at + (i + 1) * w]) for i in range(start - lo, n)]
    labels, at = v[at : at + n], at + n
    return [(ts[i], labels[i], v[at + i * w : at + (i + 1) * w]) for i in range(start - lo, n)]


def _int64s(values: list[int]) -> bytes:
    """Little-endian int64s (``struct``: cheaper than numpy for a handful)."""
    return struct.pack(f"<{len(values)}q", *values)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: Any) -> bytes:
    if type(s) is not str:
        raise TypeError("expected a base64 string")
    return base64.b64decode(s, validate=True)
