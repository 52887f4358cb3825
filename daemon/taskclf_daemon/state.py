"""Per-user online state: the compact replacement for taskclf's per-process objects.

One :class:`UserState` per ``user_id`` holds what taskclf's ``OnlineFeatureState`` (15-row buffer,
dynamics tracker, session start) and ``OnlinePredictor`` (smoothing deque) keep, as plain tuples:
no DataFrames, no pydantic rows. No I/O here.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from taskclf_daemon.labels import HISTORY_ROWS


class HistoryEntry(NamedTuple):
    """What the overlay needs from one past window of the user."""

    ts_us: int
    app_id: str
    keys: float | None
    clicks: float | None
    mouse: float | None


class UserState:
    """Rolling state of one user. Mutated only by the pipeline, in the user's window order."""

    __slots__ = ("history", "session_start_us", "smooth", "last_ts_us", "windows_seen")

    def __init__(self, smooth_window: int) -> None:
        self.history: deque[HistoryEntry] = deque(maxlen=HISTORY_ROWS)
        self.session_start_us: int | None = None
        self.smooth: deque[int] = deque(maxlen=max(smooth_window, 1))
        self.last_ts_us: int | None = None
        self.windows_seen = 0

    def resize_smoothing(self, smooth_window: int) -> None:
        if self.smooth.maxlen != max(smooth_window, 1):
            self.smooth = deque(self.smooth, maxlen=max(smooth_window, 1))


class StateStore:
    """``user_id -> UserState``, created on first sight."""

    def __init__(self, smooth_window: int) -> None:
        self.smooth_window = smooth_window
        self.users: dict[str, UserState] = {}

    def get(self, user_id: str) -> UserState:
        st = self.users.get(user_id)
        if st is None:
            st = self.users[user_id] = UserState(self.smooth_window)
        return st

    def __len__(self) -> int:
        return len(self.users)
