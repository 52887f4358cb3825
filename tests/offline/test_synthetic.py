"""Synthetic FeatureRow generator: determinism, validity for every schema, persona structure."""

from __future__ import annotations

import collections
import itertools

import pytest

from taskclf_daemon.codec import RowValidator
from taskclf_daemon.labels import LABELS
from taskclf_daemon.offline.calibrate import eligibility
from taskclf_daemon.offline.synthetic import (
    APP_CATALOG,
    PERSONA_ORDER,
    PERSONAS,
    generate_labelled,
    iter_stream,
    user_ids,
)
from taskclf_daemon.schema import OVERLAY_COLUMNS, SCHEMAS, TITLE_CHAR3_SKETCH, TITLE_TOKEN_SKETCH
from taskclf_daemon.timeutil import parse_ts_us

_CATEGORIES = {
    "browser", "editor", "terminal", "chat", "email", "meeting", "docs", "design", "devtools",
    "media", "file_manager", "utilities", "project_mgmt", "lockscreen", "other",
}


@pytest.fixture(scope="module")
def default_rows() -> list[dict]:
    return generate_labelled(seed=3)


def _persona_of(seed: int, n: int) -> dict[str, str]:
    return {u: PERSONA_ORDER[i % len(PERSONA_ORDER)] for i, u in enumerate(user_ids(seed, n))}


def test_same_seed_identical_different_seed_differs() -> None:
    a = generate_labelled(seed=7, n_users=4, days=3)
    b = generate_labelled(seed=7, n_users=4, days=3)
    c = generate_labelled(seed=8, n_users=4, days=3)
    assert a == b
    assert len(a) > 500
    assert a != c
    assert {r["user_id"] for r in a}.isdisjoint({r["user_id"] for r in c})


def test_user_ids_are_uuid_like_and_stable_across_sizes() -> None:
    ids = user_ids(5, 12)
    assert ids[:4] == user_ids(5, 4)
    assert len(set(ids)) == 12
    for u in ids:
        parts = u.split("-")
        assert [len(p) for p in parts] == [8, 4, 4, 4, 12]
        assert parts[2][0] == "4"  # UUID version 4 layout
    rows = generate_labelled(seed=5, n_users=4, days=2)
    assert {r["user_id"] for r in rows} <= set(user_ids(5, 4))


def test_days_are_independent_so_a_later_start_gives_new_days_for_the_same_users() -> None:
    short = generate_labelled(seed=2, n_users=3, days=2)
    later = generate_labelled(seed=2, n_users=3, days=2, start="2026-03-09")
    assert {r["user_id"] for r in later} <= set(user_ids(2, 3))
    assert min(r["bucket_start_ts"] for r in later) >= "2026-03-09"
    strip = lambda rows: [(r["app_id"], r["keys_per_min"], r["label"]) for r in rows]
    assert strip(short) != strip(later)


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_rows_validate_for_every_schema(version: str) -> None:
    rows = generate_labelled(seed=11, n_users=10, days=2, schema_version=version)
    assert rows
    validator = RowValidator(SCHEMAS[version])
    registry = [n for n, _ in SCHEMAS[version].registry]
    for r in rows:
        w = validator.validate(r)
        assert w.user_id == r["user_id"]
        assert r["schema_version"] == version and r["schema_hash"] == SCHEMAS[version].hash
        assert set(r) == set(registry) | {"user_id", "label"}
        assert r["label"] in LABELS
        for c in OVERLAY_COLUMNS:
            assert r[c] is None
    if version == "v3":
        for r in rows[:300]:
            tok = [r[c] for c in TITLE_TOKEN_SKETCH]
            tri = [r[c] for c in TITLE_CHAR3_SKETCH]
            for sk in (tok, tri):
                assert all(0.0 <= v <= 1.0 for v in sk)
                assert abs(sum(sk) - 1.0) < 1e-4
                assert sum(v > 0 for v in sk) < 100  # sparse
            assert r["title_token_count"] >= 2 and r["title_char_count"] >= 12
            assert 0 < r["title_unique_token_ratio"] <= 1 and 0 <= r["title_digit_ratio"] <= 1
            assert isinstance(r["title_separator_count"], int)


def test_row_consistency(default_rows: list[dict]) -> None:
    rows = default_rows
    assert [(r["bucket_start_ts"], r["user_id"]) for r in rows] == sorted((r["bucket_start_ts"], r["user_id"]) for r in rows)
    assert len({(r["user_id"], r["bucket_start_ts"]) for r in rows}) == len(rows)
    catalog = {a for apps in APP_CATALOG.values() for a in apps}
    n_null_input = 0
    for r in rows:
        assert r["app_id"] in catalog and r["app_category"] in _CATEGORIES
        assert r["is_browser"] == (r["app_category"] == "browser")
        assert r["is_editor"] == (r["app_category"] == "editor")
        assert r["is_terminal"] == (r["app_category"] == "terminal")
        assert r["domain_category"] == ("unknown" if r["is_browser"] else "non_browser")
        assert parse_ts_us(r["bucket_end_ts"]) - parse_ts_us(r["bucket_start_ts"]) == 60_000_000
        assert r["bucket_start_ts"].endswith(":00Z")
        assert r["backspace_ratio"] is None and r["shortcut_rate"] is None
        if r["active_seconds_any"] is None:
            n_null_input += 1
            assert r["source_ids"] == ["aw-watcher-window"]
            assert r["mouse_distance"] is None and r["clicks_per_min"] is None
        else:
            assert r["source_ids"] == ["aw-watcher-window", "aw-watcher-input"]
            assert 0 <= r["active_seconds_any"] <= 60 and r["active_seconds_any"] % 5 == 0
            assert r["active_seconds_keyboard"] <= r["active_seconds_any"]
            assert r["event_density"] == (0.2 if r["active_seconds_any"] > 0 else 0.0)
    assert 0 < n_null_input < 0.15 * len(rows)


def test_sessions_restart_after_idle_gaps(default_rows: list[dict]) -> None:
    per_user: dict[str, list[dict]] = collections.defaultdict(list)
    for r in default_rows:
        per_user[r["user_id"]].append(r)
    long_gaps = 0
    for rows in per_user.values():
        for prev, cur in itertools.pairwise(rows):
            gap = (parse_ts_us(cur["bucket_start_ts"]) - parse_ts_us(prev["bucket_start_ts"])) // 1_000_000
            assert gap >= 60
            if gap >= 300:
                long_gaps += 1
                assert cur["session_id"] != prev["session_id"] and cur["idle_return_indicator"] is True
            else:
                assert cur["session_id"] == prev["session_id"] and cur["idle_return_indicator"] is False
    assert long_gaps > 50


def test_personas_differ_in_label_mix_and_eligibility(default_rows: list[dict]) -> None:
    persona = _persona_of(3, 8)
    mix: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in default_rows:
        mix[persona[r["user_id"]]][r["label"]] += 1
    top = {p: c.most_common(1)[0][0] for p, c in mix.items()}
    assert top["writer"] == "Write"
    assert top["manager"] in ("Meet", "Communicate")
    assert top["researcher"] == "ReadResearch"
    assert set(mix["two_label_dev"]) == {"Build", "Debug"}

    def share(p: str) -> dict[str, float]:
        n = sum(mix[p].values())
        return {lab: mix[p][lab] / n for lab in LABELS}

    for a, b in itertools.combinations(["backend_dev", "manager", "writer", "researcher", "sre_nightshift"], 2):
        tv = 0.5 * sum(abs(share(a)[k] - share(b)[k]) for k in LABELS)
        assert tv > 0.2, (a, b, tv)

    rep = eligibility(default_rows)
    by_persona = {persona[u]: r for u, r in rep.items()}
    assert not by_persona["occasional"]["is_eligible"] and by_persona["occasional"]["labeled_windows"] < 200
    assert not by_persona["two_label_dev"]["is_eligible"] and by_persona["two_label_dev"]["distinct_labels"] == 2
    assert not by_persona["new_joiner"]["is_eligible"] and by_persona["new_joiner"]["labeled_days"] < 3
    eligible = {p for p, r in by_persona.items() if r["is_eligible"]}
    assert eligible == {"backend_dev", "manager", "sre_nightshift", "writer", "researcher"}
    # working hours differ: the night shift crosses midnight, others do not
    hours = collections.defaultdict(set)
    for r in default_rows:
        hours[persona[r["user_id"]]].add(r["hour_of_day"])
    assert {22, 23, 0, 1} <= hours["sre_nightshift"]
    assert not hours["writer"] & {0, 1, 2, 3}
    assert set(PERSONA_ORDER) == set(PERSONAS)


def test_iter_stream_time_ordered_and_covers_all_users() -> None:
    rows = list(iter_stream(seed=4, n_users=50, minutes=60))
    keys = [(parse_ts_us(r["bucket_start_ts"]), r["user_id"]) for r in rows]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    assert {r["user_id"] for r in rows} == set(user_ids(4, 50))
    assert {r["bucket_start_ts"] for r in rows} >= {"2026-03-09T09:00:00Z", "2026-03-09T09:59:00Z"}
    assert all("label" not in r for r in rows)
    assert 0.6 * 50 * 60 < len(rows) <= 50 * 60
    validator = RowValidator(SCHEMAS["v1"])
    for r in rows:
        validator.validate(r)
    assert rows == list(iter_stream(seed=4, n_users=50, minutes=60))
    assert rows != list(iter_stream(seed=5, n_users=50, minutes=60))


def test_iter_stream_is_lazy_and_other_schemas_validate() -> None:
    it = iter_stream(seed=1, n_users=1000, minutes=100)
    first = list(itertools.islice(it, 10))  # cheap: only the first minute is generated
    assert len(first) == 10
    for version in ("v2", "v3"):
        validator = RowValidator(SCHEMAS[version])
        for r in iter_stream(seed=1, n_users=5, minutes=10, schema_version=version):
            validator.validate(r)


def test_unknown_schema_version_refused() -> None:
    with pytest.raises(ValueError, match="schema_version"):
        generate_labelled(schema_version="v9")
