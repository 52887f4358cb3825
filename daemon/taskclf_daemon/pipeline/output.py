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
and scope names). About 2x faster than a dict per window. Where the C splice
(``taskclf_daemon._output``, built by ``pip install`` where a C compiler is at hand) is built, it
fills the template row by row instead of Python's ``bytes % tuple`` and formats the timestamps:
the same bytes, ~2 us per window less; it declines what it does not expect and the Python loop
runs (``TASKCLF_DAEMON_NO_NATIVE=1``: always the Python loop).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from taskclf_daemon import native
from taskclf_daemon.labels import LABELS
from taskclf_daemon.timeutil import MAX_TS_US, format_ts_us

#: the C splice of :meth:`OutputEncoder.encode`'s rows (``_output.c``, see ``native.py``), and
#: its splice of the identity ``mapped_probs`` (each row's numbers into the ``{label: p}`` text);
#: None: not built, turned off or stale (the Python loop, the reference, serves)
NATIVE_ROWS: Callable[..., Any] | None
NATIVE_FIELDS: Callable[[tuple[bytes, ...], list[bytes]], Any] | None
NATIVE_ROWS, NATIVE_FIELDS = native.load("_output", "encode_rows", "splice_fields", constants={"MAX_TS_US": MAX_TS_US}) or (None, None)

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
        #: the template's literal text around its 13 slots (``%%`` back to ``%``), for the C splice
        pieces, cur = [], b""
        for tok in re.split(rb"(%%|%[bd])", self._template):  # text, directive, text, ...
            if tok in (b"%b", b"%d"):
                pieces.append(cur)
                cur = b""
            else:
                cur += b"%" if tok == b"%%" else tok
        self._pieces = (*pieces, cur)
        assert len(self._pieces) == 14, self._pieces
        self._identity_probs = b"{" + b",".join(orjson.dumps(n) + b":%b" for n in LABELS) + b"}"
        self._identity_pieces = tuple(self._identity_probs.split(b"%b"))  # label names hold no "%b"
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
        timestamps: Sequence[str] | Sequence[int],
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
        """One JSON record per row. ``timestamps``: the output strings, or epoch microseconds
        (formatted by :func:`~taskclf_daemon.timeutil.format_ts_us`). ``probs`` (the unrounded
        calibrated rows) give ``mapped_probs`` as ``{label: p}`` in label order when
        ``mapped_probs`` is None (no taxonomy); otherwise each ``mapped_probs`` dict is encoded as
        it is."""
        n = len(user_ids)
        if n == 0:
            return []
        core = _rows(core_probs)
        conf = orjson.dumps(confidences)[1:-1].split(b",")
        if mapped_probs is None:
            assert probs is not None
            ident = self._identity_probs
            rows = _rows(probs)
            mp = NotImplemented if NATIVE_FIELDS is None else NATIVE_FIELDS(self._identity_pieces, rows)
            if mp is NotImplemented:
                mp = [ident % tuple(r.split(b",")) for r in rows]
        else:
            mp = [orjson.dumps(d) for d in mapped_probs]
        t, s = self._template, self._str
        tf = (b"false", b"true")
        # the few distinct names of the batch (labels, scopes, kinds) encoded once; user ids one by one
        names = {x: s(x) for x in {*mapped_labels, *smoothed, *scopes, *(kinds or ())}}
        core_names = self._core_names
        if NATIVE_ROWS is not None:
            rows = NATIVE_ROWS(
                self._pieces, user_ids, timestamps, core_ids, core_names, core, conf, rejected, mapped_labels, mp, smoothed, scopes, kinds, versions, names, s
            )
            if rows is not NotImplemented:
                return rows  # type: ignore[no-any-return]
        ks = [b'"identity"'] * n if kinds is None else [names[k] for k in kinds]
        vs = [b"null"] * n if versions is None else [b"null" if v is None else s(v) for v in versions]
        return [
            t % (
                s(user_ids[i]),
                (format_ts_us(ts) if type(ts := timestamps[i]) is int else ts).encode(),  # type: ignore[union-attr]
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
