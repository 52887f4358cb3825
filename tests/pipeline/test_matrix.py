"""The columnar model-input encoder equals the per-row reference bit for bit (pipeline/matrix.py)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from helpers_rows import golden_dir, make_window
from taskclf_daemon.codec import RowValidator, decode_window
from taskclf_daemon.pipeline.features import push_window
from taskclf_daemon.pipeline.model import ModelBundle
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.schema import OVERLAY_COLUMNS
from taskclf_daemon.state import StateStore

RUN = "2026-04-06_000000_run-0001"


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ModelBundle.load(golden_dir() / "models" / RUN)


def _golden(bundle: ModelBundle) -> tuple[list[FeatureWindow], list[tuple[Any, ...]]]:
    v = RowValidator(bundle.schema)
    lines = [ln for ln in (golden_dir() / "inputs.jsonl").read_bytes().splitlines() if ln.strip()]
    ws = [decode_window(ln, v) for ln in lines]
    st = StateStore(3)
    return ws, [push_window(st.get(w.user_id), w) for w in ws]


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_golden_rows_encode_to_the_reference_bits(bundle: ModelBundle) -> None:
    ws, ovs = _golden(bundle)
    got = bundle.encode(ws, ovs)
    want = bundle._matrix.encode_exact(ws, ovs)
    assert got.shape == (3030, 39)
    assert _same_bits(got, want)
    # and the reference is what the spec says: app_id's code, None -> 0.0, a bool -> 1.0/0.0
    assert got[0, bundle.schema.feature_columns.index("is_browser")] == float(ws[0].values["is_browser"])


def test_random_values_of_every_kind_encode_to_the_reference_bits(bundle: ModelBundle) -> None:
    rng = random.Random(7)
    ws, ovs = _golden(bundle)
    base = ws[0].values
    plain = [c for c, kind, _ in bundle._plan if kind == "num"]
    cats = [c for c, kind, _ in bundle._plan if kind == "cat"]
    pool: list[Any] = [None, 0, 1, -1, 0.0, -0.0, 0.1, 1e-300, 5e-324, 1.7976931348623157e308, 2**53 + 1, 2**63 - 1, 10**20, 3**600, True, False, 12.345678901234567]
    windows, overlays = [], []
    for _ in range(2000):
        vals = dict(base)
        for c in rng.sample(plain, 12):
            vals[c] = rng.choice(pool)
        for c in cats:
            vals[c] = rng.choice(("unknown", "__unknown__", "no-such-app", base[c], 5, None))
        windows.append(FeatureWindow("u", 0, "v1", vals))
        overlays.append(tuple(rng.choice(pool) for _ in OVERLAY_COLUMNS))
    got = bundle.encode(windows, overlays)
    want = bundle._matrix.encode_exact(windows, overlays)
    assert _same_bits(got, want)
    assert np.count_nonzero(got == 0.0) > 2000  # the Nones became zeros, not NaN
    assert not np.isnan(got).any()


def test_unconvertible_value_raises_what_the_reference_raises(bundle: ModelBundle) -> None:
    ok = make_window()
    w = FeatureWindow("u", 0, "v1", {**ok.values, "keys_per_min": 10**400})  # an int no float can hold
    with pytest.raises(OverflowError) as new:
        bundle.encode([w], [(None,) * 9])
    with pytest.raises(OverflowError) as ref:
        bundle._matrix.encode_exact([w], [(None,) * 9])
    assert str(new.value) == str(ref.value) == "int too large to convert to float"


def test_wrong_overlay_length_goes_the_reference_way(bundle: ModelBundle) -> None:
    w = make_window()
    with pytest.raises(IndexError):
        bundle.encode([w], [(1.0,) * 8])
    assert bundle.encode([], []).shape == (0, 39)
