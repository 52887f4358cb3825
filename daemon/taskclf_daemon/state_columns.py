"""The compact parts of a user's state: the 15-row history by column, the smoothing labels.

Python objects are large (a float 24 bytes, an int 28-32, a 5-tuple 80, a deque ~630 with its
64-slot block), and a user held them as 15 tuples of 5 objects and two deques: ~5.6 KB of heap
per user. Here the history is typed arrays (8 bytes a value; a null number is a NaN -- inputs
and changelog values are finite, so NaN means null only), the ``app_id`` strings are interned
(one object per distinct app, not one per window), and the labels are a small list. No I/O.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from taskclf_daemon.labels import HISTORY_ROWS

#: a null number in a :class:`History` column (inputs and changelog values are finite)
NULL = float("nan")
_intern = sys.intern
_FLOAT_ONLY = {float}
_FLOAT_OR_NULL = {float, type(None)}
_INT_ONLY = {int}
_STR_ONLY = {str}


class HistoryEntry(NamedTuple):
    """What the overlay needs from one past window of the user (one row of a :class:`History`)."""

    ts_us: int
    app_id: str
    keys: float | None
    clicks: float | None
    mouse: float | None


def _num(v: float) -> float | None:
    return None if v != v else v


class History:
    """The user's last :data:`HISTORY_ROWS` windows, oldest first, by column.

    ``ts`` (int64), ``keys``/``clicks``/``mouse`` (float64, :data:`NULL` for a null) are arrays:
    8 bytes a value instead of a 24-32 byte object; ``apps`` holds interned ``app_id`` strings.
    The overlay (``pipeline/features.py``) reads and appends the columns directly; rows as
    :class:`HistoryEntry` (None for null) are for tests and tools.
    """

    __slots__ = ("ts", "apps", "keys", "clicks", "mouse")
    maxlen = HISTORY_ROWS

    def __init__(self) -> None:
        self.ts = array("q")
        self.apps: list[str] = []
        self.keys = array("d")
        self.clicks = array("d")
        self.mouse = array("d")

    def push(self, ts_us: int, app_id: str, keys: float, clicks: float, mouse: float) -> None:
        """Append a row (numbers already floats, :data:`NULL` for null), dropping the oldest
        beyond :data:`HISTORY_ROWS` first (so the arrays never grow past it)."""
        if len(self.ts) >= HISTORY_ROWS:
            del self.ts[0], self.apps[0], self.keys[0], self.clicks[0], self.mouse[0]
        self.ts.append(ts_us)
        self.apps.append(_intern(app_id))
        self.keys.append(keys)
        self.clicks.append(clicks)
        self.mouse.append(mouse)

    def append(self, e: HistoryEntry) -> None:
        self.push(e[0], e[1], *(NULL if v is None else float(v) for v in e[2:]))

    def copy(self) -> History:
        return History.from_columns(self.ts, self.apps, self.keys, self.clicks, self.mouse)

    @classmethod
    def from_columns(cls, ts: array[int], apps: list[str], keys: array[float], clicks: array[float], mouse: array[float]) -> History:
        """A history of copies of these columns (as :meth:`copy` and ``UserState.snapshot`` hold them)."""
        h = cls.__new__(cls)
        h.ts, h.apps, h.keys, h.clicks, h.mouse = ts[:], apps[:], keys[:], clicks[:], mouse[:]
        return h

    def __len__(self) -> int:
        return len(self.ts)

    def __getitem__(self, i: int) -> HistoryEntry:
        return HistoryEntry(self.ts[i], self.apps[i], _num(self.keys[i]), _num(self.clicks[i]), _num(self.mouse[i]))

    def __iter__(self) -> Iterator[HistoryEntry]:
        for i in range(len(self.ts)):
            yield self[i]

    def rows(self) -> list[list[object]]:
        """The changelog's ``h``: ``[[ts, app, keys, clicks, mouse], ...]`` (a NaN is written as
        ``null`` by orjson: the same bytes as the rows of None it stands for)."""
        return list(map(list, zip(self.ts, self.apps, self.keys, self.clicks, self.mouse)))

    @classmethod
    def from_rows(cls, rows: object) -> History:
        """Inverse of :meth:`rows` (the last :data:`HISTORY_ROWS` kept). Well-typed rows take a
        C-speed path; anything else goes row by row (ints become floats, wrong types raise
        ``TypeError`` naming the type, as format 1 and 2 readers always did)."""
        h = cls()
        if type(rows) is not list:
            raise TypeError(f"expected a list of rows, got {type(rows).__name__}")
        rows = rows[-HISTORY_ROWS:]
        if not rows:
            return h
        if set(map(type, rows)) == {list} and set(map(len, rows)) == {5}:
            ts, apps, *nums = zip(*rows)
            kinds = [set(map(type, col)) for col in nums]
            if set(map(type, ts)) == _INT_ONLY and set(map(type, apps)) == _STR_ONLY and all(k <= _FLOAT_OR_NULL for k in kinds):
                try:
                    h.ts = array("q", ts)
                except OverflowError as exc:
                    raise ValueError(f"timestamp out of range: {exc}") from None
                h.apps = list(map(_intern, apps))
                h.keys, h.clicks, h.mouse = (array("d", col if k == _FLOAT_ONLY else [NULL if v is None else v for v in col]) for col, k in zip(nums, kinds))
                return h
        for r in rows:
            e = HistoryEntry(int(r[0]), _str(r[1]), _opt_float(r[2]), _opt_float(r[3]), _opt_float(r[4]))
            if not -(1 << 63) <= e.ts_us < (1 << 63):
                raise ValueError(f"timestamp out of range: {e.ts_us}")
            h.append(e)
        return h


class LabelRing(list[int]):
    """The last ``maxlen`` smoothing labels, oldest first: a list (small ints are shared
    objects) that drops from the front like ``deque(maxlen=...)``, ~100 bytes instead of ~630."""

    __slots__ = ("maxlen",)

    def __init__(self, items: Iterable[int] = (), maxlen: int = 1) -> None:
        super().__init__(items)
        self.maxlen = maxlen = max(maxlen, 1)
        if len(self) > maxlen:
            del self[:-maxlen]

    def append(self, label: int) -> None:
        if len(self) >= self.maxlen:
            del self[0]
        super().append(label)

    def extend(self, labels: Iterable[int]) -> None:
        super().extend(labels)
        if len(self) > self.maxlen:
            del self[: -self.maxlen]

    def copy(self) -> LabelRing:
        return LabelRing(self, self.maxlen)




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
