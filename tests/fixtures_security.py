"""Fixtures for the Kafka security tests: brokers that require SCRAM and/or TLS (secure_broker.py).

One session-wide set of listeners, each a Tansu behind a :class:`secure_broker.KafkaGateway`,
started on first use:

* ``sasl``     SASL_PLAINTEXT, SCRAM-SHA-256 and SCRAM-SHA-512 users
* ``ssl``      SSL, the client must present a certificate signed by the test CA (mutual TLS)
* ``sasl_ssl`` SASL_SSL: TLS (server certificate only) + SCRAM

Every secret (SCRAM passwords, the client key's password) is random per session; the files the
daemon reads them from live in their own directory (``secret_dir``), and everything else the
session writes -- daemon logs, broker logs -- can be searched for them (:func:`leaked_secrets`).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fixtures_daemon import produce_values
from secure_broker import Pki, ScramUsers, SecureKafka, make_pki


@dataclass
class SessionSecrets:
    """The session's secrets: SCRAM users (name -> (password, mechanism)) and the client key password."""

    users: dict[str, tuple[str, str]]
    client_key_password: str
    dir: Path

    def all(self) -> list[str]:
        return [pw for pw, _ in self.users.values()] + [self.client_key_password]

    def file(self, name: str, value: str) -> Path:
        """A mounted-secret-like file holding ``value`` (with the trailing newline ``echo`` adds)."""
        p = self.dir / name
        p.write_text(value + "\n")
        p.chmod(0o400)
        return p


@pytest.fixture(scope="session")
def test_secrets(tmp_path_factory: pytest.TempPathFactory) -> SessionSecrets:
    token = lambda: "tst-" + secrets.token_urlsafe(15)  # recognisable, never a real one
    return SessionSecrets(
        users={"alice": (token(), "SCRAM-SHA-256"), "bob": (token(), "SCRAM-SHA-512")},
        client_key_password=token(),
        dir=tmp_path_factory.mktemp("secrets"),
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory, test_secrets: SessionSecrets) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), test_secrets.client_key_password)


@dataclass
class SecureCluster:
    pki: Pki
    users: ScramUsers
    log_root: Path
    started: dict[str, SecureKafka] = field(default_factory=dict)
    extra: list[Any] = field(default_factory=list)

    def get(self, mode: str) -> SecureKafka:
        if mode not in self.started:
            tls = {"sasl": None, "ssl": self.pki.server_context(require_client_cert=True), "sasl_ssl": self.pki.server_context()}[mode]
            users = self.users if mode.startswith("sasl") else None
            self.started[mode] = SecureKafka(tls=tls, users=users, log_dir=self.log_root / f"tansu-{mode}").start()
        return self.started[mode]

    def listener(self, mode: str, cert: Path, key: Path) -> Any:
        """Another TLS listener to ``mode``'s broker presenting ``cert`` (one the client must refuse)."""
        base = self.get(mode)
        g = base.extra_listener(self.pki.server_context(cert, key), base.gateway.users)
        self.extra.append(g)
        return g

    def stop(self) -> None:
        for g in self.extra:
            g.stop()
        for k in self.started.values():
            k.stop()


@pytest.fixture(scope="session")
def secure_cluster(pki: Pki, test_secrets: SessionSecrets, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    users = ScramUsers()
    for name, (pw, mech) in test_secrets.users.items():
        users.add(name, pw, mech)
    c = SecureCluster(pki, users, tmp_path_factory.mktemp("brokers"))
    try:
        yield c
    finally:
        c.stop()


# ------------------------------------------------------------------------ confluent-kafka clients
def client_conf(cluster: SecureCluster, mode: str, secrets_: SessionSecrets, user: str = "bob") -> dict[str, Any]:
    """librdkafka settings for the test's own producer/reader on listener ``mode``."""
    k = cluster.get(mode)
    conf: dict[str, Any] = {"bootstrap.servers": k.bootstrap_servers, "log_level": 3}
    if mode.startswith("sasl"):
        pw, mech = secrets_.users[user]
        conf.update({"sasl.mechanism": mech, "sasl.username": user, "sasl.password": pw})
    if mode == "sasl":
        conf["security.protocol"] = "SASL_PLAINTEXT"
    else:
        conf.update({"security.protocol": "SSL" if mode == "ssl" else "SASL_SSL", "ssl.ca.location": str(cluster.pki.ca)})
        if mode == "ssl":
            conf.update({"ssl.certificate.location": str(cluster.pki.client_cert), "ssl.key.location": str(cluster.pki.client_key), "ssl.key.password": secrets_.client_key_password})
    return conf


def create_topics(conf: dict[str, Any], partitions: dict[str, int]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(conf)
    futs = admin.create_topics([NewTopic(t, num_partitions=n, replication_factor=1) for t, n in partitions.items()], operation_timeout=10, request_timeout=10)
    for f in futs.values():
        f.result(timeout=15)
    for t, n in partitions.items():
        for _ in range(100):
            md = admin.list_topics(topic=t, timeout=5).topics.get(t)
            if md is not None and md.error is None and len(md.partitions) == n:
                break
            time.sleep(0.05)


def produce(conf: dict[str, Any], topic: str, records: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    """:func:`fixtures_daemon.produce_values` with a secured librdkafka configuration."""
    return produce_values(conf["bootstrap.servers"], topic, records, config=conf)


def read(conf: dict[str, Any], topic: str, expect: int, timeout: float = 90.0) -> list[Any]:
    """Read ``topic`` from the beginning (assign, no group) until ``expect`` records or the timeout."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**conf, "group.id": "reader-unused", "enable.auto.commit": False, "fetch.wait.max.ms": 10})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        c.assign([TopicPartition(topic, p, 0) for p in md.partitions])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(out) < expect:
            m = c.poll(0.2)
            if m is not None and not m.error():
                out.append(m)
        return out
    finally:
        c.close()


def daemon_env(**settings: str | Path) -> dict[str, str]:
    """The environment of a daemon subprocess: no inherited TASKCLF_ setting, plus ``settings``."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("TASKCLF_") or k == "TASKCLF_TANSU_BIN"}
    e.update({"TASKCLF_SESSION_TIMEOUT_MS": "6000", "TASKCLF_FETCH_MAX_WAIT_MS": "20", "TASKCLF_COMMIT_INTERVAL_MS": "200"})
    e.update({"TASKCLF_" + k.upper(): str(v) for k, v in settings.items()})
    return e


def leaked_secrets(root: Path, values: list[str], skip: Path) -> dict[str, list[str]]:
    """``{file: [secret...]}`` for every file under ``root`` (but ``skip``) holding one of ``values``."""
    needles = [v.encode() for v in values]
    found: dict[str, list[str]] = {}
    for p in root.rglob("*"):
        if not p.is_file() or skip in p.parents:
            continue
        try:
            data = p.read_bytes()
        except OSError:
            continue
        hits = [n.decode() for n in needles if n in data]
        if hits:
            found[str(p)] = hits
    return found
