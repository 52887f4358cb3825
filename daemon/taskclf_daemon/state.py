"""Per-user online state: the compact replacement for taskclf's per-process objects.

One :class:`UserState` per ``user_id`` holds what taskclf's ``OnlineFeatureState`` (15-row buffer,
dynamics tracker, session start) and ``OnlinePredictor`` (smoothing deque) keep, as plain tuples:
no DataFrames, no pydantic rows. No I/O here.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import orjson

from taskclf_daemon.labels import HISTORY_ROWS

#: version of the serialized user state (changelog value); bump on incompatible change
STATE_FORMAT = 1


class StateFormatError(ValueError):
    """A serialized user state that this version cannot read."""


class HistoryEntry(NamedTuple):
    """What the overlay needs from one past window of the user."""

    ts_us: int
    app_id: str
    keys: float | None
    clicks: float | None
    mouse: float | None


class UserState:
    """Rolling state of one user. Mutated only by the pipeline, in the user's window order."""

    __slots__ = ("history", "session_start_us", "smooth", "last_ts_us", "windows_seen", "last_offset")

    def __init__(self, smooth_window: int) -> None:
        self.history: deque[HistoryEntry] = deque(maxlen=HISTORY_ROWS)
        self.session_start_us: int | None = None
        self.smooth: deque[int] = deque(maxlen=max(smooth_window, 1))
        self.last_ts_us: int | None = None
        self.windows_seen = 0
        #: input offset of the last window applied (idempotent replays); -1 = none / unknown
        self.last_offset = -1

    def to_bytes(self) -> bytes:
        """The whole state as a versioned JSON document (the changelog value)."""
        return orjson.dumps(
            {
                "v": STATE_FORMAT,
                "h": [list(e) for e in self.history],
                "s": self.session_start_us,
                "m": list(self.smooth),
                "w": self.smooth.maxlen,
                "t": self.last_ts_us,
                "n": self.windows_seen,
                "o": self.last_offset,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, smooth_window: int) -> UserState:
        """Inverse of :meth:`to_bytes`; the smoothing deque is resized to ``smooth_window``.

        :raises StateFormatError: unknown version or malformed document
        """
        try:
            d = orjson.loads(data)
            if not isinstance(d, dict) or d.get("v") != STATE_FORMAT:
                raise StateFormatError(f"unsupported user state format {d.get('v') if isinstance(d, dict) else type(d).__name__!r} (this build reads {STATE_FORMAT})")
            st = cls(smooth_window)
            st.history.extend(HistoryEntry(int(h[0]), str(h[1]), h[2], h[3], h[4]) for h in d["h"])
            st.session_start_us = d["s"]
            st.smooth.extend(int(x) for x in d["m"])
            st.last_ts_us = d["t"]
            st.windows_seen = int(d["n"])
            st.last_offset = int(d["o"])
            return st
        except StateFormatError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise StateFormatError(f"malformed user state: {exc}") from None

    def resize_smoothing(self, smooth_window: int) -> None:
        if self.smooth.maxlen != max(smooth_window, 1):
            self.smooth = deque(self.smooth, maxlen=max(smooth_window, 1))


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
        """Forget a user's history (e.g. after an idle gap longer than the TTL)."""
        st = self.users[user_id] = UserState(self.smooth_window)
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

    def expired(self, user_ids: set[str] | list[str], watermark_us: int, ttl_us: int) -> list[str]:
        """Users among ``user_ids`` whose last window is older than ``watermark - ttl``."""
        cutoff = watermark_us - ttl_us
        out = []
        for u in user_ids:
            st = self.users.get(u)
            if st is not None and st.last_ts_us is not None and st.last_ts_us < cutoff:
                out.append(u)
        return out

    def __len__(self) -> int:
        return len(self.users)
