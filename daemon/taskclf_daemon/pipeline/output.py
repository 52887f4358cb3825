"""taskclf's ``WindowPrediction`` record as JSON bytes, a whole batch at a time.

The bytes are exactly ``orjson.dumps(record)`` of the record dict in taskclf's key order
(``user_id``, ``bucket_start_ts``, ``core_label_id``, ``core_label_name``, ``core_probs``,
``confidence``, ``is_rejected``, ``mapped_label_name``, ``mapped_probs``, ``model_version``,
``schema_version``, ``label_version``, then the daemon's provenance: ``model_bundle_id``,
``smoothed_label_name``, ``calibrator_scope``, ``calibrator_store_id``, ``calibrator_kind``,
``calibrator_version``) -- :func:`record_dict`
builds that dict and the tests hold the two equal.

Speed: instead of one dict and one ``orjson.dumps`` per window, the numbers of the whole batch
are formatted by orjson in one call per matrix (so with orjson's own float formatting), cut
apart at the row and column separators (a formatted number holds no ``,`` ``[`` or ``]``), and
spliced into a bytes template; strings go through ``orjson.dumps`` (memoised for the few label
and scope names). About 2x faster than a dict per window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from taskclf_daemon.labels import LABELS

#: record keys in taskclf's order (``WindowPrediction`` field order)
RECORD_KEYS = (
    "user_id",
    "bucket_start_ts",
    "core_label_id",
    "core_label_name",
    "core_probs",
    "confidence",
    "is_rejected",
    "mapped_label_name",
    "mapped_probs",
    "model_version",
    "schema_version",
    "label_version",
    "model_bundle_id",
    "smoothed_label_name",
    "calibrator_scope",
    "calibrator_store_id",
    "calibrator_kind",
    "calibrator_version",
)
CONST_KEYS = ("model_version", "schema_version", "label_version", "model_bundle_id")
#: the last key: the calibrator store in force (``CalibratorStore.store_id``), null without a
#: store; a constant of the encoder like :data:`CONST_KEYS`, absent from ``const`` = null
STORE_KEY = "calibrator_store_id"


def record_dict(
    user_id: str, ts: str, core_id: int, core_probs: list[float], confidence: float, rejected: bool,
    mapped_label: str, mapped_probs: dict[str, float], const: dict[str, str | None], smoothed: str, scope: str,
    kind: str = "identity", version: str | None = None,
) -> dict[str, Any]:
    """One record as a dict (the reference for :class:`OutputEncoder`)."""
    return {
        "user_id": user_id,
        "bucket_start_ts": ts,
        "core_label_id": core_id,
        "core_label_name": LABELS[core_id],
        "core_probs": core_probs,
        "confidence": confidence,
        "is_rejected": rejected,
        "mapped_label_name": mapped_label,
        "mapped_probs": mapped_probs,
        **{k: const[k] for k in CONST_KEYS},
        "smoothed_label_name": smoothed,
        "calibrator_scope": scope,
        STORE_KEY: const.get(STORE_KEY),
        "calibrator_kind": kind,
        "calibrator_version": version,
    }


def _rows(matrix: list[list[float]]) -> list[bytes]:
    """orjson's text of each row of a non-empty matrix, without brackets: ``b"0.1,0.9"``."""
    body = orjson.dumps(matrix)
    return body[2:-2].split(b"],[")


class OutputEncoder:
    """Encodes batches of predictions for one model bundle (its constant fields)."""

    def __init__(self, const: dict[str, str | None]) -> None:
        missing = [k for k in CONST_KEYS if k not in const]
        if missing:
            raise ValueError(f"constant fields missing: {missing}")
        head = b'{"user_id":%b,"bucket_start_ts":"%b","core_label_id":%d,"core_label_name":%b,"core_probs":[%b],"confidence":%b,"is_rejected":%b,"mapped_label_name":%b,"mapped_probs":%b,'
        # the percent signs of the constants' own text must not act as format directives
        tail = orjson.dumps({k: const[k] for k in CONST_KEYS})[1:-1].replace(b"%", b"%%") + b',"smoothed_label_name":%b,"calibrator_scope":%b,'
        tail += orjson.dumps({STORE_KEY: const.get(STORE_KEY)})[1:-1].replace(b"%", b"%%") + b',"calibrator_kind":%b,"calibrator_version":%b}'

        self._template = head + tail
        self._identity_probs = b"{" + b",".join(orjson.dumps(n) + b":%b" for n in LABELS) + b"}"
        self._strings: dict[str, bytes] = {}
        self._core_names = tuple(orjson.dumps(n) for n in LABELS)

    def _str(self, s: str) -> bytes:
        b = self._strings.get(s)
        if b is None:
            b = orjson.dumps(s)
            if len(self._strings) < 4096:
                self._strings[s] = b
        return b

    def encode(
        self,
        user_ids: Sequence[str],
        timestamps: Sequence[str],
        core_ids: Sequence[int],
        core_probs: list[list[float]],
        confidences: list[float],
        rejected: Sequence[bool],
        mapped_labels: Sequence[str],
        probs: list[list[float]] | None,
        mapped_probs: Sequence[dict[str, float]] | None,
        smoothed: Sequence[str],
        scopes: Sequence[str],
        kinds: Sequence[str] | None = None,
        versions: Sequence[str | None] | None = None,
    ) -> list[bytes]:
        """One JSON record per row. ``probs`` (the unrounded calibrated rows) give
        ``mapped_probs`` as ``{label: p}`` in label order when ``mapped_probs`` is None (no
        taxonomy); otherwise each ``mapped_probs`` dict is encoded as it is."""
        n = len(user_ids)
        if n == 0:
            return []
        core = _rows(core_probs)
        conf = orjson.dumps(confidences)[1:-1].split(b",")
        if mapped_probs is None:
            assert probs is not None
            ident = self._identity_probs
            mp = [ident % tuple(r.split(b",")) for r in _rows(probs)]
        else:
            mp = [orjson.dumps(d) for d in mapped_probs]
        t, s = self._template, self._str
        tf = (b"false", b"true")
        # the few distinct names of the batch (labels, scopes, kinds) encoded once; user ids one by one
        names = {x: s(x) for x in {*mapped_labels, *smoothed, *scopes, *(kinds or ())}}
        core_names = self._core_names
        ks = [b'"identity"'] * n if kinds is None else [names[k] for k in kinds]
        vs = [b"null"] * n if versions is None else [b"null" if v is None else s(v) for v in versions]
        return [
            t % (
                s(user_ids[i]),
                timestamps[i].encode(),
                core_ids[i],
                core_names[core_ids[i]],
                core[i],
                conf[i],
                tf[rejected[i]],
                names[mapped_labels[i]],
                mp[i],
                names[smoothed[i]],
                names[scopes[i]],
                ks[i],
                vs[i],
            )
            for i in range(n)
        ]
