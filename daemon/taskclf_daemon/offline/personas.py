"""Synthetic labelling personas for the learning loop: windows + LabelSpans, deterministic.

The windows are :func:`~taskclf_daemon.offline.synthetic.generate_labelled`'s (same users,
behaviour and ids as a model trained with the same seed); what differs per user is how they
*label* them, by the user's labelling kind (user ``i`` gets ``kinds[i % len(kinds)]``):

* ``normal``: labels as generated (what the global model learned);
* ``swap``: the user's words differ systematically from the model's -- Build <-> Debug,
  ReadResearch <-> Review, Write <-> Communicate: a per-user label permutation a global
  calibrator cannot fix, a per-user head can;
* ``noise``: every span's label drawn uniformly from labels_v1 (seeded per user and span):
  labels that carry no signal, which the gate must refuse.

Spans are the maximal runs of consecutive minutes with one (transformed) label:
``[first bucket_start, last bucket_start + 60 s)``, provenance ``manual``, with ``user_id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from taskclf_daemon.labels import LABELS
from taskclf_daemon.offline.synthetic import generate_labelled
from taskclf_daemon.timeutil import format_ts_us, parse_ts_us

KINDS = ("normal", "swap", "noise")
DEFAULT_KINDS = ("swap", "normal", "normal", "noise", "normal", "swap")
SWAP = {"Build": "Debug", "Debug": "Build", "ReadResearch": "Review", "Review": "ReadResearch", "Write": "Communicate", "Communicate": "Write"}
_MIN_US = 60_000_000


def spans_from_labelled(rows: Sequence[dict[str, Any]], bucket_seconds: int = 60) -> list[dict[str, Any]]:
    """LabelSpan JSON of labelled rows: per user, maximal runs of consecutive windows with one label."""
    by_user: dict[str, list[tuple[int, str]]] = {}
    for r in rows:
        by_user.setdefault(str(r["user_id"]), []).append((parse_ts_us(r["bucket_start_ts"]), str(r["label"])))
    bucket = bucket_seconds * 1_000_000
    out: list[dict[str, Any]] = []
    for uid in sorted(by_user):
        items = sorted(by_user[uid])
        i = 0
        while i < len(items):
            j = i
            while j + 1 < len(items) and items[j + 1][1] == items[i][1] and items[j + 1][0] == items[j][0] + bucket:
                j += 1
            out.append({"start_ts": format_ts_us(items[i][0]), "end_ts": format_ts_us(items[j][0] + bucket), "label": items[i][1], "provenance": "manual", "user_id": uid})
            i = j + 1
    out.sort(key=lambda s: (s["end_ts"], s["user_id"], s["start_ts"]))
    return out


def persona_kind(index: int, kinds: Sequence[str] = DEFAULT_KINDS) -> str:
    return kinds[index % len(kinds)]


def generate(seed: int = 0, n_users: int = 5, days: int = 8, start: str = "2026-03-09", kinds: Sequence[str] = DEFAULT_KINDS, schema_version: str = "v1") -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    """``(windows, spans, kind_of_user)``: unlabelled FeatureRows (time order), LabelSpans (by
    end), and each user's labelling kind. Same arguments -> same output."""
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown persona kind {k!r} (use {', '.join(KINDS)})")
    rows = generate_labelled(seed=seed, n_users=n_users, days=days, schema_version=schema_version, start=start)
    order: dict[str, int] = {}
    for r in rows:
        order.setdefault(str(r["user_id"]), len(order))
    from taskclf_daemon.offline.synthetic import user_ids

    ids = user_ids(seed, n_users)
    kind_of = {uid: persona_kind(i, kinds) for i, uid in enumerate(ids)}
    relabelled = []
    for r in rows:
        k = kind_of[str(r["user_id"])]
        lab = str(r["label"])
        relabelled.append({**r, "label": SWAP.get(lab, lab) if k == "swap" else lab})
    spans = spans_from_labelled(relabelled)
    for s in spans:
        if kind_of[s["user_id"]] == "noise":
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(ids.index(s["user_id"]), parse_ts_us(s["start_ts"]) // _MIN_US)))
            s["label"] = LABELS[int(rng.integers(len(LABELS)))]
    windows = [{k: v for k, v in r.items() if k != "label"} for r in rows]
    return windows, spans, kind_of
