"""The learning loop inside the pipeline: evidence in, refits at defined points, personal models out.

:class:`Learner` is the hook :class:`~taskclf_daemon.pipeline.batch.InferencePipeline` calls
after calibration (``pipeline.learner = Learner(...)``; None = no cost). Per applied window, in
the user's order:

1. the window is calibrated with the user's **model in force** (the adopted personal model,
   else the store's calibrator: nothing changes for a user without one);
2. its raw probabilities and head extras enter the user's recent ring; windows past the
   bounded wait are finalised and labelled into evidence (:mod:`~taskclf_daemon.pipeline.evidence`).
   Only users who sent a label span have learning state: a user's learning starts with their
   first span (windows before it are never evidence), so users who never label cost nothing
   (no ring in memory, no bytes in the changelog);
3. if a refit is due (eligible, then every ``refit_every`` new labelled windows or
   ``refit_days`` of event time), the candidates are fitted and gated **now**
   (:func:`~taskclf_daemon.pipeline.personalize.decide`); an adopted model is in force from the
   user's **next** window.

**Determinism rule.** A user's model changes only at a window of that user (the one whose
finalisation made the refit due), and what is fitted depends only on that user's state, i.e.
on the sequence of that user's windows and spans as given to :meth:`Learner.add_span` and the
pipeline. The runtime must give each user's spans and windows in an order that a replay
reproduces (see docs/learning.md).

Spans come in through :meth:`Learner.add_span`; the refits' decisions are kept for the runtime
(metrics, HTTP) in :attr:`Learner.decisions` until :meth:`take_decisions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np

from taskclf_daemon.pipeline.calibration import CalibratorStore, IdentityCalibrator
from taskclf_daemon.pipeline.evidence import _F32, LearnConfig, PendingRefit, UserLearning
from taskclf_daemon.pipeline.head_features import N_EXTRAS, extras_batch, extras_from_matrix, matrix_columns
from taskclf_daemon.pipeline.labelspan import LabelSpan
from taskclf_daemon.pipeline.personal_model import PersonalModel
from taskclf_daemon.pipeline.personalize import Decision, Evidence, GateConfig, decide, eligibility
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.state import StateStore
from taskclf_daemon.timeutil import format_ts_us

#: a user not yet eligible is re-checked when the evidence first reaches ``min_windows`` and then
#: every this many new labelled windows (eligibility scans the evidence: ~0.1 ms at 2,000)
_RECHECK = 20
_DAY_US = 86_400_000_000


class Learner:
    """Per-user learning over a :class:`StateStore` (the state lives in ``UserState.learn``)."""

    def __init__(self, config: LearnConfig | None = None, gate: GateConfig | None = None, store: CalibratorStore | None = None, hour_column: int | None = None) -> None:
        self.config = config or LearnConfig()
        self.gate = gate or GateConfig()
        self.store = store
        #: index of ``hour_of_day`` in the encoded model row (None: no hour extras)
        self.hour_column = hour_column
        #: where the model row holds the extras' overlay values (None: computed from the overlays)
        self.overlay_columns: tuple[int, ...] | None = None
        #: (user_id, decision) of every refit since the last :meth:`take_decisions`
        self.decisions: list[tuple[str, Decision]] = []
        #: per window of the last :meth:`personalise` call: the user had enough evidence for a
        #: personal model right after that window (what the label-request quota reads)
        self.eligible_at: list[bool] = []
        #: (row, personal model) of the rows of the last :meth:`personalise` call a personal
        #: model served (the outputs name its kind and version)
        self.served: list[tuple[int, PersonalModel]] = []
        #: where refits run: None = at the window that applies them (in the batch); a thread
        #: pool (the daemon's shards) = in the background from the window that starts them
        self.executor: Executor | None = None
        self._fits: dict[tuple[str, PendingRefit], Future[Decision]] = {}

    def bind(self, store: CalibratorStore | None, feature_columns: Sequence[str]) -> None:
        """Called by the pipeline: the calibrator store in use and the model row's columns."""
        self.store = store
        self.hour_column = list(feature_columns).index("hour_of_day") if "hour_of_day" in feature_columns else None
        self.overlay_columns = matrix_columns(feature_columns)

    def learning(self, states: StateStore, user_id: str) -> UserLearning:
        st = states.get(user_id)
        if st.learn is None:
            st.learn = UserLearning(self.config)
        return st.learn

    def in_force(self, user_id: str, learn: UserLearning | None) -> PersonalModel:
        """The user's model in force: the adopted personal model, else the store's calibrator."""
        if learn is not None and learn.model is not None:
            return learn.model
        if self.store is None:
            return PersonalModel.from_calibrator(IdentityCalibrator(), "none")
        cal, scope = self.store.get(user_id)
        return PersonalModel.from_calibrator(cal, scope)

    # --- spans -------------------------------------------------------------------------------
    def add_span(self, span: LabelSpan, states: StateStore, user_id: str | None = None) -> bool:
        """Give a span to its user (``user_id``, else the span's own). False: duplicate or too
        late (its windows are finalised). A span without any user id is refused (ValueError):
        route it to users yourself."""
        uid = user_id if user_id is not None else span.user_id
        if uid is None:
            raise ValueError("a span without user_id needs an explicit user_id")
        learn = self.learning(states, uid)
        ok = learn.add_span(span, self.config)
        states.dirty.add(uid)
        return ok

    # --- the batch hook ----------------------------------------------------------------------
    def personalise(self, windows: Sequence[FeatureWindow], raw: np.ndarray, X: np.ndarray, overlays: Sequence[tuple[float | None, ...]], probs: np.ndarray, scopes: list[str], states: StateStore) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Calibrated probabilities and scopes of the batch with personal models applied; also
        returns the head extras of the windows of users with learning state (zeros for the
        others). Records evidence, starts due refits and applies those that are due (see the
        module doc)."""
        n = len(windows)
        users = states.users
        cfg = self.config
        eligible = self.eligible_at = [False] * n
        learns = [None if (st := users.get(w.user_id)) is None else st.learn for w in windows]
        rows = [i for i, le in enumerate(learns) if le is not None]
        extras = np.zeros((n, N_EXTRAS), dtype=np.float64)
        self.served = []
        if not rows:  # nobody in this batch ever sent a label: nothing to learn, nothing kept
            return probs, scopes, extras
        idx = np.asarray(rows)
        hours = X[idx, self.hour_column] if self.hour_column is not None else None
        cols = self.overlay_columns
        extras[idx] = extras_batch([overlays[i] for i in rows], hours) if cols is None else extras_from_matrix(X[idx], cols, hours)
        flat = np.concatenate((raw[idx], extras[idx]), axis=1).astype(_F32).tobytes()
        step = _F32.itemsize * (raw.shape[1] + N_EXTRAS)
        groups: dict[int, tuple[PersonalModel, list[int]]] = {}
        touched: dict[int, UserLearning] = {}
        for j, i in enumerate(rows):
            learn = learns[i]
            assert learn is not None
            w = windows[i]
            pend = learn.pending
            if pend is not None and learn.windows + 1 >= pend.at:
                self._apply(w.user_id, learn)
            if learn.model is not None:
                groups.setdefault(id(learn.model), (learn.model, []))[1].append(i)
            added = learn.add_window(w.user_id, w.ts_us, flat[j * step : (j + 1) * step], cfg)
            touched[id(learn)] = learn
            if added and not learn.eligible and len(learn.evidence) >= self.gate.min_windows and (learn.labels_total // _RECHECK != (learn.labels_total - added) // _RECHECK or len(learn.evidence) - added < self.gate.min_windows):
                learn.eligible = self._eligible(learn)
            if learn.eligible and learn.due(w.ts_us, cfg):
                self._start_refit(w.user_id, learn, w.ts_us)
            eligible[i] = learn.eligible
        for learn in touched.values():
            learn.prune_spans()
        if groups:
            probs = probs.copy()
            served = self.served
            for model, grp in groups.values():
                gi = np.asarray(grp)
                probs[gi] = model.apply(raw[gi], extras[gi])
                for i in grp:
                    scopes[i] = "user"
                    served.append((i, model))
            served.sort(key=lambda r: r[0])
        return probs, scopes, extras

    def _eligible(self, learn: UserLearning) -> bool:
        g = self.gate
        days = {e[0] // _DAY_US for e in learn.evidence}
        labels = {e[1] for e in learn.evidence}
        return len(learn.evidence) >= g.min_windows and len(days) >= g.min_days and len(labels) >= g.min_labels

    # --- refits: started at one window, in force at a later one -------------------------------
    def _start_refit(self, user_id: str, learn: UserLearning, ts_us: int) -> None:
        learn.labels_at_fit = learn.labels_total
        learn.last_fit_us = ts_us
        learn.pending = PendingRefit(learn.windows + max(1, self.config.adopt_lag), ts_us, learn.labels_total, len(learn.evidence))
        if self.executor is not None:
            key = (user_id, learn.pending)
            if key not in self._fits:  # (a batch re-run after an undo starts the same refit again)
                self._fits[key] = self.executor.submit(decide, *self._fit_args(user_id, learn))

    def _fit_args(self, user_id: str, learn: UserLearning) -> tuple[Evidence, PersonalModel, int, GateConfig, PersonalModel | None]:
        """``decide``'s arguments for the user's pending refit: the evidence as at its start, the
        model in force, and the global calibrator when a personal model is in force."""
        assert learn.pending is not None
        glob = None if learn.model is None else self.in_force(user_id, None)
        return learn.pending_evidence(), self.in_force(user_id, learn), learn.pending.ts_us, self.gate, glob

    def _apply(self, user_id: str, learn: UserLearning) -> None:
        """Put the pending refit's decision in force (waits for the fit if it still runs; fits
        now if it is not running, e.g. after a restart)."""
        p = learn.pending
        assert p is not None
        fut = self._fits.pop((user_id, p), None)
        dec = fut.result() if fut is not None else decide(*self._fit_args(user_id, learn))
        learn.pending = None
        learn.decision = dec.to_json()
        if dec.adopted is not None:
            learn.model = dec.adopted
        elif dec.revert_to_global:
            learn.model = None
        learn.trim_evidence(self.config)
        self.decisions.append((user_id, dec))

    def adopt_fits(self, old: Learner) -> None:
        """Take over ``old``'s running refits (a hot reload replaces the learner)."""
        self._fits.update(old._fits)
        old._fits = {}

    def forget(self, user_id: str) -> None:
        """The user's state left this process: drop a fit still running for it."""
        if self._fits:
            for key in [k for k in self._fits if k[0] == user_id]:
                self._fits.pop(key).cancel()

    def take_decisions(self) -> list[tuple[str, Decision]]:
        out, self.decisions = self.decisions, []
        return out

    def profile(self, states: StateStore, user_id: str) -> dict[str, Any] | None:
        """What the HTTP API shows about a user's personalisation (None: no learning state)."""
        st = states.users.get(user_id)
        if st is None or st.learn is None:
            return None
        learn = st.learn
        elig = eligibility(learn.evidence_arrays(), self.gate)
        model = self.in_force(user_id, learn)
        head = model.head if model.kind == "head" else None
        return {
            "evidence": {**elig.to_json(), "labels_total": learn.labels_total, "pending_windows": len(learn.ring), "known_spans": len(learn.spans)},
            "in_force": {"scope": model.scope, "kind": model.kind, "version": model.version},
            "last_decision": learn.decision,
            "top_features": None if head is None else head.top_features(),
            "pending_refit": None if (p := learn.pending) is None else {"started_at": format_ts_us(p.ts_us), "evidence_windows": p.n_evidence, "windows_until_in_force": max(0, p.at - learn.windows - 1)},
        }
