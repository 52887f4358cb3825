"""Daemon configuration: one table of keys, four sources.

Precedence: **command-line flag > environment variable > TOML file > default**.

* TOML: keys grouped in sections (``[kafka]``, ``[model]``, ``[processing]``, ``[http]``,
  ``[log]``); the section is only for reading -- every key name is unique.
* Environment: ``TASKCLF_<KEY>`` in upper case, e.g. ``TASKCLF_BOOTSTRAP_SERVERS``.
* An unknown key, a wrong type or an out-of-range value fails fast with a
  :class:`~taskclf_daemon.errors.ConfigError` naming the key, where it came from and the fix.

``config/taskclf-daemon.toml`` documents every key; :data:`KEYS` is the single source of truth and
a test checks that the file and this table agree.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskclf_daemon.errors import ConfigError
from taskclf_daemon.pipeline.policy import FROM_POLICY, FromPolicy
from taskclf_daemon.secret_files import resolve_secret_files

ENV_PREFIX = "TASKCLF_"
SECRET_KEYS = frozenset({"sasl_password", "ssl_password", "http_auth_token"})


@dataclass(frozen=True)
class Key:
    section: str
    type: str  # str | int | float | bool | threshold | optstr
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None  # returns a problem or None
    choices: tuple[str, ...] | None = None


def _min(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"must be >= {lo}"


def _range(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be in [{lo}, {hi}]"


def _port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "must be a TCP port in [0, 65535] (0 = disabled)"


KEYS: dict[str, Key] = {
    # --- kafka
    "bootstrap_servers": Key("kafka", "str", "127.0.0.1:9092", "comma-separated host:port list of the Kafka brokers"),
    "input_topic": Key("kafka", "str", "taskclf.features", "topic of FeatureRow windows (key = user_id)"),
    "output_topic": Key("kafka", "str", "taskclf.predictions", "topic of WindowPrediction records (key = user_id)"),
    "dlq_topic": Key("kafka", "str", "taskclf.features.dlq", "dead-letter topic for refused records"),
    "feedback_topic": Key("kafka", "optstr", "taskclf.labels", "topic of taskclf LabelSpan records (key = user_id), the learning loop's input; co-partitioned with input_topic (same partition count, checked at start; the group uses the range assignor). Empty = off: no learning"),
    "label_requests_topic": Key("kafka", "optstr", "taskclf.label-requests", "topic of taskclf LabelRequest records the daemon writes for windows worth a label (confidence < 0.55, at most 20 per user per UTC day); empty = none. Only with feedback_topic"),
    "group_id": Key("kafka", "str", "taskclf-daemon", "consumer group id (instances sharing it split the partitions)"),
    "group_instance_id": Key("kafka", "optstr", None, "static membership id (avoids rebalances on rolling restarts); empty = dynamic"),
    "client_id": Key("kafka", "str", "taskclf-daemon", "Kafka client id"),
    "auto_offset_reset": Key("kafka", "str", "earliest", "where a new group starts reading", choices=("earliest", "latest")),
    "security_protocol": Key("kafka", "str", "PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")),
    "sasl_mechanism": Key("kafka", "str", "PLAIN", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")),
    "sasl_username": Key("kafka", "optstr", None, "SASL user name"),
    "sasl_password": Key("kafka", "optstr", None, "SASL password (masked in logs)"),
    "ssl_cafile": Key("kafka", "optstr", None, "CA bundle for SSL"),
    "ssl_certfile": Key("kafka", "optstr", None, "client certificate for SSL"),
    "ssl_keyfile": Key("kafka", "optstr", None, "client key for SSL"),
    "ssl_password": Key("kafka", "optstr", None, "password of the client key (masked in logs)"),
    "sasl_password_file": Key("kafka", "optstr", None, "file holding sasl_password, e.g. a mounted Kubernetes secret (read at start; one trailing newline ignored; excludes sasl_password)"),
    "ssl_password_file": Key("kafka", "optstr", None, "file holding ssl_password, e.g. a mounted Kubernetes secret (read at start; one trailing newline ignored; excludes ssl_password)"),
    "create_topics": Key("kafka", "bool", True, "create missing input/output/DLQ topics at start"),
    "topic_partitions": Key("kafka", "int", 4, "partitions of topics the daemon creates", _min(1)),
    "topic_replication": Key("kafka", "int", 1, "replication factor of topics the daemon creates", _min(1)),
    "fetch_max_wait_ms": Key("kafka", "int", 50, "longest a fetch waits for data (lower = less latency)", _min(0)),
    "session_timeout_ms": Key("kafka", "int", 30000, "consumer group session timeout", _min(1000)),
    "max_poll_interval_ms": Key("kafka", "int", 300000, "max time between polls before the group evicts us", _min(1000)),
    "linger_ms": Key("kafka", "int", 5, "producer linger (batching of outputs)", _min(0)),
    "request_timeout_ms": Key("kafka", "int", 40000, "producer/consumer request timeout", _min(1000)),
    "changelog_topic": Key("kafka", "optstr", None, "compacted topic holding per-user state (default: <input_topic>.<group_id>.state)"),
    # --- model
    "model_dir": Key("model", "optstr", None, "taskclf model bundle directory (models/<run_id>); or use policy"),
    "calibrator_store": Key("model", "optstr", None, "taskclf CalibratorStore directory (default: the policy's, else none)"),
    "policy": Key("model", "optstr", None, "taskclf inference_policy.json"),
    "taxonomy": Key("model", "optstr", None, "taskclf taxonomy YAML"),
    "model_backend": Key("model", "str", "auto", "prediction backend, all bit-identical: auto (LightGBM at once, the trees compiled in the background, cached, and swapped in when ready), lightgbm (taskclf's own only), lleaves (compiled; a cold cache blocks the start 30-100 s)", choices=("lightgbm", "lleaves", "auto")),
    "model_cache_dir": Key("model", "optstr", None, "directory of compiled models (default $XDG_CACHE_HOME/taskclf-daemon/lleaves, else ~/.cache/...); must belong to this user and be writable by nobody else"),
    "smooth_window": Key("model", "int", 3, "rolling-majority smoothing window (taskclf default 3)", _min(1)),
    "reject_threshold": Key("model", "threshold", "policy", "global reject threshold in [0,1], 'none' to disable, 'policy' = the policy's (else 0.55)"),
    "idle_gap_seconds": Key("model", "float", 300.0, "gap that starts a new session (taskclf: 300)", _min(0.0)),
    "reload_interval_s": Key("model", "float", 60.0, "how often the policy file (else taskclf's models/inference_policy.json, else models/active.json beside model_dir) is checked for a change that hot-reloads the artifacts, keeping per-user state (taskclf: 60; 0 = no watching, SIGHUP still reloads)", _min(0.0)),
    # --- state
    "state_ttl_seconds": Key("state", "float", 604800.0, "a window more than this after the user's previous one (event time, that user's own windows only) starts from empty state (0 = never)", _min(0.0)),
    "state_retention_s": Key("state", "float", 2592000.0, "a user with no window for this long (processing time) is forgotten: dropped from memory and tombstoned in the changelog (0 = never)", _min(0.0)),
    "max_state_users": Key("state", "int", 500000, "most users in memory per pipeline worker; beyond, the least recently seen are forgotten at the next checkpoint (0 = no limit)", _min(0)),
    "event_time_policy": Key("state", "str", "skip", "duplicate/late windows: skip (not applied, counted) or process (applied, as taskclf)", choices=("skip", "process")),
    "restore_timeout_s": Key("state", "float", 120.0, "bound on restoring one assignment's state from the changelog", _min(1.0)),
    # --- processing
    "pipeline_workers": Key("processing", "int", 2, "worker processes that decode, run the pipeline and hold the state of their partitions (partition % N); the daemon process keeps the Kafka I/O. Match the cores the daemon may use; 0 = one thread of the daemon process", _min(0)),
    "max_batch_records": Key("processing", "int", 1000, "most records per micro-batch (one model call)", _min(1)),
    "max_in_flight_records": Key("processing", "int", 20000, "outputs awaiting broker acks before partitions are paused", _min(1)),
    "commit_interval_ms": Key("processing", "int", 500, "how often acknowledged offsets are committed", _min(10)),
    "max_record_bytes": Key("processing", "int", 1048576, "larger input records are dead-lettered as oversize", _min(64)),
    "max_produce_bytes": Key("processing", "int", 1000000, "largest record the daemon produces (keep below the broker's message.max.bytes): larger predictions are dead-lettered (output_too_large), dead letters are truncated to fit", _min(4096)),
    "max_event_ahead_s": Key("processing", "float", 86400.0, "windows whose bucket_start_ts is more than this after their record's Kafka timestamp are dead-lettered as event_time_ahead (0 = no check)", _min(0.0)),
    "max_invalid_ratio": Key("processing", "float", 0.5, "stop with an error when the share of invalid records in the last invalid_window records exceeds this (1.0 = never)", _range(0.0, 1.0)),
    "invalid_window": Key("processing", "int", 1000, "records over which max_invalid_ratio is measured", _min(10)),
    "shutdown_timeout_s": Key("processing", "float", 30.0, "bound on draining at SIGTERM", _min(0.1)),
    # --- drift
    "drift_window_size": Key("drift", "int", 10000, "windows in the sliding window drift is measured over (split evenly across the pipeline workers), against the bundle's drift_reference.json; 0 = no drift metrics", _min(0)),
    "drift_refresh_s": Key("drift", "float", 15.0, "how often the drift gauges (taskclf_feature_psi, class shares, reject rate, entropy) are recomputed from the window", _min(1.0)),
    # --- learning (only with feedback_topic)
    "label_wait_s": Key("learning", "float", 3600.0, "how long (event time, the user's own windows) a window waits for a label span before it is finalised; a span arriving later does not label it", _min(0.0)),
    "refit_every": Key("learning", "int", 200, "refit a user's personal candidates after this many new labelled windows (once eligible: >= 200 labelled windows, >= 3 days, >= 3 labels)", _min(1)),
    "refit_days": Key("learning", "float", 7.0, "... or after this much event time since the last refit (taskclf's 7-day cadence)", _min(0.0)),
    "adopt_lag_windows": Key("learning", "int", 10, "a refit runs in the background from the user's window that made it due and is in force from the user's window this many windows later (a fixed point of the stream: outputs never depend on how long a fit took; if it still runs then, that window waits)", _min(1)),
    "evidence_cap": Key("learning", "int", 2000, "labelled windows kept per user (the newest); the evidence a refit uses", _min(10)),
    "personal_nll_margin": Key("learning", "float", 0.01, "held-out NLL (nats) a personal candidate must gain over the model in force to be adopted (and macro-F1 may fall at most taskclf's 0.02)", _min(0.0)),
    # --- http
    "http_host": Key("http", "str", "0.0.0.0", "address of the HTTP server (/healthz /readyz /metrics, the JSON API of docs/openapi.json)"),
    "http_port": Key("http", "int", 8080, "port of the HTTP server (0 = disabled)", _port),
    "health_poll_timeout_s": Key("http", "float", 30.0, "/healthz fails when the poll loop has not turned for this long", _min(1.0)),
    "http_user_routes": Key("http", "bool", True, "serve GET /v1/users/{user_id} and /v1/users/{user_id}/prediction (per-user data: last prediction, label mix); false = 404 and no per-user memory kept for them"),
    "http_auth_token": Key("http", "optstr", None, "bearer token the /v1/users routes require (Authorization: Bearer <token>); unset = no token (masked in logs). /metrics, the probes, /openapi.json and /v1/model stay open"),
    "http_auth_token_file": Key("http", "optstr", None, "file holding http_auth_token, e.g. a mounted Kubernetes secret (read at start; one trailing newline ignored; excludes http_auth_token)"),
    # --- log
    "log_level": Key("log", "str", "info", "debug, info, warning or error", choices=("debug", "info", "warning", "error")),
    "log_format": Key("log", "str", "json", "json or console", choices=("json", "console")),
}


def _convert(key: str, spec: Key, raw: Any, source: str) -> Any:
    t = spec.type
    try:
        if t == "threshold":
            if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("none", "off", "null")):
                v: Any = None
            elif isinstance(raw, FromPolicy) or (isinstance(raw, str) and raw.strip().lower() == "policy"):
                v = FROM_POLICY
            else:
                if isinstance(raw, bool):
                    raise ValueError
                v = float(raw)
                if not 0.0 <= v <= 1.0:
                    raise ConfigError(key, f"{v} is outside [0, 1]", "use a probability such as 0.55, 'none' or 'policy'", source)
        elif t == "bool":
            if isinstance(raw, bool):
                v = raw
            elif isinstance(raw, str) and raw.strip().lower() in ("1", "true", "yes", "on"):
                v = True
            elif isinstance(raw, str) and raw.strip().lower() in ("0", "false", "no", "off"):
                v = False
            else:
                raise ValueError
        elif t == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            v = int(raw)
        elif t == "float":
            if isinstance(raw, bool):
                raise ValueError
            v = float(raw)
            if v != v:
                raise ValueError
        elif t == "optstr":
            v = None if raw is None or (isinstance(raw, str) and raw == "") else raw
            if v is not None and not isinstance(v, str):
                raise ValueError
        else:
            if not isinstance(raw, str) or not raw:
                raise ValueError
            v = raw
    except ConfigError:
        raise
    except (TypeError, ValueError):
        want = {"threshold": "a number in [0,1], 'none' or 'policy'", "optstr": "a string", "str": "a non-empty string"}.get(t, f"a {t}")
        shown = f"a {type(raw).__name__}" if key in SECRET_KEYS else repr(raw)  # never echo a secret
        raise ConfigError(key, f"{shown} is not {want}", f"set {key} to {want}", source) from None
    if spec.choices and v not in spec.choices:
        raise ConfigError(key, f"{v!r} is not one of {', '.join(spec.choices)}", f"use one of {', '.join(spec.choices)}", source)
    if spec.check is not None and v is not None and not isinstance(v, str):
        problem = spec.check(v)
        if problem:
            wanted = "is" + problem[len("must be"):] if problem.startswith("must be") else problem
            raise ConfigError(key, f"{v!r} {problem}", f"set {key} to a value that {wanted}", source)
    return v


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective configuration, typed and immutable: ``settings.bootstrap_servers``.

    One attribute per key of :data:`KEYS` (which holds each key's section, default, help and
    checks; a test keeps the two in step), plus ``sources``: where each value came from.
    Build it with :func:`load_settings`; derive a changed copy with :meth:`replace`.
    """

    # [kafka]
    bootstrap_servers: str
    input_topic: str
    output_topic: str
    dlq_topic: str
    feedback_topic: str | None
    label_requests_topic: str | None
    group_id: str
    group_instance_id: str | None
    client_id: str
    auto_offset_reset: str
    security_protocol: str
    sasl_mechanism: str
    sasl_username: str | None
    sasl_password: str | None
    ssl_cafile: str | None
    ssl_certfile: str | None
    ssl_keyfile: str | None
    ssl_password: str | None
    sasl_password_file: str | None
    ssl_password_file: str | None
    create_topics: bool
    topic_partitions: int
    topic_replication: int
    fetch_max_wait_ms: int
    session_timeout_ms: int
    max_poll_interval_ms: int
    linger_ms: int
    request_timeout_ms: int
    changelog_topic: str | None
    # [model]
    model_dir: str | None
    calibrator_store: str | None
    policy: str | None
    taxonomy: str | None
    model_backend: str
    model_cache_dir: str | None
    smooth_window: int
    reject_threshold: float | None | FromPolicy
    idle_gap_seconds: float
    reload_interval_s: float
    # [state]
    state_ttl_seconds: float
    state_retention_s: float
    max_state_users: int
    event_time_policy: str
    restore_timeout_s: float
    # [processing]
    pipeline_workers: int
    max_batch_records: int
    max_in_flight_records: int
    commit_interval_ms: int
    max_record_bytes: int
    max_produce_bytes: int
    max_event_ahead_s: float
    max_invalid_ratio: float
    invalid_window: int
    shutdown_timeout_s: float
    # [drift]
    drift_window_size: int
    drift_refresh_s: float
    # [learning]
    label_wait_s: float
    refit_every: int
    refit_days: float
    adopt_lag_windows: int
    evidence_cap: int
    personal_nll_margin: float
    # [http]
    http_host: str
    http_port: int
    health_poll_timeout_s: float
    http_user_routes: bool
    http_auth_token: str | None
    http_auth_token_file: str | None
    # [log]
    log_level: str
    log_format: str
    #: key -> "default", "<file>", "env TASKCLF_<KEY>", "flag --<key>" or "override"
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def values(self) -> dict[str, Any]:
        """Every key's value (no sources)."""
        return {k: getattr(self, k) for k in KEYS}

    def masked(self) -> dict[str, Any]:
        """Values safe to log: secrets replaced by ``***``."""
        return {k: ("***" if k in SECRET_KEYS and v else _loggable(v)) for k, v in self.values().items()}

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (validated like any source; their source is ``override``)."""
        vals = self.values()
        src = dict(self.sources)
        for k, v in changes.items():
            if k not in KEYS:
                raise ConfigError(k, "unknown key", "see config/taskclf-daemon.toml")
            vals[k] = _convert(k, KEYS[k], v, "override")
            src[k] = "override"
        return Settings(**vals, sources=src)


def _loggable(v: Any) -> Any:
    return v.value if isinstance(v, FromPolicy) else v


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None, *, require_model: bool = True) -> Settings:
    """Merge default < file < env < flags and validate every value."""
    env = os.environ if env is None else env
    raw: dict[str, tuple[Any, str]] = {k: (spec.default, "default") for k, spec in KEYS.items()}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("--config", f"file {p} does not exist", "pass an existing TOML file (see config/taskclf-daemon.toml)") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError("--config", f"{p} is not valid TOML: {exc}", "fix the syntax (see config/taskclf-daemon.toml)") from None
        for section, body in data.items():
            items = body.items() if isinstance(body, dict) else [(section, body)]
            for k, v in items:
                if k not in KEYS:
                    raise ConfigError(f"{section}.{k}" if isinstance(body, dict) else k, "unknown key", "remove it or use one of the keys documented in config/taskclf-daemon.toml", str(p))
                raw[k] = (v, str(p))
    for k in KEYS:
        ev = env.get(ENV_PREFIX + k.upper())
        if ev is not None:
            raw[k] = (ev, f"env {ENV_PREFIX}{k.upper()}")
    for k, v in (flags or {}).items():
        if v is None:
            continue
        if k not in KEYS:
            raise ConfigError(k, "unknown key", "see taskclf-daemon run --help")
        raw[k] = (v, "flag --" + k.replace("_", "-"))
    values = {k: _convert(k, KEYS[k], v, src) for k, (v, src) in raw.items()}
    sources = {k: src for k, (_, src) in raw.items()}
    resolve_secret_files(values, sources)  # sasl_password_file -> sasl_password, ...
    if require_model and values["model_dir"] is None and values["policy"] is None:
        raise ConfigError("model_dir", "no model configured", "set model_dir (or policy) in the config file, TASKCLF_MODEL_DIR, or --model-dir", "all sources")
    return Settings(**values, sources=sources)


def render_default_toml() -> str:
    """The documented default config file (also written to config/taskclf-daemon.toml)."""
    lines = [
        "# taskclf-daemon configuration. Every key, its default and its meaning.",
        "# Precedence: command-line flag > environment variable TASKCLF_<KEY> > this file > default.",
        "# Unset optional keys are commented out.",
        "",
    ]
    section = None
    for k, spec in KEYS.items():
        if spec.section != section:
            section = spec.section
            lines += ["", f"[{section}]"]
        lines.append(f"# {spec.help} (env {ENV_PREFIX}{k.upper()})")
        d = spec.default
        if d is None:
            lines.append(f'# {k} = ""')
        elif isinstance(d, bool):
            lines.append(f"{k} = {'true' if d else 'false'}")
        elif isinstance(d, (int, float)):
            lines.append(f"{k} = {d}")
        else:
            lines.append(f'{k} = "{d}"')
    return "\n".join(lines).lstrip("\n") + "\n"
