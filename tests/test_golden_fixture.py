"""The in-repo golden fixture is complete and unmodified; the golden comparison can fail."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from golden_compare import compare
from golden_fixture import SOURCE_DIR, golden_home, source_bytes

REPO = Path(__file__).resolve().parents[1]


def _manifest() -> dict[str, dict[str, object]]:
    files: dict[str, dict[str, object]] = json.loads((SOURCE_DIR / "manifest.json").read_bytes())["files"]
    return files


def test_every_manifest_file_is_in_the_repo_with_its_sha256() -> None:
    files = _manifest()
    assert len(files) == 19
    for name, meta in files.items():
        stored = SOURCE_DIR / name if (SOURCE_DIR / name).is_file() else SOURCE_DIR / f"{name}.xz"
        assert stored.is_file(), name
        assert stored.suffix == ".xz" or not name.endswith(".jsonl"), f"{name} should be stored compressed"
        data = source_bytes(name)
        assert (len(data), hashlib.sha256(data).hexdigest()) == (meta["bytes"], meta["sha256"]), name
    assert (SOURCE_DIR / "PROVENANCE.md").is_file()


def test_plain_copy_is_complete_and_the_policy_resolves_inside_it() -> None:
    home = golden_home()
    for name, meta in _manifest().items():
        assert (home / name).stat().st_size == meta["bytes"], name
    policy = json.loads((home / "models" / "inference_policy.json").read_bytes())
    assert (home / policy["model_dir"] / "model.txt").is_file()
    assert (home / policy["calibrator_store_dir"] / "store.json").is_file()


def _golden_rows(n: int = 50) -> list[dict[str, object]]:
    lines = (golden_home() / "expected_w3.jsonl").read_bytes().splitlines()[:n]
    return [json.loads(line) for line in lines]


def test_compare_passes_identical_rows_in_any_order_with_identical_duplicates() -> None:
    rows = _golden_rows()
    actual = [*reversed(rows), rows[3]]
    rep = compare(rows, actual, fail_on_extra=True)
    assert rep.ok, str(rep)
    assert (rep.matched, rep.duplicates, rep.max_abs_diff) == (50, 1, 0.0)
    assert "SUMMARY: PASS" in str(rep)


@pytest.mark.parametrize(
    "change, what",
    [
        (lambda r: r.update(core_label_name="Write"), "core_label_name"),
        (lambda r: r.update(core_label_id=float(r["core_label_id"])), "core_label_id"),
        (lambda r: r.update(is_rejected=not r["is_rejected"]), "is_rejected"),
        (lambda r: r.update(model_version="x"), "model_version"),
        (lambda r: r.pop("mapped_label_name"), "mapped_label_name"),
        (lambda r: r["core_probs"].__setitem__(2, r["core_probs"][2] + 2e-5), "differs by"),
        (lambda r: r.update(confidence=r["confidence"] - 2e-5), "differs by"),
        (lambda r: r["mapped_probs"].pop("Meet"), "mapped_probs keys"),
        (lambda r: r["mapped_probs"].update(Meet=None), "differs by"),
        (lambda r: r.update(core_probs=r["core_probs"][:7]), "core_probs"),
    ],
)
def test_compare_fails_on_any_label_flag_or_probability_difference(change, what: str) -> None:
    rows = _golden_rows()
    actual = json.loads(json.dumps(rows))
    change(actual[7])
    rep = compare(rows, actual)
    assert not rep.ok
    assert len(rep.mismatches) == 1 and rep.mismatches[0][0] == (rows[7]["user_id"], rows[7]["bucket_start_ts"])
    assert what in "; ".join(rep.mismatches[0][1]), str(rep)


def test_compare_within_tolerance_passes() -> None:
    rows = _golden_rows()
    actual = json.loads(json.dumps(rows))
    actual[0]["core_probs"][0] += 5e-6
    rep = compare(rows, actual)
    assert rep.ok and 4e-6 < rep.max_abs_diff < 6e-6, str(rep)


def test_compare_fails_on_missing_conflicting_and_extra_rows() -> None:
    rows = _golden_rows()
    assert not compare(rows, rows[1:]).ok
    conflicting = [*rows, {**rows[0], "confidence": 0.0}]
    rep = compare(rows, conflicting)
    assert not rep.ok and rep.conflicting == [(rows[0]["user_id"], rows[0]["bucket_start_ts"])]
    extra = [*rows, {**rows[0], "bucket_start_ts": "2030-01-01T00:00:00Z"}]
    assert compare(rows, extra).ok
    assert not compare(rows, extra, fail_on_extra=True).ok
    shifted = [{**r, "bucket_start_ts": r["bucket_start_ts"].replace("Z", "+00:00")} for r in rows]
    assert not compare(rows, shifted).ok, "timestamps are compared exactly as taskclf writes them"


def test_compare_features_mode() -> None:
    lines = (golden_home() / "expected_features.jsonl").read_bytes().splitlines()[:40]
    rows = [json.loads(line) for line in lines]
    assert compare(rows, rows, mode="features").ok
    bad = json.loads(json.dumps(rows))
    bad[5]["keys_per_min_delta"] = None if bad[5]["keys_per_min_delta"] is not None else 1.0
    assert not compare(rows, bad, mode="features").ok
    off = json.loads(json.dumps(rows))
    off[2]["session_length_so_far"] += 1e-6
    assert not compare(rows, off, mode="features").ok
    assert compare(rows, off, mode="features", tol=1e-5).ok
