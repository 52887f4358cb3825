"""Output values of a benchmark run checked against an offline replay of the same input.

The daemon's promise is determinism: the same artifacts, config and per-user input history give
byte-identical outputs whatever the batching, the workers or the restarts. A benchmark that only
counts outputs cannot see a broken promise, so every drained topic is also compared, value by
value, with what ``taskclf-daemon replay`` (the pure :class:`InferencePipeline`, no Kafka) writes
for the same records in the same per-user order, built from the same settings but always with the
``lightgbm`` backend (the reference: a compiled backend must not change a byte either).

* :func:`reference_values` -- replay records -> ``{(user_id, bucket_start_ts): value bytes}``;
* :func:`compare_values` -- missing / extra / differing counts, the differing fields over all
  differing values, and one example (key, first differing field, both values).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

Key = tuple[str, str]


def output_key(value: bytes) -> Key:
    """(user_id, bucket_start_ts) of an output value (the benchmark's dedupe key)."""
    import orjson

    rec = orjson.loads(value)
    return str(rec.get("user_id")), str(rec.get("bucket_start_ts"))


def reference_values(settings: Any, records: Sequence[tuple[bytes, bytes]], *, batch_size: int = 512) -> dict[Key, bytes]:
    """Replay ``records`` (values in produce order: every user's rows in its order) through the
    daemon's pipeline built from ``settings`` with the ``lightgbm`` backend; one value per key."""
    from taskclf_daemon.artifacts import pipeline_from_settings
    from taskclf_daemon.offline.replay import replay

    pipe, _desc = pipeline_from_settings(settings.replace(model_backend="lightgbm"))
    src = io.BytesIO(b"".join(v + b"\n" for _, v in records))
    dst = io.BytesIO()
    replay(pipe, src, dst, batch_size=batch_size, max_record_bytes=settings.max_record_bytes)
    out: dict[Key, bytes] = {}
    for line in dst.getvalue().splitlines():
        if line:
            out.setdefault(output_key(line), line)
    return out


def _first_difference(got: bytes, want: bytes) -> tuple[str, Any, Any]:
    import orjson

    g, w = orjson.loads(got), orjson.loads(want)
    for name in sorted(set(g) | set(w)):
        if g.get(name) != w.get(name):
            return name, g.get(name), w.get(name)
    return "<bytes>", got[:200].decode(errors="replace"), want[:200].decode(errors="replace")


def compare_values(got: Mapping[Key, bytes], want: Mapping[Key, bytes]) -> dict[str, Any]:
    """Value-by-value comparison of drained outputs with the replay reference.

    :return: ``{"compared", "equal", "differing", "missing", "extra", "ok", "fields", "example"}``;
        ``fields`` counts, over all differing values, the top-level fields that differ;
        ``example`` is the first differing key with its first differing field and both values
    """
    import orjson

    differing: list[Key] = []
    fields: Counter[str] = Counter()
    for key, value in got.items():
        ref = want.get(key)
        if ref is not None and ref != value:
            differing.append(key)
            g, w = orjson.loads(value), orjson.loads(ref)
            fields.update(n for n in set(g) | set(w) if g.get(n) != w.get(n))
    missing = sum(1 for k in want if k not in got)
    extra = sum(1 for k in got if k not in want)
    compared = sum(1 for k in got if k in want)
    res: dict[str, Any] = {"compared": compared, "equal": compared - len(differing), "differing": len(differing), "missing": missing,
                           "extra": extra, "ok": not differing and not missing and not extra, "fields": dict(fields.most_common())}
    if differing:
        key = min(differing)
        field, g_val, w_val = _first_difference(got[key], want[key])
        res["example"] = {"user_id": key[0], "bucket_start_ts": key[1], "field": field, "drained": g_val, "replay": w_val}
    return res


def summary_line(what: str, res: Mapping[str, Any], conflicts: int = 0) -> str:
    """One line: ``values_<what>: compared=N equal=N differing=N missing=N extra=N conflicts=N``
    plus the differing fields and the example when there are any."""
    line = (f"values_{what}: compared={res['compared']} equal={res['equal']} differing={res['differing']} missing={res['missing']} "
            f"extra={res['extra']} conflicts={conflicts}")
    if res.get("fields"):
        line += " fields=" + ",".join(f"{k}:{v}" for k, v in res["fields"].items())
    if res.get("example"):
        ex = res["example"]
        line += f" example=({ex['user_id']} {ex['bucket_start_ts']} {ex['field']}: drained={ex['drained']!r} replay={ex['replay']!r})"
    return line
