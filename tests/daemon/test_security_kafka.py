"""The daemon against brokers that require SASL/SCRAM and TLS (fixtures_security, secure_broker).

* the golden stream through SCRAM-SHA-256, SCRAM-SHA-512 (SASL_PLAINTEXT), SSL with a client
  certificate, and SASL_SSL: outputs equal taskclf's; the passwords come from files;
* refused credentials and certificates: exit non-zero within 30 s, the message names the setting
  and the fix, ``/healthz`` never answers 200 meanwhile;
* no test secret in any file the session wrote (daemon and broker logs).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from fixtures_daemon import DaemonProcess, compare_files, keyed_lines, write_values
from fixtures_security import SecureCluster, SessionSecrets, client_conf, create_topics, daemon_env, leaked_secrets, produce, read

pytestmark = pytest.mark.broker

#: acceptance bound: a refused login or certificate ends the daemon within this
FAIL_FAST_S = 30.0


def policy_args(golden: Path) -> list[str]:
    return ["--policy", str(golden / "models" / "inference_policy.json")]


def topics(prefix: str) -> tuple[str, str, str]:
    u = uuid.uuid4().hex[:8]
    return f"{prefix}-in-{u}", f"{prefix}-out-{u}", f"{prefix}-dlq-{u}"


def start_daemon(tmp_path: Path, golden: Path, bootstrap: str, env: dict[str, str], name: str, names: tuple[str, str, str] | None = None) -> DaemonProcess:
    tin, tout, tdlq = names or topics(name)
    args = ["--bootstrap-servers", bootstrap, "--input-topic", tin, "--output-topic", tout, "--dlq-topic", tdlq, "--group-id", f"g-{name}", *policy_args(golden)]
    return DaemonProcess(args, env, tmp_path / f"daemon-{name}.log")


def security_env(mode: str, cluster: SecureCluster, secrets_: SessionSecrets, user: str = "bob", password: str | None = None) -> dict[str, Any]:
    """The daemon's settings for listener ``mode``; passwords through ``*_file`` settings."""
    s: dict[str, Any] = {"security_protocol": {"sasl": "SASL_PLAINTEXT", "ssl": "SSL", "sasl_ssl": "SASL_SSL"}[mode]}
    if mode.startswith("sasl"):
        pw, mech = secrets_.users.get(user, ("", "SCRAM-SHA-512"))
        s.update(sasl_mechanism=mech, sasl_username=user, sasl_password_file=secrets_.file(f"sasl-{user}-{uuid.uuid4().hex[:6]}", password or pw))
    if mode != "sasl":
        s["ssl_cafile"] = cluster.pki.ca
    if mode == "ssl":
        s.update(ssl_certfile=cluster.pki.client_cert, ssl_keyfile=cluster.pki.client_key, ssl_password_file=secrets_.file(f"key-{uuid.uuid4().hex[:6]}", secrets_.client_key_password))
    return s


def assert_no_secret(d: DaemonProcess, secrets_: SessionSecrets) -> None:
    text = d.log_path.read_text(errors="replace")
    assert not [s for s in secrets_.all() if s in text], f"a test secret is in {d.log_path}"


# ------------------------------------------------------------------------------ the golden stream
GOLDEN_CASES = [
    pytest.param("sasl", "alice", id="SCRAM-SHA-256"),
    pytest.param("sasl", "bob", id="SCRAM-SHA-512"),
    pytest.param("ssl", None, id="SSL-client-certificate"),
    pytest.param("sasl_ssl", "bob", id="SASL_SSL-SCRAM-SHA-512"),
]


@pytest.mark.parametrize(("mode", "user"), GOLDEN_CASES)
def test_golden_stream_through_a_secured_broker(mode: str, user: str | None, secure_cluster: SecureCluster, test_secrets: SessionSecrets, golden: Path, tmp_path: Path) -> None:
    k = secure_cluster.get(mode)
    conf = client_conf(secure_cluster, mode, test_secrets)  # the test's own client: librdkafka
    logins_before = len(k.gateway.logins)
    settings = security_env(mode, secure_cluster, test_secrets, user or "bob")
    tin, tout, tdlq = names = topics(mode)
    create_topics(conf, {tin: 4, tout: 4, tdlq: 1})
    assert produce(conf, tin, keyed_lines(golden / "inputs.jsonl")) == 3030
    d = start_daemon(tmp_path, golden, k.bootstrap_servers, daemon_env(**settings), f"{mode}-{user}", names)
    try:
        d.wait_ready(90)
        msgs = read(conf, tout, expect=3030)
        assert len(msgs) == 3030
        assert compare_files(golden / "expected_w3.jsonl", write_values(msgs, tmp_path / "out.jsonl"), "--fail-on-extra", "--tol", "1e-12") == 0
        rc, took = d.terminate()
        assert rc == 0 and took < 30
    finally:
        d.kill()
    if user is not None:  # the daemon's own logins (consumer, producer, reader, admin) went through SCRAM
        assert (user, test_secrets.users[user][1]) in k.gateway.logins[logins_before:]
    events = d.log_events()
    start = events[0]
    assert start["event"] == "daemon_starting"
    cfg = start["config"]
    assert cfg["security_protocol"] == settings["security_protocol"]
    for key in ("sasl_password", "ssl_password"):
        assert cfg[key] in (None, "***")
    if mode.startswith("sasl"):
        assert cfg["sasl_password"] == "***" and cfg["sasl_password_file"] == str(settings["sasl_password_file"])
    if mode == "ssl":
        assert cfg["ssl_password"] == "***"
    assert_no_secret(d, test_secrets)


# ------------------------------------------------------------------------------ fail fast
def run_until_exit(d: DaemonProcess, bound: float = FAIL_FAST_S + 15) -> tuple[int, float, set[int]]:
    """Wait for the daemon to exit, polling /healthz all along: (rc, seconds, statuses seen)."""
    t0 = time.monotonic()
    seen: set[int] = set()
    while d.proc.poll() is None and time.monotonic() - t0 < bound:
        seen.add(d.get("/healthz")[0])
        time.sleep(0.02)
    took = time.monotonic() - t0
    if d.proc.poll() is None:
        d.kill()
        raise AssertionError(f"daemon still running after {bound}s (a retry loop?):\n{d.log_tail()}")
    return d.proc.returncode, took, seen


def failure(d: DaemonProcess) -> str:
    errs = [e["error"] for e in d.log_events() if e.get("event") == "daemon_failed"]
    assert errs, f"no daemon_failed event:\n{d.log_tail()}"
    return str(errs[0])


def assert_fails_fast(d: DaemonProcess, secrets_: SessionSecrets, *needles: str) -> str:
    try:
        rc, took, seen = run_until_exit(d)
    finally:
        d.kill()
    assert rc != 0, d.log_tail()
    assert took < FAIL_FAST_S, f"took {took:.1f}s"
    assert 200 not in seen, "/healthz was green while the daemon could not log in"
    msg = failure(d)
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    assert "Fix:" in msg
    assert "Traceback" not in d.log_path.read_text(errors="replace")
    assert_no_secret(d, secrets_)
    return msg


REFUSED_LOGINS = [
    pytest.param("sasl", "alice", "wrong-password", "SCRAM-SHA-256", id="SCRAM-256-wrong-password"),
    pytest.param("sasl", "bob", "wrong-password", "SCRAM-SHA-512", id="SCRAM-512-wrong-password"),
    pytest.param("sasl", "mallory", "any-password", "SCRAM-SHA-512", id="unknown-user"),
    pytest.param("sasl", "alice", None, "SCRAM-SHA-512", id="user-of-another-mechanism"),
    pytest.param("sasl_ssl", "bob", "wrong-password", "SCRAM-SHA-512", id="SASL_SSL-wrong-password"),
]


@pytest.mark.parametrize(("mode", "user", "password", "mechanism"), REFUSED_LOGINS)
def test_refused_login_exits_fast_naming_the_setting(mode: str, user: str, password: str | None, mechanism: str, secure_cluster: SecureCluster, test_secrets: SessionSecrets, golden: Path, tmp_path: Path) -> None:
    k = secure_cluster.get(mode)
    settings = security_env(mode, secure_cluster, test_secrets, user, password and f"{password}-{uuid.uuid4().hex[:4]}")
    settings["sasl_mechanism"] = mechanism
    d = start_daemon(tmp_path, golden, k.bootstrap_servers, daemon_env(**settings), f"refused-{user}")
    msg = assert_fails_fast(d, test_secrets, "sasl_password", "sasl_username", repr(user), mechanism)
    assert k.bootstrap_servers in msg


def test_wrong_password_given_directly_is_never_logged(secure_cluster: SecureCluster, test_secrets: SessionSecrets, golden: Path, tmp_path: Path) -> None:
    """TASKCLF_SASL_PASSWORD (not a file): the value of a refused password is not echoed either."""
    k = secure_cluster.get("sasl")
    settings = security_env("sasl", secure_cluster, test_secrets, "bob")
    settings.pop("sasl_password_file")
    settings["sasl_password"] = test_secrets.users["alice"][0]  # a real secret, for the wrong user
    d = start_daemon(tmp_path, golden, k.bootstrap_servers, daemon_env(**settings), "direct-pw")
    assert "env TASKCLF_SASL_PASSWORD" in assert_fails_fast(d, test_secrets, "sasl_password")


def _listener(cluster: SecureCluster, case: str) -> str:
    pki = cluster.pki
    if case == "foreign-CA":
        return cluster.listener("sasl_ssl", pki.foreign_cert, pki.foreign_key).address
    if case == "wrong-name":
        return cluster.listener("sasl_ssl", pki.wrong_name_cert, pki.wrong_name_key).address
    return cluster.get("ssl" if case.startswith("mtls") else "sasl_ssl").bootstrap_servers


REFUSED_TLS = [
    # case, the daemon's settings changed from the working ones, what the message must name
    pytest.param("foreign-CA", {}, ["ssl_cafile", "does not verify against"], id="broker-certificate-from-another-CA"),
    pytest.param("trust-other-CA", {"ssl_cafile": "other_ca"}, ["ssl_cafile", "other-ca.crt"], id="ssl_cafile-of-another-CA"),
    pytest.param("wrong-name", {}, ["bootstrap_servers", "127.0.0.1", "subjectAltName"], id="certificate-for-another-host"),
    pytest.param("mtls-no-client-cert", {"ssl_certfile": None, "ssl_keyfile": None, "ssl_password_file": None}, ["security_protocol", "ssl_certfile"], id="no-client-certificate"),
    pytest.param("mtls-wrong-key-password", {"ssl_password_file": "wrong"}, ["ssl_keyfile", "ssl_password"], id="wrong-client-key-password"),
    pytest.param("ssl-cafile-missing", {"ssl_cafile": "missing"}, ["ssl_cafile", "does not exist"], id="ssl_cafile-missing"),
]


@pytest.mark.parametrize(("case", "changes", "needles"), REFUSED_TLS)
def test_refused_tls_exits_fast_naming_the_setting(case: str, changes: dict[str, Any], needles: list[str], secure_cluster: SecureCluster, test_secrets: SessionSecrets, golden: Path, tmp_path: Path) -> None:
    mode = "ssl" if case.startswith("mtls") else "sasl_ssl"
    bootstrap = _listener(secure_cluster, case)
    settings = security_env(mode, secure_cluster, test_secrets, "bob")
    for key, v in changes.items():
        if v is None:
            settings.pop(key)
        elif v == "other_ca":
            settings[key] = secure_cluster.pki.other_ca
        elif v == "missing":
            settings[key] = tmp_path / "no-such-ca.crt"
        elif v == "wrong":
            settings[key] = test_secrets.file(f"wrong-key-pw-{uuid.uuid4().hex[:6]}", "not-the-key-password")
    d = start_daemon(tmp_path, golden, bootstrap, daemon_env(**settings), case)
    assert_fails_fast(d, test_secrets, *needles)


# ------------------------------------------------------------------------------ no secret anywhere
def test_no_test_secret_in_any_log(tmp_path_factory: pytest.TempPathFactory, test_secrets: SessionSecrets, secure_cluster: SecureCluster) -> None:
    """Every file this session wrote -- daemon logs, broker logs, outputs -- but the secret files."""
    secure_cluster.get("sasl")  # at least one broker log exists even when run alone
    root = tmp_path_factory.getbasetemp()
    logs = [p for p in root.rglob("*.log")]
    assert logs, f"no log files under {root}"
    leaks = leaked_secrets(root, test_secrets.all(), skip=test_secrets.dir)
    assert not leaks, json.dumps(leaks, indent=1)
