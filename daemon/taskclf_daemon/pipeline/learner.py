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
from typing import Any

import numpy as np

from taskclf_daemon.pipeline.calibration import CalibratorStore, IdentityCalibrator
from taskclf_daemon.pipeline.evidence import LearnConfig, UserLearning
from taskclf_daemon.pipeline.head_features import extras_batch
from taskclf_daemon.pipeline.labelspan import LabelSpan
from taskclf_daemon.pipeline.personal_model import PersonalModel
from taskclf_daemon.pipeline.personalize import Decision, GateConfig, decide, eligibility
from taskclf_daemon.records import FeatureWindow
from taskclf_daemon.state import StateStore

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
        #: (user_id, decision) of every refit since the last :meth:`take_decisions`
        self.decisions: list[tuple[str, Decision]] = []
        #: per window of the last :meth:`personalise` call: the user had enough evidence for a
        #: personal model right after that window (what the label-request quota reads)
        self.eligible_at: list[bool] = []
        #: (row, personal model) of the rows of the last :meth:`personalise` call a personal
        #: model served (the outputs name its kind and version)
        self.served: list[tuple[int, PersonalModel]] = []

    def bind(self, store: CalibratorStore | None, feature_columns: Sequence[str]) -> None:
        """Called by the pipeline: the calibrator store in use and the model row's columns."""
        self.store = store
        self.hour_column = list(feature_columns).index("hour_of_day") if "hour_of_day" in feature_columns else None

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
        returns the windows' head extras. Records evidence and runs due refits (see module doc)."""
        n = len(windows)
        hours = X[:, self.hour_column] if self.hour_column is not None and n else None
        extras = extras_batch(overlays, hours)
        groups: dict[int, tuple[PersonalModel, list[int]]] = {}
        cfg = self.config
        eligible = self.eligible_at = [False] * n
        for i, w in enumerate(windows):
            learn = states.get(w.user_id).learn
            if learn is None:  # the user never sent a label: nothing to learn, nothing kept
                continue
            if learn.model is not None:
                groups.setdefault(id(learn.model), (learn.model, []))[1].append(i)
            added = learn.add_window(w.user_id, w.ts_us, raw[i], extras[i], cfg)
            if added and not learn.eligible and len(learn.evidence) >= self.gate.min_windows and (learn.labels_total // _RECHECK != (learn.labels_total - added) // _RECHECK or len(learn.evidence) - added < self.gate.min_windows):
                learn.eligible = self._eligible(learn)
            if learn.eligible and learn.due(w.ts_us, cfg):
                self._refit(w.user_id, learn, w.ts_us)
            eligible[i] = learn.eligible
        served = self.served = []
        if groups:
            probs = probs.copy()
            for model, rows in groups.values():
                idx = np.asarray(rows)
                probs[idx] = model.apply(raw[idx], extras[idx])
                for i in rows:
                    scopes[i] = "user"
                    served.append((i, model))
        return probs, scopes, extras

    def _eligible(self, learn: UserLearning) -> bool:
        g = self.gate
        days = {e[0] // _DAY_US for e in learn.evidence}
        labels = {e[1] for e in learn.evidence}
        return len(learn.evidence) >= g.min_windows and len(days) >= g.min_days and len(labels) >= g.min_labels

    def _refit(self, user_id: str, learn: UserLearning, ts_us: int) -> None:
        glob = None if learn.model is None else self.in_force(user_id, None)
        dec = decide(learn.evidence_arrays(), self.in_force(user_id, learn), ts_us, self.gate, glob)
        learn.labels_at_fit = learn.labels_total
        learn.last_fit_us = ts_us
        learn.decision = dec.to_json()
        if dec.adopted is not None:
            learn.model = dec.adopted
        elif dec.revert_to_global:
            learn.model = None
        self.decisions.append((user_id, dec))

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
        }
