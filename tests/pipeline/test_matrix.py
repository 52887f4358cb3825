"""The columnar model-input encoder, and the C fill (``taskclf_daemon._matrix``), equal the per-row
reference bit for bit (pipeline/matrix.py): every test runs with and without the C fill."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from helpers_rows import golden_dir, make_window
from taskclf_daemon.codec import RowValidator, decode_window
from taskclf_daemon.pipeline import matrix
from taskclf_daemon.pipeline.features import push_window
from taskclf_daemon.pipeline.model import ModelBundle
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.schema import OVERLAY_COLUMNS
from taskclf_daemon.state import StateStore

RUN = "2026-04-06_000000_run-0001"

try:
    from taskclf_daemon._matrix import fill as native_fill
except ImportError:  # pragma: no cover - the install builds it wherever a C compiler is at hand
    pytest.fail("taskclf_daemon._matrix is not built: `pip install -e .` compiles it (needs gcc and the Python headers)")


@pytest.fixture(params=["native", "python"], autouse=True)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(matrix, "NATIVE_FILL", native_fill if request.param == "native" else None)
    return str(request.param)


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


@pytest.mark.parametrize("str_categories", [False, True])
def test_random_values_of_every_kind_encode_to_the_reference_bits(bundle: ModelBundle, str_categories: bool) -> None:
    rng = random.Random(7 + str_categories)
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
            vals[c] = rng.choice(("unknown", "__unknown__", "no-such-app", base[c], *(() if str_categories else (5, None))))
        windows.append(FeatureWindow("u", 0, "v1", vals))
        overlays.append(tuple(rng.choice(pool) for _ in OVERLAY_COLUMNS))
    got = bundle.encode(windows, overlays)
    want = bundle._matrix.encode_exact(windows, overlays)
    assert _same_bits(got, want)
    assert np.count_nonzero(got == 0.0) > 2000  # the Nones became zeros, not NaN
    assert not np.isnan(got).any()
    if str_categories:  # the C fill takes such a batch whole (an int category makes it decline)
        out = np.full((len(windows), bundle._matrix.width), 7.0)
        assert native_fill(bundle._matrix._native_plan, windows, overlays, out) and _same_bits(out, want)


def test_the_c_fill_declines_what_the_python_paths_decide(bundle: ModelBundle) -> None:
    ws, ovs = _golden(bundle)
    plan, width = bundle._matrix._native_plan, bundle._matrix.width
    out = np.empty((len(ws), width))
    assert native_fill(plan, ws, ovs, out) and _same_bits(out, bundle._matrix.encode_exact(ws, ovs))
    w = ws[0]
    for bad_vals, bad_ov in [({**w.values, "keys_per_min": "3"}, ovs[0]), ({**w.values, "app_id": 5}, ovs[0]), ({**w.values, "keys_per_min": 10**400}, ovs[0]), (w.values, ovs[0][:3]), (w.values, list(ovs[0]))]:
        assert not native_fill(plan, [FeatureWindow("u", 0, "v1", bad_vals)], [bad_ov], np.empty((1, width)))
    missing = dict(w.values)
    del missing["keys_per_min"]
    assert not native_fill(plan, [FeatureWindow("u", 0, "v1", missing)], [ovs[0]], np.empty((1, width)))
    assert not native_fill(plan, ws[:2], ovs[:2], np.empty((1, width)))  # wrong shape
    assert not native_fill(plan, ws[:1], ovs[:1], np.empty((1, width), dtype=np.float32))


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
