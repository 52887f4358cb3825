"""Topic contracts (docs/contracts/*.schema.json, docs/asyncapi.yaml) against real records.

* the committed schema files are what ``taskclf_daemon.contracts`` generates (drift);
* every golden input row validates against the v1 schema, and the decoder and the input-row
  schemas agree on valid and invalid rows (field by field, value by value), except for the
  divergences the schemas document under ``x-taskclf-not-expressible`` -- pinned here, each in
  its direction;
* the pipeline's outputs (with and without a taxonomy), their headers, the dead letters' headers
  and the changelog values validate against theirs;
* the AsyncAPI document parses, every ``$ref`` resolves, and its topic names are the config
  defaults.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml

from helpers_rows import REPO_ROOT, V1_HASH, V2_HASH, V3_HASH, golden_dir, make_row, validator
from taskclf_daemon import contracts, wire
from taskclf_daemon.artifacts import build_pipeline
from taskclf_daemon.changelog import changelog_topic_name
from taskclf_daemon.codec import MAX_STR_CHARS, MAX_USER_ID_CHARS, REASONS, decode_window
from taskclf_daemon.config import KEYS, load_settings
from taskclf_daemon.errors import InvalidRecord
from taskclf_daemon.labels import LABELS, MIXED_UNKNOWN
from taskclf_daemon.records import DeadLetter, SourceRef
from taskclf_daemon.schema import SCHEMAS
from taskclf_daemon.shard import PipelineShard, RawBatch
from taskclf_daemon.state import UserState

DOCS = REPO_ROOT / "docs"
CONTRACTS = DOCS / "contracts"
ASYNCAPI = DOCS / "asyncapi.yaml"
EXAMPLE_TAXONOMY = REPO_ROOT / "config" / "taxonomy.example.yaml"


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((CONTRACTS / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


ROW_SCHEMAS = {v: _validator(f"feature-row.{v}.schema.json") for v in SCHEMAS}


def _errors(v: jsonschema.Draft202012Validator, obj: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:160]}" for e in v.iter_errors(obj)]


# --------------------------------------------------------------------------- drift


def test_committed_contract_files_are_what_the_generator_writes() -> None:
    assert contracts.drifted(CONTRACTS) == [], "docs/contracts drifted from taskclf_daemon.contracts: regenerate with `python -m taskclf_daemon.contracts docs/contracts`"
    committed = {p.name for p in CONTRACTS.glob("*.json")}
    assert committed == set(contracts.FILES), f"files in docs/contracts not made by the generator: {sorted(committed - set(contracts.FILES))}"


def test_check_flag_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert contracts.main([str(tmp_path)]) == 0
    assert contracts.main(["--check", str(tmp_path)]) == 0
    p = tmp_path / "window-prediction.schema.json"
    p.write_text(p.read_text().replace('"minItems": 8', '"minItems": 7'))
    assert contracts.main(["--check", str(tmp_path)]) == 1
    assert "window-prediction.schema.json" in capsys.readouterr().err


def test_every_schema_is_valid_draft_2020_12() -> None:
    for name in contracts.FILES:
        schema = json.loads((CONTRACTS / name).read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)


def test_input_schemas_follow_the_decoder_field_table() -> None:
    """Spot checks that the generator read the table (the agreement tests below check behaviour)."""
    v1 = json.loads((CONTRACTS / "feature-row.v1.schema.json").read_text())
    p = v1["properties"]
    assert p["user_id"]["maxLength"] == MAX_USER_ID_CHARS and p["user_id"]["minLength"] == 1
    assert p["app_id"]["maxLength"] == MAX_STR_CHARS
    assert (p["hour_of_day"]["minimum"], p["hour_of_day"]["maximum"]) == (0, 23)
    assert (p["window_title_bucket"]["type"], p["window_title_bucket"]["maximum"]) == ("integer", 255)
    assert p["backspace_ratio"]["type"] == ["number", "null"] and p["backspace_ratio"]["maximum"] == 1.0
    assert p["domain_category"]["default"] == "unknown" and p["idle_return_indicator"]["default"] is False
    assert (p["schema_version"]["const"], p["schema_hash"]["const"]) == ("v1", V1_HASH)
    assert v1["propertyNames"] == {"not": {"pattern": "^raw_"}}
    assert set(p) == {n for n, _t in SCHEMAS["v1"].registry}
    v2 = json.loads((CONTRACTS / "feature-row.v2.schema.json").read_text())
    assert "user_id" in v2["required"] and v2["properties"]["schema_hash"]["const"] == V2_HASH
    v3 = json.loads((CONTRACTS / "feature-row.v3.schema.json").read_text())
    assert len(v3["properties"]) == len(SCHEMAS["v3"].registry) == 308
    assert v3["properties"]["title_token_sketch_127"] == {"description": "Model input; absent = the default.", "type": "number", "minimum": 0.0, "maximum": 1.0, "default": 0.0}
    assert v3["properties"]["schema_hash"]["const"] == V3_HASH


# --------------------------------------------------------------------------- input rows


def _golden_lines() -> list[bytes]:
    return [ln for ln in (golden_dir() / "inputs.jsonl").read_bytes().splitlines() if ln.strip()]


def test_every_golden_input_row_validates_against_the_v1_schema() -> None:
    lines = _golden_lines()
    assert len(lines) == 3030
    for i, line in enumerate(lines):
        assert _errors(ROW_SCHEMAS["v1"], json.loads(line)) == [], f"golden line {i + 1}"


def _decoder_accepts(row: Any, version: str) -> tuple[bool, str]:
    try:
        decode_window(orjson.dumps(row), validator(version))
    except InvalidRecord as exc:
        return False, f"{exc.reason}: {exc.detail}"
    return True, ""


def _agree(row: Any, version: str = "v1") -> bool:
    """Assert that the decoder and the schema agree on ``row``; return whether both accept it."""
    ok, why = _decoder_accepts(row, version)
    errs = _errors(ROW_SCHEMAS[version], row)
    assert ok == (not errs), f"decoder {'accepts' if ok else 'refuses (' + why + ')'}, schema {'refuses: ' + '; '.join(errs) if errs else 'accepts'}: {str(row)[:300]}"
    return ok


def _row(version: str = "v1", **overrides: Any) -> dict[str, Any]:
    hashes = {"v1": V1_HASH, "v2": V2_HASH, "v3": V3_HASH}
    return make_row(**{"schema_version": version, "schema_hash": hashes[version], **overrides})


#: JSON values tried in every field: the decoder and the schema must agree on each
VALUE_POOL: list[Any] = [
    None, True, False, -1, 0, 1, 10.0, 0.5, 1.5, -0.25, 23, 24, 255, 256, 2**63, 1e308, -1e308,
    "", "x", "10", "x" * MAX_USER_ID_CHARS, "x" * (MAX_USER_ID_CHARS + 1), "x" * MAX_STR_CHARS, "x" * (MAX_STR_CHARS + 1),
    [], ["a", "b"], [1], {}, {"a": 1},
    "2026-04-06T10:00:00Z", 1775469600, 1775469600000,
]


def _fields_to_try(version: str) -> list[str]:
    names = [n for n, _t in SCHEMAS[version].registry]
    if version == "v3":  # the v1 fields are tried under v1; here the v3-only kinds
        names = [n for n in names if n.startswith("title_")]
        names = [n for n in names if "sketch" not in n] + ["title_token_sketch_000", "title_char3_sketch_127"]
    return names


@pytest.mark.parametrize("version", list(SCHEMAS))
def test_decoder_and_schema_agree_field_by_field(version: str) -> None:
    """Every field x every value of the pool, and every field dropped: both accept or both refuse."""
    n_ok = n_bad = 0
    for name in _fields_to_try(version) + (["user_id"] if version == "v2" else []):
        rows = [_row(version, _drop=(name,))] + [_row(version, **{name: v}) for v in VALUE_POOL]
        for row in rows:
            # bucket_end_ts after bucket_start_ts is not expressible (a pinned divergence below)
            if name == "bucket_start_ts":
                row.pop("bucket_end_ts")
            elif name == "bucket_end_ts":
                row["bucket_start_ts"] = "1970-01-01T00:00:00Z"
                if row.get(name) == 0 and row.get(name) is not False:
                    continue
            ok = _agree(row, version)
            n_ok += ok
            n_bad += not ok
    assert n_ok > 20 and n_bad > 100  # both sides exercised


VALID_ROWS: list[dict[str, Any]] = [
    make_row(),
    make_row(_drop=("device_id", "session_id", "bucket_end_ts", "schema_hash", "source_ids", "window_title_hash", "app_entropy_5m", "idle_return_indicator", "domain_category", "keys_per_min_rolling_5")),
    make_row(keys_per_min=78, hour_of_day=10.0, app_foreground_time_ratio=1, keys_per_min_delta=-5.5, keys_per_min_rolling_5=-1e300),
    make_row(extra={"nested": [1, 2]}, xraw_title="ok", rawness=1, _raw_x=2),
    make_row(app_id="", app_category="", source_ids=[], domain_category=""),
    make_row(user_id="ü" * MAX_USER_ID_CHARS, app_id="\U0001f600" * MAX_STR_CHARS),
    make_row(day_of_week=6, hour_of_day=0, window_title_bucket=0, top2_app_concentration_15m=0.0),
]

#: (the validator's schema version, row)
INVALID_ROWS: list[tuple[str, Any]] = [
    ("v1", []), ("v1", "row"), ("v1", 1), ("v1", None),
    ("v1", make_row(raw_window_title="secret")),
    ("v1", make_row(raw_=1)),
    ("v1", make_row(schema_version="v2")),
    ("v2", make_row()),
    ("v1", make_row(schema_hash=V2_HASH)),
    ("v1", make_row(schema_hash=None)),
    ("v1", make_row(user_id="ü" * (MAX_USER_ID_CHARS + 1))),
    ("v1", make_row(app_id="\U0001f600" * (MAX_STR_CHARS + 1))),
    ("v1", make_row(hour_of_day=10.5)),
    ("v1", make_row(is_browser=1)),
    ("v1", make_row(bucket_end_ts=None)),
    ("v1", make_row(source_ids=["a", None])),
    ("v1", make_row(app_switch_count_last_15m=-1)),
    ("v1", make_row(mouse_distance_rolling_15=-0.5)),
    ("v1", make_row(session_length_so_far=-1)),
    ("v2", _row("v2", _drop=("user_id",))),
    ("v3", _row("v3", title_digit_ratio=1.5)),
    ("v3", _row("v3", title_char_count=-1)),
    ("v3", _row("v3", title_char_count=2.5)),
]


@pytest.mark.parametrize("row", VALID_ROWS, ids=range(len(VALID_ROWS)))
def test_valid_edge_rows_are_accepted_by_both(row: dict[str, Any]) -> None:
    assert _decoder_accepts(row, "v1")[0]
    _agree(row)


@pytest.mark.parametrize(("version", "row"), INVALID_ROWS, ids=range(len(INVALID_ROWS)))
def test_invalid_edge_rows_are_refused_by_both(version: str, row: Any) -> None:
    assert not _decoder_accepts(row, version)[0]
    _agree(row, version)


TIMESTAMPS_BOTH_ACCEPT = [
    "2026-04-06T10:00:00Z", "2026-04-06T10:00:00+02:00", "2026-04-06T10:00:00-09:30", "2026-04-06T10:00:00",
    "2026-04-06T10:00:00.5Z", "2026-04-06T10:00:00.123456+00:00",
    "1970-01-01T00:00:00Z", "1970-01-01T00:00:00", "2199-12-31T23:59:59.999999Z", "2199-12-31T23:59:59",
    "2024-02-29T00:00:00Z", "2000-02-29T00:00:00Z", "2196-02-29T00:00:00Z", "2026-12-31T23:59:59Z", "2026-04-30T00:00:00Z",
    0, 1, 1775469600, 1775469600.25, 7258118399, 100_000_000_001, 1775469600000, 7258118399999,
]
TIMESTAMPS_BOTH_REFUSE = [
    None, True, "", "now", "2026-04-06T10:00:00Zjunk", "2026-02-29T00:00:00Z", "2100-02-29T00:00:00Z", "2026-04-31T00:00:00Z",
    "2026-13-01T00:00:00Z", "2026-04-06T24:00:00Z", "2026-04-06T10:60:00Z", "2026-04-06T10:00:60Z",
    "1969-12-31T23:59:59Z", "2200-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-04-06T10:00:00+24:00",
    "2026-04-06T10:00:00Z" + " " * 60,
    -1, 7258118400, 99_999_999_999, 100_000_000_000, 7258118400000, -1775469600000, 1e300, [1775469600], {"ts": 1},
]


@pytest.mark.parametrize("field", ["bucket_start_ts", "bucket_end_ts"])
def test_decoder_and_schema_agree_on_timestamps(field: str) -> None:
    cases = [(ts, True) for ts in TIMESTAMPS_BOTH_ACCEPT] + [(ts, False) for ts in TIMESTAMPS_BOTH_REFUSE]
    for ts, accepted in cases:
        row = make_row(**{field: ts}, _drop=("bucket_end_ts",) if field == "bucket_start_ts" else ())
        if field == "bucket_end_ts":  # keep end after start
            row["bucket_start_ts"] = "1970-01-01T00:00:00Z"
            if accepted and ts in (0, "1970-01-01T00:00:00Z", "1970-01-01T00:00:00"):
                continue
        assert _decoder_accepts(row, "v1")[0] == accepted, (field, ts)
        _agree(row)


#: what the schema cannot express, pinned in its direction: (row, decoder accepts, schema accepts)
DIVERGENCES: list[tuple[str, dict[str, Any], bool, bool]] = [
    ("end not after start", make_row(bucket_end_ts="2026-04-06T10:00:00Z"), False, True),
    ("offset moves it before 1970 UTC", make_row(bucket_start_ts="1970-01-01T00:30:00+01:00", _drop=("bucket_end_ts",)), False, True),
    ("offset moves it past 2199 UTC", make_row(bucket_start_ts="2199-12-31T23:30:00-01:00", _drop=("bucket_end_ts",)), False, True),
    ("surrounding whitespace", make_row(bucket_start_ts=" 2026-04-06T10:00:00Z ", _drop=("bucket_end_ts",)), True, False),
    ("space for T", make_row(bucket_start_ts="2026-04-06 10:00:00", _drop=("bucket_end_ts",)), True, False),
    ("date only", make_row(bucket_start_ts="2026-04-06", _drop=("bucket_end_ts",)), True, False),
    ("reduced precision", make_row(bucket_start_ts="2026-04-06T10:00Z", _drop=("bucket_end_ts",)), True, False),
    ("basic format", make_row(bucket_start_ts="20260406T100000Z", _drop=("bucket_end_ts",)), True, False),
    ("7 fraction digits", make_row(bucket_start_ts="2026-04-06T10:00:00.1234567Z", _drop=("bucket_end_ts",)), True, False),
    ("epoch seconds just below 0", make_row(bucket_start_ts=-1e-7, _drop=("bucket_end_ts",)), True, False),
]


@pytest.mark.parametrize(("what", "row", "decoder_ok", "schema_ok"), DIVERGENCES, ids=[d[0] for d in DIVERGENCES])
def test_documented_divergences_hold_in_their_direction(what: str, row: dict[str, Any], decoder_ok: bool, schema_ok: bool) -> None:
    assert _decoder_accepts(row, "v1")[0] == decoder_ok, what
    assert (not _errors(ROW_SCHEMAS["v1"], row)) == schema_ok, what


def test_the_divergences_are_documented_in_every_input_schema() -> None:
    for v in SCHEMAS:
        notes = " ".join(json.loads((CONTRACTS / f"feature-row.{v}.schema.json").read_text())["x-taskclf-not-expressible"])
        for word in ("bucket_end_ts", "offset", "whitespace", "below 0", "max_record_bytes"):
            assert word in notes, (v, word)


# --------------------------------------------------------------------------- outputs and state


def _run(taxonomy: Path | None) -> tuple[Any, PipelineShard, Any]:
    pipe, _ = build_pipeline(policy=golden_dir() / "models" / "inference_policy.json", taxonomy=taxonomy)
    shard = PipelineShard(pipe)
    batch = RawBatch("taskclf.features")
    offsets = [0, 0, 0]
    for line in _golden_lines():
        user = orjson.loads(line)["user_id"].encode()
        part = zlib.crc32(user) % 3
        batch.add(part, offsets[part], line, user)
        offsets[part] += 1
    return pipe, shard, shard.process(batch, now_s=1_775_469_600)


@pytest.fixture(scope="module")
def plain() -> tuple[Any, PipelineShard, Any]:
    return _run(None)


@pytest.fixture(scope="module")
def mapped() -> tuple[Any, PipelineShard, Any]:
    return _run(EXAMPLE_TAXONOMY)


def _check_outputs(res: Any) -> list[dict[str, Any]]:
    out_v = _validator("window-prediction.schema.json")
    hdr_v = _validator("window-prediction-headers.schema.json")
    recs = []
    assert len(res.outputs) == 3030 and not res.dead
    for key, value, src in res.outputs:
        rec = json.loads(value)
        assert _errors(out_v, rec) == [], value[:300]
        assert key == rec["user_id"].encode()
        assert _errors(hdr_v, {"taskclf-source": src.decode(), "taskclf-processed-ms": "1775469600123"}) == []
        # what the schema cannot express (x-taskclf-not-expressible), checked here
        assert abs(sum(rec["core_probs"]) - 1) <= 1e-4 and abs(sum(rec["mapped_probs"].values()) - 1) <= 1e-4
        assert rec["core_label_name"] == LABELS[rec["core_label_id"]]
        assert rec["confidence"] == max(rec["core_probs"])
        recs.append(rec)
    return recs


def test_outputs_without_a_taxonomy_validate(plain: tuple[Any, PipelineShard, Any]) -> None:
    recs = _check_outputs(plain[2])
    assert {r["calibrator_scope"] for r in recs} == {"user", "global"}
    # provenance: the bundle and the store in force, the store id as the pipeline names it
    assert {(r["model_bundle_id"], r["calibrator_store_id"]) for r in recs} == {("2026-04-06_000000_run-0001", plain[0].store.store_id)}
    assert plain[0].store.store_id.startswith("calibrator_store@") and len(plain[0].store.store_id) == len("calibrator_store@") + 8
    assert list(recs[0])[-3:] == ["calibrator_store_id", "calibrator_kind", "calibrator_version"]
    # the store's calibrators: user ones and the global one, kinds as in the store, no version
    assert {(r["calibrator_scope"], r["calibrator_kind"], r["calibrator_version"]) for r in recs} == {("user", plain[0].store.method, None), ("global", plain[0].store.global_calibrator.kind, None)}
    assert any(r["is_rejected"] for r in recs) and any(r["smoothed_label_name"] == MIXED_UNKNOWN for r in recs)
    for r in recs:
        assert r["mapped_label_name"] == r["smoothed_label_name"] and list(r["mapped_probs"]) == list(LABELS)


def test_outputs_with_the_example_taxonomy_validate(mapped: tuple[Any, PipelineShard, Any]) -> None:
    recs = _check_outputs(mapped[2])
    buckets = {b["name"] for b in yaml.safe_load(EXAMPLE_TAXONOMY.read_text())["buckets"]}
    rejected = [r for r in recs if r["is_rejected"]]
    assert rejected and all(len(r["mapped_probs"]) == 1 and list(r["mapped_probs"].values()) == [1.0] for r in rejected)
    assert {r["mapped_label_name"] for r in recs if not r["is_rejected"]} <= buckets | {"Other"}


def test_output_schema_refuses_what_the_daemon_never_writes(plain: tuple[Any, PipelineShard, Any]) -> None:
    v = _validator("window-prediction.schema.json")
    rec = json.loads(plain[2].outputs.values[0])
    bad = [
        {**rec, "extra": 1},
        {**rec, "core_probs": rec["core_probs"][:7]},
        {**rec, "model_version": SCHEMAS["v2"].hash},  # v1 model
        {**rec, "bucket_start_ts": "2026-04-06T01:23:00+00:00"},
        {**rec, "calibrator_scope": "users"},
        {k: x for k, x in rec.items() if k != "model_bundle_id"},
        {k: x for k, x in rec.items() if k != "calibrator_store_id"},
        {**rec, "calibrator_store_id": ""},
        {**rec, "calibrator_kind": "platt"},
        {k: x for k, x in rec.items() if k != "calibrator_version"},
    ]
    assert _errors(v, {**rec, "calibrator_scope": "user", "calibrator_kind": "head", "calibrator_version": "h2-6312beb5"}) == []
    assert _errors(v, {**rec, "calibrator_store_id": None}) == []  # no store
    for b in bad:
        assert _errors(v, b), b


def test_changelog_values_validate(plain: tuple[Any, PipelineShard, Any]) -> None:
    v = _validator("user-state.v3.schema.json")
    cp = plain[1].checkpoint(None, now_s=1_775_469_600)
    assert len(cp.updates) == len({json.loads(ln)["user_id"] for ln in _golden_lines()}) == 10
    users = {json.loads(ln)["user_id"] for ln in _golden_lines()}
    for _part, key, value in cp.updates:
        assert key.decode() in users
        st = json.loads(value)
        assert _errors(v, st) == [], value[:300]
        assert len(st["h"]) > 0 and st["t"] is not None and st["p"] in (0, 1, 2)
        assert len(st["m"]) <= st["w"]  # not expressible; checked here
    fresh = UserState(3).to_bytes()
    assert _errors(v, json.loads(fresh)) == []
    assert _errors(v, {**json.loads(fresh), "v": 1})


def test_dead_letter_headers_validate_for_every_reason() -> None:
    """The headers ``wire.dead_letter`` builds (the one place dead letters are made), for every
    reason, cut and uncut."""
    v = _validator("dead-letter-headers.schema.json")
    cases = [
        (SourceRef("taskclf.features", 3, 12345), b"user-1", b"{nope"),
        (SourceRef("taskclf.features", 0, 0), None, None),
        (SourceRef("taskclf.features", 1, 7), b"k" * 100, b"v" * 10_000),
        (SourceRef("taskclf.features", 1, 8), b"k" * 5_000, b"v" * 10_000),
    ]
    records = [wire.dead_letter(DeadLetter(0, src, key, value, reason, "field 'x' \u00fc " * 100), 4096) for reason in contracts.DLQ_REASONS for src, key, value in cases]
    assert len(records) == len(contracts.DLQ_REASONS) * len(cases)
    truncated = set()
    for _key, _value, headers in records:
        h = {k: x.decode("utf-8") for k, x in headers}
        assert len(h) == len(headers)
        assert _errors(v, h) == [], h
        truncated.add(h.get("taskclf-dlq-truncated"))
    assert truncated == {None, "value", "key,value"}
    assert _errors(v, {**h, "taskclf-dlq-reason": "bogus"}) and _errors(v, {**h, "x-other": "1"})


def test_dead_letter_reasons_are_every_reason_the_code_can_give() -> None:
    """The reason enum = codec.REASONS + contracts.RUNTIME_REASONS, and every reason string the
    package raises or dead-letters with is in it (a source scan: a new reason fails here)."""
    assert contracts.DLQ_REASONS[: len(REASONS)] == REASONS
    src = "\n".join(p.read_text() for p in (REPO_ROOT / "daemon" / "taskclf_daemon").rglob("*.py"))
    used = set(re.findall(r'InvalidRecord\(\s*"(\w+)"', src)) | set(re.findall(r'_dead\(batch, \w+, "(\w+)"', src)) | set(re.findall(r'DeadLetter\([^)]*?"(\w+)", _error_detail', src))
    assert used == set(contracts.DLQ_REASONS), (sorted(used - set(contracts.DLQ_REASONS)), sorted(set(contracts.DLQ_REASONS) - used))
    enum = json.loads((CONTRACTS / "dead-letter-headers.schema.json").read_text())["properties"]["taskclf-dlq-reason"]["enum"]
    assert enum == list(contracts.DLQ_REASONS)


# --------------------------------------------------------------------------- AsyncAPI


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    return yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))


def _refs(node: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        out = [(path, node["$ref"])] if "$ref" in node else []
        for k, v in node.items():
            out += _refs(v, f"{path}/{k}")
        return out
    if isinstance(node, list):
        return [r for i, v in enumerate(node) for r in _refs(v, f"{path}/{i}")]
    return []


def _pointer(doc: Any, pointer: str) -> Any:
    for part in pointer.lstrip("/").split("/") if pointer.strip("/") else []:
        part = part.replace("~1", "/").replace("~0", "~")
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def test_asyncapi_structure(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    from taskclf_daemon import __version__

    assert asyncapi["info"]["version"] == __version__
    channels, ops = asyncapi["channels"], asyncapi["operations"]
    assert set(channels) == {"features", "predictions", "deadLetters", "stateChangelog", "labels", "labelRequests"}
    for name, ch in channels.items():
        assert ch["address"] and ch["messages"], name
        assert ch["bindings"]["kafka"]["bindingVersion"] == "0.5.0"
    for name, op in ops.items():
        assert op["action"] in ("send", "receive"), name
        ch_ref = op["channel"]["$ref"]
        assert ch_ref.startswith("#/channels/"), name
        ch_name = ch_ref.split("/")[-1]
        for m in op["messages"]:  # an operation's messages must be its channel's
            assert m["$ref"].startswith(f"#/channels/{ch_name}/messages/"), (name, m)
    assert {(op["action"], op["channel"]["$ref"].split("/")[-1]) for op in ops.values()} == {
        ("receive", "features"), ("send", "predictions"), ("send", "deadLetters"), ("send", "stateChangelog"), ("receive", "stateChangelog"),
        ("receive", "labels"), ("send", "labelRequests"),
    }
    assert channels["stateChangelog"]["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"] == ["compact"]
    desc = asyncapi["info"]["description"]
    for words in ("at-least-once", "byte-identical", "(user_id, bucket_start_ts)", "murmur2"):
        assert words in desc.replace("\n", " "), words


def test_asyncapi_refs_resolve_to_committed_files(asyncapi: dict[str, Any]) -> None:
    refs = _refs(asyncapi)
    files = set()
    for where, ref in refs:
        target, _, pointer = ref.partition("#")
        if target:
            p = (ASYNCAPI.parent / target).resolve()
            assert p.is_file() and p.parent == CONTRACTS.resolve(), (where, ref)
            files.add(p.name)
            _pointer(json.loads(p.read_text()), pointer)
        else:
            _pointer(asyncapi, pointer)  # raises KeyError when it does not resolve
    assert files == set(contracts.FILES), sorted(set(contracts.FILES) - files)


def test_asyncapi_topics_are_the_config_defaults(asyncapi: dict[str, Any]) -> None:
    s = load_settings(None, env={}, flags={"model_dir": "unused"})
    for name, ch in asyncapi["channels"].items():
        key = ch["x-taskclf-config-key"]
        default = KEYS[key].default
        if key == "changelog_topic":
            assert default is None
            assert ch["address"] == changelog_topic_name(s) == f"{KEYS['input_topic'].default}.{KEYS['group_id'].default}.state"
        else:
            assert ch["address"] == default, name
        assert ch["bindings"]["kafka"]["partitions"] == KEYS["topic_partitions"].default
        assert ch["bindings"]["kafka"]["replicas"] == KEYS["topic_replication"].default
    op = asyncapi["operations"]["receiveFeatureRows"]["bindings"]["kafka"]
    assert op["groupId"]["default"] == KEYS["group_id"].default and op["clientId"]["default"] == KEYS["client_id"].default
    assert asyncapi["servers"]["kafka"]["host"] == KEYS["bootstrap_servers"].default


def test_asyncapi_message_keys_are_user_ids(asyncapi: dict[str, Any]) -> None:
    for name, m in asyncapi["components"]["messages"].items():
        key = m["bindings"]["kafka"]["key"]
        if name == "deadLetter":
            assert key["format"] == "binary"
        else:
            assert key["maxLength"] == MAX_USER_ID_CHARS, name


def test_label_spans_and_requests_validate_against_their_schemas() -> None:
    """Real records: spans the decoder accepts validate, spans it refuses mostly do not; the
    requests a shard writes validate."""
    from taskclf_daemon.errors import InvalidRecord
    from taskclf_daemon.pipeline.label_requests import encode_request
    from taskclf_daemon.pipeline.labelspan import decode_span

    vs = _validator("label-span.schema.json")
    good = {"start_ts": "2026-03-09T09:00:00Z", "end_ts": "2026-03-09T10:00:00+00:30", "label": "Build", "provenance": "manual", "user_id": "u1", "confidence": 0.9}
    for rec in (good, {**good, "confidence": None, "extend_forward": True}):
        decode_span(json.dumps(rec).encode(), key=b"u1")
        assert _errors(vs, rec) == []
    for bad in ({**good, "label": "Coding"}, {k: v for k, v in good.items() if k != "user_id"}, {**good, "confidence": 1.5}, {**good, "user_id": ""}):
        with pytest.raises(InvalidRecord):
            decode_span(json.dumps(bad).encode(), key=b"u1")
        assert _errors(vs, bad), bad
    vr = _validator("label-request.schema.json")
    req = json.loads(encode_request("u1", 1_775_520_000_000_000, 0.412345, 3))
    assert _errors(vr, req) == [] and list(req) == vr.schema["required"]
    assert _errors(vr, {**req, "confidence": 0.55}) and _errors(vr, {**req, "request_id": "not-a-uuid"})
