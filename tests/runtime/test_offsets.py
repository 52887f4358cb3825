"""OffsetTracker: only the contiguous prefix of fully acknowledged batches becomes committable."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from taskclf_daemon.offsets import OffsetTracker, PendingBatch

A0 = ("in", 0)
A1 = ("in", 1)
A2 = ("in", 2)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    try:
        yield lp
    finally:
        lp.close()


def batch(loop: asyncio.AbstractEventLoop, n_futures: int, offsets: dict[tuple[str, int], int], records: int) -> PendingBatch:
    return PendingBatch([loop.create_future() for _ in range(n_futures)], dict(offsets), records)


def ack(b: PendingBatch) -> None:
    for f in b.futures:
        if not f.done():
            f.set_result(None)


def test_out_of_order_completion_commits_only_the_contiguous_prefix(loop: asyncio.AbstractEventLoop) -> None:
    t = OffsetTracker()
    b1 = batch(loop, 2, {A0: 10, A1: 5}, records=15)
    b2 = batch(loop, 1, {A0: 20}, records=10)
    b3 = batch(loop, 3, {A0: 30, A1: 9}, records=14)
    for b in (b1, b2, b3):
        t.add(b)
    assert len(t) == 3 and t.in_flight_records == 39

    # newer batches complete first: nothing is committable while b1 is pending
    ack(b3)
    ack(b2)
    assert t.collect() == []
    assert t.take_committable() == {}
    assert t.oldest() is b1 and t.in_flight_records == 39

    # b1 half acknowledged: still nothing
    b1.futures[0].set_result(None)
    assert not b1.done()
    assert t.collect() == []
    assert t.take_committable() == {}

    # b1 complete: the whole prefix b1..b3 pops, newest offset per partition wins
    b1.futures[1].set_result(None)
    assert t.collect() == [b1, b2, b3]
    assert len(t) == 0 and t.oldest() is None and t.in_flight_records == 0
    assert t.take_committable() == {A0: 30, A1: 9}
    assert t.take_committable() == {}  # handed out once


def test_prefix_stops_at_first_incomplete_batch(loop: asyncio.AbstractEventLoop) -> None:
    t = OffsetTracker()
    b1 = batch(loop, 1, {A0: 10}, records=4)
    b2 = batch(loop, 1, {A0: 20, A1: 3}, records=5)
    b3 = batch(loop, 1, {A0: 30}, records=6)
    for b in (b1, b2, b3):
        t.add(b)
    ack(b1)
    ack(b3)
    assert t.collect() == [b1]
    assert t.take_committable() == {A0: 10}
    assert t.in_flight_records == 11 and t.oldest() is b2
    assert t.all_futures() == b2.futures + b3.futures
    ack(b2)
    assert t.collect() == [b2, b3]
    assert t.take_committable() == {A0: 30, A1: 3}
    assert t.in_flight_records == 0


def test_batch_without_outputs_is_complete(loop: asyncio.AbstractEventLoop) -> None:
    t = OffsetTracker()
    empty = PendingBatch([], {A2: 7}, 0)  # e.g. a batch whose records were all skipped
    t.add(empty)
    assert t.collect() == [empty]
    assert t.take_committable() == {A2: 7}


def test_failed_future_raises_and_blocks_everything_after_it(loop: asyncio.AbstractEventLoop) -> None:
    t = OffsetTracker()
    b1 = batch(loop, 1, {A0: 10}, records=2)
    b2 = batch(loop, 2, {A0: 20, A1: 4}, records=3)
    b3 = batch(loop, 1, {A0: 30}, records=4)
    for b in (b1, b2, b3):
        t.add(b)
    ack(b1)
    ack(b3)
    b2.futures[0].set_result(None)
    b2.futures[1].set_exception(RuntimeError("broker said no"))
    assert b2.failed() is not None

    with pytest.raises(RuntimeError, match="broker said no"):
        t.collect()
    # b1 (before the failure) was made committable; b2 and b3 never are
    assert t.take_committable() == {A0: 10}
    assert t.oldest() is b2 and len(t) == 2
    assert t.in_flight_records == 7
    with pytest.raises(RuntimeError):
        t.collect()  # still failing: stays blocked
    assert t.take_committable() == {}


def test_cancelled_future_counts_as_failure(loop: asyncio.AbstractEventLoop) -> None:
    t = OffsetTracker()
    b1 = batch(loop, 1, {A0: 10}, records=1)
    t.add(b1)
    b1.futures[0].cancel()
    with pytest.raises(asyncio.CancelledError, match="^producer future cancelled$"):
        t.collect()
    assert t.take_committable() == {}
    assert t.in_flight_records == 1


def test_take_committable_filters_unowned_and_clears(loop: asyncio.AbstractEventLoop) -> None:
    t = OffsetTracker()
    b = batch(loop, 1, {A0: 10, A1: 11, A2: 12}, records=3)
    t.add(b)
    ack(b)
    t.collect()
    assert t.take_committable({A0, A2}) == {A0: 10, A2: 12}
    # the unowned partition's position was dropped, not kept for later
    assert t.take_committable() == {}
    assert t.take_committable(set()) == {}


def test_restore_puts_back_failed_commits_without_lowering_newer(loop: asyncio.AbstractEventLoop) -> None:
    t = OffsetTracker()
    b1 = batch(loop, 1, {A0: 10, A1: 5}, records=1)
    t.add(b1)
    ack(b1)
    t.collect()
    handed = t.take_committable()
    assert handed == {A0: 10, A1: 5}

    # the commit is in progress; meanwhile a newer batch completes for A0
    b2 = batch(loop, 1, {A0: 25}, records=1)
    t.add(b2)
    ack(b2)
    t.collect()

    # the commit of `handed` failed: put it back
    t.restore(handed)
    assert t.take_committable() == {A0: 25, A1: 5}  # A0 keeps the newer 25, A1 is retried

    t.restore({A2: 3})
    t.restore({A2: 2})
    assert t.take_committable() == {A2: 3}


def test_restore_of_the_lowest_positions(loop: asyncio.AbstractEventLoop) -> None:
    # position 0 or 1 (nothing / only offset 0 processed) is a real position to put back
    t = OffsetTracker()
    t.restore({A0: 0, A1: 1})
    assert t.take_committable() == {A0: 0, A1: 1}


def test_take_positions_covers_acked_and_pending_batches_and_clears(loop: asyncio.AbstractEventLoop) -> None:
    """A checkpoint's positions: the committable ones plus every pending batch's (acknowledged
    or not; the checkpoint commits them once its outputs are), newest per partition; the
    committable map is handed out once."""
    t = OffsetTracker()
    b1, b2, b3 = batch(loop, 1, {A0: 10}, 10), batch(loop, 1, {A1: 7, A0: 20}, 5), batch(loop, 2, {A2: 3}, 4)
    for b in (b1, b2, b3):
        t.add(b)
    ack(b1)
    t.collect()
    assert t.take_positions() == {A0: 20, A1: 7, A2: 3}
    assert t.take_committable() == {} and len(t) == 2  # handed out once; pending batches stay
    assert t.take_positions() == {A0: 20, A1: 7, A2: 3}  # still pending: covered again
    ack(b2)
    ack(b3)
    t.collect()
    assert t.take_positions() == {A0: 20, A1: 7, A2: 3} and t.take_positions() == {}
