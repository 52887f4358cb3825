"""A user's personal model: what replaces the global calibrator for that user, and its JSON.

Kinds:

* ``identity`` / ``temperature`` / ``isotonic``: a taskclf calibrator (spec 4) applied to the raw
  model probabilities; its ``calibrator`` JSON is taskclf's, so ``export-store`` writes it as is;
* ``head``: a per-user linear head on top of a base calibrator --
  ``softmax(ln base(raw) + ((f - mean) / scale) @ W + b)`` with ``f`` the head features
  (:data:`~taskclf_daemon.pipeline.head_features.HEAD_FEATURES`: the base model's
  log-probabilities and a few of the user's overlay features). ``W = 0, b = 0`` is the base
  calibrator itself: the L2 penalty of the fit shrinks the head toward it.

``apply`` is vectorised and row-independent (a row's output does not depend on the other rows:
the head's product is summed feature by feature, in a fixed order), so outputs do not depend on
batching. JSON (``to_json``/``from_json``) round-trips every float exactly; ``version`` is
``<kind initial><seq>-<sha256 of the parameters, 8 hex>``, so equal parameters give equal
versions and bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.labels import N_LABELS
from taskclf_daemon.pipeline.calibration import Calibrator, IdentityCalibrator, calibrator_from_json
from taskclf_daemon.pipeline.head_features import HEAD_FEATURES, head_matrix

MODEL_FORMAT = "taskclf-daemon-personal/1"
KINDS = ("identity", "temperature", "isotonic", "head")
_FLOOR = 1e-12


@dataclass(frozen=True)
class HeadParams:
    """The head's standardisation and weights (``weights``: (features, classes))."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[tuple[float, ...], ...]
    bias: tuple[float, ...]
    l2: float

    def to_json(self) -> dict[str, Any]:
        return {"features": list(HEAD_FEATURES), "mean": list(self.mean), "scale": list(self.scale), "weights": [list(r) for r in self.weights], "bias": list(self.bias), "l2": self.l2}

    @classmethod
    def from_json(cls, obj: Any, source: object) -> HeadParams:
        try:
            if list(obj["features"]) != list(HEAD_FEATURES):
                raise ValueError(f"features {obj['features']!r} are not this build's {list(HEAD_FEATURES)}")
            mean = tuple(float(x) for x in obj["mean"])
            scale = tuple(float(x) for x in obj["scale"])
            weights = tuple(tuple(float(x) for x in r) for r in obj["weights"])
            bias = tuple(float(x) for x in obj["bias"])
            d = len(HEAD_FEATURES)
            if len(mean) != d or len(scale) != d or len(weights) != d or any(len(r) != N_LABELS for r in weights) or len(bias) != N_LABELS:
                raise ValueError("shapes do not fit")
            if not all(np.isfinite(mean)) or not all(s > 0 and np.isfinite(s) for s in scale) or not np.all(np.isfinite(weights)) or not all(np.isfinite(bias)):
                raise ValueError("non-finite parameter or non-positive scale")
            return cls(mean, scale, weights, bias, float(obj.get("l2", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(source, f"bad head parameters: {exc}", "refit the user's personal model", field="head") from None

    def logits(self, F: np.ndarray) -> np.ndarray:
        """``((F - mean) / scale) @ W + b`` summed feature by feature (row-independent)."""
        mean = np.asarray(self.mean)
        scale = np.asarray(self.scale)
        Fs = (F - mean) / scale
        z = np.broadcast_to(np.asarray(self.bias), (F.shape[0], N_LABELS)).copy()
        for j, row in enumerate(self.weights):
            z += Fs[:, j : j + 1] * np.asarray(row)[None, :]
        return z


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


@dataclass(frozen=True)
class PersonalModel:
    """A calibrator in force for a user: ``scope`` ``user`` (personal) or ``global``."""

    scope: str
    kind: str
    seq: int
    calibrator: Calibrator
    head: HeadParams | None = None
    fitted_at_us: int | None = None

    @classmethod
    def from_calibrator(cls, cal: Calibrator, scope: str = "global") -> PersonalModel:
        return cls(scope, cal.kind, 0, cal)

    @property
    def version(self) -> str:
        if self.scope != "user":
            return self.scope
        digest = hashlib.sha256(orjson.dumps(self._params(), option=orjson.OPT_SORT_KEYS)).hexdigest()[:8]
        return f"{self.kind[0]}{self.seq}-{digest}"

    def _params(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "calibrator": self.calibrator.to_json()}
        if self.head is not None:
            d["head"] = self.head.to_json()
        return d

    def apply(self, raw: np.ndarray, extras: np.ndarray | None = None) -> np.ndarray:
        """Calibrated (n, 8) probabilities of raw (n, 8) model probabilities. A head also needs
        the windows' head extras (n, len(HEAD_EXTRAS)); other kinds ignore them."""
        base = np.asarray(self.calibrator.apply(np.asarray(raw, dtype=np.float64)), dtype=np.float64)
        if self.head is None:
            return base
        if extras is None:
            raise ValueError("a head model needs the windows' head features")
        F = head_matrix(raw, extras)
        z = np.log(np.clip(base, _FLOOR, None)) + self.head.logits(F)
        return _softmax(z)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": MODEL_FORMAT, "scope": self.scope, "kind": self.kind, "version": self.version, "seq": self.seq, "fitted_at_us": self.fitted_at_us}
        d.update(self._params())
        return d

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json())

    @classmethod
    def from_json(cls, obj: Any, source: object = "<personal model>") -> PersonalModel:
        if not isinstance(obj, dict) or obj.get("format") != MODEL_FORMAT:
            raise ArtifactError(source, f"not a personal model of format {MODEL_FORMAT!r}", "refit the user's personal model", field="format")
        kind = obj.get("kind")
        if kind not in KINDS:
            raise ArtifactError(source, f"unknown personal model kind {kind!r}", f"use one of {', '.join(KINDS)}", field="kind")
        cal = calibrator_from_json(obj.get("calibrator", {"type": "identity"}), source)
        head = HeadParams.from_json(obj["head"], source) if kind == "head" and "head" in obj else None
        if kind == "head" and head is None:
            raise ArtifactError(source, "a head model without head parameters", "refit the user's personal model", field="head")
        if kind != "head" and cal.kind != kind:
            raise ArtifactError(source, f"kind {kind!r} but a {cal.kind!r} calibrator", "refit the user's personal model", field="calibrator")
        seq = obj.get("seq", 0)
        at = obj.get("fitted_at_us")
        if type(seq) is not int or (at is not None and type(at) is not int):
            raise ArtifactError(source, "seq and fitted_at_us must be integers", "refit the user's personal model", field="seq")
        model = cls(str(obj.get("scope", "user")), kind, seq, cal, head, at)
        if obj.get("version") not in (None, model.version):
            raise ArtifactError(source, f"version {obj.get('version')!r} does not match the parameters ({model.version})", "the file was edited; refit", field="version")
        return model


IDENTITY = PersonalModel.from_calibrator(IdentityCalibrator(), "none")
