"""Compare the daemon's records with taskclf's golden records; returns a :class:`Report`.

Rows are matched on ``(user_id, bucket_start_ts)``, both compared as the exact strings taskclf
writes; the actual rows may come in any order, and a key may repeat (at-least-once delivery) only
with an identical record. For every matched row:

* ``predictions`` (``WindowPrediction``): the labels and flags ``core_label_id``,
  ``core_label_name``, ``mapped_label_name``, ``is_rejected`` and the version fields
  ``model_version``, ``schema_version``, ``label_version`` must be equal, with the same JSON type;
  the probabilities ``core_probs`` (same length, element-wise), ``confidence`` and
  ``mapped_probs`` (the same keys) must be within ``tol``.
* ``features`` (``expected_features.jsonl``): the 9 history fields must be null where the golden
  value is null and within ``tol`` of it otherwise.

Usable from the command line too::

    python tests/golden_compare.py --expected expected_w3.jsonl --actual out.jsonl [--mode features] [--tol 1e-5]
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Key = tuple[str, str]
Record = Mapping[str, Any]

EXACT_FIELDS = ("core_label_id", "core_label_name", "mapped_label_name", "is_rejected", "model_version", "schema_version", "label_version")
#: written out here on purpose (not imported from taskclf_daemon.schema): the oracle does not
#: trust the code under test for which fields it compares
OVERLAY_FIELDS = (
    "app_switch_count_last_15m",
    "keys_per_min_rolling_5",
    "keys_per_min_rolling_15",
    "mouse_distance_rolling_5",
    "mouse_distance_rolling_15",
    "keys_per_min_delta",
    "clicks_per_min_delta",
    "mouse_distance_delta",
    "session_length_so_far",
)
SHOW = 10


@dataclass
class Report:
    mode: str
    tol: float
    fail_on_extra: bool
    expected: int = 0
    actual_records: int = 0
    matched: int = 0
    missing: list[Key] = field(default_factory=list)
    extra: list[Key] = field(default_factory=list)
    duplicates: int = 0
    conflicting: list[Key] = field(default_factory=list)
    #: one entry per matched row that differs: (key, what differs)
    mismatches: list[tuple[Key, list[str]]] = field(default_factory=list)
    max_abs_diff: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and not self.missing
            and not self.conflicting
            and not self.mismatches
            and self.matched == self.expected
            and self.max_abs_diff <= self.tol
            and not (self.fail_on_extra and self.extra)
        )

    def summary(self) -> str:
        return (
            f"SUMMARY: {'PASS' if self.ok else 'FAIL'} mode={self.mode} expected={self.expected} matched={self.matched} "
            f"missing={len(self.missing)} extra={len(self.extra)} duplicates={self.duplicates} conflicting={len(self.conflicting)} "
            f"mismatched_rows={len(self.mismatches)} max_abs_diff={self.max_abs_diff:.3e} tol={self.tol:g}"
        )

    def __str__(self) -> str:
        out = [self.summary(), *self.problems]
        for title, keys in (("missing", self.missing), ("extra", self.extra), ("conflicting duplicates", self.conflicting)):
            out += [f"  {title}: {k[0]} {k[1]}" for k in keys[:SHOW]]
        out += [f"  differs: {k[0]} {k[1]}: {'; '.join(what)}" for k, what in self.mismatches[:SHOW]]
        return "\n".join(out)


def load_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """JSON objects of a JSONL file (plain, ``.gz`` or ``.xz``); blank lines are skipped."""
    p = Path(path)
    raw = p.read_bytes()
    if p.suffix == ".gz":
        raw = gzip.decompress(raw)
    elif p.suffix == ".xz":
        raw = lzma.decompress(raw)
    out = []
    for n, line in enumerate(raw.splitlines(), 1):
        if line.strip():
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(f"{p}:{n}: not a JSON object")
            out.append(obj)
    return out


def _records(src: Path | str | Iterable[Record | bytes]) -> list[Record]:
    if isinstance(src, (Path, str)):
        return load_jsonl(src)
    return [json.loads(r) if isinstance(r, (bytes, str)) else r for r in src]


def _key(rec: Record) -> Key:
    return (str(rec.get("user_id")), str(rec.get("bucket_start_ts")))


def _diff(e: Any, a: Any) -> float:
    """|e - a| for two JSON numbers; inf when either is not a number (booleans are not)."""
    if isinstance(e, bool) or isinstance(a, bool) or not isinstance(e, (int, float)) or not isinstance(a, (int, float)):
        return math.inf
    d = abs(float(e) - float(a))
    return math.inf if math.isnan(d) else d


def _same(e: Any, a: Any) -> bool:
    return type(e) is type(a) and e == a


def _prediction_diffs(e: Record, a: Record) -> tuple[list[str], float]:
    what: list[str] = []
    worst = 0.0
    for f in EXACT_FIELDS:
        if f in e and (f not in a or not _same(e[f], a[f])):
            what.append(f"{f}: expected {e[f]!r}, got {a.get(f, '<absent>')!r}")
    diffs: list[float] = []
    ecp, acp = e.get("core_probs"), a.get("core_probs")
    if not isinstance(ecp, list) or not isinstance(acp, list) or len(ecp) != len(acp):
        what.append(f"core_probs: expected {ecp!r}, got {acp!r}")
    else:
        diffs += [_diff(x, y) for x, y in zip(ecp, acp, strict=True)]
    diffs.append(_diff(e.get("confidence"), a.get("confidence")))
    emp, amp = e.get("mapped_probs"), a.get("mapped_probs")
    if emp is None:  # a row where taskclf itself crashes (taxonomy + rejected); the daemon's form
        if amp is not None and amp != {e.get("mapped_label_name"): 1.0}:
            what.append(f"mapped_probs: expected null or {{label: 1.0}}, got {amp!r}")
    elif not isinstance(emp, dict) or not isinstance(amp, dict) or set(emp) != set(amp):
        what.append(f"mapped_probs keys: expected {sorted(emp or ())}, got {sorted(amp) if isinstance(amp, dict) else amp!r}")
    else:
        diffs += [_diff(emp[k], amp[k]) for k in emp]
    for d in diffs:
        worst = max(worst, d)
    return what, worst


def _feature_diffs(e: Record, a: Record) -> tuple[list[str], float]:
    what: list[str] = []
    worst = 0.0
    for f in OVERLAY_FIELDS:
        if f not in a:
            what.append(f"{f}: absent")
        elif (e.get(f) is None) != (a[f] is None):
            what.append(f"{f}: expected {e.get(f)!r}, got {a[f]!r}")
        elif e.get(f) is not None:
            worst = max(worst, _diff(e[f], a[f]))
    return what, worst


def compare(
    expected: Path | str | Iterable[Record | bytes],
    actual: Path | str | Iterable[Record | bytes],
    *,
    mode: str = "predictions",
    tol: float | None = None,
    fail_on_extra: bool = False,
) -> Report:
    """Compare ``actual`` records with ``expected`` ones (files or records); see the module doc."""
    if mode not in ("predictions", "features"):
        raise ValueError(f"mode must be 'predictions' or 'features', not {mode!r}")
    tolerance = tol if tol is not None else (1e-5 if mode == "predictions" else 1e-9)
    rep = Report(mode=mode, tol=tolerance, fail_on_extra=fail_on_extra)
    exp: dict[Key, Record] = {}
    for r in _records(expected):
        if _key(r) in exp:
            rep.problems.append(f"expected records repeat the key {_key(r)}")
        exp[_key(r)] = r
    act: dict[Key, Record] = {}
    act_list = _records(actual)
    for r in act_list:
        k = _key(r)
        if k in act:
            rep.duplicates += 1
            if act[k] != r and k not in rep.conflicting:
                rep.conflicting.append(k)
        else:
            act[k] = r
    rep.expected, rep.actual_records = len(exp), len(act_list)
    rep.missing = [k for k in exp if k not in act]
    rep.extra = [k for k in act if k not in exp]
    diffs = _prediction_diffs if mode == "predictions" else _feature_diffs
    for k, e in exp.items():
        if k not in act:
            continue
        rep.matched += 1
        what, worst = diffs(e, act[k])
        if worst > tolerance:
            what.append(f"a value differs by {worst:.3e} > {tolerance:g}")
        if what:
            rep.mismatches.append((k, what))
        rep.max_abs_diff = max(rep.max_abs_diff, worst)
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--expected", required=True)
    ap.add_argument("--actual", required=True)
    ap.add_argument("--mode", choices=["predictions", "features"], default="predictions")
    ap.add_argument("--tol", type=float, default=None, help="max |difference| of a probability/feature (1e-5 predictions, 1e-9 features)")
    ap.add_argument("--fail-on-extra", action="store_true", help="also fail when actual has keys that expected lacks")
    ap.add_argument("--strict-meta", action="store_true", help="accepted for compatibility: version fields are always compared")
    a = ap.parse_args(argv)
    rep = compare(Path(a.expected), Path(a.actual), mode=a.mode, tol=a.tol, fail_on_extra=a.fail_on_extra)
    print(rep)
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
