"""Per-user online state: the compact replacement for taskclf's per-process objects.

One :class:`UserState` per ``user_id`` holds what taskclf's ``OnlineFeatureState`` (15-row buffer,
dynamics tracker, session start) and ``OnlinePredictor`` (smoothing deque) keep, as plain tuples:
no DataFrames, no pydantic rows. No I/O here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import NamedTuple

import orjson

from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.labels import HISTORY_ROWS
from taskclf_daemon.pipeline.evidence import LearnConfig, UserLearning
from taskclf_daemon.pipeline.label_requests import AskBudget

#: version of the serialized user state (changelog value); bump on incompatible change.
#: 2 added the partition of ``last_offset`` (``p``) and the processing-time second the user was
#: last seen (``k``); 3 adds the learning state (``L``: recent windows, label spans, evidence,
#: personal model; :class:`~taskclf_daemon.pipeline.evidence.UserLearning`). A user without
#: learning state is still written as format 2 (the same bytes as before, readable by older
#: builds); versions 1 and 2 are still read (see :meth:`UserState.from_bytes`).
STATE_FORMAT = 3
_BASE_FORMAT = 2
_READABLE = (1, 2, 3)


class StateFormatError(ValueError):
    """A serialized user state that this version cannot read."""


class HistoryEntry(NamedTuple):
    """What the overlay needs from one past window of the user."""

    ts_us: int
    app_id: str
    keys: float | None
    clicks: float | None
    mouse: float | None


#: what :meth:`UserState.snapshot` returns: every field, the deques copied (the learning state's own snapshot)
Snapshot = tuple[deque[HistoryEntry], int | None, deque[int], int | None, int, int, int, int, UserLearning | None, tuple[object, ...] | None, AskBudget | None]


class UserState:
    """Rolling state of one user. Mutated only by the pipeline, in the user's window order."""

    __slots__ = ("history", "session_start_us", "smooth", "last_ts_us", "windows_seen", "last_offset", "last_partition", "seen_s", "learn", "asks")

    def __init__(self, smooth_window: int) -> None:
        self.history: deque[HistoryEntry] = deque(maxlen=HISTORY_ROWS)
        self.session_start_us: int | None = None
        self.smooth: deque[int] = deque(maxlen=max(smooth_window, 1))
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

    def snapshot(self) -> Snapshot:
        """Everything :meth:`restore` needs to undo later changes (cheap: two deque copies)."""
        learn, asks = self.learn, self.asks
        learn_snap = None if learn is None else learn.snapshot()
        return (self.history.copy(), self.session_start_us, self.smooth.copy(), self.last_ts_us, self.windows_seen, self.last_offset, self.last_partition, self.seen_s, learn, learn_snap, None if asks is None else AskBudget(asks.day, asks.asked))

    def restore(self, snap: Snapshot) -> None:
        (self.history, self.session_start_us, self.smooth, self.last_ts_us, self.windows_seen, self.last_offset, self.last_partition, self.seen_s, self.learn, learn_snap, self.asks) = snap
        if self.learn is not None and learn_snap is not None:
            self.learn.restore(learn_snap)

    def to_bytes(self, sealed: Mapping[str, range] | None = None) -> bytes:
        """The whole state as a versioned JSON document (the changelog value); ``sealed``: the
        learning state's sealed blocks, written as records of their own (see
        :meth:`UserLearning.to_obj`)."""
        d: dict[str, object] = {
            "v": _BASE_FORMAT if self.learn is None else STATE_FORMAT,
            "h": [list(e) for e in self.history],
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
        """Inverse of :meth:`to_bytes`; the smoothing deque is resized to ``smooth_window``.

        A version-1 value has no partition or last-seen time: ``partition`` (the changelog
        partition it was read from, which is the input partition) and ``now_s`` stand in.

        :raises StateFormatError: unknown version or malformed document
        """
        try:
            d = orjson.loads(data)
            if not isinstance(d, dict) or d.get("v") not in _READABLE:
                raise StateFormatError(f"unsupported user state format {d.get('v') if isinstance(d, dict) else type(d).__name__!r} (this build reads {', '.join(map(str, _READABLE))})")
            st = cls(smooth_window)
            st.history.extend(HistoryEntry(int(h[0]), _str(h[1]), _opt_float(h[2]), _opt_float(h[3]), _opt_float(h[4])) for h in d["h"])
            st.session_start_us = _opt_int(d["s"])
            st.smooth.extend(int(x) for x in d["m"])
            st.last_ts_us = _opt_int(d["t"])
            st.windows_seen = int(d["n"])
            st.last_offset = int(d["o"])
            st.last_partition = int(d.get("p", partition))
            st.seen_s = int(d.get("k", now_s))
            if d.get("L") is not None:
                st.learn = UserLearning.from_obj(d["L"], learn_config or LearnConfig(), blocks)
            if d.get("q") is not None:
                st.asks = AskBudget.from_obj(d["q"])
            return st
        except StateFormatError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, ArtifactError) as exc:
            raise StateFormatError(f"malformed user state: {exc}") from None

    def resize_smoothing(self, smooth_window: int) -> None:
        if self.smooth.maxlen != max(smooth_window, 1):
            self.smooth = deque(self.smooth, maxlen=max(smooth_window, 1))


def _str(x: object) -> str:
    if type(x) is not str:
        raise TypeError(f"expected a string, got {type(x).__name__}")
    return x


def _opt_float(x: object) -> float | None:
    if x is None:
        return None
    if type(x) is int or type(x) is float:
        return float(x)
    raise TypeError(f"expected a number or null, got {type(x).__name__}")


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
