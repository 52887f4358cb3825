"""Topic contracts: JSON Schemas (draft 2020-12) of every record the daemon reads or writes.

* **input row** (``feature-row.<v>.schema.json``, one per schema version) -- *generated* from the
  decoder's own field table: :attr:`RowValidator.fields <taskclf_daemon.codec.RowValidator.fields>`
  gives each field's check, whether it is required and its default, and each check carries the
  parameters it was built with (``_contract``: type, nullability, numeric bounds, string length
  limits). The rest comes from the same constants the decoder uses: the schema version and hash
  (``schema.SCHEMAS``), the ``raw_*`` prohibition, the timestamp range (``timeutil``).
* **output record** (``window-prediction.schema.json``) and its headers
  (``window-prediction-headers.schema.json``), **dead-letter headers**
  (``dead-letter-headers.schema.json``) and the **changelog value**
  (``user-state.v3.schema.json``) -- written here by hand from the label set, the reasons, the
  encoder's keys and the state format, and held to real records by ``tests/test_contracts.py``.

What JSON Schema cannot say exactly is listed in each schema under ``x-taskclf-not-expressible``
(e.g. ``bucket_end_ts`` after ``bucket_start_ts``; the 1970..2199 UTC range of a timestamp with an
offset); the tests pin every such divergence, so a change of the decoder shows up there.

``python -m taskclf_daemon.contracts [DIR]`` writes the files (default ``docs/contracts``);
``--check`` exits 1 when the files in DIR differ from what this module generates. Pure: no Kafka,
no configuration, no I/O outside :func:`write_all` / :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskclf_daemon.codec import MAX_STR_CHARS, MAX_USER_ID_CHARS, REASONS, RowValidator
from taskclf_daemon.labels import HISTORY_ROWS, LABEL_VERSION, LABELS, MIXED_UNKNOWN, N_LABELS, REJECT_ID
from taskclf_daemon.pipeline.labelspan import SPAN_REASONS
from taskclf_daemon.pipeline.output import RECORD_KEYS
from taskclf_daemon.schema import META_COLUMNS, OVERLAY_COLUMNS, SCHEMAS
from taskclf_daemon.state import STATE_FORMAT
from taskclf_daemon.timeutil import _MS_CUTOFF, MAX_TS_CHARS, MAX_TS_US, MIN_TS_US

DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: base of every schema's ``$id`` (a URN: the files are identified, not fetched)
ID_BASE = "urn:taskclf-daemon:contract:"
#: the largest finite double: JSON numbers beyond it do not decode (orjson refuses them), and
#: every number field without an explicit bound is bounded by it (finite, as the checks demand)
DBL_MAX = sys.float_info.max

#: dead-letter reasons decided outside the decoder (``shard.py``); with :data:`codec.REASONS`
#: every value the ``taskclf-dlq-reason`` header (and the metric label) can take
RUNTIME_REASONS = ("key_mismatch", "event_time_ahead", "output_too_large", "processing_error")
#: reasons only a LabelSpan on the feedback topic can get (pipeline/labelspan.py)
LABEL_REASONS = tuple(r for r in SPAN_REASONS if r not in REASONS + RUNTIME_REASONS)
DLQ_REASONS = REASONS + RUNTIME_REASONS + LABEL_REASONS
#: longest ``taskclf-dlq-detail`` (characters; the daemon cuts the detail there)
MAX_DLQ_DETAIL_CHARS = 500
#: ``calibrator_scope`` values: the user's own calibrator, the store's global one, no store
CALIBRATOR_SCOPES = ("user", "global", "none")
#: Kafka's legal topic-name characters and length
TOPIC_PATTERN = "[A-Za-z0-9._-]{1,249}"

#: the file name of each generated schema -> its generator
FILES: dict[str, Callable[[], dict[str, Any]]] = {}


# --------------------------------------------------------------------------- timestamps


def _leap_years() -> str:
    """Years 1970..2199 that are leap years, as an alternation (2000 is, 2100 is not)."""
    return "19(?:7[26]|8[048]|9[26])|20(?:[02468][048]|[13579][26])|21(?:0[48]|[2468][048]|[13579][26])"


#: a calendar date of 1970..2199 (month lengths and leap years exact)
_DATE = (
    "(?:(?:19[7-9][0-9]|2[01][0-9]{2})-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    f"|(?:{_leap_years()})-02-29)"
)
#: ``T``, a time of day to the second, optionally a fraction of up to 6 digits and an offset
_TIME = "T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
#: an input timestamp string: RFC 3339 (offset optional: a naive time is UTC)
TS_PATTERN = f"^{_DATE}{_TIME}$"
#: an output timestamp: UTC, ``Z``, a fraction only when non-zero (``timeutil.format_ts_us``)
OUT_TS_PATTERN = f"^{_DATE}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{{6}})?Z$"


def _timestamp() -> dict[str, Any]:
    lo_s, hi_s = MIN_TS_US // 1_000_000, MAX_TS_US // 1_000_000
    return {
        "description": (
            "An instant in [1970-01-01T00:00:00Z, 2200-01-01T00:00:00Z): an ISO-8601 / RFC 3339 string "
            "(an offset is converted to UTC; no offset = UTC), or a JSON number of epoch seconds, or of "
            f"epoch milliseconds when its absolute value is above {_MS_CUTOFF:.0e}. Other instants are refused "
            "(bad_timestamp)."
        ),
        "anyOf": [
            {"type": "string", "maxLength": MAX_TS_CHARS, "pattern": TS_PATTERN},
            {"type": "number", "minimum": lo_s, "exclusiveMaximum": hi_s, "description": "epoch seconds"},
            {"type": "number", "exclusiveMinimum": _MS_CUTOFF, "exclusiveMaximum": hi_s * 1000, "description": "epoch milliseconds"},
        ],
        "x-taskclf-range": {"minimum": "1970-01-01T00:00:00Z", "exclusiveMaximum": "2200-01-01T00:00:00Z"},
    }


# --------------------------------------------------------------------------- input rows


def _field_schema(contract: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of one decoder check, from the parameters it was built with."""
    kind = contract["kind"]
    if kind in ("number", "integer"):
        lo, hi = contract["lo"], contract["hi"]
        out: dict[str, Any] = {
            "type": [kind, "null"] if contract["nullable"] else kind,
            "minimum": -DBL_MAX if lo is None else lo,
            "maximum": DBL_MAX if hi is None else hi,
        }
        return out
    if kind == "string":
        out = {"type": ["string", "null"] if contract["nullable"] else "string"}
        if contract["min_chars"]:
            out["minLength"] = contract["min_chars"]
        out["maxLength"] = contract["max_chars"]
        return out
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "string_list":
        return {"type": "array", "items": {"type": "string"}}
    if kind == "timestamp":
        return {"$ref": "#/$defs/timestamp"}
    raise ValueError(f"no JSON Schema for a check of kind {kind!r}")  # pragma: no cover - every kind above


def _describe(name: str, version: str, required: bool) -> str:
    if name in OVERLAY_COLUMNS:
        return "History feature: recomputed by the daemon from the user's last windows; a value sent is type-checked, then replaced."
    if name == "user_id" and version == "v2":
        return "Not a v2 model input, but required: it is the Kafka key, the state key and the output's user_id."
    if name == "schema_version":
        return "Must equal the loaded model's schema version (else schema_mismatch)."
    if name == "schema_hash":
        return "When present, must equal the hash of the schema version (else schema_mismatch)."
    if name in META_COLUMNS:
        return "Identity/meta field: never a model input" + (" except in v1." if name == "user_id" else ".")
    return "Model input." if required else "Model input; absent = the default."


def feature_row_schema(version: str) -> dict[str, Any]:
    """The JSON Schema of an input row of schema ``version``, from the decoder's field table."""
    fs = SCHEMAS[version]
    props: dict[str, Any] = {}
    required: list[str] = []
    for name, check, req, default in RowValidator(fs).fields:
        contract: dict[str, Any] = getattr(check, "_contract")  # noqa: B009 - set by codec on every check
        if name == "schema_version":
            p: dict[str, Any] = {"type": "string", "const": fs.version}
        elif name == "schema_hash":
            p = {"type": "string", "const": fs.hash}
        else:
            p = _field_schema(contract)
        p = {"description": _describe(name, version, req), **p}
        # a default is documented when it is itself a valid value (None for a non-nullable
        # optional field means "absent", e.g. bucket_end_ts)
        if not req and (default is not None or contract.get("nullable", False)):
            p["default"] = default
        props[name] = p
        if req:
            required.append(name)
    return {
        "$schema": DIALECT,
        "$id": f"{ID_BASE}feature-row.{version}",
        "title": f"taskclf FeatureRow, schema {version} (input topic value)",
        "description": (
            f"One taskclf FeatureRow of feature schema {version} (hash {fs.hash}): one user's 60-s window, "
            "a JSON object, UTF-8, at most max_record_bytes (default 1 MiB). Kafka key: the UTF-8 bytes of "
            "user_id. Generated from the decoder's field table (taskclf_daemon.contracts); a record that fails "
            "is dead-lettered with a reason (dead-letter-headers.schema.json). Keys not listed are ignored, "
            "except any key starting with raw_ (privacy)."
        ),
        "type": "object",
        "required": required,
        "properties": props,
        "propertyNames": {"not": {"pattern": "^raw_"}},
        "additionalProperties": True,
        "$defs": {"timestamp": _timestamp()},
        "x-taskclf-schema-hash": fs.hash,
        "x-taskclf-not-expressible": [
            "bucket_end_ts, when present, must be after bucket_start_ts (refused as bad_timestamp).",
            "A timestamp string is checked for its form and calendar date (years 1970..2199 as written); "
            "the decoder converts it to UTC first, so one within a day of the range ends whose offset moves "
            "it outside 1970-01-01 .. 2199-12-31 UTC is refused by the decoder although the pattern matches.",
            "The decoder is more lenient than this schema for timestamp strings (Python's "
            "datetime.fromisoformat after strip(): surrounding whitespace, a space for T, reduced precision, "
            "basic format, week dates, offsets with seconds, more than 6 fraction digits): send RFC 3339.",
            "An epoch-seconds float just below 0 (within half a microsecond) rounds to 0 and is accepted by the "
            "decoder; this schema says minimum 0.",
            "The whole record must be at most max_record_bytes (a setting, default 1 MiB; refused as oversize).",
            "A key may appear only once: with duplicate keys the decoder reads the last value.",
        ],
    }


def _row_schema(version: str) -> Callable[[], dict[str, Any]]:
    return lambda: feature_row_schema(version)


for _v in SCHEMAS:
    FILES[f"feature-row.{_v}.schema.json"] = _row_schema(_v)


# --------------------------------------------------------------------------- output record


def _prob() -> dict[str, Any]:
    return {"type": "number", "minimum": 0, "maximum": 1}


def window_prediction_schema() -> dict[str, Any]:
    """taskclf's ``WindowPrediction`` as the daemon writes it (``pipeline/output.py``)."""
    smoothed = [*LABELS, MIXED_UNKNOWN]
    props: dict[str, Any] = {
        "user_id": {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID_CHARS, "description": "The input row's user_id (also the Kafka key)."},
        "bucket_start_ts": {
            "type": "string",
            "pattern": OUT_TS_PATTERN,
            "format": "date-time",
            "description": "The window's start in UTC: YYYY-MM-DDTHH:MM:SSZ, with .ffffff only when the microseconds are not zero. Compare as instants, not as strings.",
        },
        "core_label_id": {"type": "integer", "minimum": 0, "maximum": N_LABELS - 1, "description": "Index of the most probable label in alphabetical label order (also when rejected)."},
        "core_label_name": {"enum": list(LABELS), "description": "LABELS[core_label_id]."},
        "core_probs": {
            "type": "array",
            "items": _prob(),
            "minItems": N_LABELS,
            "maxItems": N_LABELS,
            "description": f"Calibrated probabilities rounded to 6 decimals, in alphabetical label order: {', '.join(LABELS)}.",
        },
        "confidence": {**_prob(), "description": "The largest calibrated probability, rounded to 6 decimals (the reject decision uses the unrounded value)."},
        "is_rejected": {"type": "boolean", "description": "True iff the unrounded confidence is below the user's (else the global) reject threshold."},
        "mapped_label_name": {
            "type": "string",
            "description": (
                "Without a taxonomy: the smoothed label (= smoothed_label_name). With a taxonomy: the bucket of the "
                "highest score from the unsmoothed probabilities, or the taxonomy's reject label when rejected."
            ),
        },
        "mapped_probs": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": _prob(),
            "description": (
                "Without a taxonomy: {label: unrounded calibrated probability} for the 8 labels in alphabetical order. "
                "With a taxonomy: {bucket: score rounded to 6 decimals} in bucket order, or {<reject label>: 1.0} "
                "when rejected (taskclf's empty dict there fails its own validator)."
            ),
        },
        "model_version": {"type": "string", "pattern": "^[0-9a-f]{12}$", "description": "taskclf writes the model's schema hash here (not its run id)."},
        "schema_version": {"enum": [fs.tag for fs in SCHEMAS.values()], "description": "features_<v>: the model's feature schema."},
        "label_version": {"const": LABEL_VERSION},
        "model_bundle_id": {"type": "string", "minLength": 1, "description": "Provenance added by the daemon: the model bundle's directory name (taskclf's run id)."},
        "smoothed_label_name": {"enum": smoothed, "description": f"taskclf's rolling-majority smoothed label; {MIXED_UNKNOWN} for a rejected window that the majority keeps."},
        "calibrator_scope": {"enum": list(CALIBRATOR_SCOPES), "description": "Which calibrator produced core_probs: the user's own, the store's global one, or none (no store)."},
        "calibrator_store_id": {
            "type": ["string", "null"],
            "minLength": 1,
            "description": (
                "Provenance added by the daemon: the calibrator store in force, <store directory name>@<first 8 hex of the "
                "sha256 of its store.json metadata>; null without a store. With model_bundle_id it names the artifacts "
                "that produced the record (both change at a hot reload)."
            ),
        },
        "calibrator_kind": {
            "enum": ["identity", "temperature", "isotonic", "head"],
            "description": "The kind of calibrator that produced core_probs: the store's (identity without a store), or the user's personal model (head: a per-user linear head on the model's log-probabilities and the user's features).",
        },
        "calibrator_version": {
            "type": ["string", "null"],
            "description": (
                "The personal model's version when calibrator_scope is user and the learning loop adopted it "
                "(<kind initial><refit seq>-<8 hex of its parameters' sha256>, e.g. h2-6312beb5); null for a "
                "store calibrator (calibrator_store_id names it)."
            ),
        },
    }
    assert tuple(props) == RECORD_KEYS, "window-prediction properties out of step with pipeline.output.RECORD_KEYS"
    return {
        "$schema": DIALECT,
        "$id": f"{ID_BASE}window-prediction",
        "title": "taskclf WindowPrediction (output topic value)",
        "description": (
            "One prediction per accepted input window: a JSON object, UTF-8, keys in this order (taskclf's "
            "fields first, then the daemon's provenance: model_bundle_id, smoothed_label_name, "
            "calibrator_scope, calibrator_store_id, calibrator_kind, calibrator_version). Kafka key: the UTF-8 bytes of user_id; partition: Kafka's default murmur2 "
            "partitioner over that key. Delivery is at-least-once: after a restart or rebalance a record "
            "may be produced again, byte-identical; deduplicate on (user_id, bucket_start_ts). The schema is "
            "closed (additionalProperties false) so the daemon's tests catch an undocumented field; a "
            "consumer should ignore keys it does not know."
        ),
        "type": "object",
        "required": list(RECORD_KEYS),
        "properties": props,
        "additionalProperties": False,
        "allOf": [
            {"if": {"properties": {"schema_version": {"const": fs.tag}}}, "then": {"properties": {"model_version": {"const": fs.hash}}}}
            for fs in SCHEMAS.values()
        ],
        "x-taskclf-not-expressible": [
            "core_probs sums to 1 within 1e-4 (rounding); mapped_probs too.",
            "core_label_name is LABELS[core_label_id] and core_label_id is the index of the largest unrounded probability.",
            "confidence is the largest core probability; is_rejected compares the unrounded value with the threshold.",
            "Without a taxonomy, mapped_label_name equals smoothed_label_name and mapped_probs has exactly the 8 labels.",
        ],
    }


def window_prediction_headers_schema() -> dict[str, Any]:
    return {
        "$schema": DIALECT,
        "$id": f"{ID_BASE}window-prediction-headers",
        "title": "Headers of an output record",
        "description": "Kafka record headers of a WindowPrediction, decoded as UTF-8 (header name -> value). Provenance that must not enter the value: it differs between a record and its re-emission.",
        "type": "object",
        "required": ["taskclf-source", "taskclf-processed-ms"],
        "properties": {
            "taskclf-source": {"type": "string", "pattern": f"^{TOPIC_PATTERN}:(?:0|[1-9][0-9]*):(?:0|[1-9][0-9]*)$", "description": "The input record: topic:partition:offset."},
            "taskclf-processed-ms": {"type": "string", "pattern": "^(?:0|[1-9][0-9]*)$", "description": "Processing time (epoch milliseconds) of the batch that produced the record."},
        },
        "additionalProperties": False,
    }


FILES["window-prediction.schema.json"] = window_prediction_schema
FILES["window-prediction-headers.schema.json"] = window_prediction_headers_schema


# --------------------------------------------------------------------------- dead letters


def dead_letter_headers_schema() -> dict[str, Any]:
    """The headers of a dead letter (``daemon.Daemon._dead_letter``) as a documented object."""
    digits = "^(?:0|[1-9][0-9]*)$"
    return {
        "$schema": DIALECT,
        "$id": f"{ID_BASE}dead-letter-headers",
        "title": "Headers of a dead letter (DLQ topic)",
        "description": (
            "Kafka record headers of a dead letter, decoded as UTF-8 (header name -> value). The dead letter's key "
            "and value are the refused record's, byte for byte (no JSON wrapper), cut together to fit "
            "max_produce_bytes when needed (then taskclf-dlq-truncated says which). The key decides the "
            "partition (murmur2); a record without a key goes to the DLQ's first partition."
        ),
        "type": "object",
        "required": ["taskclf-dlq-reason", "taskclf-dlq-detail", "taskclf-source-topic", "taskclf-source-partition", "taskclf-source-offset"],
        "properties": {
            "taskclf-dlq-reason": {
                "enum": list(DLQ_REASONS),
                "description": (
                    "Why the record was refused. Decoder: " + ", ".join(REASONS) + ". Daemon: key_mismatch (no key, or "
                    "the key is not the UTF-8 of user_id), event_time_ahead (bucket_start_ts more than "
                    "max_event_ahead_s after the record's Kafka timestamp), output_too_large (the prediction would "
                    "exceed max_produce_bytes), processing_error (the pipeline raised on this record; the rest of its "
                    "batch went on). Feedback topic (a LabelSpan): unknown_label (not a labels_v1 label), besides the decoder's."
                ),
            },
            "taskclf-dlq-detail": {"type": "string", "maxLength": MAX_DLQ_DETAIL_CHARS, "description": "A human-readable detail naming the field; never a traceback."},
            "taskclf-source-topic": {"type": "string", "pattern": f"^{TOPIC_PATTERN}$", "description": "Topic of the refused record (the input topic)."},
            "taskclf-source-partition": {"type": "string", "pattern": digits, "description": "Its partition, in decimal."},
            "taskclf-source-offset": {"type": "string", "pattern": digits, "description": "Its offset, in decimal."},
            "taskclf-dlq-truncated": {"enum": ["value", "key,value"], "description": "Present only when the dead letter was cut: the value, or the key and the value."},
        },
        "additionalProperties": False,
    }


FILES["dead-letter-headers.schema.json"] = dead_letter_headers_schema


# --------------------------------------------------------------------------- changelog


def user_state_schema() -> dict[str, Any]:
    """The changelog value of state format 3 (``state.UserState.to_bytes``; 2 without ``L``)."""
    ts = {"type": "integer", "minimum": MIN_TS_US, "exclusiveMaximum": MAX_TS_US}
    opt_num = {"type": ["number", "null"]}
    return {
        "$schema": DIALECT,
        "$id": f"{ID_BASE}user-state.v{STATE_FORMAT}",
        "title": f"Per-user state, format {STATE_FORMAT} (changelog topic value)",
        "description": (
            "One user's online state, written at checkpoints to the compacted changelog topic: key = the UTF-8 "
            "bytes of user_id, partition = the input partition the user's windows came from (the changelog has "
            "the input topic's partition count), value = this document, or null (a tombstone) when the user is "
            "forgotten (retention, capacity, oversize). Internal to the daemon: read back only by the daemon, "
            "which also reads format 1 (no p, k)."
        ),
        "type": "object",
        "required": ["v", "h", "s", "m", "w", "t", "n", "o", "p", "k"],
        "properties": {
            "v": {"enum": [2, STATE_FORMAT], "description": "Format version: 3 with learning state (L), else 2 (the same bytes as before it)."},
            "h": {
                "type": "array",
                "maxItems": HISTORY_ROWS,
                "description": "History for the overlay features, oldest first: [bucket start (epoch us), app_id, keys_per_min, clicks_per_min, mouse_distance].",
                "items": {
                    "type": "array",
                    "prefixItems": [ts, {"type": "string", "maxLength": MAX_STR_CHARS}, opt_num, opt_num, opt_num],
                    "minItems": 5,
                    "items": False,
                },
            },
            "s": {**ts, "type": ["integer", "null"], "description": "Session start (epoch us), or null."},
            "m": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": REJECT_ID}, "description": f"Smoothing buffer: post-reject label ids, oldest first ({REJECT_ID} = rejected)."},
            "w": {"type": "integer", "minimum": 1, "description": "Smoothing buffer capacity."},
            "t": {**ts, "type": ["integer", "null"], "description": "bucket_start_ts of the latest window applied (epoch us), or null."},
            "n": {"type": "integer", "minimum": 0, "description": "Windows applied."},
            "o": {"type": "integer", "minimum": -1, "description": "Input offset of the last window applied; -1 = none."},
            "p": {"type": "integer", "minimum": -1, "description": "Input partition of o; -1 = none."},
            "k": {"type": "integer", "minimum": 0, "description": "Processing time (epoch seconds) the user was last seen: retention only."},
            "q": {
                "type": "array",
                "prefixItems": [{"type": "integer"}, {"type": "integer", "minimum": 0}],
                "minItems": 2,
                "items": False,
                "description": "Label requests: [UTC day of event time (days since the epoch), asks that day]; absent until the user is first asked.",
            },
            "L": {
                "type": "object",
                "description": (
                    "Format 3 only: the learning loop's state (pipeline/evidence.py UserLearning): rt/rb the recent unfinalised windows "
                    "(int64 times / float32 raw probabilities + head extras, little-endian, base64), et/el/eb the labelled evidence (times, "
                    "uint8 labels, float32 values), s the known label spans, n/nf labelled windows total / at the last refit, lf/lt event "
                    "times of the last refit / window, g eligibility, m the personal model in force (JSON, format taskclf-daemon-personal/1) "
                    "or null, d the last refit's decision; w windows applied since the learning state began and p the refit started "
                    "and not yet in force as [window number it takes effect at, its start event time, n then, evidence windows it fits] "
                    "or null (w and p are absent in states written before them: 0, null). In the daemon's changelog the older parts of the "
                    "ring and the evidence are sealed blocks, records of their own (key 0xFF + user_id + 0xFF + r|e + block number, 8 bytes "
                    "big-endian; value: magic TCRB1/TCEB1, first item number, times, labels, values): then r0/bk and e0/ek give the first "
                    "window / labelled window number and the [first, last+1) blocks, and rt/rb, et/el/eb hold only the items after them."
                ),
                "required": ["rt", "rb", "et", "el", "eb", "s", "n", "nf", "lf", "lt", "g", "m", "d"],
            },
        },
        "additionalProperties": False,
        "x-taskclf-not-expressible": ["m holds at most w entries."],
    }


FILES[f"user-state.v{STATE_FORMAT}.schema.json"] = user_state_schema


def _iso_ts(desc: str) -> dict[str, Any]:
    return {"type": "string", "maxLength": MAX_TS_CHARS, "description": desc}


def label_span_schema() -> dict[str, Any]:
    """A taskclf LabelSpan on the feedback topic (``pipeline/labelspan.py`` decodes it)."""
    return {
        "$schema": DIALECT,
        "$id": f"{ID_BASE}label-span",
        "title": "taskclf LabelSpan (feedback topic value)",
        "description": (
            "A user's label for a stretch of time: every window [bucket_start_ts, +60 s) lying inside exactly one span of "
            "that user gets its label (taskclf's strict containment); windows overlapping several spans or partly covered "
            "get none. Kafka key: the UTF-8 bytes of user_id, which the span must name; the topic is co-partitioned with the "
            "input. A span counts when it arrives before its windows or up to label_wait_s (the user's event time) after them. "
            "Anything else is dead-lettered with a reason (header taskclf-dlq-reason)."
        ),
        "type": "object",
        "required": ["start_ts", "end_ts", "label", "provenance", "user_id"],
        "properties": {
            "start_ts": _iso_ts("Inclusive start, ISO 8601 with an offset (aware), e.g. 2026-03-09T09:00:00Z; 1970..2199."),
            "end_ts": _iso_ts("Exclusive end, after start_ts, same form."),
            "label": {"enum": list(LABELS), "description": "A labels_v1 label (unknown_label otherwise)."},
            "provenance": {"type": "string", "maxLength": MAX_STR_CHARS, "description": "Where the label came from, e.g. manual or weak:app_rule."},
            "user_id": {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID_CHARS, "description": "The user; equal to the record key (key_mismatch otherwise)."},
            "confidence": {"type": ["number", "null"], "minimum": 0, "maximum": 1, "description": "taskclf's optional confidence (NaN is read as null)."},
            "extend_forward": {"type": ["boolean", "null"], "description": "taskclf's flag; kept, not used by the projection."},
        },
        "x-taskclf-dlq-reasons": list(SPAN_REASONS),
    }


def label_request_schema() -> dict[str, Any]:
    """A taskclf LabelRequest the daemon writes (``pipeline/label_requests.py``)."""
    return {
        "$schema": DIALECT,
        "$id": f"{ID_BASE}label-request",
        "title": "taskclf LabelRequest (label-request topic value)",
        "description": (
            "A window worth a label: calibrated confidence < 0.55, at most 20 per user per UTC day of event time while "
            "the user is short of evidence for a personal model, 5 once eligible. Keys in this order; Kafka key: the UTF-8 "
            "bytes of user_id. Deterministic like the predictions (a replay re-emits the same bytes); deduplicate on "
            "request_id (a UUID-5 of user_id and bucket_start_ts). Headers: taskclf-source, taskclf-processed-ms."
        ),
        "type": "object",
        "required": ["request_id", "user_id", "bucket_start_ts", "bucket_end_ts", "reason", "confidence", "predicted_label", "created_at", "status"],
        "properties": {
            "request_id": {"type": "string", "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"},
            "user_id": {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID_CHARS},
            "bucket_start_ts": _iso_ts("The window's start, YYYY-MM-DDTHH:MM:SSZ."),
            "bucket_end_ts": _iso_ts("The window's end (start + 60 s)."),
            "reason": {"const": "low_confidence"},
            "confidence": {"type": "number", "minimum": 0, "exclusiveMaximum": 0.55, "description": "The output's confidence (6 dp)."},
            "predicted_label": {"enum": list(LABELS), "description": "The output's core_label_name."},
            "created_at": _iso_ts("The window's end (not the processing time: that is in the headers)."),
            "status": {"const": "pending"},
        },
        "additionalProperties": False,
    }


FILES["label-span.schema.json"] = label_span_schema
FILES["label-request.schema.json"] = label_request_schema


# --------------------------------------------------------------------------- files


def render(name: str) -> str:
    """The text of one contract file (stable: the committed files are compared with it)."""
    return json.dumps(FILES[name](), indent=2, ensure_ascii=False) + "\n"


def write_all(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in FILES:
        p = out_dir / name
        p.write_text(render(name), encoding="utf-8")
        written.append(p)
    return written


def drifted(out_dir: Path) -> list[str]:
    """Names of the contract files in ``out_dir`` that are missing or differ from the generator."""
    bad = []
    for name in FILES:
        p = out_dir / name
        if not p.is_file() or p.read_text(encoding="utf-8") != render(name):
            bad.append(name)
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m taskclf_daemon.contracts", description="Write (or check) the JSON Schemas of the daemon's topics.")
    ap.add_argument("out_dir", nargs="?", default="docs/contracts", help="directory of the schema files (default docs/contracts)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is missing or differs")
    a = ap.parse_args(argv)
    out = Path(a.out_dir)
    if a.check:
        bad = drifted(out)
        for name in bad:
            print(f"{out / name}: missing or out of date (regenerate: python -m taskclf_daemon.contracts {out})", file=sys.stderr)
        return 1 if bad else 0
    for p in write_all(out):
        print(p)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
