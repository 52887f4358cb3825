"""The learning ring in the changelog as sealed blocks (ring_ledger.py): a labelling user's state
record stays small, restores from any checkpoint (also after a failed one or a crash half way
through one) give the same output bytes as an uninterrupted shard, and no block outlives its use."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from helpers_learning import learning_options, phases, raw_batches
from taskclf_daemon.artifacts import build_pipeline
from taskclf_daemon.offline.synthetic import generate_labelled
from taskclf_daemon.offline.train import train_bundle
from taskclf_daemon.pipeline.evidence import BLOCK_BYTES, EVIDENCE_BLOCK, RING_BLOCK
from taskclf_daemon.shard import PipelineShard, RawBatch, ShardLimits
from taskclf_daemon.shard_data import CheckpointData
from taskclf_daemon.state_blocks import block_key, parse_block_key


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("ring_blocks")
    return train_bundle(generate_labelled(seed=3, n_users=6, days=5), home / "models", seed=3, num_boost_round=40, data_provenance="synthetic")


def _shard(bundle: Path) -> PipelineShard:
    pipe, _ = build_pipeline(model_dir=bundle)
    pipe.attach_learner(learning_options().learner())
    return PipelineShard(pipe, ShardLimits(label_requests=True, max_event_ahead_s=0))


class Changelog:
    """A compacted topic: the latest value per key, tombstones delete."""

    def __init__(self) -> None:
        self.latest: dict[bytes, bytes] = {}
        self.written = 0
        self.log: list[tuple[bytes, bytes | None]] = []

    def apply(self, cp: CheckpointData, *, crash_after: int | None = None) -> None:
        recs = [(k, v) for _p, k, v in cp.updates] + [(k, None) for _p, k in cp.tombstones]
        for k, v in recs[:crash_after]:
            self.log.append((k, v))
            if v is None:
                self.latest.pop(k, None)
            else:
                self.latest[k] = v
                self.written += len(k) + len(v)

    def records(self) -> list[tuple[int, bytes, bytes]]:
        return [(0, k, v) for k, v in self.latest.items()]

    def chunks(self, size: int) -> list[list[tuple[int, bytes, bytes | None]]]:
        """The whole log as a restore reads it (changelog.read_chunks): per chunk the latest
        record of each key, in the order the keys first appear in the chunk."""
        out = []
        for i in range(0, len(self.log), size):
            d: dict[bytes, bytes | None] = {}
            for k, v in self.log[i : i + size]:
                d[k] = v
            out.append([(0, k, v) for k, v in d.items()])
        return out


def _batches():
    """Spans and windows in small batches (every user appears in most of them)."""
    return raw_batches(phases(), 24)


def _restart(bundle: Path, log: Changelog) -> tuple[PipelineShard, int, list[str]]:
    """A new shard restored from the changelog (as a partition assignment does)."""
    shard = _shard(bundle)
    n, errors = shard.adopt(log.records())
    shard.adopted([0])
    return shard, n, errors


def _run(shard: PipelineShard, b: RawBatch) -> list[bytes]:
    if b.topic == "labels":
        assert not shard.feedback(b).dead
        return []
    res = shard.process(b)
    assert not res.dead
    return list(res.outputs.values)


def test_restores_from_the_blocks_give_the_same_bytes_and_records_stay_small(bundle: Path) -> None:
    ref = _shard(bundle)
    want = [v for b in _batches() for v in _run(ref, b)]
    assert len(want) == 7886

    shard, log = _shard(bundle), Changelog()
    got: list[bytes] = []
    restarts = fails = c = 0
    for i, b in enumerate(_batches()):
        got += _run(shard, b)
        if i % 3 != 2:  # a checkpoint every third batch (~1 window per user: the live pattern)
            continue
        c += 1
        cp = shard.checkpoint()
        if c % 11 == 4:  # not acknowledged: nothing reached the changelog, all written again
            shard.checkpoint_failed()
            fails += 1
            continue
        log.apply(cp)
        if c % 13 == 6:  # a restart from the changelog
            had = {u: st.to_bytes() for u, st in shard.states.users.items()}
            shard, n, errors = _restart(bundle, log)
            restarts += 1
            assert errors == [] and n == len(had)
            assert {u: st.to_bytes() for u, st in shard.states.users.items()} == had
    assert fails >= 10 and restarts >= 10, (fails, restarts)
    assert got == want
    log.apply(shard.checkpoint())
    log.apply(shard.checkpoint())  # the blocks found stale at the last restore are deleted now
    users = {k for k in log.latest if parse_block_key(k) is None}
    blocks = [pk for k in log.latest if (pk := parse_block_key(k)) is not None]
    assert len(users) == 6
    streams = set()
    for u in users:
        d = orjson.loads(log.latest[u])["L"]
        for stream, first, rng, inline, size in (("r", "r0", "bk", "rt", RING_BLOCK), ("e", "e0", "ek", "et", EVIDENCE_BLOCK)):
            mine = {b for uk, t, b in blocks if uk == u and t == stream}
            if rng not in d:
                assert not mine
                continue
            streams.add(stream)
            assert d[first] // size == d[rng][0]  # the first block holds the first item still held
            assert mine == set(range(*d[rng])), (u, stream, mine, d[rng])  # exactly the named blocks, no garbage
            assert len(base64.b64decode(d[inline])) // 8 < size  # less than a block inline
    assert streams == {"r", "e"}


def test_a_crash_half_way_through_a_checkpoint_restores_the_last_whole_state(bundle: Path) -> None:
    shard, log = _shard(bundle), Changelog()
    batches = list(_batches())
    for b in batches[:60]:
        _run(shard, b)
    log.apply(shard.checkpoint())
    good = dict(log.latest)
    for b in batches[60:90]:
        _run(shard, b)
    cp = shard.checkpoint()
    keys = [k for _p, k, _v in cp.updates]
    # the crash: after a user's new blocks, before the state record naming them (a user the
    # first checkpoint wrote)
    cut = next(i for i in range(1, len(keys)) if keys[i] in good and (pk := parse_block_key(keys[i - 1])) is not None and pk[0] == keys[i])
    victim = keys[cut]
    log.apply(cp, crash_after=cut)
    n_users = sum(parse_block_key(k) is None for k in log.latest)
    fresh, n, errors = _restart(bundle, log)
    assert errors == [] and n == n_users >= 4
    # the victim is back as of the first checkpoint, whole; the users written before it as of the second
    again = _shard(bundle)
    again.adopt([(0, k, v) for k, v in good.items()])
    user = victim.decode()
    assert fresh.states.users[user].to_bytes() == again.states.users[user].to_bytes()
    # its orphaned blocks are deleted by the next checkpoint; no block a state names is
    orphans = {k for k in keys[:cut] if (pk := parse_block_key(k)) is not None and pk[0] == victim}
    assert orphans
    cp2 = fresh.checkpoint()
    deleted = {k for _p, k in cp2.tombstones}
    assert orphans <= deleted
    for u, st in fresh.states.users.items():
        if st.learn is not None:
            named = {block_key(u.encode(), t, b) for t, r in st.learn.sealed().items() for b in r}
            assert named <= set(log.latest) and not named & deleted


def test_a_missing_block_makes_that_user_unreadable_and_nobody_else(bundle: Path) -> None:
    shard, log = _shard(bundle), Changelog()
    for b in list(_batches())[:60]:
        _run(shard, b)
    log.apply(shard.checkpoint())
    victim = next(k for k in log.latest if parse_block_key(k) is not None)
    del log.latest[victim]
    n_users = sum(parse_block_key(k) is None for k in log.latest)
    fresh, n, errors = _restart(bundle, log)
    assert n == n_users - 1 and len(errors) == 1 and "ring block" in errors[0] and "missing" in errors[0]


def test_bytes_written_per_window_of_a_labelling_user(bundle: Path) -> None:
    """The personas label nearly every window: the evidence grows to thousands of windows, so a
    state record carrying it whole is rewritten at ~2.1 KB per window (measured 2,126 B with
    the whole ring and evidence in the record, a checkpoint every ~12 windows of a user)."""
    shard, log = _shard(bundle), Changelog()
    n_win = 0
    for i, b in enumerate(_batches()):
        n_win += len(_run(shard, b))
        if i % 3 == 2:
            log.apply(shard.checkpoint())
    per_window = log.written / n_win
    assert per_window < 500, per_window  # measured: 295 B per window with the sealed blocks
    assert BLOCK_BYTES == {"r": 5 + 8 + RING_BLOCK * 72, "e": 5 + 8 + EVIDENCE_BLOCK * 73}
    assert block_key(b"u1", "e", 3) == b"\xffu1\xffe" + (3).to_bytes(8, "big") and parse_block_key(block_key(b"u1", "e", 3)) == (b"u1", "e", 3)
    assert parse_block_key(b"u1") is None and parse_block_key(b"\xff" * 3) is None


def test_a_restore_in_chunks_equals_one_from_the_latest_records(bundle: Path) -> None:
    shard, log = _shard(bundle), Changelog()
    for i, b in enumerate(_batches()):
        _run(shard, b)
        if i % 3 == 2:
            log.apply(shard.checkpoint())
    whole, n, errors = _restart(bundle, log)
    assert errors == [] and n == 6
    for size in (1, 7, 100):
        part = _shard(bundle)
        for chunk in log.chunks(size):
            assert part.adopt(chunk)[1] == []
        assert part.adopted([0]) == 0  # every block a state names, none deleted
        assert {u: st.to_bytes() for u, st in part.states.users.items()} == {u: st.to_bytes() for u, st in whole.states.users.items()}
        assert part.checkpoint().tombstones == []
