"""Fuzz: random and mutated records through decode (every path) AND the whole pipeline (issue 9).

Two generators, both deterministic:

* a seeded mutation fuzzer (:data:`N_MUTANTS` cases per run, 100k): golden rows with fields
  replaced by hostile JSON values, dropped, added (``raw_*`` too), or the bytes flipped,
  truncated, duplicated; run through the three decode paths (msgspec fast path, generated
  Python fast path, the detailed checks) and in batches through a :class:`PipelineShard`;
* a hypothesis property test (:data:`N_HYPOTHESIS` examples) building rows field by field.

Invariants: no exception escapes; the fast paths accept only what the detailed checks accept,
with identical values, and refuse with the same reason; every record of a batch ends as exactly
one output or dead letter (or a counted skip); outputs are valid JSON with finite probabilities.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from helpers_rows import golden_dir
from taskclf_daemon.artifacts import build_pipeline
from taskclf_daemon.codec import RowValidator, decode_window
from taskclf_daemon.errors import InvalidRecord
from taskclf_daemon.schema import SCHEMAS
from taskclf_daemon.shard import PipelineShard, RawBatch

N_MUTANTS = 100_000
N_HYPOTHESIS = 1_500
BATCH = 2_000

HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 255, 256, -(2**63), 2**63 - 1, 2**63, 2**64, 10**30, -(10**30),
    0.0, -0.0, 0.5, 1.0000000000000002, 1e308, -1e308, 5e-324, 1.7976931348623157e308,
    "", " ", "x", "v1", "v2", "NaN", "Infinity", "-1", "1e400", "\u0000", "\ud83d\ude00", "\ud800", "é" * 300,
    "a" * 1025, "u" * 257, "2026-04-06T10:00:00Z", "2026-04-06T10:00:00+14:00", "9999-12-31T23:59:59-12:00",
    "0001-01-01T00:00:00+01:00", "1970-01-01T00:00:00Z", "2199-12-31T23:59:59.999999Z", "2200-01-01T00:00:00Z",
    "2026-02-30T00:00:00Z", "  2026-04-06T10:00:00Z  ", " " * 70 + "2026-04-06T10:00:00Z", 1e16, 1e11, 1e13, -1e11,
    [], [1], ["a", "b"], ["a", 1], {}, {"a": 1}, [[[]]], {"raw_x": 1},
]


def _mutate(rng: random.Random, base: dict[str, Any]) -> bytes:
    row = dict(base)
    keys = list(row)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.random()
        if op < 0.55:
            row[rng.choice(keys)] = rng.choice(HOSTILE_VALUES)
        elif op < 0.7:
            row.pop(rng.choice(keys), None)
        elif op < 0.8:
            row[rng.choice(("raw_title", "extra", "x" * 100, "user_id ", "RAW_x"))] = rng.choice(HOSTILE_VALUES)
        else:
            row["user_id"] = rng.choice(("u1", "u2", "u3", "ü", "a" * 256, "\t"))
    data = json.dumps(row, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")  # ints beyond 64 bits too
    if rng.random() < 0.15:  # byte-level damage
        b = bytearray(data)
        kind = rng.random()
        i = rng.randrange(len(b))
        if kind < 0.4:
            b[i] = rng.randrange(256)
        elif kind < 0.7:
            del b[i:]
        else:
            b[i:i] = rng.choice((b",", b"}", b'"', b"\\u", b"\xff\xfe", b" " * 10, data[:50]))
        data = bytes(b)
    return data


def _outcome(data: bytes, v: RowValidator) -> tuple:
    try:
        w = decode_window(data, v)
    except InvalidRecord as exc:
        return ("refused", exc.reason)
    return ("ok", w.user_id, w.ts_us, repr(list(w.values.items())))  # repr: exact floats, int vs float


@pytest.fixture(scope="module")
def golden_rows() -> list[dict[str, Any]]:
    return [orjson.loads(ln) for ln in (golden_dir() / "inputs.jsonl").read_bytes().splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def pipe():
    p, _ = build_pipeline(policy=golden_dir() / "models" / "inference_policy.json", state_ttl_seconds=3600)
    return p


def _key_of(data: bytes, rng: random.Random) -> bytes | None:
    try:
        u = orjson.loads(data).get("user_id")
    except Exception:  # noqa: BLE001 - not JSON / not an object
        u = None
    if isinstance(u, str) and rng.random() < 0.95:
        try:
            return u.encode()
        except UnicodeEncodeError:
            return b"?"
    return rng.choice((None, b"", b"u1"))


def _check_result(res: Any, n: int) -> None:
    assert len(res.outputs) + len(res.dead) + sum(res.skipped.values()) == n
    assert [d.position for d in res.dead] == sorted({d.position for d in res.dead})
    for _k, v, _s in res.outputs:
        rec = orjson.loads(v)
        assert all(math.isfinite(p) for p in rec["core_probs"]) and 0.0 <= rec["confidence"] <= 1.0


def test_mutation_fuzz_decode_paths_agree_and_the_shard_never_raises(golden_rows, pipe):
    rng = random.Random(20261130)
    fast = RowValidator(SCHEMAS["v1"])
    ref = RowValidator(SCHEMAS["v1"])
    ref.fast_decode = None
    shard = PipelineShard(pipe)
    accepted = refused = 0
    batch = RawBatch("in")
    off = 0
    for case in range(N_MUTANTS):
        data = _mutate(rng, rng.choice(golden_rows))
        w = fast.fast_decode(data)
        got, want = _outcome(data, fast), _outcome(data, ref)
        assert got == want, data
        if w is not None:
            assert want[0] == "ok" and (w.user_id, w.ts_us) == want[1:3], data
        # the generated Python fast path against the detailed checks, on the decoded object
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = None
        if obj is not None:
            try:
                a: tuple = ("ok", ref.validate(obj).values == ref._validate(obj).values)
            except InvalidRecord as exc:
                with pytest.raises(InvalidRecord) as ei:
                    ref._validate(obj)
                a = ("refused", exc.reason == ei.value.reason)
            assert a[1] is True, data
        accepted += want[0] == "ok"
        refused += want[0] == "refused"
        batch.add(case % 4, off, data, _key_of(data, rng), 1_775_520_000_000 + case)
        off += 1
        if len(batch) == BATCH:
            _check_result(shard.process(batch, now_s=case), BATCH)
            batch = RawBatch("in")
    if len(batch):
        _check_result(shard.process(batch), len(batch))
    # the fuzzer exercises both sides
    assert accepted > 10_000 and refused > 10_000, (accepted, refused)


_json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
)
_json = st.recursive(_json_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


@settings(max_examples=N_HYPOTHESIS, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_property_any_row_is_either_emitted_or_dead_lettered(data, golden_rows, pipe):
    base = dict(golden_rows[data.draw(st.integers(0, len(golden_rows) - 1))])
    for name in data.draw(st.lists(st.sampled_from(sorted(base)), max_size=4, unique=True)):
        if data.draw(st.booleans()):
            base[name] = data.draw(_json)
        else:
            base.pop(name)
    raw = json.dumps(base, ensure_ascii=False).encode("utf-8", "surrogatepass")
    fast, ref = RowValidator(SCHEMAS["v1"]), RowValidator(SCHEMAS["v1"])
    ref.fast_decode = None
    assert _outcome(raw, fast) == _outcome(raw, ref)
    b = RawBatch("in")
    u = base.get("user_id")
    b.add(0, 0, raw, u.encode("utf-8", "surrogatepass") if isinstance(u, str) else None, 1_775_520_000_000)
    _check_result(PipelineShard(pipe).process(b), 1)
