"""Which sealed blocks of each user's learning state the changelog holds, and what to write or
delete next.

A user who labels keeps a ring of recent windows (up to ``label_wait_s`` of them, 64 bytes each)
and up to ``evidence_cap`` labelled windows (~70 bytes each). Written inside the user's state
record, they (~5 KB of ring, up to ~200 KB of evidence) would be rewritten at every checkpoint the
user is in -- live, once per window. Instead their older parts go to the changelog in sealed
blocks (:data:`~taskclf_daemon.pipeline.evidence.BLOCK_SIZES`), each a record of its own, written
once and deleted (tombstone) once nothing in it is held any more; the state record holds only
the newest items and names its blocks (:meth:`~taskclf_daemon.pipeline.evidence.UserLearning.to_obj`).

Order in the changelog partition (the producer keeps a partition's records in order: aiokafka
sends one request per partition at a time, retries included): a checkpoint writes a user's new
blocks, then the user's state record, then the tombstones of blocks it no longer names -- so
whenever a state record can be read, its blocks can too. A crash or a failed checkpoint can
leave blocks nobody names; a restore finds them and deletes them at the next checkpoint.

Block keys start with byte 0xFF, which no UTF-8 user id (a state record's key) can start with:
``0xFF + user_id UTF-8 + 0xFF + stream (1 byte: r, e) + block number (8 bytes, big-endian)``.
"""

from __future__ import annotations

from collections.abc import Iterable

from taskclf_daemon.pipeline.evidence import UserLearning

_TAG = b"\xff"
_NONE = range(0)
Ranges = tuple[range, range]


def block_key(user_key: bytes, stream: str, block: int) -> bytes:
    return _TAG + user_key + _TAG + stream.encode("ascii") + block.to_bytes(8, "big")


def parse_block_key(key: bytes) -> tuple[bytes, str, int] | None:
    """(user key, stream, block number) of a block key; None for a user's state key."""
    if not key.startswith(_TAG) or len(key) < 11 or key[-10:-9] != _TAG:
        return None
    return key[1:-10], key[-9:-8].decode("latin-1"), int.from_bytes(key[-8:], "big")


class BlockLedger:
    """Per user and stream, two block ranges: ``have`` -- surely in the changelog (not written
    again) and ``maybe`` -- possibly there (deleted once no longer named). They differ only
    after a failed checkpoint, whose writes and deletes may or may not have landed."""

    def __init__(self) -> None:
        self.known: dict[bytes, dict[str, Ranges]] = {}
        #: (partition, key) of block records to delete at the next checkpoint
        self.stale: dict[tuple[int, bytes], None] = {}
        #: the checkpoint in flight, for :meth:`failed`: user -> (ranges before, blocks named,
        #: deletes of a retired user)
        self._in_flight: dict[bytes, tuple[dict[str, Ranges], dict[str, range], list[tuple[int, bytes]]]] = {}

    def begin(self) -> None:
        """A new checkpoint: the one before it succeeded (else :meth:`failed` was called)."""
        self._in_flight = {}

    def plan(self, user_key: bytes, part: int, learn: UserLearning) -> tuple[list[tuple[int, bytes, bytes]], dict[str, range], list[tuple[int, bytes]]]:
        """For a changed user: the block records to write before its state record, the blocks
        that record names, and the tombstones to write after it."""
        sealed = learn.sealed()
        before = self.known.get(user_key, {})
        writes, tombs = [], []
        for stream, named in sealed.items():
            have, maybe = before.get(stream, (_NONE, _NONE))
            for b in named:
                if b not in have:
                    k = block_key(user_key, stream, b)
                    writes.append((part, k, learn.block_value(stream, b)))
                    self.stale.pop((part, k), None)  # written again: an older delete must not follow it
            tombs += [(part, block_key(user_key, stream, b)) for b in maybe if b not in named]
        self.known[user_key] = {t: (r, r) for t, r in sealed.items()}
        self._in_flight[user_key] = (before, sealed, [])
        return writes, sealed, tombs

    def retire(self, user_key: bytes, part: int) -> list[tuple[int, bytes]]:
        """The user is deleted from the changelog: tombstones of its blocks."""
        before = self.known.pop(user_key, {})
        tombs = [(part, block_key(user_key, t, b)) for t, (_have, maybe) in before.items() for b in maybe]
        self._in_flight[user_key] = (before, {}, tombs)
        return tombs

    def drop(self, user_key: bytes) -> None:
        """The user left this shard (its records stay for the next owner)."""
        self.known.pop(user_key, None)

    def failed(self) -> None:
        """The checkpoint in flight may not have been written: what it wrote counts as possibly
        there (deleted later once not named), not as surely there (written again)."""
        for user_key, (before, named, retired) in self._in_flight.items():
            if user_key in self.known:
                self.known[user_key] = {
                    t: (_meet(before.get(t, (_NONE, _NONE))[0], r), _join(before.get(t, (_NONE, _NONE))[1], r)) for t, r in named.items()
                }
            self.stale.update(dict.fromkeys(retired))
        self._in_flight = {}

    def take_stale(self, only: Iterable[int] | None) -> list[tuple[int, bytes]]:
        keep = None if only is None else set(only)
        out = [pk for pk in self.stale if keep is None or pk[0] in keep]
        for pk in out:
            del self.stale[pk]
        return out

    def restored(self, user_key: bytes, learn: UserLearning | None) -> None:
        """A user's state was installed from its durable record."""
        if learn is None:
            self.known.pop(user_key, None)
        else:
            self.known[user_key] = {t: (r, r) for t, r in learn.sealed().items()}


def _meet(a: range, b: range) -> range:
    lo, hi = max(a.start, b.start), min(a.stop, b.stop)
    return range(lo, hi) if lo < hi else _NONE


def _join(a: range, b: range) -> range:
    if not a:
        return b
    if not b:
        return a
    return range(min(a.start, b.start), max(a.stop, b.stop))
