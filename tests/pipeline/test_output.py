"""``OutputEncoder`` writes exactly ``orjson.dumps(record_dict(...))``, byte for byte: with the C
splice (``taskclf_daemon._output``) and with the Python loop alike (the ``path`` fixture)."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from taskclf_daemon.labels import LABELS
from taskclf_daemon.pipeline import output
from taskclf_daemon.pipeline.output import RECORD_KEYS, OutputEncoder, record_dict
from taskclf_daemon.timeutil import MAX_TS_US, format_ts_us

try:
    from taskclf_daemon._output import encode_rows as native_rows, splice_fields as native_fields
except ImportError:  # pragma: no cover - the install builds it wherever a C compiler is at hand
    pytest.fail("taskclf_daemon._output is not built: `pip install -e .` compiles it (needs gcc and the Python headers)")


@pytest.fixture(params=["native", "python"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test twice: through the C splice, and through the Python loop."""
    monkeypatch.setattr(output, "NATIVE_ROWS", native_rows if request.param == "native" else None)
    monkeypatch.setattr(output, "NATIVE_FIELDS", native_fields if request.param == "native" else None)
    return str(request.param)

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
def test_batch_encoding_equals_a_dict_per_record(taxonomy: bool, path: str) -> None:
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


def test_constants_with_percent_signs_and_empty_batch(path: str) -> None:
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


def test_timestamps_as_microseconds_are_formatted_as_format_ts_us(path: str) -> None:
    rng = random.Random(3)
    n = 3000
    ts = [rng.choice([0, 1, MAX_TS_US - 1, 951_782_400_000_000, 4_107_542_400_000_000]) if i < 20 else rng.randrange(0, MAX_TS_US) // rng.choice([1, 1_000_000, 60_000_000]) * rng.choice([1, 1_000_000, 60_000_000]) % MAX_TS_US for i in range(n)]
    p = [[0.125] * 8] * n
    enc = OutputEncoder(CONST)
    got = enc.encode(["u"] * n, ts, [0] * n, p, [0.125] * n, [False] * n, ["BreakIdle"] * n, p, None, ["BreakIdle"] * n, ["global"] * n)
    assert [orjson.loads(v)["bucket_start_ts"] for v in got] == [format_ts_us(t) for t in ts]
    assert got == enc.encode(["u"] * n, [format_ts_us(t) for t in ts], [0] * n, p, [0.125] * n, [False] * n, ["BreakIdle"] * n, p, None, ["BreakIdle"] * n, ["global"] * n)


def test_every_character_of_a_user_id_is_escaped_as_orjson_does(path: str) -> None:
    users = [chr(c) for c in range(0, 0x300)] + ["plain-ascii", "tab\tin", "\U0001F600"]
    n = len(users)
    p = [[0.125] * 8] * n
    out = OutputEncoder(CONST).encode(users, ["2026-04-06T00:00:00Z"] * n, [0] * n, p, [0.125] * n, [False] * n, ["BreakIdle"] * n, p, None, ["BreakIdle"] * n, ["global"] * n, ["head"] * n, users)
    for u, v in zip(users, out):
        assert v.startswith(b'{"user_id":' + orjson.dumps(u) + b',"bucket_start_ts"')
        assert v.endswith(b'"calibrator_version":' + orjson.dumps(u) + b"}")


def test_the_c_splice_declines_what_it_does_not_expect() -> None:
    enc = OutputEncoder(CONST)
    p = [[0.125] * 8]
    args = [["u"], [1_775_433_600_000_000], [0], p, [0.125], [1], ["BreakIdle"], p, None, ["BreakIdle"], ["global"]]  # rejected as an int
    declined = enc.encode(*args)  # the Python loop: tf[1]
    assert orjson.loads(declined[0])["is_rejected"] is True and declined == enc.encode(*args[:5], [True], *args[6:])
    core, conf = [b"0.125,0.125,0.125,0.125,0.125,0.125,0.125,0.125"], [b"0.125"]
    base = (enc._pieces, ["u"], [1_775_433_600_000_000], [0], enc._core_names, core, conf, [False], ["a"], [b"{}"], ["a"], ["a"], None, None, {"a": b'"a"'}, enc._str)
    assert isinstance(native_rows(*base), list)
    for i, bad in [(2, [MAX_TS_US]), (2, [-1]), (7, [1]), (3, [8]), (3, [-1]), (8, ["b"]), (5, [1.0]), (1, ("u",))]:
        args2 = list(base)
        args2[i] = bad
        assert native_rows(*args2) is NotImplemented, (i, bad)


def test_the_fields_splice_equals_percent_formatting_and_declines_a_wrong_count() -> None:
    ident = OutputEncoder(CONST)._identity_probs
    pieces = tuple(ident.split(b"%b"))
    rows = [b",".join(str(i * 8 + j).encode() for j in range(8)) for i in range(50)] + [b"1e-05,0.5,1.0,0.0,2.5e-07,0.125,0.3,0.1"]
    assert native_fields(pieces, rows) == [ident % tuple(r.split(b",")) for r in rows]
    for bad in ([b"1,2,3,4,5,6,7"], [b"1,2,3,4,5,6,7,8,9"], [b""], ["1,2,3,4,5,6,7,8"]):
        assert native_fields(pieces, bad) is NotImplemented, bad
    assert native_fields((b"[", b"]"), [b"x", b""]) == [b"[x]", b"[]"]
