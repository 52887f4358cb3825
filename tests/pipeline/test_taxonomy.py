"""Taxonomy mapping (spec section 7, acceptance items 40-47)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.labels import LABEL_INDEX, LABELS, MIXED_UNKNOWN
from taskclf_daemon.pipeline.taxonomy import (
    DEFAULT_COLOR,
    FALLBACK_BUCKET,
    Taxonomy,
    identity_taxonomy,
    load_taxonomy,
    parse_taxonomy,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "taxonomy.example.yaml"

SPEC_BUCKETS: list[tuple[str, list[str]]] = [
    ("Deep Work", ["Build", "Debug", "Write"]),
    ("Research", ["ReadResearch", "Review"]),
    ("Communication", ["Communicate"]),
    ("Meetings", ["Meet"]),
    ("Break", ["BreakIdle"]),
]


def _config(buckets: list[tuple[str, list[str]]] = SPEC_BUCKETS, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"buckets": [{"name": n, "core_labels": list(ls)} for n, ls in buckets]}
    cfg.update(extra)
    return cfg


def _peaked(label: str, peak: float) -> np.ndarray:
    p = np.full(len(LABELS), (1.0 - peak) / (len(LABELS) - 1))
    p[LABEL_INDEX[label]] = peak
    return p


def _uniform() -> np.ndarray:
    return np.full(len(LABELS), 1.0 / len(LABELS))


def _write(tmp_path: Path, data: Any, name: str = "tax.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _reference(cfg: Taxonomy, probs: np.ndarray, rejected: bool) -> tuple[str, dict[str, float]]:
    """Straight per-row transcription of the spec section 7 algorithm with numpy 1-D ops."""
    if rejected:
        return cfg.reject_label, {cfg.reject_label: 1.0}
    p = probs.astype(np.float64, copy=True)
    if cfg.weights is not None:
        p = p * cfg.weights
        total = p.sum()
        if total > 0:
            p /= total
    assert cfg.bucket_indices is not None
    scores = np.zeros(len(cfg.buckets))
    for b, idx in enumerate(cfg.bucket_indices):
        scores[b] = p[list(idx)].sum() if cfg.aggregation == "sum" else p[list(idx)].max()
    total = scores.sum()
    if total > 0:
        scores /= total
    best = int(scores.argmax())
    return cfg.buckets[best], {n: round(float(s), 6) for n, s in zip(cfg.buckets, scores)}


# --------------------------------------------------------------------------- item 40-42


def test_item40_sum_mode() -> None:
    tax = parse_taxonomy(_config())
    labels, mapped = tax.map_batch(_peaked("Build", 0.8)[None, :], np.array([False]))
    assert labels == ["Deep Work"]
    assert mapped[0] == {
        "Deep Work": 0.857143,
        "Research": 0.057143,
        "Communication": 0.028571,
        "Meetings": 0.028571,
        "Break": 0.028571,
    }
    assert list(mapped[0]) == [n for n, _ in SPEC_BUCKETS]
    assert tax.buckets == tuple(n for n, _ in SPEC_BUCKETS)
    assert not tax.has_fallback
    assert tax.weights is None


def test_item41_max_mode() -> None:
    tax = parse_taxonomy(_config(advanced={"probability_aggregation": "max"}))
    assert tax.aggregation == "max"
    label, mapped = tax.map_one(_peaked("Build", 0.8))
    assert label == "Deep Work"
    assert mapped == {
        "Deep Work": 0.875,
        "Research": 0.03125,
        "Communication": 0.03125,
        "Meetings": 0.03125,
        "Break": 0.03125,
    }


def test_item42_reweight() -> None:
    tax = parse_taxonomy(_config(advanced={"reweight_core_labels": {"Build": 10}}))
    assert tax.weights is not None
    expected_w = np.ones(8)
    expected_w[LABEL_INDEX["Build"]] = 10.0
    np.testing.assert_array_equal(tax.weights, expected_w)
    label, mapped = tax.map_one(_uniform())
    assert label == "Deep Work"
    assert mapped == {
        "Deep Work": 0.705882,
        "Research": 0.117647,
        "Communication": 0.058824,
        "Meetings": 0.058824,
        "Break": 0.058824,
    }


# --------------------------------------------------------------------------- item 43-45


def test_item43_label_in_two_buckets_counts_in_both() -> None:
    buckets = [
        ("Deep Work", ["Build", "Debug", "Write", "Review"]),
        ("Learning/Research", ["ReadResearch", "Review"]),
        ("Communication", ["Communicate"]),
        ("Meetings", ["Meet"]),
        ("Break", ["BreakIdle"]),
    ]
    tax = parse_taxonomy(_config(buckets))
    assert tax.membership[:, LABEL_INDEX["Review"]].tolist() == [True, True, False, False, False]
    label, mapped = tax.map_one(_uniform())
    assert label == "Deep Work"
    assert mapped == {
        "Deep Work": 0.444444,
        "Learning/Research": 0.222222,
        "Communication": 0.111111,
        "Meetings": 0.111111,
        "Break": 0.111111,
    }


def test_item44_uncovered_labels_go_to_other() -> None:
    tax = parse_taxonomy(_config([("Coding", ["Build", "Debug"])]))
    assert tax.buckets == ("Coding", FALLBACK_BUCKET)
    assert tax.has_fallback
    other = tax.membership[1]
    assert other.sum() == 6 and not other[LABEL_INDEX["Build"]] and not other[LABEL_INDEX["Debug"]]
    assert tax.bucket_indices == ((LABEL_INDEX["Build"], LABEL_INDEX["Debug"]), tuple(sorted(np.flatnonzero(other))))
    label, mapped = tax.map_one(_peaked("Meet", 0.9))
    assert label == FALLBACK_BUCKET
    assert list(mapped) == ["Coding", "Other"]
    assert mapped["Other"] > 0.9


def test_full_cover_has_no_other_bucket() -> None:
    assert FALLBACK_BUCKET not in parse_taxonomy(_config()).buckets


@pytest.mark.parametrize(
    ("reject_cfg", "expected"),
    [(None, MIXED_UNKNOWN), ({"mixed_label_name": "Unknown"}, "Unknown")],
)
def test_item45_rejected_maps_to_reject_label(reject_cfg: dict[str, str] | None, expected: str) -> None:
    extra = {} if reject_cfg is None else {"reject": reject_cfg}
    tax = parse_taxonomy(_config(**extra))
    assert tax.reject_label == expected
    probs = np.vstack([_peaked("Build", 0.8), _peaked("Meet", 0.3)])
    labels, mapped = tax.map_batch(probs, np.array([False, True]))
    assert labels == ["Deep Work", expected]
    assert mapped[1] == {expected: 1.0}  # not taskclf's {} (spec 13.4)


# --------------------------------------------------------------------------- item 46


def test_item46_rounding_sum_and_no_mutation() -> None:
    rng = np.random.default_rng(46)
    probs = rng.dirichlet(np.ones(8), size=500)
    rejected = np.zeros(500, dtype=bool)
    before = probs.copy()
    rej_before = rejected.copy()
    for cfg in (_config(), _config(advanced={"probability_aggregation": "max", "reweight_core_labels": {"Meet": 3}})):
        tax = parse_taxonomy(cfg)
        labels, mapped = tax.map_batch(probs, rejected)
        assert len(labels) == len(mapped) == 500
        for m in mapped:
            assert list(m) == list(tax.buckets)
            # each of the n rounded values is off by <= 5e-7, so 1e-6 only holds for <= 2 buckets
            assert abs(sum(m.values()) - 1.0) <= 5e-7 * len(m) + 1e-12
            assert all(v == round(v, 6) for v in m.values())
    np.testing.assert_array_equal(probs, before)
    np.testing.assert_array_equal(rejected, rej_before)


def test_item46_spec_vectors_sum_to_one_within_1e6() -> None:
    cases = [
        (_config(), _peaked("Build", 0.8)),
        (_config(advanced={"probability_aggregation": "max"}), _peaked("Build", 0.8)),
        (_config(advanced={"reweight_core_labels": {"Build": 10}}), _uniform()),
        (_config([("Deep Work", ["Build", "Debug", "Write", "Review"]), ("Learning/Research", ["ReadResearch", "Review"]), ("Communication", ["Communicate"]), ("Meetings", ["Meet"]), ("Break", ["BreakIdle"])]), _uniform()),
        (_config([("Coding", ["Build", "Debug"])]), _peaked("Meet", 0.9)),
    ]
    for cfg, p in cases:
        _, mapped = parse_taxonomy(cfg).map_one(p)
        assert abs(sum(mapped.values()) - 1.0) <= 1e-6 + 1e-12  # item 40 sums to 0.999999 exactly


def test_item46_uses_builtin_round() -> None:
    tax = parse_taxonomy(_config([("A", ["Build"]), ("B", ["Debug"])]))
    p = _peaked("Build", 0.8)
    scores = tax.scores(p)
    _, mapped = tax.map_one(p)
    assert list(mapped) == ["A", "B", "Other"]
    assert mapped == {name: round(float(v), 6) for name, v in zip(tax.buckets, scores[0])}
    assert all(type(v) is float for v in mapped.values())


def test_item46_ties_go_to_earliest_bucket() -> None:
    buckets = [("Z-first", ["Meet", "Write"]), ("A-second", ["Build", "Debug"]), ("Rest", ["BreakIdle", "Communicate", "ReadResearch", "Review"])]
    tax = parse_taxonomy(_config(buckets))
    p = np.zeros(8)
    p[[LABEL_INDEX["Meet"], LABEL_INDEX["Build"]]] = 0.5
    label, mapped = tax.map_one(p)
    assert mapped["Z-first"] == mapped["A-second"] == 0.5
    assert label == "Z-first"
    tax2 = parse_taxonomy(_config(list(reversed(buckets))))
    assert tax2.map_one(p)[0] == "A-second"


def test_all_zero_row_is_not_renormalised() -> None:
    tax = parse_taxonomy(_config(advanced={"reweight_core_labels": {"Build": 2}}))
    label, mapped = tax.map_one(np.zeros(8))
    assert label == "Deep Work"  # argmax of all zeros -> first bucket
    assert set(mapped.values()) == {0.0}


@pytest.mark.parametrize(
    "cfg",
    [
        _config(),
        _config(advanced={"probability_aggregation": "max"}),
        _config(advanced={"reweight_core_labels": {"Build": 10, "Meet": 0.3}}),
        _config(
            [("Deep Work", ["Build", "Debug", "Write", "Review"]), ("Learn", ["ReadResearch", "Review", "Review"])],
            advanced={"reweight_core_labels": {"Review": 1.7}},
        ),
        _config([("Coding", ["Build", "Debug"])], advanced={"probability_aggregation": "max", "reweight_core_labels": {"Debug": 2.5}}),
    ],
    ids=["sum", "max", "reweight", "overlap+dup", "other+max+reweight"],
)
def test_batch_equals_single_row_bit_for_bit(cfg: dict[str, Any]) -> None:
    tax = parse_taxonomy(cfg)
    rng = np.random.default_rng(2024)
    probs = rng.dirichlet(np.full(8, 0.4), size=200)
    probs[::17] = np.round(probs[::17], 2)  # some ties
    rejected = rng.random(200) < 0.2
    labels, mapped = tax.map_batch(probs, rejected)
    batch_scores = tax.scores(probs)
    for i in range(200):
        one_label, one_mapped = tax.map_batch(probs[i : i + 1].copy(), rejected[i : i + 1])
        assert labels[i] == one_label[0]
        assert mapped[i] == one_mapped[0]
        assert list(mapped[i]) == list(one_mapped[0])
        assert batch_scores[i].tobytes() == tax.scores(probs[i]).tobytes()
        # and equal to a plain per-row numpy transcription of taskclf's resolver
        assert (labels[i], mapped[i]) == _reference(tax, probs[i], bool(rejected[i]))


def test_duplicate_label_within_bucket_counts_twice_like_taskclf() -> None:
    tax = parse_taxonomy(_config([("A", ["Build", "Build"]), ("B", ["Debug"]), ("C", ["BreakIdle", "Communicate", "Meet", "ReadResearch", "Review", "Write"])]))
    p = np.zeros(8)
    p[LABEL_INDEX["Build"]] = 0.5
    p[LABEL_INDEX["Debug"]] = 0.5
    _, mapped = tax.map_one(p)
    assert mapped == {"A": 0.666667, "B": 0.333333, "C": 0.0}
    assert tax.membership[0].sum() == 1 and tax.bucket_indices is not None and tax.bucket_indices[0] == (1, 1)


def test_non_float64_input_and_shape_checks() -> None:
    tax = parse_taxonomy(_config())
    p32 = _peaked("Build", 0.8).astype(np.float32)[None, :]
    label, _ = tax.map_batch(p32, np.array([False]))
    assert label == ["Deep Work"]
    assert tax.map_batch(np.zeros((0, 8)), np.zeros(0, dtype=bool)) == ([], [])
    with pytest.raises(ValueError):
        tax.map_batch(np.zeros((2, 7)), np.zeros(2, dtype=bool))
    with pytest.raises(ValueError):
        tax.map_batch(np.zeros((2, 8)), np.zeros(3, dtype=bool))


def test_taxonomy_arrays_are_read_only_and_equality() -> None:
    a = parse_taxonomy(_config(), source="a.yaml")
    b = parse_taxonomy(_config(), source="b.yaml")
    assert a == b and hash(a) == hash(b)
    assert a.digest == b.digest and len(a.digest) == 12
    with pytest.raises(ValueError):
        a.membership[0, 0] = False
    c = parse_taxonomy(_config(advanced={"probability_aggregation": "max"}))
    assert c != a and c.digest != a.digest


def test_identity_taxonomy() -> None:
    tax = identity_taxonomy()
    assert tax.buckets == LABELS
    np.testing.assert_array_equal(tax.membership, np.eye(8, dtype=bool))
    p = np.random.default_rng(1).dirichlet(np.ones(8))
    label, mapped = tax.map_one(p)
    assert label == LABELS[int(np.argmax(p))]
    assert list(mapped) == list(LABELS)
    for name, v in mapped.items():
        assert v == pytest.approx(p[LABEL_INDEX[name]], abs=1e-6)


# --------------------------------------------------------------------------- loading


def test_example_file_loads() -> None:
    tax = load_taxonomy(EXAMPLE)
    assert tax.buckets == ("Deep Work", "Research", "Communication", "Meetings", "Break")
    assert tax.aggregation == "sum"
    assert tax.reject_label == MIXED_UNKNOWN
    assert tax.weights is None
    assert tax.version == "1.0"
    assert tax.source == str(EXAMPLE)
    assert tax.colors is not None and tax.colors[-1] == DEFAULT_COLOR
    label, mapped = tax.map_one(_peaked("Build", 0.8))
    assert label == "Deep Work" and mapped["Deep Work"] == 0.857143
    # the digest ignores comments, key order and spelled-out defaults, not content
    raw = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    reordered = dict(reversed(list(raw.items())))
    reordered["advanced"] = {**reordered["advanced"], "probability_aggregation": "sum", "reweight_core_labels": {}}
    assert parse_taxonomy(reordered).digest == tax.digest
    assert parse_taxonomy(_config()).digest != tax.digest  # descriptions/colours differ


def test_numeric_version_coerced(tmp_path: Path) -> None:
    path = tmp_path / "v.yaml"
    path.write_text("version: 1.0\nbuckets:\n  - name: All\n    core_labels: [Build]\n", encoding="utf-8")
    tax = load_taxonomy(path)
    assert tax.version == "1.0"
    assert tax.buckets == ("All", "Other")


def test_taskclf_style_example_with_all_keys(tmp_path: Path) -> None:
    text = """
version: 1.0
label_schema_version: labels_v1
user_id: "example-user-uuid"
display: {show_core_labels: false, default_view: "mapped", color_theme: "default"}
reject: {mixed_label_name: "Mixed/Unknown", include_rejected_in_reports: true}
buckets:
  - name: "Deep Work"
    description: "Focused"
    core_labels: [Build, Debug, Review, Write]
    color: "#2E86DE"
  - {name: "Learning / Research", core_labels: [ReadResearch, Review], color: "#9B59B6"}
  - {name: "Communication", core_labels: [Communicate], color: "#27AE60"}
  - {name: "Meetings", core_labels: [Meet], color: "#E67E22"}
  - {name: "Break", core_labels: [BreakIdle], color: "#7F8C8D"}
advanced:
  probability_aggregation: "sum"
  min_confidence_for_mapping: 0.55
  reweight_core_labels: {Build: 1.0, Debug: 1.0, Review: 1.0, Write: 1.0, ReadResearch: 1.0, Communicate: 1.0, Meet: 1.0, BreakIdle: 1.0}
"""
    path = tmp_path / "user_taxonomy.yaml"
    path.write_text(text, encoding="utf-8")
    tax = load_taxonomy(path)
    assert tax.user_id == "example-user-uuid"
    assert tax.include_rejected_in_reports is True
    assert tax.min_confidence_for_mapping == 0.55
    assert tax.weights is not None  # all-1.0 reweighting still renormalises, as in taskclf
    label, mapped = tax.map_one(_uniform())
    assert label == "Deep Work"
    assert mapped["Deep Work"] == 0.444444 and mapped["Learning / Research"] == 0.222222


# --------------------------------------------------------------------------- item 47


def _bucket(name: str = "A", labels: Any = ("Build",), **kw: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"name": name, "core_labels": list(labels) if isinstance(labels, tuple) else labels}
    b.update(kw)
    return b


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"buckets": [_bucket(), _bucket("B"), _bucket("C", ("Build", "Coding"))]}, "buckets[2].core_labels"),
        ({"buckets": [_bucket(), _bucket("B", ("build",))]}, "buckets[1].core_labels"),
        ({"buckets": [_bucket(), _bucket("B", [])]}, "buckets[1].core_labels"),
        ({"buckets": [_bucket("B", None)]}, "buckets[0].core_labels"),
        ({"buckets": [_bucket("B", "Build")]}, "buckets[0].core_labels"),
        ({"buckets": [_bucket(color="#12345")]}, "buckets[0].color"),
        ({"buckets": [_bucket(color="red")]}, "buckets[0].color"),
        ({"buckets": [_bucket(color="#GGGGGG")]}, "buckets[0].color"),
        ({"buckets": [_bucket(color=None)]}, "buckets[0].color"),
        ({"buckets": [_bucket(), _bucket("B"), _bucket()]}, "buckets[2].name"),
        ({"buckets": []}, "buckets"),
        ({"version": "1.0"}, "buckets"),
        ({"buckets": "Deep Work"}, "buckets"),
        ({"buckets": ["Deep Work"]}, "buckets[0]"),
        ({"buckets": [_bucket(name="")]}, "buckets[0].name"),
        ({"buckets": [{"core_labels": ["Build"]}]}, "buckets[0].name"),
        ({"buckets": [_bucket()], "advanced": {"reweight_core_labels": {"Build": 0}}}, "advanced.reweight_core_labels.Build"),
        ({"buckets": [_bucket()], "advanced": {"reweight_core_labels": {"Meet": -1.5}}}, "advanced.reweight_core_labels.Meet"),
        ({"buckets": [_bucket()], "advanced": {"reweight_core_labels": {"Coding": 2}}}, "advanced.reweight_core_labels.Coding"),
        ({"buckets": [_bucket()], "advanced": {"reweight_core_labels": {"Build": float("nan")}}}, "advanced.reweight_core_labels.Build"),
        ({"buckets": [_bucket()], "advanced": {"reweight_core_labels": {"Build": "x"}}}, "advanced.reweight_core_labels.Build"),
        ({"buckets": [_bucket()], "advanced": {"probability_aggregation": "mean"}}, "advanced.probability_aggregation"),
        ({"buckets": [_bucket()], "advanced": {"min_confidence_for_mapping": 1.5}}, "advanced.min_confidence_for_mapping"),
        ({"buckets": [_bucket()], "advanced": {"min_confidence_for_mapping": -0.1}}, "advanced.min_confidence_for_mapping"),
        ({"buckets": [_bucket()], "advanced": ["sum"]}, "advanced"),
        ({"buckets": [_bucket()], "display": {"default_view": "table"}}, "display.default_view"),
        ({"buckets": [_bucket()], "display": {"show_core_labels": "maybe"}}, "display.show_core_labels"),
        ({"buckets": [_bucket()], "reject": {"mixed_label_name": 3}}, "reject.mixed_label_name"),
        ({"buckets": [_bucket()], "reject": {"include_rejected_in_reports": "sometimes"}}, "reject.include_rejected_in_reports"),
        ({"buckets": [_bucket()], "version": ["1"]}, "version"),
        ({"buckets": [_bucket()], "user_id": 12}, "user_id"),
        ({"buckets": [_bucket("Other")]}, "buckets[0].name"),
    ],
)
def test_item47_config_errors_name_file_and_field(tmp_path: Path, data: dict[str, Any], field: str) -> None:
    path = _write(tmp_path, data, name="my_taxonomy.yaml")
    with pytest.raises(ArtifactError) as info:
        load_taxonomy(path)
    err = info.value
    assert "my_taxonomy.yaml" in str(err)
    assert field in str(err)
    assert err.field is not None and err.field.startswith(field)
    assert "Fix:" in str(err) and err.fix
    assert err.path == str(path)


def test_parse_taxonomy_errors_name_source() -> None:
    with pytest.raises(ArtifactError) as info:
        parse_taxonomy({"buckets": [_bucket(labels=("Nope",))]})
    assert "<dict>" in str(info.value) and "buckets[0].core_labels" in str(info.value)
    assert "Build" in str(info.value)  # the fix lists the valid labels


def test_unquoted_colour_hint(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("buckets:\n  - name: A\n    core_labels: [Build]\n    color: #2E86DE\n", encoding="utf-8")
    with pytest.raises(ArtifactError, match="YAML comment") as info:
        load_taxonomy(path)
    assert info.value.field == "buckets[0].color"


def test_other_bucket_name_allowed_when_everything_covered() -> None:
    tax = parse_taxonomy(_config([("Work", ["Build", "Debug", "Write", "Review", "ReadResearch"]), ("Other", ["Communicate", "Meet", "BreakIdle"])]))
    assert tax.buckets == ("Work", "Other") and not tax.has_fallback


def test_valid_edge_values_accepted() -> None:
    tax = parse_taxonomy(
        _config(
            advanced={"min_confidence_for_mapping": 0, "reweight_core_labels": None},
            display={"show_core_labels": "yes", "default_view": "core"},
            reject=None,
            version=2,
        )
    )
    assert tax.min_confidence_for_mapping == 0.0 and tax.weights is None and tax.version == "2"
    assert tax.reject_label == MIXED_UNKNOWN
    parse_taxonomy(_config(buckets=[("A", ["Build"])], advanced={"min_confidence_for_mapping": 1.0}))
    parse_taxonomy({"buckets": [_bucket(color="#abcdef")], "unknown_key": 1})


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "not found"),
        ("buckets: [\n  - name: A\n", "not valid YAML"),
        ("", "must be a mapping"),
        ("- name: A\n  core_labels: [Build]\n", "must be a mapping"),
        ("just a string\n", "must be a mapping"),
    ],
)
def test_file_level_errors_are_artifact_errors(tmp_path: Path, content: str | None, needle: str) -> None:
    path = tmp_path / "broken_tax.yaml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ArtifactError) as info:
        load_taxonomy(path)
    assert "broken_tax.yaml" in str(info.value)
    assert needle in str(info.value)


def test_directory_and_binary_are_artifact_errors(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError):
        load_taxonomy(tmp_path)
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ArtifactError):
        load_taxonomy(path)
