#!/usr/bin/env python3
"""Per-record cost of the daemon's two hot-path Python stages, on the golden taskclf inputs.

    python scripts/bench_hotpath.py [--repeats 15] [--baseline DIR] [--check-only]

Measures, in microseconds per record (median of ``--repeats`` repeats, each a full pass over the
3030 golden v1 rows; min and max shown too):

* ``orjson.loads``          -- JSON bytes -> dict (the reference cost the validator sits beside);
* ``RowValidator.validate`` -- dict -> :class:`FeatureWindow` (rows decoded beforehand);
* ``push_window``           -- per-user overlay, windows in input order, a **fresh**
  :class:`StateStore` per repeat (each user's state is fetched before the clock starts).

An empty ``for`` loop over the same rows is timed too (``loop``) so the harness overhead is
visible; it is *not* subtracted from the figures.

``--baseline DIR`` loads ``DIR/codec.py`` and ``DIR/features.py`` -- copies of the modules taken
before an optimisation -- as a separate baseline, benchmarks both in the same process and prints
the ratios (baseline / current). First it checks that both produce identical results: the
validated values (types and key order included) of every golden row for the v1/v2/v3 validators,
the refusal reason *and detail* (or the exception raised) of ~50k rows derived from golden ones
(every field dropped or set to values of each JSON type, subclasses, out-of-range, non-finite and
huge values, timestamp forms, raw_* and unknown keys, other key orders, schema mismatches, two
faults at once), the overlays of every golden row under four idle gaps, and the overlays of 120k
random windows (ints, floats with 0-4 decimals, zeros, nulls; late, duplicate and gapped
timestamps), floats compared bit for bit. Any difference exits 1. A baseline directory can be
made from version control, e.g. ``git show HEAD:daemon/taskclf_daemon/codec.py > DIR/codec.py``.

Last line: ``bench_hotpath: loads_us=X validate_us=X push_window_us=X`` (current code).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
from benchlib import GOLDEN  # noqa: E402 - the repository's golden fixture

try:  # the package is installed editable in the project venv; fall back to the source tree
    import taskclf_daemon  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(REPO / "daemon"))

import orjson  # noqa: E402

from taskclf_daemon import codec  # noqa: E402
from taskclf_daemon.errors import InvalidRecord  # noqa: E402
from taskclf_daemon.pipeline import features  # noqa: E402
from taskclf_daemon.schema import SCHEMAS  # noqa: E402
from taskclf_daemon.state import StateStore  # noqa: E402


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def timed(run: Callable[[], float], repeats: int) -> list[float]:
    """``run`` returns the seconds of one pass; collect garbage between passes (not inside)."""
    out = []
    for _ in range(repeats):
        gc.collect()
        out.append(run())
    return out


def bench_loads(lines: list[bytes], repeats: int) -> list[float]:
    loads = orjson.loads

    def run() -> float:
        t = time.perf_counter()
        for line in lines:
            loads(line)
        return time.perf_counter() - t

    return timed(run, repeats)


def bench_loop(objs: list[Any], repeats: int) -> list[float]:
    def run() -> float:
        t = time.perf_counter()
        for _o in objs:
            pass
        return time.perf_counter() - t

    return timed(run, repeats)


def bench_validate(mod: ModuleType, objs: list[dict], repeats: int) -> list[float]:
    validate = mod.RowValidator(SCHEMAS["v1"]).validate

    def run() -> float:
        t = time.perf_counter()
        for o in objs:
            validate(o)
        return time.perf_counter() - t

    return timed(run, repeats)


def bench_push(mod: ModuleType, windows: list, repeats: int) -> list[float]:
    push = mod.push_window

    def run() -> float:
        store = StateStore(1)
        pairs = [(store.get(w.user_id), w) for w in windows]
        t = time.perf_counter()
        for st, w in pairs:
            push(st, w)
        return time.perf_counter() - t

    return timed(run, repeats)


def per_record_us(secs: list[float], n: int) -> tuple[float, float, float]:
    us = [s / n * 1e6 for s in secs]
    return statistics.median(us), min(us), max(us)


# --------------------------------------------------------------------------- equivalence


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same types (floats compared bit for bit, NaN == NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (a == b and math.copysign(1.0, a) == math.copysign(1.0, b)) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


def _outcome(validate: Callable[[Any], Any], obj: Any) -> tuple:
    try:
        w = validate(obj)
    except InvalidRecord as exc:
        return ("refused", exc.reason, exc.detail, str(exc))
    except Exception as exc:  # noqa: BLE001 - e.g. OverflowError: must be the same one, too
        return ("raised", type(exc).__name__, str(exc))
    return ("ok", w.user_id, w.ts_us, w.schema_version, w.values, w.source)


class _Str(str):
    pass


class _Int(int):
    pass


class _Float(float):
    pass


class _Dict(dict):
    pass


_PROBES: tuple[Any, ...] = (
    None, True, False, 0, 1, -1, 3, 24, 256, 10**20, -(10**20), 10**400, 0.0, -0.0, 0.5, 1.5, -1.0, 3.0, 7.25,
    1e300, 1.7976931348623157e308, math.inf, -math.inf, math.nan, "", "x", "12.5", "2026-04-06T10:00:00Z",
    " 2026-04-06T12:00:00+02:00 ", "2026-04-06T10:00:00", "2026-13-01T00:00:00Z", "0001-01-01T00:00:00+01:00",
    1775469600, 1775469600.5, 1775469600000, 1.7e308, [], ["a"], ["a", 1], [_Str("a")], ("a",), {}, {"a": 1},
    _Str(""), _Str("x"), _Int(3), _Float(0.5),
)  # fmt: skip


def invalid_variants(row: dict, validators_schema_version: str) -> list[Any]:
    """Rows derived from one valid row: every key dropped or set to each probe value, and more."""
    out: list[Any] = [[], "s", 42, None, {}]
    names = list(row) + ["domain_category", "idle_return_indicator"]
    for k in names:
        r = dict(row)
        r.pop(k, None)
        out.append(r)
        for p in _PROBES:
            r = dict(row)
            r[k] = p
            out.append(r)
    for extra in ({"raw_x": 1}, {"raw_": None}, {"future": 1}, {"title_char_count": -1}):
        out.append({**row, **extra})
        out.append({**extra, **row})
    out.append({"raw_window_title": "t"})
    out.append(dict(reversed(list(row.items()))))  # another key order
    out.append({**row, 5: 1})  # a non-str key
    out.append(_Dict(row))  # a dict subclass
    out.append({"schema_version": validators_schema_version})
    out.append({**row, "schema_version": "v2"})
    out.append({**row, "schema_hash": "deadbeef0000"})
    out.append({**row, "bucket_end_ts": row.get("bucket_start_ts")})
    # two faults at once: the first one in check order must win, as before
    keys = [k for k in row if k not in ("schema_version", "schema_hash")]
    for i in range(0, len(keys) - 1):
        r = dict(row)
        r[keys[i]] = "bad" if not isinstance(row[keys[i]], str) else 5
        r[keys[i + 1]] = None
        out.append(r)
        r2 = dict(row)
        del r2[keys[i + 1]]
        r2[keys[i]] = -5
        out.append(r2)
    return out


def check_equivalence(base_codec: ModuleType, base_feat: ModuleType, objs: list[dict], windows: list) -> int:
    bad = 0
    n = 0
    for version in ("v1", "v2", "v3"):
        new_v = codec.RowValidator(SCHEMAS[version]).validate
        old_v = base_codec.RowValidator(SCHEMAS[version]).validate
        for o in objs:
            n += 1
            if not _same(_outcome(new_v, o), _outcome(old_v, o)):
                bad += 1
        sample = objs[:: max(1, len(objs) // 6)]
        for row in sample:
            row = dict(row, schema_version=version, schema_hash=SCHEMAS[version].hash)
            for o in invalid_variants(row, version):
                n += 1
                a, b = _outcome(new_v, o), _outcome(old_v, o)
                if not _same(a, b):
                    bad += 1
                    if bad <= 5:
                        print(f"  validate differs ({version}): new={a[:3]} old={b[:3]}", file=sys.stderr)
    print(f"check: validate outcomes compared={n} differing={bad}", file=sys.stderr)

    # overlays: golden order, plus the same windows with assorted idle gaps
    pbad = 0
    pn = 0
    for gap in (300.0, 60.0, 0.0, 1e9):
        s_new, s_old = StateStore(1), StateStore(1)
        for w in windows:
            a = features.push_window(s_new.get(w.user_id), w, gap)
            b = base_feat.push_window(s_old.get(w.user_id), w, gap)
            pn += 1
            if not _same(a, b):
                pbad += 1
                if pbad <= 5:
                    print(f"  push_window differs: new={a} old={b}", file=sys.stderr)
        for u in s_old.users:
            if not _same(list(s_new.users[u].history), list(s_old.users[u].history)) or s_new.users[u].session_start_us != s_old.users[u].session_start_us:
                pbad += 1
    # random histories: values of every kind (floats with 0-4 decimals, ints, zeros, nulls), late
    # and duplicate timestamps, gaps around the idle threshold and the 15-min look-back
    rng = random.Random(20260406)
    template = windows[0]
    for gap in (300.0, 0.0):
        s_new, s_old = StateStore(1), StateStore(1)
        ts = template.ts_us
        for _ in range(60_000):
            ts += rng.choice((60, 60, 60, 0, -60, -600, 240, 300, 301, 900, 901, 3600, 86400)) * 1_000_000
            vals = dict(template.values)
            for k in ("keys_per_min", "clicks_per_min", "mouse_distance"):
                r = rng.random()
                vals[k] = None if r < 0.15 else 0.0 if r < 0.25 else rng.randint(0, 400) if r < 0.4 else round(rng.uniform(0, 3000), rng.randint(0, 4))
            vals["app_id"] = rng.choice(("a", "b", "c", "d"))
            user = rng.choice(("u1", "u2", "u3"))
            w = type(template)(user, ts, template.schema_version, vals)
            a = features.push_window(s_new.get(user), w, gap)
            b = base_feat.push_window(s_old.get(user), w, gap)
            pn += 1
            if not _same(a, b):
                pbad += 1
                if pbad <= 5:
                    print(f"  push_window differs: new={a} old={b}", file=sys.stderr)
    # rolling_mean on assorted sequences
    seqs = [[], [None], [1.0], [None, 2.0, None], [0.1, 0.2, 0.3, None, 1e16, 1.0, -1e16, 3.3] * 3, list(range(20)), [None] * 16]
    for s in seqs:
        for n_ in (1, 3, 5, 15, 30):
            pn += 1
            if not _same(features.rolling_mean(s, n_), base_feat.rolling_mean(s, n_)):
                pbad += 1
    print(f"check: push_window/rolling_mean outcomes compared={pn} differing={pbad}", file=sys.stderr)
    return bad + pbad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15, help="passes per measurement (median reported; >= 7)")
    ap.add_argument("--baseline", type=Path, help="directory with pre-change copies of codec.py and features.py")
    ap.add_argument("--check-only", action="store_true", help="with --baseline: only the equivalence check")
    ap.add_argument("--inputs", type=Path, default=GOLDEN / "inputs.jsonl")
    args = ap.parse_args(argv)
    if args.repeats < 7:
        ap.error("--repeats must be >= 7")

    lines = [line for line in args.inputs.read_bytes().splitlines() if line.strip()]
    objs = [orjson.loads(line) for line in lines]
    validator = codec.RowValidator(SCHEMAS["v1"])
    windows = [validator.validate(o) for o in objs]
    n = len(lines)

    base_codec = base_feat = None
    if args.baseline is not None:
        base_codec = load_module(args.baseline / "codec.py", "_bench_baseline_codec")
        base_feat = load_module(args.baseline / "features.py", "_bench_baseline_features")
        if check_equivalence(base_codec, base_feat, objs, windows):
            print("bench_hotpath: RESULTS DIFFER from the baseline", file=sys.stderr)
            return 1
        if args.check_only:
            return 0

    print(f"golden rows: {n}, repeats: {args.repeats}, python {sys.version.split()[0]}")
    rows: list[tuple[str, tuple[float, float, float], tuple[float, float, float] | None]] = []
    rows.append(("loop (harness)", per_record_us(bench_loop(objs, args.repeats), n), None))
    rows.append(("orjson.loads", per_record_us(bench_loads(lines, args.repeats), n), None))
    # interleave current/baseline runs so both see the same machine conditions
    val_new, val_old, push_new, push_old = [], [], [], []
    for _ in range(args.repeats):
        val_new += bench_validate(codec, objs, 1)
        push_new += bench_push(features, windows, 1)
        if base_codec is not None:
            val_old += bench_validate(base_codec, objs, 1)
            push_old += bench_push(base_feat, windows, 1)
    rows.append(("RowValidator.validate", per_record_us(val_new, n), per_record_us(val_old, n) if val_old else None))
    rows.append(("push_window", per_record_us(push_new, n), per_record_us(push_old, n) if push_old else None))

    hdr = f"{'stage':<24}{'median us':>10}{'min':>8}{'max':>8}"
    if base_codec is not None:
        hdr += f"{'baseline':>11}{'ratio':>8}"
    print(hdr)
    for name, (med, lo, hi), base in rows:
        line = f"{name:<24}{med:>10.2f}{lo:>8.2f}{hi:>8.2f}"
        if base is not None:
            line += f"{base[0]:>11.2f}{base[0] / med:>7.2f}x"
        print(line)
    print(f"bench_hotpath: loads_us={rows[1][1][0]:.2f} validate_us={rows[2][1][0]:.2f} push_window_us={rows[3][1][0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
