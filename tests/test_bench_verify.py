"""``scripts/bench_verify.py``: the benchmark's value check against an offline replay."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import orjson

from golden_fixture import golden_home
from taskclf_daemon.config import load_settings

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_verify", REPO / "scripts" / "bench_verify.py")
assert _spec is not None and _spec.loader is not None
bench_verify = importlib.util.module_from_spec(_spec)
sys.modules["bench_verify"] = bench_verify
_spec.loader.exec_module(bench_verify)

N_ROWS = 240


def _value(user: str, ts: str, **fields: object) -> bytes:
    return orjson.dumps({"user_id": user, "bucket_start_ts": ts, "label": "Build", "core_probs": [0.5, 0.5], **fields})


def _settings(**overrides: object) -> object:
    policy = golden_home() / "models" / "inference_policy.json"
    s = load_settings(None, env={}, flags={"bootstrap_servers": "127.0.0.1:9", "group_id": "t", "policy": str(policy)}, require_model=False)
    return s.replace(**overrides) if overrides else s


def _records() -> list[tuple[bytes, bytes]]:
    lines = [ln for ln in (golden_home() / "inputs.jsonl").read_bytes().splitlines() if ln.strip()][:N_ROWS]
    return [(orjson.loads(ln)["user_id"].encode(), ln) for ln in lines]


def test_equal_values_are_ok() -> None:
    vals = {("u1", "t1"): _value("u1", "t1"), ("u2", "t1"): _value("u2", "t1")}
    res = bench_verify.compare_values(dict(vals), dict(vals))
    assert res == {"compared": 2, "equal": 2, "differing": 0, "missing": 0, "extra": 0, "ok": True, "fields": {}}


def test_differences_are_counted_by_field_with_an_example() -> None:
    want = {(u, "t1"): _value(u, "t1") for u in ("u1", "u2", "u3", "u4")}
    got = dict(want)
    got[("u2", "t1")] = _value("u2", "t1", core_probs=[0.5, 0.5000000000000001])
    got[("u3", "t1")] = _value("u3", "t1", core_probs=[0.4, 0.6], label="Debug")
    del got[("u4", "t1")]
    got[("u9", "t1")] = _value("u9", "t1")
    res = bench_verify.compare_values(got, want)
    assert (res["compared"], res["equal"], res["differing"], res["missing"], res["extra"], res["ok"]) == (3, 1, 2, 1, 1, False)
    assert res["fields"] == {"core_probs": 2, "label": 1}
    assert res["example"] == {"user_id": "u2", "bucket_start_ts": "t1", "field": "core_probs", "drained": [0.5, 0.5000000000000001], "replay": [0.5, 0.5]}
    line = bench_verify.summary_line("daemon", res, conflicts=1)
    assert line.startswith("values_daemon: compared=3 equal=1 differing=2 missing=1 extra=1 conflicts=1 fields=core_probs:2,label:1 example=(u2 t1 core_probs:")


def test_reference_is_the_replay_of_every_record_whatever_the_batch_size() -> None:
    records = _records()
    a = bench_verify.reference_values(_settings(), records, batch_size=512)
    b = bench_verify.reference_values(_settings(), records, batch_size=7)
    assert len(a) == N_ROWS
    assert bench_verify.compare_values(b, a)["ok"]
    key = bench_verify.output_key(records[5][1].replace(b" ", b""))
    assert key in a and orjson.loads(a[key])["user_id"] == key[0]


def test_a_different_config_is_caught() -> None:
    records = _records()
    ref = bench_verify.reference_values(_settings(), records)
    other = bench_verify.reference_values(_settings(reject_threshold=0.99), records)
    res = bench_verify.compare_values(other, ref)
    assert not res["ok"] and res["differing"] > 0 and res["missing"] == 0
    assert res["equal"] + res["differing"] == N_ROWS
