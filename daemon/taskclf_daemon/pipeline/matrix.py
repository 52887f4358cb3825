"""The model input matrix of a batch: validated windows + overlays -> float64 (n, width).

Per column, in the schema's feature order: a categorical column is its code in the sorted
vocabulary (``-1.0`` without a vocabulary), an overlay column the overlay's value, any other the
window's value; ``None`` is ``0.0``, ``True``/``False`` are ``1.0``/``0.0``, a number is
``float(value)``.

Two paths give the same matrix bit for bit:

* the **exact** path (:func:`compile_row`): one generated list display per row,
  ``0.0 if v is None else float(v)`` per column -- the reference;
* the **columnar** path (:meth:`MatrixEncoder.encode`, used first): per row one C call
  (``operator.itemgetter``) fetches every plain column, the overlay tuple and the categorical
  codes are appended, and numpy converts the whole batch in one call. numpy turns ``None`` into
  NaN and converts a Python number with ``float()``'s own conversion; NaN cannot be a real value
  (the codec refuses non-finite numbers, and an overlay of finite numbers is never NaN), so the
  NaNs are exactly the ``None`` cells and become ``0.0``. The columns are then put in feature
  order with one gather. Anything unusual (an int too large for a float, a value of another
  type) makes numpy raise: the batch then goes through the exact path, which raises -- or
  not -- as it always did.

Where the C fill (``_matrix.c``, see ``native.py``) is built, it writes the columnar path's
matrix straight into the array (no row tuples, no gather): the same floats; anything it does not
expect and the paths above decide.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from taskclf_daemon import native
from taskclf_daemon.records import FeatureWindow

_c = native.load("_matrix", "fill")
#: ``fill(plan, windows, overlays, out) -> bool`` (``_matrix.c``); None: not built, or turned off
NATIVE_FILL: Callable[[tuple[tuple[Any, ...], ...], list[FeatureWindow], list[tuple[Any, ...]], np.ndarray], bool] | None = None if _c is None else _c[0]

#: one column of the encode plan: (column name, kind ``cat``/``ovl``/``num``, argument:
#: the categorical codes, the overlay index or None)
PlanItem = tuple[str, str, Any]


def compile_row(plan: Sequence[PlanItem]) -> Callable[[dict[str, Any], Sequence[Any]], list[float]]:
    """A generated ``row(values, overlay) -> list[float]`` for the encode plan: one list
    display, no per-column loop or numpy scalar stores (the matrix is built in one call)."""
    env: dict[str, Any] = {}
    items = []
    for j, (col, kind, arg) in enumerate(plan):
        if kind == "num":
            items.append(f"0.0 if (v := vals[{col!r}]) is None else float(v)")
        elif kind == "ovl":
            items.append(f"0.0 if (v := ov[{int(arg)}]) is None else float(v)")
        elif arg is None:
            items.append("-1.0")
        else:
            env[f"_g{j}"] = arg.codes.get
            env[f"_u{j}"] = arg.unknown
            items.append(f"_g{j}(str(vals[{col!r}]), _u{j})")
    src = "def row(vals, ov):\n    return [\n        " + ",\n        ".join(items) + ",\n    ]\n"
    exec(compile(src, "<taskclf_daemon encode row>", "exec"), env)  # noqa: S102 - our own generated code
    row: Callable[[dict[str, Any], Sequence[Any]], list[float]] = env["row"]
    return row


def _compile_parts(plan: Sequence[PlanItem], n_overlay: int) -> tuple[Callable[[dict[str, Any], tuple[Any, ...]], tuple[Any, ...]], np.ndarray]:
    """The columnar path's row function -- ``row(values, overlay)`` = plain columns (in plan
    order), then the whole overlay, then the categorical codes -- and the gather that puts those
    cells in feature order."""
    env: dict[str, Any] = {}
    num = [col for col, kind, _ in plan if kind == "num"]
    cats = [(j, col, arg) for j, (col, kind, arg) in enumerate(plan) if kind == "cat"]
    parts = []
    if num:
        env["_get"] = operator.itemgetter(*num)
        parts.append("_get(vals)" if len(num) > 1 else "(_get(vals),)")
    parts.append("ov")
    codes = []
    for j, col, arg in cats:
        if arg is None:
            codes.append("-1.0")
        else:
            env[f"_g{j}"], env[f"_u{j}"] = arg.codes.get, arg.unknown
            codes.append(f"_g{j}(str(vals[{col!r}]), _u{j})")
    if codes:
        parts.append("(" + ", ".join(codes) + ",)")
    src = "def row(vals, ov):\n    return " + " + ".join(parts) + "\n"
    exec(compile(src, "<taskclf_daemon encode row (columnar)>", "exec"), env)  # noqa: S102 - our own generated code
    # where each feature column's cell sits in the row above
    at_num = {col: i for i, col in enumerate(num)}
    at_cat = {j: len(num) + n_overlay + k for k, (j, _c, _a) in enumerate(cats)}
    order = []
    for j, (col, kind, arg) in enumerate(plan):
        order.append(at_num[col] if kind == "num" else len(num) + int(arg) if kind == "ovl" else at_cat[j])
    return env["row"], np.asarray(order, dtype=np.intp)


class MatrixEncoder:
    """Encodes batches for one encode plan (see the module docstring)."""

    def __init__(self, plan: Sequence[PlanItem], n_overlay: int) -> None:
        self.width = len(plan)
        self.row = compile_row(plan)
        self._cells, self._order = _compile_parts(plan, n_overlay)
        self._n_cells = sum(kind != "ovl" for _c, kind, _a in plan) + n_overlay
        #: the plan as ``_matrix.c`` reads it (see its header)
        self._native_plan = tuple(
            (0, col) if kind == "num" else (1, int(arg)) if kind == "ovl" else (3,) if arg is None else (2, col, arg.codes, arg.unknown) for col, kind, arg in plan
        )

    def encode(self, windows: Sequence[FeatureWindow], overlays: Sequence[tuple[Any, ...]]) -> np.ndarray:
        if not windows:
            return np.empty((0, self.width), dtype=np.float64)
        if NATIVE_FILL is not None and type(windows) is list and type(overlays) is list:
            x = np.empty((len(windows), self.width), dtype=np.float64)
            if NATIVE_FILL(self._native_plan, windows, overlays, x):
                return x
        cells = self._cells
        try:
            m = np.array([cells(w.values, ov) for w, ov in zip(windows, overlays)], dtype=np.float64)
        except Exception:  # noqa: BLE001 - the exact path decides (and raises what it raises)
            return self.encode_exact(windows, overlays)
        if m.ndim != 2 or m.shape[1] != self._n_cells:  # e.g. overlays of another length
            return self.encode_exact(windows, overlays)
        x = m.take(self._order, axis=1)
        np.copyto(x, 0.0, where=np.isnan(x))
        return x

    def encode_exact(self, windows: Sequence[FeatureWindow], overlays: Sequence[tuple[Any, ...]]) -> np.ndarray:
        """The reference path: one generated list per row."""
        if not windows:
            return np.empty((0, self.width), dtype=np.float64)
        row = self.row
        return np.array([row(w.values, ov) for w, ov in zip(windows, overlays)], dtype=np.float64)
