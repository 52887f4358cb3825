"""Offline checks of the Kafka security of ``deploy/`` (no Docker, no cluster).

* docker-compose.sasl-ssl.yml: Apache Kafka with SASL_SSL listeners and a SCRAM-SHA-512 user,
  the daemon and the traffic generator configured for it with their password and CA in files;
* the Kubernetes manifests: the Secret mounted as files, the ConfigMap pointing at them;
* everywhere: no secret in an environment variable or in the files themselves.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskclf_daemon.config import ENV_PREFIX, KEYS, load_settings
from taskclf_daemon.secret_files import SECRET_FILES

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SASL_COMPOSE = DEPLOY / "docker-compose.sasl-ssl.yml"
K8S = DEPLOY / "k8s"
SECRET_KEYS_DIRECT = {ENV_PREFIX + k.upper() for k in SECRET_FILES.values()}  # TASKCLF_SASL_PASSWORD, ...


def compose() -> dict[str, Any]:
    return yaml.safe_load(SASL_COMPOSE.read_text(encoding="utf-8"))


def interpolate(v: str) -> str:
    """Compose interpolation with every variable unset: ${V-d} / ${V:-d} -> d, ${V} -> ''."""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}", lambda m: m.group(3) or "", v).replace("$$", "$")


def env_of(service: str) -> dict[str, str]:
    return {k: interpolate(str(v)) for k, v in (compose()["services"][service].get("environment") or {}).items()}


def volume_at(service: str, target: str) -> tuple[str, bool]:
    """(source volume, read-only) of the mount at ``target`` in ``service``."""
    for v in compose()["services"][service].get("volumes", []):
        parts = interpolate(v).split(":")
        if parts[1] == target:
            return parts[0], parts[2:] == ["ro"]
    raise AssertionError(f"{service} mounts nothing at {target}")


def shell(service: str) -> str:
    return "\n".join(compose()["services"][service]["command"])


def listeners() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    env = env_of("kafka")
    proto = dict(x.split(":") for x in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listen = {x.split("://")[0]: x.split("://")[1] for x in env["KAFKA_LISTENERS"].split(",")}
    adv = {x.split("://")[0]: x.split("://")[1] for x in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    return proto, listen, adv


# ----------------------------------------------------------------------------------- compose
def test_client_listeners_are_sasl_ssl_and_published_ones_only() -> None:
    proto, listen, adv = listeners()
    assert set(adv) <= set(listen) <= set(proto)
    published = {p.split(":")[-1] for p in compose()["services"]["kafka"].get("ports", [])}
    for name, addr in listen.items():
        if addr.rsplit(":", 1)[-1] in published:
            assert proto[name] == "SASL_SSL", f"{name} is published but {proto[name]}"
    clients = [n for n in adv if n not in (env_of("kafka")["KAFKA_INTER_BROKER_LISTENER_NAME"],)]
    assert clients and all(proto[n] == "SASL_SSL" for n in clients)


@pytest.mark.parametrize("service", ["daemon", "traffic"])
def test_clients_use_the_sasl_ssl_listener_with_files(service: str, tmp_path: Path) -> None:
    proto, _, adv = listeners()
    env = env_of(service)
    by_addr = {a: n for n, a in adv.items()}
    listener = by_addr[env["TASKCLF_BOOTSTRAP_SERVERS"]]
    assert env["TASKCLF_SECURITY_PROTOCOL"] == proto[listener] == "SASL_SSL"
    assert env["TASKCLF_SASL_MECHANISM"] in env_of("kafka")["KAFKA_SASL_ENABLED_MECHANISMS"].split(",")
    assert not SECRET_KEYS_DIRECT & set(env), "a password must come from a file, not the environment"
    # the files are on the read-only client-secrets volume that kafka-secrets fills
    target = "/run/secrets/kafka"
    vol, ro = volume_at(service, target)
    assert ro and vol == volume_at("kafka-secrets", "/secrets/client")[0]
    made = shell("kafka-secrets")
    for key in ("TASKCLF_SASL_PASSWORD_FILE", "TASKCLF_SSL_CAFILE"):
        path = env[key]
        assert path.startswith(target + "/")
        assert f"/secrets/client/{path[len(target) + 1:]}" in made, f"kafka-secrets does not write {path}"
    # and the settings load, with the password read from (a stand-in for) that file
    (tmp_path / "sasl-password").write_text("pw-from-file\n")
    (tmp_path / "ca.crt").write_text("ca")
    local = {k: v.replace(target, str(tmp_path)) for k, v in env.items()}
    s = load_settings(None, env=local, require_model=False)
    assert s.sasl_password == "pw-from-file" and s.masked()["sasl_password"] == "***"
    assert s.security_protocol == "SASL_SSL" and s.ssl_cafile == str(tmp_path / "ca.crt")


def test_scram_user_of_the_daemon_is_created_from_the_same_file() -> None:
    env = env_of("daemon")
    init = shell("kafka-init")
    mech = env["TASKCLF_SASL_MECHANISM"]
    assert f"--entity-name {env['TASKCLF_SASL_USERNAME']}" in init
    assert f"{mech}=[iterations=" in init and "cat /secrets/client/sasl-password" in init
    assert "--add-config-file" in init, "the password stays off the command line"
    vol, ro = volume_at("kafka-init", "/secrets/client")
    assert ro and vol == volume_at("daemon", "/run/secrets/kafka")[0]
    assert "kafka-init" in compose()["services"]["daemon"]["depends_on"]


def test_broker_certificate_names_the_addresses_clients_use() -> None:
    made = shell("kafka-secrets")
    m = re.search(r'-ext "SAN=([^"]+)"', made)
    assert m, "the broker certificate needs a subjectAltName"
    sans = {x.split(":", 1)[1] for x in m.group(1).split(",")}
    _, _, adv = listeners()
    for addr in adv.values():
        assert addr.rsplit(":", 1)[0] in sans, f"{addr} is not in the certificate ({sans}): hostname verification would fail"


def test_broker_reads_its_keystore_and_jaas_from_the_secrets_volume() -> None:
    env = env_of("kafka")
    made = shell("kafka-secrets")
    vol, ro = volume_at("kafka", "/etc/kafka/secrets")
    assert ro and vol == volume_at("kafka-secrets", "/secrets/broker")[0]
    for key in ("KAFKA_SSL_KEYSTORE_FILENAME", "KAFKA_SSL_KEYSTORE_CREDENTIALS", "KAFKA_SSL_KEY_CREDENTIALS"):
        assert f"/secrets/broker/{env[key]}" in made, f"kafka-secrets does not write {env[key]}"
    jaas = re.search(r"login\.config=(\S+)", env["KAFKA_OPTS"])
    assert jaas and jaas.group(1).startswith("/etc/kafka/secrets/") and jaas.group(1).rsplit("/", 1)[1] in made
    assert "ScramLoginModule" in made


def test_compose_env_names_are_config_keys_and_dollars_escaped() -> None:
    text = SASL_COMPOSE.read_text(encoding="utf-8")
    names = set(re.findall(r"\bTASKCLF_[A-Z0-9_]*[A-Z0-9]\b", text))
    assert not {n for n in names if n[len(ENV_PREFIX):].lower() not in KEYS}
    for line in text.splitlines():
        code = "" if line.lstrip().startswith("#") else line
        assert not re.search(r"\$(?!\{)", code.replace("$$", "")), f"unescaped $ in: {line.strip()}"


# ----------------------------------------------------------------------------------- Kubernetes
def k8s(kind: str) -> dict[str, Any]:
    for p in sorted(K8S.glob("*.yaml")):
        for d in yaml.safe_load_all(p.read_text(encoding="utf-8")):
            if isinstance(d, dict) and d.get("kind") == kind:
                return d
    raise AssertionError(f"no {kind} in deploy/k8s")


def test_k8s_reads_the_password_and_ca_from_the_mounted_secret(tmp_path: Path) -> None:
    sts, secret, cm = k8s("StatefulSet"), k8s("Secret"), k8s("ConfigMap")
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert not SECRET_KEYS_DIRECT & {e["name"] for e in c.get("env", [])}, "no password in the environment"
    (vol,) = [v for v in pod["volumes"] if "secret" in v]
    assert vol["secret"]["secretName"] == secret["metadata"]["name"]
    assert vol["secret"]["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == vol["name"]]
    assert mount["readOnly"] is True
    files = {i["path"]: i["key"] for i in vol["secret"]["items"]}
    assert set(files.values()) <= set(secret["stringData"])
    toml = tomllib.loads(cm["data"]["taskclf-daemon.toml"])
    data = toml["kafka"]
    assert data["security_protocol"] == "SASL_SSL" and data["sasl_mechanism"].startswith("SCRAM-")
    for key, path in (("sasl_password_file", data["sasl_password_file"]), ("ssl_cafile", data["ssl_cafile"]), ("http_auth_token_file", toml["http"]["http_auth_token_file"])):
        assert path.startswith(mount["mountPath"].rstrip("/") + "/"), f"{key} {path} is not under the Secret's mount"
        assert path[len(mount["mountPath"].rstrip("/")) + 1:] in files, f"{key}: the Secret volume has no item {path}"
    # offline: the kubelet's files, then the config as the pod reads it
    mounted = tmp_path / "mount"
    mounted.mkdir()
    for p, key in files.items():
        (mounted / p).parent.mkdir(parents=True, exist_ok=True)
        (mounted / p).write_text(secret["stringData"][key])
    cfg = tmp_path / "c.toml"
    cfg.write_text(cm["data"]["taskclf-daemon.toml"].replace(mount["mountPath"].rstrip("/") + "/", f"{mounted}/"))
    s = load_settings(cfg, env={"TASKCLF_GROUP_INSTANCE_ID": "taskclf-daemon-0"})
    assert s.sasl_password == secret["stringData"]["sasl-password"] and s.masked()["sasl_password"] == "***"
    assert s.sources["sasl_password"].startswith("sasl_password_file ")
    assert s.http_auth_token == secret["stringData"]["http-auth-token"] and s.masked()["http_auth_token"] == "***"


def test_no_password_in_any_deploy_environment() -> None:
    for p in [*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml"), DEPLOY / "Dockerfile"]:
        text = p.read_text(encoding="utf-8")
        for name in SECRET_KEYS_DIRECT:
            assert not re.search(rf"\b{name}\b(?!_FILE)", text), f"{p.relative_to(DEPLOY)} sets {name}: use {name}_FILE"
