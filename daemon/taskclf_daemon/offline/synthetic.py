"""Deterministic synthetic taskclf ``FeatureRow`` data with user personas.

The generator simulates, per user, a working day minute by minute: label *blocks* of several
minutes (each block uses one main app of a category that fits the label), short and long idle
gaps (a gap of >= 300 s starts a new session), minute-level behaviour noise, label noise and
occasional missing input-watcher data. It emits one taskclf ``FeatureRow`` per active minute,
with the batch-builder fields filled plausibly and the 9 online-overlay fields set to ``null``
(the daemon recomputes them, as taskclf's ``OnlineFeatureState`` does).

Guarantees:

* **Determinism.** All randomness comes from NumPy generators derived from ``seed``:
  user ``i``'s identity (id, speed factors, apps, v3 title sketches) from its child generator
  ``np.random.default_rng(seed).spawn(n)[i]`` (built directly as
  ``default_rng(SeedSequence(seed, spawn_key=(i,)))``); its behaviour on a calendar day from the
  grandchild ``SeedSequence(seed, spawn_key=(i, date.toordinal()))``; ``iter_stream``'s
  per-minute draws from ``SeedSequence(seed, spawn_key=(2**31 - 1, start_minute))``. The same arguments give identical
  rows; the user ids of a seed do not depend on ``n_users``, ``days`` or ``start``; and because
  each day has its own generator, a different ``start`` gives *new* days for the *same* users
  (handy for held-out data).
* **Validity.** Every row passes ``RowValidator(SCHEMAS[v]).validate`` for ``v`` in v1/v2/v3.
  v2 rows keep ``user_id`` (taskclf's dump drops it for v2; the daemon needs it as the key).
* **Consistency.** ``is_browser/is_editor/is_terminal`` follow ``app_category``;
  ``domain_category`` is ``"unknown"`` for browsers and ``"non_browser"`` otherwise (what
  taskclf's builder produces); ``event_density`` is 0.2 (5-s input samples) when any input was
  active; active seconds are multiples of 5 and at most 60; ``source_ids`` lacks
  ``aw-watcher-input`` exactly when every input feature is null.
* **Personalisation signal.** Personas differ in label mix, hours, apps and speed, and some are
  built so that one global calibrator is wrong for them: ``sre_nightshift`` has heavy label noise
  (the model is over-confident for them), ``writer`` is very consistent (under-confident),
  ``manager`` and ``researcher`` systematically show another label's behaviour for some of
  their labels (``drift``), which a global model can only partly learn.
* **Eligibility mix.** With the default 8 users, ``occasional`` (< 200 windows),
  ``two_label_dev`` (2 labels) and ``new_joiner`` (2 days) are ineligible for per-user
  calibration; the others are eligible.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import math
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taskclf_daemon.labels import LABEL_INDEX, LABELS
from taskclf_daemon.schema import SCHEMAS, TITLE_CHAR3_SKETCH, TITLE_TOKEN_SKETCH

__all__ = ["APP_CATALOG", "PERSONAS", "PERSONA_ORDER", "Persona", "generate_labelled", "iter_stream", "user_ids"]

#: taskclf app categories -> realistic reverse-domain app ids (first = population default)
APP_CATALOG: dict[str, tuple[str, ...]] = {
    "editor": ("com.microsoft.VSCode", "com.jetbrains.intellij", "com.jetbrains.pycharm", "com.todesktop.cursor", "com.sublimetext.4", "dev.zed.Zed", "io.neovim.nvim"),
    "terminal": ("com.googlecode.iterm2", "com.apple.Terminal", "net.kovidgoyal.kitty", "org.gnome.Terminal", "com.mitchellh.ghostty", "org.wezfurlong.wezterm"),
    "browser": ("com.google.Chrome", "org.mozilla.firefox", "com.apple.Safari", "com.brave.Browser", "com.microsoft.edgemac", "com.vivaldi.Vivaldi"),
    "chat": ("com.tinyspeck.slackmacgap", "com.microsoft.teams2", "com.discordapp.Discord"),
    "email": ("com.microsoft.Outlook", "com.apple.mail", "org.mozilla.thunderbird"),
    "meeting": ("us.zoom.xos", "com.apple.FaceTime", "com.cisco.webexmeetingsapp"),
    "docs": ("md.obsidian", "notion.id", "com.microsoft.Word", "com.apple.Notes"),
    "design": ("com.figma.Desktop", "com.bohemiancoding.sketch3"),
    "devtools": ("com.docker.docker", "com.postmanlabs.mac"),
    "media": ("com.spotify.client", "com.apple.Music"),
    "file_manager": ("com.apple.finder", "org.gnome.Nautilus"),
    "utilities": ("com.apple.Preview", "com.apple.ActivityMonitor"),
    "project_mgmt": ("com.linear", "com.atlassian.jira"),
    "lockscreen": ("com.apple.loginwindow", "com.microsoft.LockApp", "org.gnome.ScreenSaver"),
    "other": ("unknown.hyperion_notes",),
}


@dataclass(frozen=True)
class _LabelProfile:
    """Population behaviour of one label (per minute)."""

    categories: Mapping[str, float]  # app category mix of the block's main app
    keys: float  # keys_per_min mean
    clicks: float
    scroll: float
    mouse: float  # mouse_distance (px / min)
    focus: float  # app_foreground_time_ratio mean
    changes: float  # mean app changes within the minute
    active: float  # fraction of the minute with any input
    kb_share: float  # share of active time with key presses
    mouse_share: float  # share of active time with mouse activity
    block_minutes: float  # mean block length


_PROFILES: dict[str, _LabelProfile] = {
    "BreakIdle": _LabelProfile({"lockscreen": 0.55, "media": 0.25, "browser": 0.2}, 0.5, 0.3, 1.0, 40.0, 0.98, 0.1, 0.06, 0.3, 0.7, 9.0),
    "Build": _LabelProfile({"editor": 0.75, "terminal": 0.15, "browser": 0.1}, 85.0, 3.0, 6.0, 500.0, 0.93, 0.4, 0.9, 0.85, 0.4, 32.0),
    "Communicate": _LabelProfile({"chat": 0.6, "email": 0.3, "browser": 0.1}, 62.0, 8.0, 9.0, 900.0, 0.8, 1.3, 0.8, 0.7, 0.6, 9.0),
    "Debug": _LabelProfile({"terminal": 0.45, "editor": 0.35, "browser": 0.2}, 38.0, 9.0, 14.0, 1400.0, 0.76, 1.6, 0.85, 0.55, 0.7, 20.0),
    "Meet": _LabelProfile({"meeting": 0.85, "chat": 0.1, "browser": 0.05}, 4.0, 1.5, 1.0, 180.0, 0.97, 0.2, 0.25, 0.2, 0.8, 30.0),
    "ReadResearch": _LabelProfile({"browser": 0.75, "docs": 0.15, "utilities": 0.1}, 6.0, 5.0, 38.0, 1100.0, 0.9, 0.5, 0.6, 0.15, 0.9, 20.0),
    "Review": _LabelProfile({"browser": 0.6, "editor": 0.3, "chat": 0.1}, 18.0, 7.0, 28.0, 1300.0, 0.86, 0.8, 0.75, 0.35, 0.8, 15.0),
    "Write": _LabelProfile({"docs": 0.65, "editor": 0.15, "browser": 0.2}, 118.0, 2.0, 4.0, 300.0, 0.95, 0.3, 0.92, 0.9, 0.3, 28.0),
}


@dataclass(frozen=True)
class Persona:
    """A kind of user. All hours are UTC; rates are multipliers of the population profiles.

    ``label_noise`` flips single minutes' labels, ``block_noise`` whole blocks' labels (labeller
    errors the model cannot learn); ``ambiguity`` makes single minutes behave like another label;
    ``drift[label] = other`` makes a ``drift_rate`` share of ``label`` minutes behave like
    ``other``; ``label_categories`` overrides the app-category mix of some labels.
    """

    name: str
    description: str
    label_mix: Mapping[str, float]
    work_start_hour: float
    work_hours: float
    apps: Mapping[str, tuple[str, ...]]
    weekday_active: float = 0.97
    weekend_active: float = 0.1
    first_day: int = 0
    label_categories: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    typing: float = 1.0
    mouse: float = 1.0
    label_noise: float = 0.04
    block_noise: float = 0.03
    ambiguity: float = 0.08
    drift: Mapping[str, str] = field(default_factory=dict)
    drift_rate: float = 0.0
    block_scale: float = 1.0
    short_gap_prob: float = 0.1
    long_gap_prob: float = 0.08
    noinput_block_prob: float = 0.03


PERSONAS: dict[str, Persona] = {
    p.name: p
    for p in (
        Persona(
            "backend_dev", "JVM/Python backend engineer, long build and debug blocks",
            {"Build": 0.34, "Debug": 0.2, "Review": 0.1, "ReadResearch": 0.1, "Communicate": 0.1, "Meet": 0.08, "Write": 0.04, "BreakIdle": 0.04},
            8.5, 4.6, {"editor": ("com.jetbrains.intellij", "com.microsoft.VSCode"), "terminal": ("com.googlecode.iterm2",), "browser": ("com.google.Chrome",), "chat": ("com.tinyspeck.slackmacgap",), "meeting": ("us.zoom.xos",), "docs": ("notion.id",)},
            typing=1.1,
        ),
        Persona(
            "manager", "engineering manager: meetings and chat; chats during meetings",
            {"Meet": 0.32, "Communicate": 0.3, "Review": 0.1, "Write": 0.1, "ReadResearch": 0.1, "BreakIdle": 0.05, "Build": 0.03},
            13.0, 4.8, {"meeting": ("us.zoom.xos", "com.apple.FaceTime"), "chat": ("com.tinyspeck.slackmacgap",), "email": ("com.microsoft.Outlook",), "browser": ("com.google.Chrome",), "docs": ("notion.id",), "editor": ("com.microsoft.VSCode",)},
            typing=0.8, mouse=1.2, ambiguity=0.12, drift={"Meet": "Communicate", "Review": "Communicate"}, drift_rate=0.3,
        ),
        Persona(
            "occasional", "labels a few short sessions now and then",
            {"Build": 0.25, "ReadResearch": 0.25, "Communicate": 0.25, "Write": 0.15, "BreakIdle": 0.1},
            10.0, 0.55, {"editor": ("com.sublimetext.4",), "browser": ("com.apple.Safari",), "chat": ("com.microsoft.teams2",), "docs": ("com.apple.Notes",), "email": ("com.apple.mail",)},
            weekday_active=0.55, weekend_active=0.0,
        ),
        Persona(
            "sre_nightshift", "on-call SRE on the night shift (crosses UTC midnight); tired, noisy labels",
            {"Debug": 0.34, "Build": 0.16, "ReadResearch": 0.14, "Communicate": 0.14, "Meet": 0.06, "Review": 0.06, "BreakIdle": 0.1},
            21.5, 4.8, {"terminal": ("net.kovidgoyal.kitty", "org.gnome.Terminal"), "editor": ("io.neovim.nvim",), "browser": ("org.mozilla.firefox",), "chat": ("com.tinyspeck.slackmacgap",), "meeting": ("us.zoom.xos",), "lockscreen": ("org.gnome.ScreenSaver",)},
            label_categories={"Debug": {"terminal": 0.7, "browser": 0.2, "editor": 0.1}},
            typing=0.9, label_noise=0.16, block_noise=0.14, ambiguity=0.1,
        ),
        Persona(
            "two_label_dev", "heads-down developer who only labels Build and Debug",
            {"Build": 0.6, "Debug": 0.4},
            6.0, 4.4, {"editor": ("com.todesktop.cursor",), "terminal": ("com.mitchellh.ghostty",), "browser": ("com.brave.Browser",)},
            typing=1.25, label_noise=0.0, block_noise=0.0,
        ),
        Persona(
            "writer", "technical writer; very consistent habits and clean labels",
            {"Write": 0.45, "ReadResearch": 0.2, "Review": 0.1, "Communicate": 0.1, "Meet": 0.07, "BreakIdle": 0.08},
            15.0, 4.6, {"docs": ("md.obsidian", "com.microsoft.Word"), "browser": ("org.mozilla.firefox",), "chat": ("com.microsoft.teams2",), "meeting": ("com.microsoft.teams2",), "email": ("org.mozilla.thunderbird",), "editor": ("com.sublimetext.4",)},
            label_categories={"Meet": {"chat": 1.0}},
            typing=1.2, label_noise=0.005, block_noise=0.0, ambiguity=0.02, block_scale=1.3,
        ),
        Persona(
            "researcher", "research scientist: reading papers, writing, reviews that look like reading",
            {"ReadResearch": 0.34, "Write": 0.2, "Build": 0.14, "Review": 0.12, "Meet": 0.08, "Communicate": 0.06, "BreakIdle": 0.06},
            7.0, 4.7, {"browser": ("com.apple.Safari", "com.google.Chrome"), "docs": ("md.obsidian",), "editor": ("com.jetbrains.pycharm",), "utilities": ("com.apple.Preview",), "chat": ("com.tinyspeck.slackmacgap",), "meeting": ("us.zoom.xos",)},
            typing=0.85, drift={"Review": "ReadResearch", "Build": "Write"}, drift_rate=0.35,
        ),
        Persona(
            "new_joiner", "joined during the period: only the last days are present",
            {"ReadResearch": 0.3, "Meet": 0.2, "Build": 0.2, "Communicate": 0.15, "Debug": 0.1, "BreakIdle": 0.05},
            9.0, 5.0, {"browser": ("com.google.Chrome",), "editor": ("com.microsoft.VSCode",), "chat": ("com.tinyspeck.slackmacgap",), "meeting": ("us.zoom.xos",), "terminal": ("com.apple.Terminal",)},
            first_day=4, ambiguity=0.12,
        ),
        Persona(
            "designer", "product designer: design tool work is labelled Build",
            {"Build": 0.35, "Review": 0.15, "Communicate": 0.15, "Meet": 0.15, "ReadResearch": 0.1, "Write": 0.05, "BreakIdle": 0.05},
            12.0, 4.5, {"design": ("com.figma.Desktop",), "browser": ("com.google.Chrome",), "chat": ("com.tinyspeck.slackmacgap",), "meeting": ("us.zoom.xos",), "docs": ("notion.id",)},
            label_categories={"Build": {"design": 0.85, "browser": 0.15}, "Review": {"design": 0.5, "browser": 0.5}},
            typing=0.6, mouse=1.6,
        ),
        Persona(
            "data_analyst", "analyst in APAC hours: notebooks, dashboards, ad-hoc SQL",
            {"Build": 0.25, "ReadResearch": 0.25, "Debug": 0.1, "Write": 0.1, "Communicate": 0.12, "Meet": 0.1, "BreakIdle": 0.08},
            1.5, 4.5, {"editor": ("com.jetbrains.pycharm",), "browser": ("com.microsoft.edgemac",), "terminal": ("com.apple.Terminal",), "chat": ("com.microsoft.teams2",), "meeting": ("com.microsoft.teams2",), "docs": ("com.microsoft.Word",)},
            label_categories={"Meet": {"meeting": 0.6, "chat": 0.4}},
        ),
    )
}

#: persona of user ``i`` is ``PERSONA_ORDER[i % len(PERSONA_ORDER)]``
PERSONA_ORDER: tuple[str, ...] = (
    "backend_dev", "manager", "occasional", "sre_nightshift", "two_label_dev",
    "writer", "researcher", "new_joiner", "designer", "data_analyst",
)

_CATEGORY_OF: dict[str, str] = {a: c for c, apps in APP_CATALOG.items() for a in apps}
_SOURCES_FULL = ("aw-watcher-window", "aw-watcher-input")
_SOURCES_WINDOW = ("aw-watcher-window",)
_NU = 17  # uniforms per user-minute
_NZ = 8  # normals per user-minute
_TITLES_PER_APP_LABEL = 5
_STREAM_KEY = 0x7FFF_FFFF  # spawn key of iter_stream's per-minute draws


def user_ids(seed: int, n_users: int) -> list[str]:
    """The user ids ``generate_labelled``/``iter_stream`` use for ``seed`` (user ``i`` at index ``i``)."""
    return [_uid(seed, i) for i in range(n_users)]


def _identity_rng(seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))


def _uid(seed: int, i: int) -> str:
    return str(uuid.UUID(bytes=_identity_rng(seed, i).bytes(16), version=4))


def _cum(weights: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    keys = tuple(k for k, w in weights.items() if w > 0)
    acc, out = 0.0, []
    for k in keys:
        acc += weights[k]
        out.append(acc)
    return keys, tuple(x / acc for x in out)


def _pick(keys: tuple[str, ...], cum: tuple[float, ...], u: float) -> str:
    return keys[min(bisect.bisect_right(cum, u), len(keys) - 1)]


def _fmt_minute(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t * 60))


def _entropy(weights: dict[str, float]) -> float:
    total = sum(weights.values())
    if total <= 0:
        return 0.0
    h = 0.0
    for w in weights.values():
        if w > 0:
            p = w / total
            h -= p * math.log2(p)
    return round(h, 4) + 0.0


class _UserSim:
    """One simulated user: identity, persona parameters and the minute-by-minute state."""

    def __init__(self, seed: int, index: int, schema_version: str) -> None:
        rng = _identity_rng(seed, index)
        self.user_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        self.persona = p = PERSONAS[PERSONA_ORDER[index % len(PERSONA_ORDER)]]
        self.rng = rng  # identity generator: per-user attributes and title sketches (v3)
        self.v3 = schema_version == "v3"
        self.schema_version = schema_version
        self.schema_hash = SCHEMAS[schema_version].hash
        # per-user variation around the persona
        self.typing = p.typing * float(np.exp(0.15 * rng.standard_normal()))
        self.mousing = p.mouse * float(np.exp(0.15 * rng.standard_normal()))
        self.start_offset = float(0.5 * rng.standard_normal())
        self.hours_factor = float(np.exp(0.1 * rng.standard_normal()))
        self.mix_keys, self.mix_cum = _cum(p.label_mix)
        self.cat_mix: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {}
        for lab in LABELS:
            cats = dict(p.label_categories.get(lab, _PROFILES[lab].categories))
            self.cat_mix[lab] = _cum(cats)
        self.apps: dict[str, tuple[str, ...]] = {}
        for cat, catalog in APP_CATALOG.items():
            self.apps[cat] = tuple(p.apps.get(cat, ())) or (catalog[int(rng.integers(len(catalog)))],)
        self.interrupt_apps = (self.apps["chat"][0], self.apps["browser"][0], self.apps["email"][0])
        self._titles: dict[tuple[str, str, int], tuple[str, int, dict[str, Any] | None]] = {}
        # dynamic state
        self.block_label = "BreakIdle"
        self.block_obs = "BreakIdle"
        self.remaining = 0
        self.gap = 0
        self.main_app = ""
        self.main_slot = 0
        self.block_noinput = False
        self.hist: deque[tuple[int, str, float, str | None, float]] = deque(maxlen=15)
        self.prev_app: str | None = None
        self.dwell = 0.0
        self.last_t: int | None = None
        self.session_start = 0
        self.session_id = ""
        self.title_counts: dict[str, int] = {}

    # -- schedule -------------------------------------------------------------------------
    def begin_shift(self) -> None:
        """Start a working period: a fresh block at the next active minute, no pending gap."""
        self.remaining = 0
        self.gap = 0

    def step(self, t: int, u: Sequence[float], z: Sequence[float]) -> tuple[dict[str, Any], str] | None:
        """Advance one minute (epoch minute ``t``); return ``(row, label)`` or None when idle."""
        if self.gap > 0:
            self.gap -= 1
            return None
        if self.remaining <= 0:
            self._new_block(u, z)
        out = self._emit(t, u, z)
        self.remaining -= 1
        if self.remaining <= 0:
            p = self.persona
            g = u[0]
            if g < p.long_gap_prob or (self.block_label == "BreakIdle" and g < 3 * p.long_gap_prob):
                self.gap = 4 + int(u[1] * 36)  # 5..40 min between rows: a new session
            elif g < p.long_gap_prob + p.short_gap_prob:
                self.gap = 1 + int(u[1] * 3)  # 2..4 min between rows: same session
        return out

    def _new_block(self, u: Sequence[float], z: Sequence[float]) -> None:
        p = self.persona
        lab = _pick(self.mix_keys, self.mix_cum, u[2])
        self.block_label = lab
        if u[12] < p.block_noise:
            self.block_obs = LABELS[(LABEL_INDEX[lab] + 1 + int(u[13] * 7)) % 8]
        else:
            self.block_obs = lab
        mean = _PROFILES[lab].block_minutes * p.block_scale
        self.remaining = max(3, int(round(mean * math.exp(0.5 * z[6] - 0.125))))
        self.main_app = self._app_for(lab, u[9])
        self.main_slot = int(u[10] * _TITLES_PER_APP_LABEL)
        self.block_noinput = u[11] < p.noinput_block_prob

    def _app_for(self, label: str, uu: float) -> str:
        keys, cum = self.cat_mix[label]
        # one uniform picks the category and, rescaled within it, the app
        i = min(bisect.bisect_right(cum, uu), len(keys) - 1)
        lo = cum[i - 1] if i else 0.0
        frac = (uu - lo) / max(cum[i] - lo, 1e-12)
        apps = self.apps[keys[i]]
        return apps[min(int(frac * len(apps)), len(apps) - 1)]

    # -- titles ---------------------------------------------------------------------------
    def _title(self, app: str, label: str, slot: int) -> tuple[str, int, dict[str, Any] | None]:
        key = (app, label, slot)
        t = self._titles.get(key)
        if t is None:
            h = hashlib.sha256(f"{self.user_id}|{app}|{label}|{slot}".encode()).hexdigest()[:12]
            t = (h, int(h, 16) % 256, self._title_features() if self.v3 else None)
            self._titles[key] = t
        return t

    def _title_features(self) -> dict[str, Any]:
        """Plausible v3 title sketch features: sparse, each sketch sums to 1 (rounded 6 dp)."""
        rng = self.rng
        n_tok = int(rng.integers(2, 11))
        vocab_ids = rng.integers(0, 400, n_tok)
        n_chars = int(rng.integers(12, 90))
        n_tri = n_chars - 2
        out: dict[str, Any] = dict.fromkeys(TITLE_TOKEN_SKETCH, 0.0)
        for b, c in zip(*np.unique((vocab_ids * 37 + 11) % 128, return_counts=True)):
            out[TITLE_TOKEN_SKETCH[int(b)]] = round(int(c) / n_tok, 6)
        out.update(dict.fromkeys(TITLE_CHAR3_SKETCH, 0.0))
        tri = rng.integers(0, 128, n_tri)
        for b, c in zip(*np.unique(tri, return_counts=True)):
            out[TITLE_CHAR3_SKETCH[int(b)]] = round(int(c) / n_tri, 6)
        digits = int(rng.integers(0, max(1, n_chars // 6)))
        out["title_char_count"] = n_chars
        out["title_token_count"] = n_tok
        out["title_unique_token_ratio"] = round(len(set(vocab_ids.tolist())) / n_tok, 6)
        out["title_digit_ratio"] = round(digits / n_chars, 6)
        out["title_separator_count"] = int(rng.integers(0, 4))
        return out

    # -- one row --------------------------------------------------------------------------
    def _emit(self, t: int, u: Sequence[float], z: Sequence[float]) -> tuple[dict[str, Any], str]:
        p = self.persona
        blab = self.block_label
        # behaviour of this minute (what the features show)
        beh = blab
        d = u[5]
        if p.drift_rate and d < p.drift_rate and blab in p.drift:
            beh = p.drift[blab]
        elif d > 1.0 - p.ambiguity:
            beh = _pick(self.mix_keys, self.mix_cum, u[6])
        # observed label (what the user labelled)
        lab = self.block_obs
        if u[3] < p.label_noise:
            lab = LABELS[(LABEL_INDEX[lab] + 1 + int(u[4] * 7)) % 8]
        prof = _PROFILES[beh]
        secondary = False
        if beh != blab:
            app = self._app_for(beh, u[8])
            slot = int(u[10] * _TITLES_PER_APP_LABEL)
        elif u[7] < 0.05:
            app = self.interrupt_apps[min(int(u[8] * 3), 2)]
            slot = int(u[10] * _TITLES_PER_APP_LABEL)
            secondary = True
        else:
            app = self.main_app
            slot = self.main_slot
        cat = _CATEGORY_OF.get(app, "other")
        is_browser = cat == "browser"

        # session bookkeeping (a gap of >= 300 s between bucket starts opens a new session)
        new_session = self.last_t is None or t - self.last_t >= 5
        if new_session:
            self.session_start = t
            iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t * 60))
            self.session_id = hashlib.sha256(f"{self.user_id}:{iso}".encode()).hexdigest()[:12]
            self.title_counts = {}
        self.last_t = t

        # foreground share and in-minute app changes
        focus = min(1.0, max(0.08, prof.focus + 0.05 * z[5]))
        if secondary:
            focus *= 0.7
        focus = round(focus, 4)
        changes = min(8, int(-math.log1p(-u[14] * 0.999999) * prof.changes))
        fg = 60.0 * focus
        other_app = self.interrupt_apps[0] if self.interrupt_apps[0] != app else self.interrupt_apps[1]
        other_sec = (60.0 - fg) if changes > 0 else 0.0
        if app == self.prev_app:
            self.dwell += fg
        else:
            self.dwell = fg
        self.prev_app = app
        hist = self.hist
        hist.append((t, app, fg, other_app if other_sec > 0 else None, other_sec))
        w5: dict[str, float] = {}
        w15: dict[str, float] = {}
        for ts, a, f, oa, os_ in hist:
            if ts >= t - 15:
                w15[a] = w15.get(a, 0.0) + f
                if oa is not None:
                    w15[oa] = w15.get(oa, 0.0) + os_
                if ts >= t - 5:
                    w5[a] = w5.get(a, 0.0) + f
                    if oa is not None:
                        w5[oa] = w5.get(oa, 0.0) + os_
        n = u[15]
        if n < 0.02:
            ent5 = ent15 = top2 = None
        else:
            ent5 = _entropy(w5)
            ent15 = _entropy(w15)
            vals = sorted(w15.values())
            top2 = round(sum(vals[-2:]) / sum(vals), 4)

        # input-watcher features
        if self.block_noinput:
            keys = clicks = scroll = mouse = kb = ms = act = idle = dens = None
        else:
            active = min(1.0, max(0.0, prof.active + 0.12 * z[4]))
            act_n = int(round(12 * active))
            act = 5.0 * act_n
            if act_n == 0:
                keys = clicks = scroll = mouse = kb = ms = 0.0
                idle, dens = 60.0, 0.0
            else:
                ks = min(1.0, max(0.0, prof.kb_share + 0.12 * z[7]))
                mss = min(1.0, max(0.0, prof.mouse_share - 0.12 * z[7]))
                kb = 5.0 * int(round(act_n * ks))
                ms = 5.0 * int(round(act_n * mss))
                if kb + ms < act:
                    ms = act - kb
                sig = 0.45
                typical_kb = max(5.0, 60.0 * prof.active * prof.kb_share)
                keys = float(round(prof.keys * self.typing * math.exp(sig * z[0] - 0.1) * (0.5 + 0.5 * min(kb / typical_kb, 2.0)))) if kb else 0.0
                clicks = float(round(prof.clicks * self.mousing * math.exp(sig * z[1] - 0.1))) if ms else 0.0
                scroll = float(round(prof.scroll * self.mousing * math.exp(sig * z[2] - 0.1))) if ms else 0.0
                mouse = float(round(prof.mouse * self.mousing * math.exp(sig * z[3] - 0.1))) if ms else 0.0
                rest = 12 - act_n
                idle = 0.0 if rest == 0 else 5.0 * max(1, int(round(rest * (0.3 + 0.7 * u[16]))))
                dens = 0.2
            if 0.02 <= n < 0.03:
                keys = None  # the keyboard part of the watcher dropped this minute

        title_hash, title_bucket, v3 = self._title(app, beh, slot)
        cnt = self.title_counts.get(title_hash, 0) + 1
        self.title_counts[title_hash] = cnt
        recent_apps = {a for a, w in w5.items() if w > 0}
        row: dict[str, Any] = {
            "user_id": self.user_id,
            "device_id": None,
            "session_id": self.session_id,
            "bucket_start_ts": _fmt_minute(t),
            "bucket_end_ts": _fmt_minute(t + 1),
            "schema_version": self.schema_version,
            "schema_hash": self.schema_hash,
            "source_ids": list(_SOURCES_WINDOW if self.block_noinput else _SOURCES_FULL),
            "app_id": app,
            "app_category": cat,
            "window_title_hash": title_hash,
            "is_browser": is_browser,
            "is_editor": cat == "editor",
            "is_terminal": cat == "terminal",
            "app_switch_count_last_5m": max(0, len(recent_apps) - 1),
            "app_foreground_time_ratio": focus,
            "app_change_count": changes,
            "app_dwell_time_seconds": round(self.dwell, 2),
            "app_entropy_5m": ent5,
            "app_entropy_15m": ent15,
            "top2_app_concentration_15m": top2,
            "idle_return_indicator": t == self.session_start,
            "keys_per_min": keys,
            "backspace_ratio": None,
            "shortcut_rate": None,
            "clicks_per_min": clicks,
            "scroll_events_per_min": scroll,
            "mouse_distance": mouse,
            "active_seconds_keyboard": kb,
            "active_seconds_mouse": ms,
            "active_seconds_any": act,
            "max_idle_run_seconds": idle,
            "event_density": dens,
            "domain_category": "unknown" if is_browser else "non_browser",
            "window_title_bucket": title_bucket,
            "title_repeat_count_session": cnt,
            "keys_per_min_rolling_5": None,
            "keys_per_min_rolling_15": None,
            "mouse_distance_rolling_5": None,
            "mouse_distance_rolling_15": None,
            "keys_per_min_delta": None,
            "clicks_per_min_delta": None,
            "mouse_distance_delta": None,
            "app_switch_count_last_15m": None,
            "hour_of_day": (t // 60) % 24,
            "day_of_week": (t // 1440 + 3) % 7,  # 1970-01-01 was a Thursday
            "session_length_so_far": None,
        }
        if v3 is not None:
            row.update(v3)
        return row, lab


def _parse_start(start: str) -> dt.datetime:
    s = start.strip()
    if len(s) == 10:
        return dt.datetime.fromisoformat(s).replace(tzinfo=dt.UTC)
    ts = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.UTC)
    return ts.astimezone(dt.UTC)


def _check_version(schema_version: str) -> None:
    if schema_version not in SCHEMAS:
        raise ValueError(f"unknown schema_version {schema_version!r} (known: {', '.join(SCHEMAS)})")


def generate_labelled(seed: int = 0, n_users: int = 8, days: int = 6, schema_version: str = "v1", start: str = "2026-03-02") -> list[dict[str, Any]]:
    """Labelled FeatureRows of ``n_users`` users over ``days`` UTC days from ``start``.

    Each row is a FeatureRow JSON dict plus a ``"label"`` key; rows are sorted by
    (``bucket_start_ts``, ``user_id``). User ``i`` has persona ``PERSONA_ORDER[i % 10]``;
    each works one shift per active day (night-shift personas cross UTC midnight).
    """
    _check_version(schema_version)
    if n_users < 0 or days < 0:
        raise ValueError("n_users and days must be >= 0")
    day0 = _parse_start(start).date()
    epoch_day0 = (day0 - dt.date(1970, 1, 1)).days
    out: list[tuple[int, str, dict[str, Any]]] = []
    for i in range(n_users):
        sim = _UserSim(seed, i, schema_version)
        p = sim.persona
        for d in range(days):
            date = day0 + dt.timedelta(days=d)
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i, date.toordinal())))
            active = p.weekend_active if date.weekday() >= 5 else p.weekday_active
            if rng.random() >= active or d < p.first_day:
                continue
            start_h = p.work_start_hour + sim.start_offset + 0.4 * float(rng.standard_normal())
            dur = max(15, int(round(p.work_hours * 60 * sim.hours_factor + 25 * float(rng.standard_normal()))))
            t0 = (epoch_day0 + d) * 1440 + int(round(start_h * 60))
            if sim.last_t is not None and t0 <= sim.last_t:
                t0 = sim.last_t + 1
            U = rng.random((dur, _NU)).tolist()
            Z = rng.standard_normal((dur, _NZ)).tolist()
            sim.begin_shift()
            for m in range(dur):
                r = sim.step(t0 + m, U[m], Z[m])
                if r is not None:
                    row, lab = r
                    row["label"] = lab
                    out.append((t0 + m, sim.user_id, row))
    out.sort(key=lambda x: (x[0], x[1]))
    return [r for _, _, r in out]


def iter_stream(seed: int = 0, n_users: int = 50, start: str = "2026-03-09T09:00:00Z", minutes: int = 60, schema_version: str = "v1") -> Iterator[dict[str, Any]]:
    """Unlabelled FeatureRows of ``n_users`` users for ``minutes`` minutes from ``start``.

    Rows come in time order; within one minute in ``user_id`` order. Every user is on shift for
    the whole stream (working hours are ignored) but has idle gaps, some >= 300 s. Generated
    lazily, one minute at a time (the per-minute random draws for all users are one NumPy call).
    User ``i`` has the same id and persona as user ``i`` of :func:`generate_labelled` with the
    same seed.
    """
    _check_version(schema_version)
    t0 = int(_parse_start(start).timestamp()) // 60
    sims = [_UserSim(seed, i, schema_version) for i in range(n_users)]
    order = sorted(range(n_users), key=lambda i: sims[i].user_id)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM_KEY, t0)))
    for m in range(minutes):
        U = rng.random((n_users, _NU)).tolist()
        Z = rng.standard_normal((n_users, _NZ)).tolist()
        t = t0 + m
        for i in order:
            r = sims[i].step(t, U[i], Z[i])
            if r is not None:
                yield r[0]
