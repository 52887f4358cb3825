"""Candidates and the gate: from a user's evidence to a typed decision (pure, deterministic).

Given a user's labelled evidence (raw model probabilities, head extras, label, time) and the
model in force for that user (global calibrator, or an earlier personal model):

1. **eligibility** exactly taskclf's: >= 200 labelled windows, >= 3 distinct UTC days, >= 3
   distinct labels (all ``>=``);
2. **split by time**: the evidence in time order; the newest :attr:`GateConfig.holdout_fraction`
   (30%, rounded up) is held out, the older part fits;
3. **candidates**, each fitted on the older part only:
   ``temperature`` (taskclf's grid, :func:`~taskclf_daemon.pipeline.calibfit.fit_temperature`,
   on the raw probabilities), ``isotonic`` (taskclf's per-class isotonic), and ``head`` (a
   multinomial linear residual on the in-force calibrator's log-probabilities over the
   standardised :data:`~taskclf_daemon.pipeline.head_features.HEAD_FEATURES`, mean NLL +
   ``head_l2 * (|W|^2 + |b|^2)``, L-BFGS from zero: the penalty shrinks it toward the calibrator
   in force);
4. **the gate**, on the held-out tail: a candidate qualifies iff its NLL is at least
   ``nll_margin`` below the in-force model's, its macro-F1 is not more than ``f1_tolerance``
   (taskclf's 0.02) below, and its NLL is at least ``nll_margin`` below the user's own
   label-frequency baseline (add-one smoothed frequencies of the older part: a model of labels
   that carry no signal, e.g. noise, is refused); the qualifying candidate with the lowest NLL
   is adopted (ties: temperature, isotonic, head), else the model in force stays.

Same evidence and model in force -> the same decision and the same model bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from taskclf_daemon.labels import MIN_DISTINCT_LABELS, MIN_LABELED_DAYS, MIN_LABELED_WINDOWS, N_LABELS
from taskclf_daemon.pipeline.calibfit import fit_isotonic, fit_temperature, nll
from taskclf_daemon.pipeline.calibration import TemperatureCalibrator
from taskclf_daemon.pipeline.head_features import HEAD_FEATURES, N_EXTRAS, head_matrix
from taskclf_daemon.pipeline.personal_model import HeadParams, PersonalModel
from taskclf_daemon.pipeline.scoring import Scores, score

_DAY_US = 86_400_000_000
CANDIDATE_KINDS = ("temperature", "isotonic", "head")


@dataclass(frozen=True)
class GateConfig:
    min_windows: int = MIN_LABELED_WINDOWS
    min_days: int = MIN_LABELED_DAYS
    min_labels: int = MIN_DISTINCT_LABELS
    holdout_fraction: float = 0.3
    #: a backtest before the holdout: candidates refitted on the evidence older than this
    #: share + the holdout must also pass the gate on it (0 = no backtest)
    backtest_fraction: float = 0.2
    #: nats of held-out NLL a candidate must gain over the model in force (and the label baseline)
    nll_margin: float = 0.01
    #: taskclf's DEFAULT_REGRESSION_TOLERANCE: held-out macro-F1 may fall at most this much
    f1_tolerance: float = 0.02
    head_l2: float = 0.01
    head_max_iter: int = 300
    candidates: tuple[str, ...] = CANDIDATE_KINDS


@dataclass(frozen=True)
class Evidence:
    """A user's labelled windows as arrays, in time order."""

    ts_us: np.ndarray  # (n,) int64
    y: np.ndarray  # (n,) int64 label indices
    raw: np.ndarray  # (n, 8) raw model probabilities
    extras: np.ndarray  # (n, N_EXTRAS)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, idx: slice | np.ndarray) -> Evidence:
        return Evidence(self.ts_us[idx], self.y[idx], self.raw[idx], self.extras[idx])


@dataclass(frozen=True)
class Eligibility:
    labeled_windows: int
    labeled_days: int
    distinct_labels: int
    is_eligible: bool

    def to_json(self) -> dict[str, Any]:
        return {"labeled_windows": self.labeled_windows, "labeled_days": self.labeled_days, "distinct_labels": self.distinct_labels, "is_eligible": self.is_eligible}


def eligibility(ev: Evidence, cfg: GateConfig = GateConfig()) -> Eligibility:
    n = len(ev)
    days = len(np.unique(ev.ts_us // _DAY_US)) if n else 0
    labels = len(np.unique(ev.y)) if n else 0
    return Eligibility(n, days, labels, n > 0 and n >= cfg.min_windows and days >= cfg.min_days and labels >= cfg.min_labels)


@dataclass(frozen=True)
class CandidateResult:
    kind: str
    scores: Scores
    qualifies: bool
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "holdout": self.scores.to_json(), "qualifies": self.qualifies, "why": self.why}


@dataclass(frozen=True)
class Decision:
    """One refit of one user: every candidate's held-out scores and what is in force after it."""

    at_us: int
    eligibility: Eligibility
    n_fit: int
    n_holdout: int
    in_force_kind: str
    in_force_version: str
    in_force_scores: Scores | None
    baseline_nll: float | None
    candidates: tuple[CandidateResult, ...] = ()
    adopted: PersonalModel | None = None
    reason: str = ""
    #: the personal model in force no longer passes the gate against the global calibrator:
    #: the user goes back to the global one
    revert_to_global: bool = False
    global_scores: Scores | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at_us": self.at_us,
            "eligibility": self.eligibility.to_json(),
            "n_fit": self.n_fit,
            "n_holdout": self.n_holdout,
            "in_force": {"kind": self.in_force_kind, "version": self.in_force_version, "holdout": None if self.in_force_scores is None else self.in_force_scores.to_json()},
            "label_baseline_nll": None if self.baseline_nll is None else round(self.baseline_nll, 6),
            "candidates": [c.to_json() for c in self.candidates],
            "global": None if self.global_scores is None else self.global_scores.to_json(),
            "adopted": None if self.adopted is None else {"kind": self.adopted.kind, "version": self.adopted.version},
            "revert_to_global": self.revert_to_global,
            "reason": self.reason,
        }


# ---------------------------------------------------------------------------------- the head


def fit_head(ev: Evidence, base: PersonalModel, l2: float, max_iter: int) -> HeadParams:
    """Fit the head's residual on top of ``base`` (a calibrator model) by L-BFGS from zero."""
    from scipy.optimize import minimize

    F = head_matrix(ev.raw, ev.extras)
    mean = F.mean(axis=0)
    std = F.std(axis=0)
    scale = np.where(std > 1e-9, std, 1.0)
    Fs = (F - mean) / scale
    base_lp = np.log(np.clip(base.apply(ev.raw), 1e-12, None))
    n, d = Fs.shape
    onehot = np.zeros((n, N_LABELS))
    onehot[np.arange(n), ev.y] = 1.0

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W = theta[: d * N_LABELS].reshape(d, N_LABELS)
        b = theta[d * N_LABELS :]
        z = base_lp + Fs @ W + b
        zmax = z.max(axis=1, keepdims=True)
        e = np.exp(z - zmax)
        s = e.sum(axis=1, keepdims=True)
        lse = np.log(s) + zmax
        loss = float(np.mean(lse[:, 0] - z[np.arange(n), ev.y])) + l2 * float(theta @ theta)
        G = (e / s - onehot) / n
        grad = np.concatenate([(Fs.T @ G).ravel(), G.sum(axis=0)]) + 2.0 * l2 * theta
        return loss, grad

    res = minimize(objective, np.zeros(d * N_LABELS + N_LABELS), jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    theta = np.asarray(res.x, dtype=np.float64)
    W = theta[: d * N_LABELS].reshape(d, N_LABELS)
    b = theta[d * N_LABELS :]
    return HeadParams(tuple(float(x) for x in mean), tuple(float(x) for x in scale), tuple(tuple(float(x) for x in r) for r in W), tuple(float(x) for x in b), l2)


def _base_of(model: PersonalModel) -> PersonalModel:
    """The calibrator a new head sits on: the model in force without its head."""
    return PersonalModel("base", model.calibrator.kind, 0, model.calibrator)


def _fit_candidate(kind: str, fit: Evidence, in_force: PersonalModel, seq: int, at_us: int, cfg: GateConfig) -> PersonalModel:
    if kind == "temperature":
        return PersonalModel("user", kind, seq, TemperatureCalibrator(fit_temperature(fit.raw, fit.y)), fitted_at_us=at_us)
    if kind == "isotonic":
        return PersonalModel("user", kind, seq, fit_isotonic(fit.raw, fit.y), fitted_at_us=at_us)
    if kind == "head":
        base = _base_of(in_force)
        return PersonalModel("user", kind, seq, base.calibrator, fit_head(fit, base, cfg.head_l2, cfg.head_max_iter), fitted_at_us=at_us)
    raise ValueError(f"unknown candidate kind {kind!r} (use {', '.join(CANDIDATE_KINDS)})")


def label_baseline_nll(fit: Evidence, hold: Evidence) -> float:
    """Held-out NLL of the older part's add-one smoothed label frequencies."""
    counts = np.bincount(fit.y, minlength=N_LABELS).astype(np.float64) + 1.0
    prior = counts / counts.sum()
    return nll(np.broadcast_to(prior, (len(hold), N_LABELS)), hold.y)


def _passes(s: Scores, ref: Scores, cfg: GateConfig) -> list[str]:
    """Why ``s`` does not beat ``ref`` (empty: it does)."""
    why = []
    if not s.nll <= ref.nll - cfg.nll_margin:
        why.append(f"held-out NLL {s.nll:.4f} not {cfg.nll_margin} below {{ref}} ({ref.nll:.4f})")
    if s.macro_f1 < ref.macro_f1 - cfg.f1_tolerance:
        why.append(f"held-out macro-F1 {s.macro_f1:.4f} more than {cfg.f1_tolerance} below {{ref}} ({ref.macro_f1:.4f})")
    return why


@dataclass(frozen=True)
class _References:
    """What a candidate must beat on one held-out part."""

    in_force: Scores
    global_: Scores | None
    baseline_nll: float

    def why_not(self, s: Scores, cfg: GateConfig) -> list[str]:
        why = [w.format(ref="the model in force") for w in _passes(s, self.in_force, cfg)]
        if self.global_ is not None:
            why += [w.format(ref="the global calibrator") for w in _passes(s, self.global_, cfg)]
        if not s.nll <= self.baseline_nll - cfg.nll_margin:
            why.append(f"held-out NLL {s.nll:.4f} not {cfg.nll_margin} below the user's label-frequency baseline ({self.baseline_nll:.4f}): the labels carry no signal the model can use")
        return why


def decide(ev: Evidence, in_force: PersonalModel, at_us: int, cfg: GateConfig = GateConfig(), global_model: PersonalModel | None = None) -> Decision:
    """Fit the candidates on the older evidence and gate them on the newest tail.

    ``in_force``: the user's model now (``PersonalModel.from_calibrator(global_cal)`` on cold
    start). ``global_model``: the global calibrator when a personal model is in force -- a
    candidate must then beat both, and a personal model that no longer beats the global one
    on the new tail is dropped (``revert_to_global``). ``at_us``: the event time of the refit.

    BLAS runs on one thread meanwhile: the fits are small, and a multi-threaded OpenBLAS
    spinning on a busy machine made one head fit ~50x slower (0.73 s vs 0.015 s, measured).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _decide(ev, in_force, at_us, cfg, global_model)


def _decide(ev: Evidence, in_force: PersonalModel, at_us: int, cfg: GateConfig, global_model: PersonalModel | None) -> Decision:
    if ev.extras.shape[1:] != (N_EXTRAS,) or ev.raw.shape[1:] != (N_LABELS,):
        raise ValueError(f"evidence needs raw (n, {N_LABELS}) and extras (n, {N_EXTRAS}) for {len(HEAD_FEATURES)} head features")
    order = np.argsort(ev.ts_us, kind="stable")
    ev = ev.take(order)
    elig = eligibility(ev, cfg)
    n = len(ev)
    if not elig.is_eligible:
        return Decision(at_us, elig, 0, 0, in_force.kind, in_force.version, None, None, reason="not eligible")
    n_hold = max(1, math.ceil(n * cfg.holdout_fraction))
    n_back = math.ceil(n * cfg.backtest_fraction)
    fit, hold = ev.take(slice(0, n - n_hold)), ev.take(slice(n - n_hold, n))
    back_fit, back = ev.take(slice(0, n - n_hold - n_back)), ev.take(slice(n - n_hold - n_back, n - n_hold))
    base_scores = score(in_force.apply(hold.raw, hold.extras), hold.y)
    glob_scores = None if global_model is None else score(global_model.apply(hold.raw, hold.extras), hold.y)
    refs = _References(base_scores, glob_scores, label_baseline_nll(fit, hold))
    back_refs = None
    if n_back and len(np.unique(back_fit.y)) >= 2:
        back_refs = _References(score(in_force.apply(back.raw, back.extras), back.y), None if global_model is None else score(global_model.apply(back.raw, back.extras), back.y), label_baseline_nll(back_fit, back))
    seq = (in_force.seq if in_force.scope == "user" else 0) + 1
    results: list[CandidateResult] = []
    best: tuple[float, int, PersonalModel] | None = None
    for rank, kind in enumerate(cfg.candidates):
        if len(np.unique(fit.y)) < 2:
            break
        model = _fit_candidate(kind, fit, in_force, seq, at_us, cfg)
        s = score(model.apply(hold.raw, hold.extras), hold.y)
        why = refs.why_not(s, cfg)
        if back_refs is not None and not why:
            early = _fit_candidate(kind, back_fit, in_force, seq, at_us, cfg)
            why = [f"backtest (fit on the oldest {len(back_fit)}, scored on the next {len(back)}): {w}" for w in back_refs.why_not(score(early.apply(back.raw, back.extras), back.y), cfg)]
        ok = not why
        results.append(CandidateResult(kind, s, ok, "qualifies" if ok else "; ".join(why)))
        if ok and (best is None or (s.nll, rank) < (best[0], best[1])):
            best = (s.nll, rank, model)
    adopted = best[2] if best is not None else None
    revert = adopted is None and glob_scores is not None and (not _passes(glob_scores, base_scores, cfg) or base_scores.macro_f1 < glob_scores.macro_f1 - cfg.f1_tolerance)
    reason = f"adopted {adopted.kind}" if adopted is not None else ("the personal model in force no longer beats the global calibrator: back to global" if revert else "no candidate beat the model in force")
    return Decision(at_us, elig, n - n_hold, n_hold, in_force.kind, in_force.version, base_scores, refs.baseline_nll, tuple(results), adopted, reason, revert, glob_scores)
