"""Calibrators and taskclf's ``CalibratorStore`` directory (spec 4).

Calibrators map raw probabilities (n, 8) to calibrated ones, row-wise and deterministically:

* identity;
* temperature ``T``: ``softmax(ln(clip(p, 1e-12)) / T)``; ``T == 1`` returns rows untouched;
* isotonic: per class, piecewise-linear interpolation over the fitted thresholds (clamped at the
  ends), floored at 1e-12, rows renormalised.

Store layout::

    <store>/store.json          {"method", "user_count", "user_ids" (sorted), "model_bundle_id"?,
                                 "model_schema_hash"?, "created_at"?}
    <store>/global.json         calibrator JSON
    <store>/users/<user_id>.json

taskclf uses the user id verbatim as the file name. We do the same for ids that are safe file
names, and for any other id (``../x``, ``a/b``, NUL, leading dot, very long) use ``~<hex>.json``,
so an id can neither escape the store nor break it. A taskclf store always loads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.labels import N_LABELS

_FLOOR = 1e-12
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+=-]{0,199}$")


class Calibrator(Protocol):
    @property
    def kind(self) -> str:
        """``identity``, ``temperature`` or ``isotonic`` (read-only: calibrators are frozen)."""

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrate (n, K) or (K,) probabilities; same shape out."""

    def to_json(self) -> dict[str, Any]:
        """taskclf's calibrator JSON."""


@dataclass(frozen=True)
class IdentityCalibrator:
    kind: str = "identity"

    def apply(self, probs: np.ndarray) -> np.ndarray:
        return probs

    def to_json(self) -> dict[str, Any]:
        return {"type": "identity"}


def _softmax_rows(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    p: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return p


@dataclass(frozen=True)
class TemperatureCalibrator:
    temperature: float
    kind: str = "temperature"

    def __post_init__(self) -> None:
        if not (self.temperature > 0) or not np.isfinite(self.temperature):
            raise ValueError("temperature must be positive")

    def apply(self, probs: np.ndarray) -> np.ndarray:
        if self.temperature == 1.0:
            return probs
        return _softmax_rows(np.log(np.clip(probs, _FLOOR, None)) / self.temperature)

    def to_json(self) -> dict[str, Any]:
        return {"type": "temperature", "temperature": float(self.temperature)}


@dataclass(frozen=True)
class IsotonicCurve:
    """One class's fitted isotonic regression (sklearn ``IsotonicRegression`` attributes)."""

    x: np.ndarray
    y: np.ndarray
    x_min: float
    x_max: float
    increasing: bool = True

    def __call__(self, p: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.interp(np.clip(p, self.x_min, self.x_max), self.x, self.y)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "X_thresholds_": [float(v) for v in self.x],
            "y_thresholds_": [float(v) for v in self.y],
            "X_min_": float(self.x_min),
            "X_max_": float(self.x_max),
            "increasing_": bool(self.increasing),
            "out_of_bounds": "clip",
        }


@dataclass(frozen=True)
class IsotonicCalibrator:
    curves: tuple[IsotonicCurve, ...]
    kind: str = "isotonic"

    def __post_init__(self) -> None:
        if not self.curves:
            raise ValueError("regressors list must not be empty")

    def apply(self, probs: np.ndarray) -> np.ndarray:
        p = np.asarray(probs, dtype=np.float64)
        one = p.ndim == 1
        P = p[None, :] if one else p
        if P.shape[1] != len(self.curves):
            raise ValueError(f"isotonic calibrator has {len(self.curves)} regressors but the probabilities have {P.shape[1]} classes")
        out = np.empty_like(P)
        for c, curve in enumerate(self.curves):
            out[:, c] = curve(P[:, c])
        out = np.clip(out, _FLOOR, None)
        out = out / out.sum(axis=1, keepdims=True)
        res: np.ndarray = out[0] if one else out
        return res

    def to_json(self) -> dict[str, Any]:
        return {"type": "isotonic", "regressors": [c.to_json() for c in self.curves]}


def calibrator_from_json(obj: Any, source: object = "<json>") -> Calibrator:
    """Parse taskclf's calibrator JSON; a missing ``type`` is identity."""
    if not isinstance(obj, dict):
        raise ArtifactError(source, "calibrator JSON must be an object", "write {\"type\": \"identity\"|\"temperature\"|\"isotonic\", ...}")
    kind = obj.get("type", "identity")
    if kind == "identity":
        return IdentityCalibrator()
    if kind == "temperature":
        t = obj.get("temperature")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0 or not np.isfinite(t):
            raise ArtifactError(source, f"temperature must be a positive number, got {t!r}", "refit with `taskclf-daemon calibrate`", field="temperature")
        return TemperatureCalibrator(float(t))
    if kind == "isotonic":
        regs = obj.get("regressors")
        if not isinstance(regs, list) or not regs:
            raise ArtifactError(source, "regressors list must not be empty", "refit with `taskclf-daemon calibrate --method isotonic`", field="regressors")
        curves = []
        for i, r in enumerate(regs):
            try:
                x = _number_array(r["X_thresholds_"], "X_thresholds_")
                y = _number_array(r["y_thresholds_"], "y_thresholds_")
                if x.ndim != 1 or x.shape != y.shape or x.size == 0 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
                    raise ValueError("X_thresholds_/y_thresholds_ must be equal-length finite lists")
                if np.any(np.diff(x) < 0):
                    raise ValueError("X_thresholds_ must be sorted ascending")
                # taskclf refits on the threshold points, so its bounds are the first/last threshold
                curves.append(IsotonicCurve(x, y, float(x[0]), float(x[-1]), bool(r.get("increasing_", True))))
            except (KeyError, TypeError, ValueError) as exc:
                raise ArtifactError(source, f"bad isotonic regressor: {exc}", "refit with `taskclf-daemon calibrate --method isotonic`", field=f"regressors[{i}]") from None
        if len(curves) != N_LABELS:
            raise ArtifactError(source, f"isotonic calibrator has {len(curves)} regressors, expected one per label ({N_LABELS})", "refit with `taskclf-daemon calibrate --method isotonic`", field="regressors")
        return IsotonicCalibrator(tuple(curves))
    raise ArtifactError(source, f"Unknown calibrator type {kind!r}", "use identity, temperature or isotonic", field="type")


def _number_array(v: Any, name: str) -> np.ndarray:
    """A JSON list of numbers as float64; strings ("0.5") and booleans are refused, not coerced."""
    if not isinstance(v, list) or not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in v):
        raise ValueError(f"{name} must be a list of numbers")
    return np.asarray(v, dtype=np.float64)


def user_file_name(user_id: str) -> str:
    """File name (without directory) of a user's calibrator: verbatim when safe, else ``~<hex>``."""
    if _SAFE_ID.fullmatch(user_id) and user_id not in (".", ".."):
        return f"{user_id}.json"
    h = user_id.encode("utf-8", "surrogatepass").hex()
    if len(h) > 200:
        h = "h" + hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"~{h}.json"


@dataclass
class CalibratorStore:
    """Global calibrator + per-user calibrators, optionally bound to a model bundle."""

    global_calibrator: Calibrator = field(default_factory=IdentityCalibrator)
    user_calibrators: dict[str, Calibrator] = field(default_factory=dict)
    method: str = "temperature"
    model_bundle_id: str | None = None
    model_schema_hash: str | None = None
    created_at: str | None = None
    path: str | None = None

    @property
    def user_ids(self) -> list[str]:
        return sorted(self.user_calibrators)

    @property
    def store_id(self) -> str:
        """Short id for provenance: directory name + digest of store.json contents."""
        meta = json.dumps(self._store_json(), sort_keys=True).encode()
        return f"{Path(self.path).name if self.path else 'memory'}@{hashlib.sha256(meta).hexdigest()[:8]}"

    def get(self, user_id: str) -> tuple[Calibrator, str]:
        """The user's calibrator and its scope (``"user"`` or ``"global"``)."""
        cal = self.user_calibrators.get(user_id)
        if cal is not None:
            return cal, "user"
        return self.global_calibrator, "global"

    def calibrate_batch(self, probs: np.ndarray, user_ids: Sequence[str], kinds: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
        """Calibrate each row with its user's calibrator. Vectorised per calibrator kind.
        ``kinds``: filled with each row's calibrator kind when given.

        Row results do not depend on the other rows of the batch (bit-identical to one-row calls).
        """
        n = probs.shape[0]
        out = probs.copy()
        scopes: list[str] = []
        temp_rows: list[int] = []
        temps: list[float] = []
        groups: dict[int, tuple[Calibrator, list[int]]] = {}
        for i, uid in enumerate(user_ids):
            cal, scope = self.get(uid)
            scopes.append(scope)
            if kinds is not None:
                kinds.append(cal.kind)
            if isinstance(cal, TemperatureCalibrator):
                if cal.temperature != 1.0:
                    temp_rows.append(i)
                    temps.append(cal.temperature)
            elif isinstance(cal, IdentityCalibrator):
                continue
            else:
                groups.setdefault(id(cal), (cal, []))[1].append(i)
        if temp_rows:
            idx = np.asarray(temp_rows)
            T = np.asarray(temps, dtype=np.float64)[:, None]
            out[idx] = _softmax_rows(np.log(np.clip(probs[idx], _FLOOR, None)) / T)
        for cal, rows in groups.values():
            idx = np.asarray(rows)
            out[idx] = cal.apply(probs[idx])
        assert len(scopes) == n
        return out, scopes

    def check_binding(self, schema_hash: str, bundle_id: str | None = None) -> None:
        """Refuse a store bound to another model schema (a store without binding passes)."""
        if self.model_schema_hash is not None and self.model_schema_hash != schema_hash:
            raise ArtifactError(
                Path(self.path or "<store>") / "store.json",
                f"store is bound to schema hash {self.model_schema_hash!r} but the model has {schema_hash!r}",
                "refit the store for this model with `taskclf-daemon calibrate --model-dir <bundle>`",
                field="model_schema_hash",
            )

    def _store_json(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"method": self.method, "user_count": len(self.user_calibrators), "user_ids": self.user_ids}
        for k in ("model_bundle_id", "model_schema_hash", "created_at"):
            v = getattr(self, k)
            if v is not None:
                meta[k] = v
        return meta

    def save(self, directory: str | Path) -> Path:
        """Write the store in taskclf's layout.

        Each file is written atomically, the calibrators first and ``store.json`` last (so a
        reader never sees a new ``store.json`` with old calibrators); per-user files of users no
        longer in the store are deleted.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        users_dir = d / "users"
        keep = {user_file_name(uid) for uid in self.user_ids}
        if self.user_calibrators:
            users_dir.mkdir(exist_ok=True)
            for uid in self.user_ids:
                _write_json(users_dir / user_file_name(uid), self.user_calibrators[uid].to_json())
        _write_json(d / "global.json", self.global_calibrator.to_json())
        _write_json(d / "store.json", self._store_json())
        if users_dir.is_dir():
            for f in users_dir.glob("*.json"):
                if f.name not in keep:
                    f.unlink()
        self.path = str(d)
        return d

    @classmethod
    def load(cls, directory: str | Path) -> CalibratorStore:
        """Load a store directory (taskclf's or ours).

        Users listed in ``store.json`` whose file is absent fall back to the global calibrator,
        as in taskclf. Any unreadable file fails with an :class:`ArtifactError`, and so does a
        user file that resolves outside ``users/`` (a symlink planted there would otherwise give
        a user a calibrator from anywhere on the disk).
        """
        d = Path(directory)
        if not d.is_dir():
            raise ArtifactError(d, "calibrator store directory does not exist", "pass --calibrator-store DIR (holding store.json and global.json) or omit it")
        meta = _load_json(d / "store.json", "run `taskclf-daemon calibrate` to create the store")
        if not isinstance(meta, dict):
            raise ArtifactError(d / "store.json", "store.json is not a JSON object", "recreate the store")
        uids = meta.get("user_ids", [])
        if not isinstance(uids, list) or not all(isinstance(u, str) for u in uids):
            raise ArtifactError(d / "store.json", "user_ids must be a list of strings", "recreate the store", field="user_ids")
        glob = calibrator_from_json(_load_json(d / "global.json", "recreate the store"), d / "global.json")
        users_dir = (d / "users").resolve()
        users: dict[str, Calibrator] = {}
        for uid in uids:
            link = users_dir / user_file_name(uid)
            f = link.resolve()
            if f.parent != users_dir:
                raise ArtifactError(link, f"resolves to {f}, outside the store's users/ directory", "replace the link with the user's calibrator file, or recreate the store", field="user_ids")
            if not f.is_file():
                continue
            users[uid] = calibrator_from_json(_load_json(f, "recreate the store"), f)
        method = meta.get("method", "temperature")
        return cls(glob, users, str(method), meta.get("model_bundle_id"), meta.get("model_schema_hash"), meta.get("created_at"), str(d))


def _load_json(path: Path, fix: str) -> Any:
    if not path.is_file():
        raise ArtifactError(path, "file is missing", fix)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(path, f"cannot parse JSON: {exc}", fix) from None


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


