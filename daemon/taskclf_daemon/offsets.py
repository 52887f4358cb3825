"""Which input offsets are safe to commit.

Micro-batches are processed in fetch order, and a batch's outputs (predictions and dead letters)
are produced before the next batch's. A batch becomes *complete* when every one of its
producer futures has succeeded; the committable position of a partition is one past the last
offset of the newest batch such that it and all older batches are complete (the highest
contiguous completed offset). No I/O here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PendingBatch:
    """One processed micro-batch: its producer futures and the next offset per partition."""

    futures: list[asyncio.Future[Any]]
    next_offsets: dict[tuple[str, int], int]
    records: int = 0
    first_ts_ms: list[int] = field(default_factory=list)

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def failed(self) -> BaseException | None:
        for f in self.futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                return f.exception()
            if f.cancelled():
                return asyncio.CancelledError("producer future cancelled")
        return None


class OffsetTracker:
    """FIFO of pending batches; pops the complete prefix into committable positions."""

    def __init__(self) -> None:
        self._pending: deque[PendingBatch] = deque()
        self._committable: dict[tuple[str, int], int] = {}
        self.in_flight_records = 0

    def add(self, batch: PendingBatch) -> None:
        self._pending.append(batch)
        self.in_flight_records += batch.records

    def collect(self) -> list[PendingBatch]:
        """Move complete batches at the head into the committable map; return them.

        :raises BaseException: the producer error of the first failed batch (nothing after it
            becomes committable)
        """
        done: list[PendingBatch] = []
        while self._pending and self._pending[0].done():
            b = self._pending[0]
            err = b.failed()
            if err is not None:
                raise err
            self._pending.popleft()
            self.in_flight_records -= b.records
            self._committable.update(b.next_offsets)
            done.append(b)
        return done

    def oldest(self) -> PendingBatch | None:
        return self._pending[0] if self._pending else None

    def all_futures(self) -> list[asyncio.Future[Any]]:
        return [f for b in self._pending for f in b.futures]

    def take_committable(self, owned: set[tuple[str, int]] | None = None) -> dict[tuple[str, int], int]:
        """Committable positions (for owned partitions only) not yet handed out; clears them."""
        out = {tp: o for tp, o in self._committable.items() if owned is None or tp in owned}
        self._committable.clear()
        return out

    def take_positions(self) -> dict[tuple[str, int], int]:
        """The input position after every batch produced so far, acknowledged or not (the
        committable ones and the pending ones'; clears the committable): what a checkpoint's
        snapshot covers, to commit once its outputs and changelog are acknowledged."""
        out = self.take_committable()
        for b in self._pending:
            out.update(b.next_offsets)
        return out

    def restore(self, offsets: dict[tuple[str, int], int]) -> None:
        """Put back positions whose commit failed (retried at the next commit)."""
        for tp, o in offsets.items():
            if o > self._committable.get(tp, -1):
                self._committable[tp] = o

    def __len__(self) -> int:
        return len(self._pending)
