"""Configuration: one key table, four sources (flag > env > file > default), fail-fast errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from taskclf_daemon.config import ENV_PREFIX, KEYS, SECRET_KEYS, Settings, _loggable, load_settings, render_default_toml
from taskclf_daemon.errors import ConfigError
from taskclf_daemon.pipeline.policy import FROM_POLICY

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILE = REPO / "config" / "taskclf-daemon.toml"
README = REPO / "README.md"

MODEL = {"model_dir": "/models/run-1"}


def write_toml(tmp_path: Path, text: str, name: str = "daemon.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def assert_config_error(exc: ConfigError, key: str, source: str | None) -> str:
    """The message names the key, the source (when given) and a fix."""
    msg = str(exc)
    assert exc.key == key, msg
    assert key in msg, msg
    if source is not None:
        assert exc.source == source, msg
        assert source in msg, msg
    assert exc.fix, msg
    assert "Fix: " in msg and msg.split("Fix: ", 1)[1].strip(), msg
    return msg


# --------------------------------------------------------------------------- defaults


def test_defaults_load_with_model_dir_flag() -> None:
    s = load_settings(None, env={}, flags=MODEL)
    assert isinstance(s, Settings)
    assert set(s.values()) == set(KEYS)
    for k, spec in KEYS.items():
        if k == "model_dir":
            continue
        assert _loggable(getattr(s, k)) == spec.default, k
        assert s.sources[k] == "default", k
    assert s.model_dir == "/models/run-1"
    assert s.sources["model_dir"] == "flag --model-dir"
    # a few concrete documented defaults
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert s.smooth_window == 3
    assert s.reject_threshold is FROM_POLICY
    assert s.http_port == 8080
    assert s.create_topics is True
    assert s.group_instance_id is None
    with pytest.raises(AttributeError):
        s.no_such_key  # noqa: B018


def test_flags_that_are_none_are_ignored() -> None:
    s = load_settings(None, env={"TASKCLF_SMOOTH_WINDOW": "7"}, flags={**MODEL, "smooth_window": None})
    assert s.smooth_window == 7
    assert s.sources["smooth_window"] == "env TASKCLF_SMOOTH_WINDOW"


# --------------------------------------------------------------------------- precedence


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    cfg = write_toml(
        tmp_path,
        """
[kafka]
bootstrap_servers = "file:9092"
input_topic = "file-in"
output_topic = "file-out"

[processing]
max_batch_records = 11
""",
    )
    env = {
        "TASKCLF_BOOTSTRAP_SERVERS": "env:9092",
        "TASKCLF_INPUT_TOPIC": "env-in",
        "TASKCLF_MAX_BATCH_RECORDS": "22",
    }
    flags = {**MODEL, "bootstrap_servers": "flag:9092", "max_batch_records": 33}
    s = load_settings(cfg, env=env, flags=flags)

    # set in all three -> flag
    assert s.bootstrap_servers == "flag:9092"
    assert s.sources["bootstrap_servers"] == "flag --bootstrap-servers"
    assert s.max_batch_records == 33
    assert s.sources["max_batch_records"] == "flag --max-batch-records"
    # file + env -> env
    assert s.input_topic == "env-in"
    assert s.sources["input_topic"] == "env TASKCLF_INPUT_TOPIC"
    # file only -> file
    assert s.output_topic == "file-out"
    assert s.sources["output_topic"] == str(cfg)
    # nowhere -> default
    assert s.dlq_topic == "taskclf.features.dlq"
    assert s.sources["dlq_topic"] == "default"

    # drop the flag: env wins; drop env too: the file wins
    s2 = load_settings(cfg, env=env, flags=MODEL)
    assert s2.bootstrap_servers == "env:9092" and s2.sources["bootstrap_servers"] == "env TASKCLF_BOOTSTRAP_SERVERS"
    assert s2.max_batch_records == 22
    s3 = load_settings(cfg, env={}, flags=MODEL)
    assert s3.bootstrap_servers == "file:9092" and s3.sources["bootstrap_servers"] == str(cfg)
    assert s3.max_batch_records == 11


def test_model_from_env_or_file_satisfies_require_model(tmp_path: Path) -> None:
    s = load_settings(None, env={"TASKCLF_MODEL_DIR": "/env/model"}, flags={})
    assert s.model_dir == "/env/model" and s.sources["model_dir"] == "env TASKCLF_MODEL_DIR"
    cfg = write_toml(tmp_path, '[model]\npolicy = "/x/models/inference_policy.json"\n')
    s = load_settings(cfg, env={})
    assert s.policy == "/x/models/inference_policy.json" and s.sources["policy"] == str(cfg)
    assert s.model_dir is None


# --------------------------------------------------------------------------- env conversion


@pytest.mark.parametrize(
    ("key", "raw", "want"),
    [
        ("topic_partitions", "12", 12),
        ("http_port", "0", 0),
        ("idle_gap_seconds", "120.5", 120.5),
        ("max_invalid_ratio", "1", 1.0),
        ("create_topics", "true", True),
        ("create_topics", "TRUE", True),
        ("create_topics", "0", False),
        ("create_topics", "no", False),
        ("reject_threshold", "none", None),
        ("reject_threshold", "None", None),
        ("reject_threshold", "policy", FROM_POLICY),
        ("reject_threshold", "0.6", 0.6),
        ("reject_threshold", "0", 0.0),
        ("group_instance_id", "", None),
        ("group_instance_id", "pod-0", "pod-0"),
        ("log_format", "console", "console"),
    ],
)
def test_env_strings_are_converted(key: str, raw: str, want: object) -> None:
    env_name = ENV_PREFIX + key.upper()
    s = load_settings(None, env={env_name: raw}, flags=MODEL)
    got = getattr(s, key)
    assert got == want and type(got) is type(want), (key, raw, got)
    assert s.sources[key] == f"env {env_name}"


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("topic_partitions", "four"),
        ("topic_partitions", "2.5"),
        ("create_topics", "maybe"),
        ("idle_gap_seconds", "nan"),
        ("reject_threshold", "high"),
        ("reject_threshold", "1.01"),
        ("auto_offset_reset", "newest"),
    ],
)
def test_bad_env_values_name_the_env_var(key: str, raw: str) -> None:
    env_name = ENV_PREFIX + key.upper()
    with pytest.raises(ConfigError) as ei:
        load_settings(None, env={env_name: raw}, flags=MODEL)
    assert_config_error(ei.value, key, f"env {env_name}")


# --------------------------------------------------------------------------- file errors


def test_unknown_key_in_file(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path, '[kafka]\nbootstrap_server = "broker:9092"\n')
    with pytest.raises(ConfigError) as ei:
        load_settings(cfg, env={}, flags=MODEL)
    msg = assert_config_error(ei.value, "kafka.bootstrap_server", str(cfg))
    assert "unknown key" in msg


def test_wrong_type_in_file(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path, '[processing]\nmax_batch_records = "many"\n')
    with pytest.raises(ConfigError) as ei:
        load_settings(cfg, env={}, flags=MODEL)
    msg = assert_config_error(ei.value, "max_batch_records", str(cfg))
    assert "'many'" in msg and "int" in msg


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("kafka", "topic_partitions", "0"),
        ("model", "reject_threshold", "1.5"),
        ("http", "http_port", "70000"),
        ("http", "http_port", "-1"),
        ("processing", "max_invalid_ratio", "1.5"),
        ("model", "smooth_window", "0"),
    ],
)
def test_out_of_range_in_file(tmp_path: Path, section: str, key: str, value: str) -> None:
    cfg = write_toml(tmp_path, f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as ei:
        load_settings(cfg, env={}, flags=MODEL)
    msg = assert_config_error(ei.value, key, str(cfg))
    assert value.lstrip("-") in msg


def test_bad_choice_in_file(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path, '[log]\nlog_format = "xml"\n')
    with pytest.raises(ConfigError) as ei:
        load_settings(cfg, env={}, flags=MODEL)
    msg = assert_config_error(ei.value, "log_format", str(cfg))
    assert "'xml'" in msg and "json" in msg and "console" in msg


def test_invalid_toml_syntax(tmp_path: Path) -> None:
    cfg = write_toml(tmp_path, '[kafka\nbootstrap_servers = "x"\n')
    with pytest.raises(ConfigError) as ei:
        load_settings(cfg, env={}, flags=MODEL)
    msg = assert_config_error(ei.value, "--config", None)
    assert str(cfg) in msg and "not valid TOML" in msg


def test_missing_file(tmp_path: Path) -> None:
    cfg = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as ei:
        load_settings(cfg, env={}, flags=MODEL)
    msg = assert_config_error(ei.value, "--config", None)
    assert str(cfg) in msg and "does not exist" in msg


def test_no_model_configured() -> None:
    with pytest.raises(ConfigError) as ei:
        load_settings(None, env={}, flags={})
    msg = assert_config_error(ei.value, "model_dir", "all sources")
    assert "no model configured" in msg
    assert "TASKCLF_MODEL_DIR" in msg and "--model-dir" in msg
    # produce does not need a model
    s = load_settings(None, env={}, flags={}, require_model=False)
    assert s.model_dir is None and s.policy is None


def test_unknown_flag_key() -> None:
    with pytest.raises(ConfigError) as ei:
        load_settings(None, env={}, flags={**MODEL, "bootstrap_server": "x"})
    assert_config_error(ei.value, "bootstrap_server", None)


def test_bad_flag_value_names_the_flag() -> None:
    with pytest.raises(ConfigError) as ei:
        load_settings(None, env={}, flags={**MODEL, "reject_threshold": "2"})
    assert_config_error(ei.value, "reject_threshold", "flag --reject-threshold")


# --------------------------------------------------------------------------- secrets


def test_secrets_masked() -> None:
    env = {"TASKCLF_SASL_PASSWORD": "hunter2", "TASKCLF_SASL_USERNAME": "alice", "TASKCLF_SSL_PASSWORD": "s3cr3t-key"}
    s = load_settings(None, env=env, flags=MODEL)
    assert s.sasl_password == "hunter2"  # the real value is still usable
    m = s.masked()
    assert m["sasl_password"] == "***"
    assert m["ssl_password"] == "***"
    assert m["sasl_username"] == "alice"
    assert "hunter2" not in str(m) and "s3cr3t-key" not in str(m)
    assert set(m) == set(KEYS)
    assert SECRET_KEYS <= set(KEYS)
    # unset secrets stay None (nothing to hide)
    assert load_settings(None, env={}, flags=MODEL).masked()["sasl_password"] is None


# --------------------------------------------------------------------------- documented file


def test_config_file_is_the_rendered_table() -> None:
    assert CONFIG_FILE.read_bytes() == render_default_toml().encode("utf-8"), (
        "config/taskclf-daemon.toml drifted from config.KEYS: regenerate it with render_default_toml()"
    )


def test_config_file_documents_every_key_and_loads() -> None:
    text = CONFIG_FILE.read_text(encoding="utf-8")
    for k in KEYS:
        assert re.search(rf"^#? ?{re.escape(k)} = ", text, re.M), k
        assert f"{ENV_PREFIX}{k.upper()}" in text, k
    s = load_settings(CONFIG_FILE, env={}, flags=MODEL)
    for k, spec in KEYS.items():
        if k != "model_dir":
            assert _loggable(getattr(s, k)) == spec.default, k
    # every non-optional key is set by the file itself (optional ones are commented out)
    file_keys = {k for k, src in s.sources.items() if src == str(CONFIG_FILE)}
    assert file_keys == {k for k, spec in KEYS.items() if spec.default is not None}


def test_readme_config_table_lists_every_key() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if re.match(r"^\|\s*key\s*\|\s*section\s*\|", ln))
    rows = []
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        rows.append(ln)
    documented = {m.group(1) for r in rows if (m := re.match(r"^\|\s*`([a-z0-9_]+)`\s*\|", r))}
    missing = [k for k in KEYS if k not in documented]
    assert not missing, f"keys missing from README.md's configuration table: {missing}"
    for r in rows:
        m = re.match(r"^\|\s*`([a-z0-9_]+)`\s*\|\s*(\w+)\s*\|", r)
        assert m, r
        assert m.group(1) in KEYS, f"README documents unknown key {m.group(1)}"
        assert m.group(2) == KEYS[m.group(1)].section, r


def test_settings_are_typed_immutable_and_match_the_key_table() -> None:
    """One attribute per KEYS entry, annotated with the key's type; assignment is refused."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(Settings)
    names = [f.name for f in dataclasses.fields(Settings) if f.name != "sources"]
    assert names == list(KEYS)
    want = {"str": str, "int": int, "float": float, "bool": bool, "optstr": str | None}
    for k, spec in KEYS.items():
        if spec.type in want:
            assert hints[k] == want[spec.type], k
    s = load_settings(None, env={}, flags=MODEL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.smooth_window = 5  # type: ignore[misc]
    assert s.replace(smooth_window=5).smooth_window == 5 and s.smooth_window == 3


def test_feedback_topic_is_on_by_default_and_empty_turns_learning_off() -> None:
    s = load_settings(None, env={}, flags={"model_dir": "m"})
    assert (s.feedback_topic, s.label_requests_topic) == ("taskclf.labels", "taskclf.label-requests")
    off = load_settings(None, env={"TASKCLF_FEEDBACK_TOPIC": "", "TASKCLF_LABEL_REQUESTS_TOPIC": ""}, flags={"model_dir": "m"})
    assert off.feedback_topic is None and off.label_requests_topic is None
    from taskclf_daemon.artifacts import LoadOptions
    from taskclf_daemon.shard_data import ShardLimits

    assert LoadOptions.from_settings(off).learner() is None and ShardLimits.from_settings(off).label_requests is False
    on = LoadOptions.from_settings(s).learner()
    assert on is not None and on.config.refit_every == 200 and on.config.label_wait_s == 3600.0 and on.gate.nll_margin == 0.01
    assert ShardLimits.from_settings(s).label_requests is True
