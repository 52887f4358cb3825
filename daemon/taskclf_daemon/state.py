"""Per-user online state: the compact replacement for taskclf's per-process objects.

One :class:`UserState` per ``user_id`` holds what taskclf's ``OnlineFeatureState`` (15-row buffer,
dynamics tracker, session start) and ``OnlinePredictor`` (smoothing deque) keep. No I/O here.

Lean (``docs/state.md``): the history and the smoothing labels are compact
(:mod:`taskclf_daemon.state_columns`: ~1.5 KB of heap a full user instead of ~5.6 KB), and a user
restored from the changelog is decoded on first use (:meth:`UserState.restored`): until then it
holds its changelog value, so a restore costs little more than reading the partition. The
changelog value itself is unchanged.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from typing import TYPE_CHECKING

import orjson

from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.pipeline.evidence import LearnConfig, UserLearning
from taskclf_daemon.pipeline.label_requests import AskBudget
from taskclf_daemon.state_columns import NULL, History, HistoryEntry, LabelRing

__all__ = ["NULL", "STATE_FORMAT", "USER_HEAP_BYTES", "History", "HistoryEntry", "LabelRing", "Snapshot", "StateFormatError", "StateStore", "UserState"]

#: version of the serialized user state (changelog value); bump on incompatible change.
#: 2 added the partition of ``last_offset`` (``p``) and the processing-time second the user was
#: last seen (``k``); 3 adds the learning state (``L``: recent windows, label spans, evidence,
#: personal model; :class:`~taskclf_daemon.pipeline.evidence.UserLearning`). A user without
#: learning state is still written as format 2 (the same bytes as before, readable by older
#: builds); versions 1 and 2 are still read (see :meth:`UserState.from_bytes`).
STATE_FORMAT = 3
_BASE_FORMAT = 2
_READABLE = (1, 2, 3)
#: estimated Python heap of one user in a shard: a decoded state with a full 15-row history and
#: its entries in the shard's maps (user -> state, partition, partition -> users), measured with
#: tracemalloc by ``scripts/bench_state.py`` (``shard_heap_bytes_per_user``) and checked by
#: ``tests/test_state_memory.py``; the base of the ``taskclf_state_bytes`` gauge
USER_HEAP_BYTES = 1650
#: every field of a user state
_FIELDS = ("history", "session_start_us", "smooth", "last_ts_us", "windows_seen", "last_offset", "last_partition", "seen_s", "learn", "asks")
#: what a deferred state decodes (it has ``seen_s`` and ``learn`` from the start)
_DECODED = frozenset(_FIELDS) - {"seen_s", "learn"}


class StateFormatError(ValueError):
    """A serialized user state that this version cannot read."""


#: what :meth:`UserState.snapshot` returns: every field, the history's columns and the labels as
#: plain copies (``(ts, apps, keys, clicks, mouse)``, the labels and their ``maxlen``), the learning
#: state's own snapshot, the ask budget as ``(day, asked)``. Plain copies, not objects: one is
#: taken per user per batch and almost never restored, so :meth:`UserState.restore` rebuilds.
Snapshot = tuple[
    "tuple[array[int], list[str], array[float], array[float], array[float]]",
    int | None, list[int], int, int | None, int, int, int, int, UserLearning | None, tuple[object, ...] | None, tuple[int, int] | None,
]


class UserState:
    """Rolling state of one user. Mutated only by the pipeline, in the user's window order.

    A state made by :meth:`StateStore.restore` may be *deferred* (a ``_Deferred``): it holds its
    changelog value (``_raw``) and its store, with only ``seen_s`` and ``learn`` (None) set;
    reading or writing any other field decodes it first, once. A value found unreadable then
    leaves the user empty and its error goes to ``StateStore.unreadable`` (reported like
    unreadable values at restore).
    """

    __slots__ = (*_FIELDS, "_raw", "_store")
    _store: StateStore  # set while deferred only

    def __init__(self, smooth_window: int) -> None:
        self.history = History()
        self.session_start_us: int | None = None
        self.smooth = LabelRing((), smooth_window)
        self.last_ts_us: int | None = None
        self.windows_seen = 0
        #: input offset of the last window applied (idempotent replays); -1 = none / unknown
        self.last_offset = -1
        #: input partition ``last_offset`` belongs to; -1 = none / unknown
        self.last_partition = -1
        #: processing time (epoch seconds) the user's last window was processed: memory and
        #: changelog retention only, never an input of an output
        self.seen_s = 0
        #: the learning loop's state (None: the user never met the learner; no cost, format 2)
        self.learn: UserLearning | None = None
        #: label requests asked on the current UTC day (None: never asked; no bytes written)
        self.asks: AskBudget | None = None
        #: the changelog value of a deferred state (None: decoded)
        self._raw: bytes | None = None

    @classmethod
    def deferred_from(cls, data: bytes, store: StateStore) -> UserState | None:
        """A deferred state of ``data`` (see the class docstring), or None when it must be
        decoded now: another format than 2 (format 1 needs the partition and time it was
        read at; an unknown version must fail now, as it always did), learning state (the
        shard needs ``learn`` at once), or ``k`` not where this build writes it. Only ``k``
        (``seen_s``) is read: forgetting needs it without a decode."""
        if not data.startswith(b'{"v":2,') or b'"L":' in data:
            return None
        i = data.find(b',"k":')
        end = data.find(b",", i + 5)
        tail = data[i + 5 : len(data) - 1 if end < 0 else end]
        if i < 0 or not tail.isdigit():
            return None
        st = UserState.__new__(UserState)
        st.seen_s = int(tail)
        st.learn = None
        st._raw = data
        st._store = store
        st.__class__ = _Deferred  # (plain slot stores first: _Deferred's __setattr__ is Python)
        return st

    @property
    def deferred(self) -> bool:
        """Still holding its changelog value (not decoded yet)."""
        return self._raw is not None

    def snapshot(self) -> Snapshot:
        """Everything :meth:`restore` needs to undo later changes (cheap: six slices, ~0.5 us)."""
        h, smooth, learn, asks = self.history, self.smooth, self.learn, self.asks
        return (
            (h.ts[:], h.apps[:], h.keys[:], h.clicks[:], h.mouse[:]),
            self.session_start_us, smooth[:], smooth.maxlen, self.last_ts_us, self.windows_seen, self.last_offset, self.last_partition, self.seen_s,
            learn, None if learn is None else learn.snapshot(), None if asks is None else (asks.day, asks.asked),
        )  # fmt: skip

    def restore(self, snap: Snapshot) -> None:
        """The state as it was at ``snap`` (new objects: ``snap`` itself is left as it is)."""
        (cols, self.session_start_us, labels, maxlen, self.last_ts_us, self.windows_seen, self.last_offset, self.last_partition, self.seen_s, self.learn, learn_snap, asks) = snap
        self.history = History.from_columns(*cols)
        self.smooth = LabelRing(labels, maxlen)
        self.asks = None if asks is None else AskBudget(*asks)
        if self.learn is not None and learn_snap is not None:
            self.learn.restore(learn_snap)

    def to_bytes(self, sealed: Mapping[str, range] | None = None) -> bytes:
        """The whole state as a versioned JSON document (the changelog value); ``sealed``: the
        learning state's sealed blocks, written as records of their own (see
        :meth:`UserLearning.to_obj`)."""
        d: dict[str, object] = {
            "v": _BASE_FORMAT if self.learn is None else STATE_FORMAT,
            "h": self.history.rows(),
            "s": self.session_start_us,
            "m": list(self.smooth),
            "w": self.smooth.maxlen,
            "t": self.last_ts_us,
            "n": self.windows_seen,
            "o": self.last_offset,
            "p": self.last_partition,
            "k": self.seen_s,
        }
        if self.learn is not None:
            d["L"] = self.learn.to_obj(sealed)
        if self.asks is not None:
            d["q"] = self.asks.to_obj()
        return orjson.dumps(d)

    @classmethod
    def from_bytes(cls, data: bytes, smooth_window: int, partition: int = -1, now_s: int = 0, learn_config: LearnConfig | None = None, blocks: Mapping[tuple[str, int], bytes] | None = None) -> UserState:
        """Inverse of :meth:`to_bytes`; the smoothing labels are resized to ``smooth_window``;
        ``blocks``: the learning state's sealed block records by (stream, number).

        A version-1 value has no partition or last-seen time: ``partition`` (the changelog
        partition it was read from, which is the input partition) and ``now_s`` stand in.

        :raises StateFormatError: unknown version or malformed document
        """
        try:
            d = orjson.loads(data)
            if not isinstance(d, dict) or d.get("v") not in _READABLE:
                raise StateFormatError(f"unsupported user state format {d.get('v') if isinstance(d, dict) else type(d).__name__!r} (this build reads {', '.join(map(str, _READABLE))})")
            st = cls.__new__(cls)
            st._raw = None
            st.history = History.from_rows(d["h"])
            st.session_start_us = _opt_int(d["s"])
            m = d["m"]
            st.smooth = LabelRing(m if set(map(type, m)) <= {int} else map(int, m), smooth_window)
            st.last_ts_us = _opt_int(d["t"])
            st.windows_seen = int(d["n"])
            st.last_offset = int(d["o"])
            st.last_partition = int(d.get("p", partition))
            st.seen_s = int(d.get("k", now_s))
            learn, asks = d.get("L"), d.get("q")
            st.learn = None if learn is None else UserLearning.from_obj(learn, learn_config or LearnConfig(), blocks)
            st.asks = None if asks is None else AskBudget.from_obj(asks)
            return st
        except StateFormatError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, ArtifactError) as exc:
            raise StateFormatError(f"malformed user state: {exc}") from None

    def resize_smoothing(self, smooth_window: int) -> None:
        if self._raw is not None:  # decoded later with its store's window
            return
        if self.smooth.maxlen != max(smooth_window, 1):
            self.smooth = LabelRing(self.smooth, smooth_window)


class _Deferred(UserState):
    """A :class:`UserState` still holding its changelog value (same layout). The first read of
    a field it lacks, or a write of one (other than ``seen_s`` and ``learn``, which it has),
    decodes it and turns it into a plain :class:`UserState`: no cost on the hot path after."""

    __slots__ = ()

    if not TYPE_CHECKING:  # (mypy would take any attribute name as valid)

        def __getattr__(self, name: str) -> object:
            if name not in _DECODED:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            self._decode()
            return getattr(self, name)

    def __setattr__(self, name: str, value: object) -> None:
        if name in _DECODED:
            self._decode()
        object.__setattr__(self, name, value)

    def _decode(self) -> None:
        data, store = self._raw, self._store
        assert data is not None
        try:
            full = UserState.from_bytes(data, store.smooth_window)
        except StateFormatError as exc:
            store.unreadable.append(str(exc))
            full = UserState(store.smooth_window)  # as a restore does with an unreadable value: empty
        object.__setattr__(self, "__class__", UserState)
        for name in _DECODED:
            setattr(self, name, getattr(full, name))
        self._raw = None
        del self._store


def _opt_int(x: object) -> int | None:
    if x is None:
        return None
    if type(x) is not int:
        raise TypeError(f"expected an integer or null, got {type(x).__name__}")
    return x


class StateStore:
    """``user_id -> UserState``, created on first sight; remembers which users changed."""

    def __init__(self, smooth_window: int) -> None:
        self.smooth_window = smooth_window
        self.users: dict[str, UserState] = {}
        #: users whose state changed since the last :meth:`take_dirty`
        self.dirty: set[str] = set()
        #: errors of deferred states found unreadable when first used (see :meth:`restore`)
        self.unreadable: list[str] = []

    def get(self, user_id: str) -> UserState:
        st = self.users.get(user_id)
        if st is None:
            st = self.users[user_id] = UserState(self.smooth_window)
        return st

    def reset(self, user_id: str) -> UserState:
        """Forget a user's history (e.g. after an idle gap longer than the TTL): the overlay,
        session and smoothing start empty; what the user taught (learning state, asks) stays."""
        old = self.users.get(user_id)
        st = self.users[user_id] = UserState(self.smooth_window)
        if old is not None:
            st.learn, st.asks = old.learn, old.asks
        self.dirty.add(user_id)
        return st

    def restore(self, user_id: str, data: bytes, partition: int = -1, now_s: int = 0, blocks: Mapping[tuple[str, int], bytes] | None = None) -> UserState:
        """Install ``user_id`` from its changelog value: deferred (decoded on first use, see
        :class:`UserState`) when possible, else decoded now (``partition`` and ``now_s`` stand
        in for what a format-1 value lacks, see :meth:`UserState.from_bytes`).

        :raises StateFormatError: unknown version, or a malformed value decoded now
        """
        st = UserState.deferred_from(data, self)
        if st is None:
            st = UserState.from_bytes(data, self.smooth_window, partition, now_s, blocks=blocks)
        self.users[user_id] = st
        return st

    def put(self, user_id: str, state: UserState) -> None:
        state.resize_smoothing(self.smooth_window)
        self.users[user_id] = state

    def drop(self, user_id: str) -> None:
        self.users.pop(user_id, None)
        self.dirty.discard(user_id)

    def take_dirty(self) -> set[str]:
        d, self.dirty = self.dirty, set()
        return d

    def __len__(self) -> int:
        return len(self.users)
