"""Static checks of ``deploy/`` (no network, no Docker, no cluster).

The deployment files repeat names defined by the code -- metric names and labels, config keys,
the HTTP port and paths, the shutdown budget -- so each test ties one of them back to its
source of truth: :class:`taskclf_daemon.metrics.Metrics`, :data:`taskclf_daemon.config.KEYS`,
:func:`taskclf_daemon.config.load_settings`.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from taskclf_daemon.config import ENV_PREFIX, KEYS, load_settings
from taskclf_daemon.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "taskclf-daemon.json"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
README = DEPLOY / "README.md"

# labels Prometheus (static configs, the Operator's ServiceMonitor) attaches to every series
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())


def load_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def k8s_objects() -> dict[str, dict[str, Any]]:
    """kind -> object, over every manifest in deploy/k8s (examples included)."""
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(K8S.glob("*.yaml")):
        for doc in load_docs(p):
            if isinstance(doc, dict) and "kind" in doc and doc.get("kind") != "Kustomization":
                assert doc["kind"] not in out, f"two {doc['kind']} objects ({p.name}); the tests expect one"
                out[doc["kind"]] = doc
    return out


def the_container(sts: dict[str, Any]) -> dict[str, Any]:
    containers = sts["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one daemon container per pod expected"
    return containers[0]


def configmap_toml(cm: dict[str, Any]) -> str:
    data = cm["data"]
    assert list(data) == ["taskclf-daemon.toml"], f"ConfigMap keys: {list(data)}"
    return data["taskclf-daemon.toml"]


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's env entries that have a literal value (valueFrom ones are skipped)."""
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


_INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


def compose_interpolate(value: str) -> str:
    """Docker Compose interpolation with every variable unset: ${V-d} / ${V:-d} -> d, ${V} -> ''."""
    return _INTERP.sub(lambda m: m.group(3) or "", value).replace("$$", "$")


def exported_series() -> dict[str, set[str]]:
    """Every sample name the daemon exposes -> its label names (labelled metrics touched once)."""
    m = Metrics()
    for obj in vars(m).values():
        if isinstance(obj, MetricWrapperBase) and obj._labelnames:
            obj.labels(*["x"] * len(obj._labelnames))
    series: dict[str, set[str]] = {}
    for fam in m.registry.collect():
        for s in fam.samples:
            series[s.name] = set(s.labels)
    assert len(series) > 20, "the metrics registry looks empty"
    return series


def family_names() -> set[str]:
    names = set()
    for fam in Metrics().registry.collect():
        names |= {fam.name, fam.name + "_total"}
    return names


METRIC_RE = re.compile(r"\btaskclf_[a-z0-9_]*[a-z0-9]")
SELECTOR_RE = re.compile(r"\b(taskclf_[a-z0-9_]*[a-z0-9])\s*\{([^}]*)\}")
MATCHER_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"")
BY_RE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def unknown_series(exprs: list[str], series: dict[str, set[str]]) -> set[str]:
    return {name for e in exprs for name in METRIC_RE.findall(e)} - set(series)


def bad_label_matchers(exprs: list[str], series: dict[str, set[str]]) -> list[str]:
    bad = []
    for e in exprs:
        for name, body in SELECTOR_RE.findall(e):
            for label, _op, _val in MATCHER_RE.findall(body):
                if name in series and label not in series[name] | TARGET_LABELS:
                    bad.append(f"{name}{{{label}}} in {e!r}")
    return bad


def rule_exprs() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_panels(d: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in d["panels"]:
        yield p
        yield from p.get("panels", [])


def dashboard_exprs(d: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard_panels(d) for t in p.get("targets", []) if "expr" in t]
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        if v.get("type") == "query":
            exprs.append(q["query"] if isinstance(q, dict) else q)
    return exprs


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def mount_secrets(toml: str, tmp_path: Path) -> str:
    """``toml`` with the Secret volume's mount path moved to a copy of secret.example.yaml's keys
    (the files the kubelet would mount), so that ``*_file`` settings can be read offline."""
    objs = k8s_objects()
    mounted = tmp_path / "secret-volume"
    pod = objs["StatefulSet"]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == objs["Secret"]["metadata"]["name"]]
    data = objs["Secret"]["stringData"]
    items = volume["secret"].get("items") or [{"key": k, "path": k} for k in data]
    for item in items:
        f = mounted / item["path"]
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(data[item["key"]])
    (path,) = [m["mountPath"] for m in the_container(objs["StatefulSet"])["volumeMounts"] if m["name"] == volume["name"]]
    return toml.replace(path.rstrip("/") + "/", f"{mounted}/")


def settings_for_k8s(tmp_path: Path) -> Any:
    objs = k8s_objects()
    cfg = tmp_path / "taskclf-daemon.toml"
    cfg.write_text(mount_secrets(configmap_toml(objs["ConfigMap"]), tmp_path), encoding="utf-8")
    return load_settings(cfg, env=literal_env(the_container(objs["StatefulSet"])))


# ----------------------------------------------------------------------------------------------
# every file parses
# ----------------------------------------------------------------------------------------------
def test_deploy_tree_has_the_expected_files() -> None:
    expected = [
        "Dockerfile", "Dockerfile.dockerignore", "README.md", "docker-compose.yml", "config/taskclf-daemon.toml",
        "prometheus/rules.yml", "prometheus/rules.test.yml", "prometheus/prometheus.yml", "grafana/taskclf-daemon.json",
        "k8s/namespace.yaml", "k8s/configmap.yaml", "k8s/secret.example.yaml", "k8s/statefulset.yaml", "k8s/service.yaml",
        "k8s/pdb.yaml", "k8s/servicemonitor.yaml", "k8s/prometheusrule.yaml", "k8s/kustomization.yaml",
    ]
    missing = [f for f in expected if not (DEPLOY / f).is_file()]
    assert not missing, f"missing under deploy/: {missing}"
    assert list((DEPLOY / "grafana/provisioning/datasources").glob("*.yml"))
    assert list((DEPLOY / "grafana/provisioning/dashboards").glob("*.yml"))


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = load_docs(path)  # raises on a syntax error, in any document of a multi-document file
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document should be a mapping"


def test_yaml_files_are_found() -> None:
    assert len(yaml_files()) >= 15


def test_container_config_loads() -> None:
    s = load_settings(DEPLOY / "config/taskclf-daemon.toml", env={})
    assert s.http_port == 8080 and s.http_host == "0.0.0.0"
    assert s.policy and s.policy.startswith("/models/")


# ----------------------------------------------------------------------------------------------
# metric names and labels
# ----------------------------------------------------------------------------------------------
def test_metric_checker_flags_unknown_names_and_labels() -> None:
    series = exported_series()
    assert unknown_series(["rate(taskclf_records_consumed_total[5m])"], series) == set()
    assert unknown_series(["rate(taskclf_records_consumed[5m])", "taskclf_ready_total"], series) == {
        "taskclf_records_consumed", "taskclf_ready_total"}
    assert bad_label_matchers(['taskclf_dlq_records_total{reason="x", job="j"}'], series) == []
    assert bad_label_matchers(['taskclf_dlq_records_total{outcome="x"}'], series)


def test_rules_use_only_exported_metrics() -> None:
    series = exported_series()
    exprs = rule_exprs()
    referenced = {n for e in exprs for n in METRIC_RE.findall(e)}
    assert len(referenced) >= 10, f"too few metrics found in rules.yml: {referenced}"
    assert unknown_series(exprs, series) == set()
    assert bad_label_matchers(exprs, series) == []


def test_rules_group_by_existing_labels() -> None:
    series = exported_series()
    all_labels = set().union(*series.values()) | TARGET_LABELS
    for e in rule_exprs() + dashboard_exprs(dashboard()):
        for group in BY_RE.findall(e):
            for label in (x.strip() for x in group.split(",") if x.strip()):
                assert label in all_labels, f"'{label}' in {e!r} is no label of any taskclf metric"


def test_rules_reference_only_defined_recording_rules() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    defined = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    assert defined
    used = {n for e in rule_exprs() for n in re.findall(r"\btaskclf:[a-z0-9_:]+", e)}
    assert used <= defined, f"undefined recording rules: {used - defined}"


def test_rule_label_values_exist_in_the_daemon() -> None:
    """outcome="emitted", result="failed", kind="assigned"...: values the code really sets."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "daemon/taskclf_daemon").rglob("*.py"))
    for e in rule_exprs():
        for _name, body in SELECTOR_RE.findall(e):
            for label, op, val in MATCHER_RE.findall(body):
                if op == "=" and label not in TARGET_LABELS:
                    assert f'"{val}"' in source, f'{label}="{val}" in {e!r} is never set by the daemon'


def test_rule_texts_name_existing_metrics() -> None:
    known = set(exported_series()) | family_names()
    for a in alerts():
        text = " ".join(str(v) for v in a.get("annotations", {}).values())
        unknown = set(METRIC_RE.findall(text)) - known
        assert not unknown, f"{a['alert']}: annotations mention unknown metrics {unknown}"


def test_dashboard_uses_only_exported_metrics() -> None:
    series = exported_series()
    d = dashboard()
    exprs = dashboard_exprs(d)
    assert len(exprs) >= 20
    assert unknown_series(exprs, series) == set()
    assert bad_label_matchers(exprs, series) == []
    known = set(series) | family_names()
    for p in dashboard_panels(d):
        unknown = set(METRIC_RE.findall(p.get("description", "") + " " + p.get("title", ""))) - known
        assert not unknown, f"panel {p['title']!r} mentions unknown metrics {unknown}"


def test_dashboard_covers_the_daemon_metrics() -> None:
    used = {n for e in dashboard_exprs(dashboard()) for n in METRIC_RE.findall(e)}
    for needed in (
        "taskclf_records_consumed_total", "taskclf_records_processed_total", "taskclf_dlq_records_total",
        "taskclf_consumer_lag_records", "taskclf_end_to_end_latency_seconds_bucket", "taskclf_stage_duration_seconds_bucket",
        "taskclf_predict_batch_size_records_bucket", "taskclf_predictions_total", "taskclf_rejected_total",
        "taskclf_prediction_confidence_bucket", "taskclf_state_users", "taskclf_rebalances_total", "taskclf_ready",
        "taskclf_in_flight_records", "taskclf_offset_commits_total",
        # drift and reloads
        "taskclf_feature_psi", "taskclf_class_share", "taskclf_reference_class_share", "taskclf_reject_rate",
        "taskclf_reference_reject_rate", "taskclf_mean_entropy", "taskclf_reference_mean_entropy", "taskclf_feature_null_rate",
        "taskclf_feature_nulls_total", "taskclf_unseen_categories_total", "taskclf_drift_window_windows",
        "taskclf_model_reloads_total", "taskclf_model_info",
    ):
        assert needed in used, f"no dashboard panel shows {needed}"


# ----------------------------------------------------------------------------------------------
# Grafana
# ----------------------------------------------------------------------------------------------
def test_dashboard_structure() -> None:
    d = dashboard()
    assert d["uid"] and d["title"]
    assert 36 <= d["schemaVersion"] <= 41
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard_panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in dashboard_panels(d):
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, f"panel {p['title']!r} is wider than the grid"
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
    heatmaps = [p for p in dashboard_panels(d) if p["type"] == "heatmap"]
    assert any("taskclf_prediction_confidence_bucket" in t["expr"] and t.get("format") == "heatmap"
               for p in heatmaps for t in p["targets"])
    stacked = [p for p in dashboard_panels(d) if "taskclf_predictions_total" in json.dumps(p.get("targets"))
               and p.get("fieldConfig", {}).get("defaults", {}).get("custom", {}).get("stacking", {}).get("mode") == "normal"]
    assert stacked, "the label mix should be a stacked panel"


def test_grafana_provisioning_matches_compose() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    graf = compose["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in graf["volumes"]}
    (ds,) = load_docs(next((DEPLOY / "grafana/provisioning/datasources").glob("*.yml")))[0]["datasources"]
    assert ds["type"] == "prometheus"
    prom_port = compose["services"]["prometheus"]["ports"][0].split(":")[-1]
    assert ds["url"] == f"http://prometheus:{prom_port}"
    prov = load_docs(next((DEPLOY / "grafana/provisioning/dashboards").glob("*.yml")))[0]["providers"][0]
    dash_dir = prov["options"]["path"]
    dash_targets = [t for t, src in mounts.items() if src.endswith("taskclf-daemon.json")]
    assert dash_targets and all(t.startswith(dash_dir.rstrip("/") + "/") for t in dash_targets)
    for src in mounts.values():
        if src.startswith("."):
            assert (DEPLOY / src).exists(), f"grafana mounts missing {src}"


# ----------------------------------------------------------------------------------------------
# Prometheus rules: structure, README, Operator copy
# ----------------------------------------------------------------------------------------------
def test_alerts_are_complete() -> None:
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert len(names) >= 9
    for a in alerts():
        assert a["labels"]["severity"] in ("critical", "warning", "info"), a["alert"]
        for key in ("summary", "description", "runbook", "runbook_url"):
            assert a["annotations"].get(key), f"{a['alert']} lacks annotation {key}"
        assert "for" in a, f"{a['alert']} fires on a single evaluation"


def test_alert_topics_are_covered() -> None:
    text = RULES.read_text()
    exprs = " ".join(a["expr"] for a in alerts())
    for needle in (
        "taskclf_consumer_lag_records", "taskclf_records_consumed_total", "taskclf_dlq_records_total",
        "taskclf_rejected_total", "taskclf_end_to_end_latency_seconds_bucket", "taskclf_ready",
        "taskclf_offset_commits_total", "taskclf_rebalances_total", "taskclf_backpressure_pauses_total",
    ):
        assert needle in exprs or needle in text, f"no alert or recording rule uses {needle}"
    assert "histogram_quantile(0.99" in text


def test_drift_alerts_use_taskclfs_thresholds() -> None:
    """Spec 10: PSI > 0.2 warning and > 0.4 critical, reject rate +0.10 critical, entropy > 2x
    warning, class shift > 0.15 warning -- the same constants as the daemon's drift module."""
    from taskclf_daemon.pipeline import drift

    by_name = {a["alert"]: a for a in alerts()}
    expected = {
        "TaskclfFeatureDrift": ("warning", f"taskclf_feature_psi > {drift.PSI_THRESHOLD} <= {2 * drift.PSI_THRESHOLD}"),
        "TaskclfFeatureDriftCritical": ("critical", f"taskclf_feature_psi > {2 * drift.PSI_THRESHOLD}"),
        "TaskclfRejectRateIncrease": ("critical", f"taskclf_reject_rate - taskclf_reference_reject_rate >= {drift.REJECT_RATE_INCREASE_THRESHOLD:.2f}"),
        "TaskclfEntropySpike": ("warning", f"taskclf_mean_entropy > {drift.ENTROPY_SPIKE_MULTIPLIER:g} * taskclf_reference_mean_entropy"),
        "TaskclfClassShift": ("warning", f"abs(taskclf_class_share - taskclf_reference_class_share) > {drift.CLASS_SHIFT_THRESHOLD}"),
    }
    for name, (severity, condition) in expected.items():
        assert by_name[name]["labels"]["severity"] == severity, name
        assert condition in by_name[name]["expr"], f"{name}: {condition!r} not in {by_name[name]['expr']!r}"
    reload = by_name["TaskclfModelReloadFailed"]["expr"]
    assert 'taskclf_model_reloads_total{result=~"error|refused"}' in reload


def test_readme_documents_every_alert() -> None:
    readme = README.read_text(encoding="utf-8")
    headings = {re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-")) for h in re.findall(r"^#+ (.+)$", readme, re.M)}
    for a in alerts():
        assert f"| {a['alert']} |" in readme, f"{a['alert']} missing from the README's alert table"
        anchor = a["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in headings, f"{a['alert']}: README has no section #{anchor}"


def test_prometheusrule_equals_rules_yml() -> None:
    pr = k8s_objects()["PrometheusRule"]
    assert pr["apiVersion"] == "monitoring.coreos.com/v1"
    assert pr["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"], \
        "deploy/k8s/prometheusrule.yaml drifted from deploy/prometheus/rules.yml (see its header)"


def test_compose_prometheus_loads_the_rules_and_scrapes_the_daemon() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    prom = compose["services"]["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"]}
    cfg = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    for rf in cfg["rule_files"]:
        assert mounts.get(rf) == "./prometheus/rules.yml", f"rule file {rf} is not rules.yml in the container"
    for src in mounts.values():
        if src.startswith("."):
            assert (DEPLOY / src).exists(), f"prometheus mounts missing {src}"
    daemon_env = {k: compose_interpolate(str(v)) for k, v in compose["services"]["daemon"]["environment"].items()}
    port = load_settings(DEPLOY / "config/taskclf-daemon.toml", env=daemon_env).http_port
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert f"daemon:{port}" in jobs["taskclf-daemon"]["static_configs"][0]["targets"]
    # the job label the alerts select on
    assert 'job="taskclf-daemon"' in RULES.read_text()


# ----------------------------------------------------------------------------------------------
# environment variables and config
# ----------------------------------------------------------------------------------------------
ENV_FILES = [COMPOSE, DOCKERFILE, DEPLOY / "config/taskclf-daemon.toml", *sorted(K8S.glob("*.yaml"))]


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_taskclf_env_vars_are_config_keys(path: Path) -> None:
    names = set(re.findall(r"\bTASKCLF_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8")))
    unknown = {n for n in names if n[len(ENV_PREFIX):].lower() not in KEYS}
    assert not unknown, f"{path.name}: {sorted(unknown)} are not config keys (taskclf_daemon.config.KEYS)"


def test_env_var_check_catches_typos() -> None:
    assert "bootstrap_servers" in KEYS and "bootstrap_server" not in KEYS


def test_compose_daemon_env_loads() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    env = {k: compose_interpolate(str(v)) for k, v in compose["services"]["daemon"]["environment"].items()}
    assert all(k.startswith(ENV_PREFIX) for k in env)
    s = load_settings(DEPLOY / "config/taskclf-daemon.toml", env=env)
    assert s.bootstrap_servers == "kafka:19092"
    assert s.policy.startswith("/models/")
    assert s.group_instance_id is None, "a fixed static id breaks `--scale daemon=N`"


def test_configmap_toml_loads(tmp_path: Path) -> None:
    text = configmap_toml(k8s_objects()["ConfigMap"])
    data = tomllib.loads(text)
    assert {"kafka", "model", "http"} <= set(data)
    cfg = tmp_path / "taskclf-daemon.toml"
    cfg.write_text(mount_secrets(text, tmp_path), encoding="utf-8")
    s = load_settings(cfg, env={})
    assert s.bootstrap_servers and s.input_topic and s.output_topic and s.group_id
    for key in ("model_dir", "calibrator_store", "policy", "taxonomy"):
        if getattr(s, key) is not None:
            assert getattr(s, key).startswith("/models/"), f"{key} = {getattr(s, key)} is not under the /models mount"
    assert s.policy or s.model_dir
    assert not {"sasl_password", "ssl_password"} & set(data.get("kafka", {})), "secrets belong in the Secret, not the ConfigMap"
    assert s.group_instance_id is None, "the static id must come from the pod name, not the shared ConfigMap"


def test_statefulset_env_loads_with_the_configmap(tmp_path: Path) -> None:
    s = settings_for_k8s(tmp_path)
    assert s.http_port > 0
    # the Secret's files reach the settings: Kafka password and the per-user routes' token
    secret = k8s_objects()["Secret"]["stringData"]
    assert s.sasl_password == secret["sasl-password"]
    assert s.http_user_routes is True
    assert s.http_auth_token == secret["http-auth-token"], "per-user routes must require the token of the Secret"


# ----------------------------------------------------------------------------------------------
# Dockerfile
# ----------------------------------------------------------------------------------------------
def test_dockerfile_entrypoint_cmd_user() -> None:
    ins = dockerfile_instructions()
    get = lambda k: [a for i, a in ins if i == k]
    assert json.loads(get("ENTRYPOINT")[-1]) == ["taskclf-daemon"]
    assert json.loads(get("CMD")[-1]) == ["run", "--config", "/etc/taskclf-daemon/taskclf-daemon.toml"]
    user = get("USER")[-1].split(":")[0]
    assert user not in ("root", "0") and user.isdigit(), "run as a numeric non-root uid (runAsNonRoot can verify it)"
    # the last USER comes after the last RUN of the runtime stage
    last_user = max(n for n, (i, _) in enumerate(ins) if i == "USER")
    assert all(i != "RUN" for i, _ in ins[last_user:])
    assert "8080" in get("EXPOSE")[-1].split()


def test_dockerfile_stages_and_runtime() -> None:
    ins = dockerfile_instructions()
    args = dict(a.split("=", 1) for i, a in ins if i == "ARG" and "=" in a)
    froms = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], a).split()[0] for i, a in ins if i == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    assert all(f == "python:3.11-slim" for f in froms if ":" in f), froms
    runs = " ".join(a for i, a in ins if i == "RUN")
    assert "pip install ." in runs
    assert re.search(r"apt-get install [^&;]*\blibgomp1\b", runs), "LightGBM needs libgomp1 at run time"
    # the C overlay is built in the build stage and checked there (never shipped without it)
    assert re.search(r"apt-get install [^&;]*\bgcc\b", runs) and "import taskclf_daemon._overlay" in runs
    copies = [a for i, a in ins if i == "COPY" and not a.startswith("--from")]
    for c in copies:
        for src in c.split()[:-1]:
            if not src.startswith("--"):
                assert list(ROOT.glob(src)) or src.endswith("*"), f"COPY source {src} does not exist"


def test_dockerfile_healthcheck() -> None:
    ins = dockerfile_instructions()
    (hc,) = [a for i, a in ins if i == "HEALTHCHECK"]
    argv = json.loads(hc[hc.index("CMD") + 3:].strip())
    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "<healthcheck>", "exec")  # valid Python
    assert "urllib" in argv[2] and "/healthz" in argv[2]
    assert "curl" not in hc


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [ln.strip() for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "allow-list expected"
    for needed in ("!pyproject.toml", "!setup.py", "!daemon/", "!deploy/config/"):
        assert needed in lines
    assert "**/.venv" in lines and "**/.git" in lines


# ----------------------------------------------------------------------------------------------
# Kubernetes
# ----------------------------------------------------------------------------------------------
def test_kustomization_resources() -> None:
    (k,) = load_docs(K8S / "kustomization.yaml")
    res = k["resources"]
    for r in res:
        assert (K8S / r).is_file(), f"kustomization lists missing {r}"
    for needed in ("namespace.yaml", "configmap.yaml", "statefulset.yaml", "service.yaml", "pdb.yaml", "servicemonitor.yaml"):
        assert needed in res
    assert not [r for r in res if "example" in r], "example files are applied by hand"
    assert k["namespace"] == k8s_objects()["Namespace"]["metadata"]["name"]


def test_statefulset_static_membership() -> None:
    objs = k8s_objects()
    sts = objs["StatefulSet"]
    spec = sts["spec"]
    assert spec["replicas"] == 3
    assert spec["serviceName"] == objs["Service"]["metadata"]["name"]
    env = {e["name"]: e for e in the_container(sts)["env"]}
    gid = env["TASKCLF_GROUP_INSTANCE_ID"]
    assert gid["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert objs["Service"]["spec"]["selector"].items() <= labels.items()
    assert objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objs["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_grace_period_exceeds_shutdown_timeout(tmp_path: Path) -> None:
    s = settings_for_k8s(tmp_path)
    grace = k8s_objects()["StatefulSet"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # the drain is bounded by shutdown_timeout_s, then up to ~1 s per Kafka client stop
    assert grace >= s.shutdown_timeout_s + 5, f"terminationGracePeriodSeconds {grace} <= shutdown_timeout_s {s.shutdown_timeout_s} + 5"
    compose = yaml.safe_load(COMPOSE.read_text())
    daemon = compose["services"]["daemon"]
    env = {k: compose_interpolate(str(v)) for k, v in daemon["environment"].items()}
    cs = load_settings(DEPLOY / "config/taskclf-daemon.toml", env=env)
    m = re.fullmatch(r"(\d+)s", daemon["stop_grace_period"])
    assert m and int(m.group(1)) >= cs.shutdown_timeout_s + 5


def test_probes_hit_health_endpoints_on_the_http_port(tmp_path: Path) -> None:
    s = settings_for_k8s(tmp_path)
    c = the_container(k8s_objects()["StatefulSet"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == s.http_port
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path, f"{probe} -> {get['path']}"
        assert get["port"] in ("http", s.http_port), f"{probe} port {get['port']}"
    svc = k8s_objects()["Service"]
    (sp,) = [p for p in svc["spec"]["ports"] if p["name"] == "http"]
    assert sp["targetPort"] in ("http", s.http_port) and sp["port"] == s.http_port
    assert svc["spec"]["clusterIP"] == "None", "the StatefulSet's governing service is headless"
    (ep,) = k8s_objects()["ServiceMonitor"]["spec"]["endpoints"]
    assert ep["port"] == "http" and ep["path"] == "/metrics"


def test_statefulset_runs_locked_down() -> None:
    objs = k8s_objects()
    pod = objs["StatefulSet"]["spec"]["template"]["spec"]
    c = the_container(objs["StatefulSet"])
    psc, csc = pod["securityContext"], c["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    user = [a for i, a in dockerfile_instructions() if i == "USER"][-1].split(":")[0]
    assert str(psc["runAsUser"]) == user, "pod uid should match the image's USER"
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert pod.get("enableServiceLinks") is False, "service links would inject TASKCLF_-prefixed variables"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in vols[mounts["/tmp"]["name"]]
    models = vols[mounts["/models"]["name"]]
    assert mounts["/models"]["readOnly"] is True
    assert models["persistentVolumeClaim"] == {"claimName": "taskclf-models", "readOnly": True}
    cfg = mounts["/etc/taskclf-daemon"]
    assert vols[cfg["name"]]["configMap"]["name"] == objs["ConfigMap"]["metadata"]["name"]
    # the image's CMD reads the file the ConfigMap provides
    cmd = json.loads([a for i, a in dockerfile_instructions() if i == "CMD"][-1])
    assert c.get("args", cmd) == cmd
    assert cmd[-1] == "/etc/taskclf-daemon/" + next(iter(objs["ConfigMap"]["data"]))
    res = c["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]


# ----------------------------------------------------------------------------------------------
# docker compose
# ----------------------------------------------------------------------------------------------
def test_compose_kafka_kraft_listeners() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:3.9")
    env = {k: str(v) for k, v in kafka["environment"].items()}
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    proto = dict(x.split(":") for x in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = {x.split("://")[0]: x.split("://")[1] for x in env["KAFKA_LISTENERS"].split(",")}
    advertised = {x.split("://")[0]: x.split("://")[1] for x in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert set(listeners) <= set(proto) and set(advertised) <= set(listeners)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners and env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    node, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")
    assert node == env["KAFKA_NODE_ID"]
    assert voter.split(":")[1] == listeners[env["KAFKA_CONTROLLER_LISTENER_NAMES"]].split(":")[-1]
    # every client in the stack uses an advertised address
    daemon_env = {k: compose_interpolate(str(v)) for k, v in compose["services"]["daemon"]["environment"].items()}
    assert daemon_env["TASKCLF_BOOTSTRAP_SERVERS"] in advertised.values()
    for svc in ("kafka-init", "traffic"):
        text = json.dumps(compose["services"][svc])
        for addr in re.findall(r"(?<![/\w.])kafka:\d+", text):
            assert addr in advertised.values(), f"{svc} uses {addr}"


def test_compose_daemon_service() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    d = compose["services"]["daemon"]
    assert d["build"]["dockerfile"] == "deploy/Dockerfile" and (DEPLOY / d["build"]["context"] / "pyproject.toml").is_file()
    targets = {compose_interpolate(v).split(":")[1]: v for v in d["volumes"]}
    assert targets["/models"].endswith(":ro")
    assert d.get("read_only") is True and "/tmp" in d.get("tmpfs", [])
    for name in d["depends_on"]:
        assert name in compose["services"]


def test_compose_dollars_are_escaped() -> None:
    """A bare $name in compose is interpolated by compose itself (to ''): shell needs $$."""
    for line in COMPOSE.read_text().splitlines():
        code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
        rest = code.replace("$$", "")
        assert not re.search(r"\$(?!\{)", rest), f"unescaped $ in: {line.strip()}"
