"""Fixtures for tests that run the real daemon against the session broker.

The daemon runs as a subprocess (``python -m taskclf_daemon run``), as users run it; input is
produced and output read back with confluent-kafka (librdkafka), a third-party client.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import golden_compare
from golden_fixture import GOLDEN_DIR, golden_home

REPO = Path(__file__).resolve().parents[1]
#: the plain copy of the in-repo golden fixture (``golden_fixture``); the ``golden`` fixture builds it
GOLDEN = GOLDEN_DIR


@pytest.fixture(scope="session")
def golden() -> Path:
    """The taskclf golden fixture directory (built from tests/fixtures/golden and verified)."""
    return golden_home()


def load_compare() -> Any:
    """The comparison module, ``tests/golden_compare.py`` (``main(argv)``, ``compare(...)``)."""
    return golden_compare


def compare_files(expected: Path, actual: Path, *extra: str) -> int:
    """``golden_compare`` on two files with its command-line flags; prints the report, returns 0 = pass."""
    return golden_compare.main(["--expected", str(expected), "--actual", str(actual), *extra])


def produce_values(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]], *, config: dict[str, Any] | None = None) -> int:
    """Produce (key, value) pairs with confluent-kafka; returns the count delivered. ``config``:
    more producer settings (e.g. ``{"partitioner": "murmur2_random"}``, the Java client's)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "log_level": 3, "message.max.bytes": 4_000_000, **(config or {})})
    errors: list[Any] = []
    n = 0
    for key, value in records:
        p.produce(topic, key=key, value=value, on_delivery=lambda err, msg: errors.append(err) if err else None)
        n += 1
        if n % 1000 == 0:
            p.poll(0)
    remaining = p.flush(30)
    assert remaining == 0 and not errors, f"produce failed: {errors[:3]} remaining={remaining}"
    return n


def keyed_lines(path: Path) -> Iterator[tuple[bytes, bytes]]:
    for line in path.read_bytes().splitlines():
        if line.strip():
            yield json.loads(line)["user_id"].encode(), line


def read_topic(bootstrap: str, topic: str, *, expect: int | None = None, timeout: float = 60.0, idle: float = 2.0) -> list[Any]:
    """Read a topic from the beginning (assign(), no group) until ``expect`` records or idle.

    Returns confluent_kafka Message objects.
    """
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader-unused", "enable.auto.commit": False, "log_level": 3, "fetch.wait.max.ms": 10})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        c.assign([TopicPartition(topic, p, 0) for p in md.partitions])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                if expect is None and time.monotonic() - last > idle:
                    break
                continue
            if m.error():
                continue
            out.append(m)
            last = time.monotonic()
            if expect is not None and len(out) >= expect:
                break
        return out
    finally:
        c.close()


def dedup_identical(msgs: list[Any]) -> tuple[dict[tuple[str, str], bytes], int]:
    """Output records deduplicated on (user_id, bucket_start_ts), first copy kept, and the number
    of duplicates; asserts every duplicate is byte-identical to its first copy."""
    first: dict[tuple[str, str], bytes] = {}
    dups = 0
    for m in msgs:
        rec = json.loads(m.value())
        k = (rec["user_id"], rec["bucket_start_ts"])
        if k in first:
            dups += 1
            assert m.value() == first[k], f"duplicate for {k} differs from its first copy"
        else:
            first[k] = m.value()
    return first, dups


def write_values(msgs: list[Any], path: Path) -> Path:
    path.write_bytes(b"".join(m.value() + b"\n" for m in msgs))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess:
    """A ``taskclf-daemon run`` subprocess with its HTTP port."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.http_port = free_port()
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskclf_daemon", "run", *args, "--http-port", str(self.http_port), "--log-level", "info"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", headers=headers or {})
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    def wait_ready(self, timeout: float = 60.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.get("/readyz")[0] == 200:
                return time.monotonic() - t0
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready after {timeout}s:\n{self.log_tail()}")

    def metric(self, name: str, labels: str = "") -> float:
        status, body = self.get("/metrics")
        assert status == 200
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name + "{" if labels or "{" in line.split(" ")[0] else name + " ") or line.startswith(name + " "):
                if labels and labels not in line:
                    continue
                total += float(line.rsplit(" ", 1)[1])
        return total

    def terminate(self, timeout: float = 40.0) -> tuple[int, float]:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self._log.close()
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


@pytest.fixture
def daemon_factory(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Any]:
    """``daemon_factory(input_topic, output_topic, dlq_topic, group, *extra_args, env=None)``."""
    started: list[DaemonProcess] = []

    def make(input_topic: str, output_topic: str, dlq_topic: str, group: str, *extra: str, env: dict[str, str] | None = None) -> DaemonProcess:
        e = {k: v for k, v in os.environ.items() if not k.startswith("TASKCLF_") or k == "TASKCLF_TANSU_BIN"}
        # the feedback topic (default taskclf.labels) is off unless a test names its own: one
        # shared labels topic would tie every test's partition count together
        # and LightGBM serves (bit-identical to the compiled backend): no test daemon starts a
        # background compile of its bundle (minutes of CPU on a cold cache)
        e.update({"TASKCLF_SESSION_TIMEOUT_MS": "6000", "TASKCLF_FETCH_MAX_WAIT_MS": "20", "TASKCLF_COMMIT_INTERVAL_MS": "200", "TASKCLF_FEEDBACK_TOPIC": "", "TASKCLF_MODEL_BACKEND": "lightgbm"})
        e.update(env or {})
        args = ["--bootstrap-servers", kafka_bootstrap, "--input-topic", input_topic, "--output-topic", output_topic, "--dlq-topic", dlq_topic, "--group-id", group, *extra]
        d = DaemonProcess(args, e, tmp_path / f"daemon-{len(started)}.log")
        started.append(d)
        return d

    yield make
    for d in started:
        d.kill()
