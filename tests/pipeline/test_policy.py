"""inference_policy.json and the flag > policy > default resolution (spec 8; items 48-51 as the daemon deviates)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers_rows import golden_dir
from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.labels import LABELS
from taskclf_daemon.pipeline.calibration import CalibratorStore
from taskclf_daemon.pipeline.model import ModelBundle
from taskclf_daemon.pipeline.policy import FROM_POLICY, FromPolicy, check_policy_against_model, load_policy, resolve_inference

RUN = "2026-04-06_000000_run-0001"


def _golden_policy_path() -> Path:
    return golden_dir() / "models" / "inference_policy.json"


def _golden_policy_raw() -> dict[str, Any]:
    return json.loads(_golden_policy_path().read_text())


def _write_policy(tmp_path: Path, raw: Any, text: str | None = None) -> Path:
    d = tmp_path / "home" / "models"
    d.mkdir(parents=True, exist_ok=True)
    p = d / "inference_policy.json"
    p.write_text(text if text is not None else json.dumps(raw))
    return p


# ---------------------------------------------------------------- loading


def test_load_golden_policy() -> None:
    pol = load_policy(_golden_policy_path())
    assert pol.model_dir == f"models/{RUN}"
    assert pol.model_schema_hash == "4077fe0dba70"
    assert pol.model_label_set == LABELS
    assert pol.calibrator_store_dir == "artifacts/calibrator_store"
    assert pol.calibration_method == "temperature"
    assert pol.reject_threshold == 0.55
    assert pol.per_user_reject_thresholds == {}
    assert pol.policy_version == "v1" and pol.source == "calibrate"
    # paths are relative to TASKCLF_HOME = parent of the models dir
    assert pol.home == golden_dir().resolve()
    assert pol.resolve_path(pol.model_dir) == golden_dir().resolve() / "models" / RUN
    assert (pol.resolve_path(pol.model_dir) / "model.txt").is_file()
    assert pol.resolve_path("/abs/elsewhere") == Path("/abs/elsewhere")


def test_policy_version_defaults_to_v1(tmp_path: Path) -> None:
    raw = _golden_policy_raw()
    del raw["policy_version"]
    assert load_policy(_write_policy(tmp_path, raw)).policy_version == "v1"
    raw["policy_version"] = 2
    assert load_policy(_write_policy(tmp_path, raw)).policy_version == "2"


def test_extra_keys_ignored(tmp_path: Path) -> None:
    raw = _golden_policy_raw() | {"_help": "anything", "future": {"x": 1}}
    assert load_policy(_write_policy(tmp_path, raw)).reject_threshold == 0.55


# ---------------------------------------------------------------- precedence flag > policy > default


def test_resolve_from_golden_policy_only() -> None:
    r = resolve_inference(policy_path=_golden_policy_path())
    g = golden_dir().resolve()
    assert r.model_dir == g / "models" / RUN
    assert r.calibrator_store == g / "artifacts" / "calibrator_store"
    assert r.reject_threshold == 0.55
    assert r.per_user_thresholds == {}
    assert r.sources == {"model_dir": "policy", "calibrator_store": "policy", "reject_threshold": "policy", "per_user_thresholds": "default"}
    assert r.policy is not None
    # what the policy points at loads, and the store is bound to this model
    bundle = ModelBundle.load(r.model_dir)
    CalibratorStore.load(r.calibrator_store).check_binding(bundle.schema_hash)
    d = r.describe()
    assert d["precedence"] == "flag > policy > default" and d["sources"]["model_dir"] == "policy"
    # the start-up log line's inference settings
    assert d == {
        "model_dir": str(g / "models" / RUN),
        "calibrator_store": str(g / "artifacts" / "calibrator_store"),
        "reject_threshold": 0.55,
        "per_user_thresholds": 0,
        "policy": str(_golden_policy_path()),
        "sources": r.sources,
        "precedence": "flag > policy > default",
    }


def test_flags_beat_policy(tmp_path: Path) -> None:
    r = resolve_inference(
        model_dir=tmp_path / "other_model",
        calibrator_store=tmp_path / "other_store",
        reject_threshold=0.7,
        policy_path=_golden_policy_path(),
    )
    assert r.model_dir == tmp_path / "other_model"
    assert r.calibrator_store == tmp_path / "other_store"
    assert r.reject_threshold == 0.7
    assert r.sources["model_dir"] == r.sources["calibrator_store"] == r.sources["reject_threshold"] == "flag"


def test_flag_threshold_none_disables_rejection() -> None:
    r = resolve_inference(reject_threshold=None, policy_path=_golden_policy_path())
    assert r.reject_threshold is None and r.sources["reject_threshold"] == "flag"


def test_policy_threshold_beats_default(tmp_path: Path) -> None:
    raw = _golden_policy_raw() | {"reject_threshold": 0.4}
    r = resolve_inference(policy_path=_write_policy(tmp_path, raw))
    assert r.reject_threshold == 0.4 and r.sources["reject_threshold"] == "policy"


def test_defaults_without_policy(tmp_path: Path) -> None:
    r = resolve_inference(model_dir=tmp_path / "m")
    assert r.model_dir == tmp_path / "m"
    assert r.calibrator_store is None
    assert r.reject_threshold == 0.55
    assert r.per_user_thresholds == {}
    assert r.policy is None
    assert r.sources == {"model_dir": "flag", "calibrator_store": "default", "reject_threshold": "default", "per_user_thresholds": "default"}


def test_policy_without_store_gives_no_store(tmp_path: Path) -> None:
    raw = _golden_policy_raw() | {"calibrator_store_dir": None}
    r = resolve_inference(policy_path=_write_policy(tmp_path, raw))
    assert r.calibrator_store is None and r.sources["calibrator_store"] == "default"
    assert r.model_dir == (tmp_path / "home").resolve() / "models" / RUN


def test_no_model_anywhere_is_refused() -> None:
    with pytest.raises(ArtifactError) as ei:
        resolve_inference()
    assert ei.value.field == "model_dir"
    assert str(ei.value) == "<command line> (field 'model_dir'): no model bundle given. Fix: pass --model-dir models/<run_id> or --policy models/inference_policy.json"


def test_describe_without_policy_or_store(tmp_path: Path) -> None:
    d = resolve_inference(model_dir=tmp_path / "m").describe()
    assert d["model_dir"] == str(tmp_path / "m")
    assert d["calibrator_store"] is None and d["policy"] is None and d["per_user_thresholds"] == 0
    assert resolve_inference(model_dir=tmp_path / "m", calibrator_store=tmp_path / "s").describe()["calibrator_store"] == str(tmp_path / "s")


def test_absolute_policy_paths_are_used_as_they_are(tmp_path: Path) -> None:
    pol = load_policy(_write_policy(tmp_path, _golden_policy_raw() | {"model_dir": str(tmp_path / "abs" / "m")}))
    assert pol.resolve_path(str(tmp_path / "abs" / "m")) == tmp_path / "abs" / "m"
    assert resolve_inference(policy_path=pol.path).model_dir == tmp_path / "abs" / "m"


_FIX = "write the policy as taskclf does (taskclf policy create / tune-reject --write-policy) or drop --policy"


def _refusal(tmp_path: Path, raw: Any = None, text: str | None = None) -> ArtifactError:
    p = _write_policy(tmp_path, raw, text)
    with pytest.raises(ArtifactError) as ei:
        load_policy(p)
    assert ei.value.path == str(p)
    return ei.value


@pytest.mark.parametrize(
    "case, field, problem",
    [
        ("not_json", None, "not valid JSON: "),
        ("list", None, "policy must be a JSON object"),
        ("no_model_dir", "model_dir", "required field is missing"),
        ("empty_model_dir", "model_dir", "must be a non-empty path string"),
        ("threshold_2", "reject_threshold", "must be a number in [0, 1], got 2"),
        ("labels_not_list", "model_label_set", "must be a list of label names"),
        ("store_number", "calibrator_store_dir", "must be a path string or null"),
        ("per_user_list", "per_user_reject_thresholds", "must be an object {user_id: threshold} or null"),
    ],
)
def test_every_policy_refusal_names_file_field_problem_and_fix(tmp_path: Path, case: str, field: str | None, problem: str) -> None:
    raw = _golden_policy_raw()
    text = None
    if case == "not_json":
        text = "{"
    elif case == "list":
        raw = [raw]
    elif case == "no_model_dir":
        del raw["model_dir"]
    elif case == "empty_model_dir":
        raw["model_dir"] = ""
    elif case == "threshold_2":
        raw["reject_threshold"] = 2
    elif case == "labels_not_list":
        raw["model_label_set"] = "Build"
    elif case == "store_number":
        raw["calibrator_store_dir"] = 3
    elif case == "per_user_list":
        raw["per_user_reject_thresholds"] = ["u1"]
    err = _refusal(tmp_path, raw, text)
    assert err.field == field
    assert err.problem.startswith(problem) if case == "not_json" else err.problem == problem
    assert err.fix == _FIX
    where = f"{err.path}" + (f" (field {field!r})" if field else "")
    assert str(err) == f"{where}: {err.problem}. Fix: {_FIX}"


def test_missing_policy_file_names_problem_and_fix(tmp_path: Path) -> None:
    p = tmp_path / "nope.json"
    with pytest.raises(ArtifactError) as ei:
        load_policy(p)
    assert (ei.value.path, ei.value.field, ei.value.problem, ei.value.fix) == (str(p), None, "policy file does not exist", _FIX)


def test_policy_for_another_model_names_problem_and_fix() -> None:
    pol = load_policy(_golden_policy_path())
    with pytest.raises(ArtifactError) as ei:
        check_policy_against_model(pol, "a15f4751a947", list(LABELS))
    e = ei.value
    assert (e.path, e.field) == (str(pol.path), "model_schema_hash")
    assert e.problem == "policy is for schema hash '4077fe0dba70', the model has 'a15f4751a947'"
    assert e.fix == "regenerate the policy for this model or drop --policy"
    with pytest.raises(ArtifactError) as ei:
        check_policy_against_model(pol, "4077fe0dba70", ["Build", "Debug"])
    e = ei.value
    assert (e.path, e.field) == (str(pol.path), "model_label_set")
    assert e.problem == f"policy label set {list(LABELS)} differs from the model's"
    assert e.fix == "regenerate the policy for this model"


def test_per_user_thresholds_from_policy(tmp_path: Path) -> None:
    raw = _golden_policy_raw() | {"per_user_reject_thresholds": {"u1": 0.3, "u2": 1, "u3": 0.0}}
    pol = load_policy(_write_policy(tmp_path, raw))
    assert pol.per_user_reject_thresholds == {"u1": 0.3, "u2": 1.0, "u3": 0.0}
    r = resolve_inference(policy_path=pol.path)
    assert r.per_user_thresholds == {"u1": 0.3, "u2": 1.0, "u3": 0.0}
    assert r.sources["per_user_thresholds"] == "policy"
    # a global flag does not remove per-user thresholds
    r2 = resolve_inference(policy_path=pol.path, reject_threshold=0.9)
    assert r2.reject_threshold == 0.9 and r2.per_user_thresholds["u1"] == 0.3


# ---------------------------------------------------------------- refusals (file + field)


def test_missing_policy_file_refused(tmp_path: Path) -> None:
    p = tmp_path / "nope" / "inference_policy.json"
    with pytest.raises(ArtifactError) as ei:
        load_policy(p)
    assert "inference_policy.json" in str(ei.value) and ei.value.path == str(p)
    with pytest.raises(ArtifactError):
        resolve_inference(model_dir=tmp_path, policy_path=p)  # a named policy that cannot be used is an error


@pytest.mark.parametrize("text", ["{not json", "", '{"model_dir": "m",}'])
def test_invalid_json_refused(tmp_path: Path, text: str) -> None:
    p = _write_policy(tmp_path, None, text=text)
    with pytest.raises(ArtifactError) as ei:
        load_policy(p)
    assert "inference_policy.json" in str(ei.value)


def test_non_object_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as ei:
        load_policy(_write_policy(tmp_path, [1, 2]))
    assert "inference_policy.json" in str(ei.value)


@pytest.mark.parametrize("field", ["model_dir", "model_schema_hash", "model_label_set", "reject_threshold"])
def test_missing_required_field_refused(tmp_path: Path, field: str) -> None:
    raw = _golden_policy_raw()
    raw.pop(field)
    with pytest.raises(ArtifactError) as ei:
        load_policy(_write_policy(tmp_path, raw))
    assert ei.value.field == field
    assert "inference_policy.json" in str(ei.value) and field in str(ei.value)


@pytest.mark.parametrize("value", [1.5, -0.1, "0.5", True, None])
def test_bad_reject_threshold_refused(tmp_path: Path, value: Any) -> None:
    raw = _golden_policy_raw() | {"reject_threshold": value}
    with pytest.raises(ArtifactError) as ei:
        load_policy(_write_policy(tmp_path, raw))
    assert ei.value.field == "reject_threshold"
    assert "inference_policy.json" in str(ei.value) and "reject_threshold" in str(ei.value)


@pytest.mark.parametrize("value", ["x", 1.5, -1, None, [0.3]])
def test_bad_per_user_threshold_refused(tmp_path: Path, value: Any) -> None:
    raw = _golden_policy_raw() | {"per_user_reject_thresholds": {"good": 0.3, "alice": value}}
    with pytest.raises(ArtifactError) as ei:
        load_policy(_write_policy(tmp_path, raw))
    assert ei.value.field is not None and "per_user_reject_thresholds" in ei.value.field and "alice" in ei.value.field
    assert "inference_policy.json" in str(ei.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("model_dir", ""), ("model_dir", 5), ("model_label_set", "Build"), ("model_label_set", [1, 2]), ("calibrator_store_dir", 3), ("per_user_reject_thresholds", [["u", 0.3]])],
)
def test_bad_field_types_refused(tmp_path: Path, field: str, value: Any) -> None:
    raw = _golden_policy_raw() | {field: value}
    with pytest.raises(ArtifactError) as ei:
        load_policy(_write_policy(tmp_path, raw))
    assert ei.value.field == field


# ---------------------------------------------------------------- policy vs model


def test_check_policy_against_model() -> None:
    pol = load_policy(_golden_policy_path())
    bundle = ModelBundle.load(pol.resolve_path(pol.model_dir))
    check_policy_against_model(pol, bundle.schema_hash, bundle.metadata["label_set"])
    with pytest.raises(ArtifactError) as ei:
        check_policy_against_model(pol, "a15f4751a947", list(LABELS))
    assert ei.value.field == "model_schema_hash" and "inference_policy.json" in str(ei.value)


def test_check_policy_label_set_mismatch(tmp_path: Path) -> None:
    raw = _golden_policy_raw() | {"model_label_set": list(LABELS[:7]) + ["Writing"]}
    pol = load_policy(_write_policy(tmp_path, raw))
    with pytest.raises(ArtifactError) as ei:
        check_policy_against_model(pol, "4077fe0dba70", list(LABELS))
    assert ei.value.field == "model_label_set"
    # order of the label list does not matter
    raw = _golden_policy_raw() | {"model_label_set": list(reversed(LABELS))}
    check_policy_against_model(load_policy(_write_policy(tmp_path, raw)), "4077fe0dba70", list(LABELS))


def test_from_policy_is_one_value_shown_by_its_name() -> None:
    """The "take it from the policy" marker prints as its name (in Settings, signatures, logs),
    not as an enum member or an object address."""
    assert repr(FROM_POLICY) == "FROM_POLICY" and f"{[FROM_POLICY]}" == "[FROM_POLICY]"
    assert list(FromPolicy) == [FROM_POLICY] and FROM_POLICY.value == "policy"
