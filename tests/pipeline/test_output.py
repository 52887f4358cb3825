"""``OutputEncoder`` writes exactly ``orjson.dumps(record_dict(...))``, byte for byte."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from taskclf_daemon.labels import LABELS
from taskclf_daemon.pipeline.output import RECORD_KEYS, OutputEncoder, record_dict

CONST = {"model_version": "4077fe0dba70", "schema_version": "features_v1", "label_version": "labels_v1", "model_bundle_id": "2026-04-06_000000_run-0001"}


def _random_probs(rng: random.Random, n: int) -> np.ndarray:
    kinds = [
        lambda: rng.random(),
        lambda: rng.random() * 1e-6,
        lambda: 10.0 ** rng.uniform(-320, -1),
        lambda: 0.0,
        lambda: 1.0,
        lambda: round(rng.random(), rng.randint(0, 7)),
    ]
    p = np.array([[rng.choice(kinds)() for _ in LABELS] for _ in range(n)])
    return p


def _reference(encoder_args: dict, i: int, mapped_probs: dict) -> bytes:
    a = encoder_args
    return orjson.dumps(record_dict(a["user_ids"][i], a["timestamps"][i], a["core_ids"][i], a["core_probs"][i], a["confidences"][i], a["rejected"][i],
                                    a["mapped_labels"][i], mapped_probs, CONST, a["smoothed"][i], a["scopes"][i], a["kinds"][i], a["versions"][i]))


@pytest.mark.parametrize("taxonomy", [False, True])
def test_batch_encoding_equals_a_dict_per_record(taxonomy: bool) -> None:
    rng = random.Random(7 + taxonomy)
    enc = OutputEncoder(CONST)
    n = 2000
    probs = _random_probs(rng, n)
    users = [rng.choice(["u-1", "Zoë \"quoted\" \\ back", "\u2603", "%s%d%b", "a" * 60, "\ud7ff"]) + str(i) for i in range(n)]
    args = {
        "user_ids": users,
        "timestamps": [f"2026-04-{rng.randint(1, 30):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z" for _ in range(n)],
        "core_ids": probs.argmax(axis=1).tolist(),
        "core_probs": np.round(probs, 6).tolist(),
        "confidences": np.round(probs.max(axis=1), 6).tolist(),
        "rejected": [rng.random() < 0.3 for _ in range(n)],
        "mapped_labels": [rng.choice([*LABELS, "Mixed/Unknown", "Deep %s work"]) for _ in range(n)],
        "smoothed": [rng.choice([*LABELS, "Mixed/Unknown"]) for _ in range(n)],
        "scopes": [rng.choice(["global", "none", f"user:{i}", "50%"]) for i in range(n)],
        "kinds": [rng.choice(["identity", "temperature", "isotonic", "head"]) for _ in range(n)],
        "versions": [rng.choice([None, "h1-0badf00d", "t3-%d\"x"]) for _ in range(n)],
    }
    if taxonomy:
        mapped = [{"Focus %": round(rng.random(), 6), "Other": rng.random()} for _ in range(n)]
        got = enc.encode(**args, probs=None, mapped_probs=mapped)
        want = [_reference(args, i, mapped[i]) for i in range(n)]
    else:
        got = enc.encode(**args, probs=probs.tolist(), mapped_probs=None)
        want = [_reference(args, i, dict(zip(LABELS, probs[i].tolist()))) for i in range(n)]
    assert got == want
    assert list(orjson.loads(got[0])) == list(RECORD_KEYS)


def test_constants_with_percent_signs_and_empty_batch() -> None:
    const = dict(CONST, model_bundle_id="run-100%-%s")
    enc = OutputEncoder(const)
    assert enc.encode([], [], [], [], [], [], [], [], None, [], []) == []
    p = [[0.125] * 8]
    out = enc.encode(["u"], ["2026-04-06T00:00:00Z"], [0], p, [0.125], [False], ["BreakIdle"], p, None, ["BreakIdle"], ["global"])
    assert orjson.loads(out[0])["model_bundle_id"] == "run-100%-%s"
    assert orjson.loads(out[0])["calibrator_store_id"] is None  # no store: null
    with_store = OutputEncoder(dict(const, calibrator_store_id="store%d@0badf00d"))
    rec = orjson.loads(with_store.encode(["u"], ["2026-04-06T00:00:00Z"], [0], p, [0.125], [False], ["BreakIdle"], p, None, ["BreakIdle"], ["global"])[0])
    assert list(rec)[-4:] == ["calibrator_scope", "calibrator_store_id", "calibrator_kind", "calibrator_version"] and rec["calibrator_store_id"] == "store%d@0badf00d"
    # the calibrator that produced the row: the store's kind, or a personal model's kind and version
    assert (rec["calibrator_kind"], rec["calibrator_version"]) == ("identity", None)
    args = (["u", "v"], ["2026-04-06T00:00:00Z"] * 2, [0, 0], p * 2, [0.125] * 2, [False] * 2, ["BreakIdle"] * 2, p * 2, None, ["BreakIdle"] * 2, ["global", "user"])
    two = [orjson.loads(v) for v in with_store.encode(*args, ["temperature", "head"], [None, "h2-6312%d"])]
    assert [(r["calibrator_scope"], r["calibrator_kind"], r["calibrator_version"]) for r in two] == [("global", "temperature", None), ("user", "head", "h2-6312%d")]
    with pytest.raises(ValueError, match="model_version"):
        OutputEncoder({"schema_version": "x"})
