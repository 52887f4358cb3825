"""The only module that imports aiokafka: client factories, topic creation, the batch sink.

Output records are appended to one ``BatchBuilder`` per (topic, partition) and submitted with
``send_batch`` (several times cheaper per record in Python than ``send()``); the partition of a
key is Kafka's default murmur2 partitioner, as the Java client and aiokafka compute it.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import (
    CommitFailedError,
    IllegalSaslStateError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    RebalanceInProgressError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.protocol.metadata import MetadataRequest

from taskclf_daemon.config import Settings
from taskclf_daemon.errors import ConfigError

__all__ = [
    "AIOKafkaConsumer",
    "AIOKafkaProducer",
    "ConsumerRebalanceListener",
    "TopicPartition",
    "CommitFailedError",
    "IllegalStateError",
    "KafkaConnectionError",
    "KafkaError",
    "RebalanceInProgressError",
    "OutputSink",
    "client_kwargs",
    "make_consumer",
    "make_producer",
    "make_reader",
    "read_partitions_to_end",
    "probe_broker",
    "topic_partition_count",
    "key_partition",
    "known_partitions",
    "ensure_topics",
    "check_security",
    "classify_connect_error",
]

Headers = Sequence[tuple[str, bytes]]


def client_kwargs(s: Settings) -> dict[str, Any]:
    """Connection and security options shared by consumer, producer and admin client."""
    kw: dict[str, Any] = {
        "bootstrap_servers": s.bootstrap_servers,
        "client_id": s.client_id,
        "security_protocol": s.security_protocol,
        "request_timeout_ms": s.request_timeout_ms,
    }
    if s.security_protocol in ("SSL", "SASL_SSL"):
        kw["ssl_context"] = create_ssl_context(
            cafile=s.ssl_cafile, certfile=s.ssl_certfile, keyfile=s.ssl_keyfile, password=s.ssl_password
        )
    if s.security_protocol.startswith("SASL"):
        kw["sasl_mechanism"] = s.sasl_mechanism
        kw["sasl_plain_username"] = s.sasl_username
        kw["sasl_plain_password"] = s.sasl_password
    return kw


def make_consumer(s: Settings, *, max_records: int) -> AIOKafkaConsumer:
    kw = client_kwargs(s)
    kw.pop("request_timeout_ms")
    return AIOKafkaConsumer(
        **kw,
        group_id=s.group_id,
        group_instance_id=s.group_instance_id,
        enable_auto_commit=False,
        auto_offset_reset=s.auto_offset_reset,
        fetch_max_wait_ms=s.fetch_max_wait_ms,
        max_partition_fetch_bytes=max(1 << 20, s.max_record_bytes + 1024),
        fetch_max_bytes=64 << 20,
        session_timeout_ms=s.session_timeout_ms,
        heartbeat_interval_ms=max(1000, s.session_timeout_ms // 10),
        max_poll_interval_ms=s.max_poll_interval_ms,
        max_poll_records=max_records,
        isolation_level="read_committed",
        **_assignor(s),
    )


def _assignor(s: Settings) -> dict[str, Any]:
    """With a feedback topic the group must give partition p of both topics to one member: the
    range assignor does (equal partition counts), aiokafka's default round-robin does not.
    Round-robin stays the second choice so that a rolling upgrade from a build without it can
    join the group; meanwhile a feedback partition without its input twin is left paused
    (:mod:`taskclf_daemon.feedback`)."""
    if not s.feedback_topic:
        return {}
    return {"partition_assignment_strategy": (RangePartitionAssignor, RoundRobinPartitionAssignor)}


def make_reader(s: Settings) -> AIOKafkaConsumer:
    """A group-less consumer for explicit ``assign()`` reads (changelog restore)."""
    kw = client_kwargs(s)
    kw.pop("request_timeout_ms")
    return AIOKafkaConsumer(
        **kw,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=min(s.fetch_max_wait_ms, 50),
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
        isolation_level="read_committed",
    )


async def read_partitions_to_end(reader: AIOKafkaConsumer, tps: list[TopicPartition], timeout: float) -> AsyncIterator[list[Any]]:
    """Yield record lists from the beginning of ``tps`` until each reaches its high watermark.

    Uses the fetch high-watermark (``highwater``), which is right on every broker, instead of
    ``end_offsets`` (wrong on Tansu).
    :raises asyncio.TimeoutError: when the end is not reached within ``timeout`` seconds
    """
    if not tps:
        return
    reader.assign(tps)
    await reader.seek_to_beginning(*tps)
    remaining = set(tps)
    deadline = asyncio.get_running_loop().time() + timeout
    while remaining:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"restore of {sorted(str(t) for t in remaining)} did not finish in {timeout}s")
        data = await reader.getmany(*remaining, timeout_ms=200, max_records=10000)
        for msgs in data.values():
            if msgs:
                yield msgs
        for tp in list(remaining):
            hw = reader.highwater(tp)
            if hw is not None and await reader.position(tp) >= hw:
                remaining.discard(tp)
    reader.assign([])


async def probe_broker(producer: AIOKafkaProducer, timeout: float = 5.0) -> bool:
    """True when a metadata round trip to the cluster succeeds within ``timeout``."""
    try:
        return bool(await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout))
    except (TimeoutError, KafkaError, OSError):
        return False


async def topic_partition_count(producer: AIOKafkaProducer, topic: str) -> int:
    parts = await producer.partitions_for(topic)
    return len(parts or ())


def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as the Java client and aiokafka
    compute it) gives ``key`` on a topic of ``partitions`` partitions."""
    parts = list(range(partitions))
    return int(DefaultPartitioner()(key, parts, parts))


def known_partitions(consumer: AIOKafkaConsumer, topic: str) -> int:
    """How many partitions ``topic`` has in the consumer's metadata (0: none known yet)."""
    return len(consumer.partitions_for_topic(topic) or ())


def make_producer(s: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **client_kwargs(s),
        acks="all",
        linger_ms=s.linger_ms,
        max_batch_size=1 << 20,
        max_request_size=max(1 << 20, 2 * s.max_record_bytes + 4096),
        enable_idempotence=False,  # not supported by every broker (Tansu); at-least-once + dedup keys
    )


async def ensure_topics(s: Settings, topics: Iterable[str], *, partitions: int | None = None, config: Mapping[str, str] | None = None) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    admin = AIOKafkaAdminClient(**client_kwargs(s))
    await admin.start()
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name=t, num_partitions=partitions or s.topic_partitions, replication_factor=s.topic_replication, topic_configs=dict(config or {}))
            for t in dict.fromkeys(topics)
            if t not in existing
        ]
        for nt in new:
            try:
                await admin.create_topics([nt])
                created.append(nt.name)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
    return created


class OutputSink:
    """Accumulates keyed records per (topic, partition) and submits them as batches."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._partitions: dict[str, list[int]] = {}
        self._part_cache: dict[tuple[str, bytes], int] = {}
        self._builders: dict[tuple[str, int], Any] = {}
        self._futures: list[asyncio.Future] = []
        self._partitioner = DefaultPartitioner()

    async def prepare(self, topics: Iterable[str]) -> None:
        for t in topics:
            parts = await self._producer.partitions_for(t)
            if not parts:
                raise KafkaError(f"topic {t!r} has no partitions (does it exist?)")
            self._partitions[t] = sorted(parts)

    def partition_for(self, topic: str, key: bytes) -> int:
        ck = (topic, key)
        p = self._part_cache.get(ck)
        if p is None:
            parts = self._partitions[topic]
            p = self._part_cache[ck] = self._partitioner(key, parts, parts)
            if len(self._part_cache) > 200_000:  # keys are user ids of at most 1 KiB
                self._part_cache.clear()
        return p

    async def append(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = (), timestamp_ms: int | None = None, partition: int | None = None) -> None:
        """Add a record; its partition is ``partition`` if given, else the key's default partition."""
        if partition is not None:
            part = partition
        else:
            part = self.partition_for(topic, key) if key is not None else self._partitions[topic][0]
        tp = (topic, part)
        b = self._builders.get(tp)
        if b is None:
            b = self._builders[tp] = self._producer.create_batch()
        ts = None if timestamp_ms is None else timestamp_ms / 1000.0
        if b.append(key=key, value=value, timestamp=ts, headers=list(headers)) is None:
            await self._submit(tp)
            b = self._builders[tp] = self._producer.create_batch()
            if b.append(key=key, value=value, timestamp=ts, headers=list(headers)) is None:
                raise KafkaError(f"record of {len(value or b'')} bytes does not fit an empty batch")

    async def _submit(self, tp: tuple[str, int]) -> None:
        b = self._builders.pop(tp)
        if b.record_count():
            fut = await self._producer.send_batch(b, tp[0], partition=tp[1])
            self._futures.append(fut)

    async def flush(self) -> list[asyncio.Future]:
        """Submit every open batch; return the futures of all batches submitted since last flush."""
        for tp in list(self._builders):
            await self._submit(tp)
        futs, self._futures = self._futures, []
        return futs


# ------------------------------------------------------------------------------ security check
def _refused(s: Settings, key: str, problem: str, fix: str) -> ConfigError:
    src = s.sources.get(key) if hasattr(s, "sources") else None
    return ConfigError(key, problem, fix, src if src and src != "default" else None)


def _client_context_error(s: Settings, exc: Exception) -> ConfigError:
    """A client SSL context that cannot be built: a missing file, a wrong key password."""
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(s, key)
        if path and not os.path.isfile(path):
            return _refused(s, key, f"file {path} does not exist", f"mount the file or fix {key}")
    if s.ssl_certfile or s.ssl_keyfile:
        return _refused(
            s, "ssl_keyfile",
            f"cannot load the client certificate {s.ssl_certfile} with key {s.ssl_keyfile} ({type(exc).__name__}: {exc})",
            "check that ssl_keyfile is the PEM key of ssl_certfile and that ssl_password (or ssl_password_file) is its password (unset for an unencrypted key)",
        )  # fmt: skip
    return _refused(s, "ssl_cafile", f"cannot load {s.ssl_cafile} ({type(exc).__name__}: {exc})", "set ssl_cafile to a PEM file of CA certificates")


def classify_connect_error(s: Settings, host: str, port: int, exc: BaseException) -> ConfigError | None:
    """A connection failure caused by the security settings, as a :class:`ConfigError` naming the
    setting and the fix; ``None`` for anything else (a broker down or slow: retried as before)."""
    where = f"{host}:{port}"
    mech, user, proto = s.sasl_mechanism, s.sasl_username, s.security_protocol
    if isinstance(exc, ssl.SSLCertVerificationError):
        msg = exc.verify_message or str(exc)
        if "mismatch" in msg or "not valid for" in msg:
            return _refused(
                s, "bootstrap_servers",
                f"the TLS certificate of {where} is not valid for {host!r} ({msg})",
                "connect by a host name or IP address listed in the broker certificate (subjectAltName); the brokers' advertised listeners must be such names too",
            )  # fmt: skip
        trusted = s.ssl_cafile or "the system CA store (ssl_cafile unset)"
        return _refused(
            s, "ssl_cafile",
            f"the TLS certificate of {where} does not verify against {trusted} ({msg})",
            "set ssl_cafile to the PEM file of the CA that signed the broker certificates (e.g. Strimzi: the <cluster>-cluster-ca-cert secret's ca.crt)",
        )  # fmt: skip
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).upper()
        if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER_FAILURE" in reason or "PACKET_LENGTH_TOO_LONG" in reason:
            return _refused(s, "security_protocol", f"{where} did not answer with TLS ({exc})", "that listener is not TLS: use security_protocol PLAINTEXT/SASL_PLAINTEXT, or the broker's TLS port")
        return _refused(
            s, "ssl_certfile",
            f"the TLS handshake with {where} failed ({exc})",
            "if the listener requires client certificates (ssl.client.auth=required) set ssl_certfile/ssl_keyfile to a certificate signed by a CA the broker trusts",
        )  # fmt: skip
    if isinstance(exc, SaslAuthenticationFailed) or (isinstance(exc, (KeyError, ValueError)) and proto.startswith("SASL") and mech.startswith("SCRAM")):
        # Kafka answers a wrong password and an unknown user alike; a broker that ends SCRAM without
        # its proof of the password (KeyError/ValueError in aiokafka's SCRAM client) too
        detail = f"{type(exc).__name__}: {exc}" if isinstance(exc, SaslAuthenticationFailed) else "the SCRAM exchange ended without the server's proof (wrong password or unknown user)"
        return _refused(
            s, "sasl_password",
            f"broker {where} refused the {mech} login of sasl_username {user!r} ({detail})",
            f"set sasl_username and sasl_password (or sasl_password_file) to a {mech} user of this cluster; a user created for another mechanism (sasl_mechanism) does not log in",
        )  # fmt: skip
    if isinstance(exc, UnsupportedSaslMechanismError):
        return _refused(s, "sasl_mechanism", f"broker {where} does not accept {mech} ({exc})", "set sasl_mechanism to one the listener enables")
    if isinstance(exc, IllegalSaslStateError):
        return _refused(s, "security_protocol", f"broker {where} rejected the SASL handshake ({exc})", "match security_protocol to the listener (SASL_SSL/SASL_PLAINTEXT only for SASL listeners)")
    return None


async def check_security(s: Settings, timeout: float = 20.0) -> None:
    """Before anything else: one connection per bootstrap broker with the configured security.

    :raises ConfigError: the client certificate/key or CA file cannot be loaded, or a broker
        refused the TLS handshake or the SASL login -- permanent errors that retries cannot fix.
        Also when every reachable broker closed the connection during the handshake, the sign of a
        ``security_protocol`` that does not match the listener. A broker that cannot be reached
        or is slow is not an error here (the start-up proper reports and bounds it).
    """
    if s.security_protocol == "PLAINTEXT":
        return
    try:
        kw = client_kwargs(s)
    except (OSError, ValueError) as exc:
        raise _client_context_error(s, exc) from None
    kw.pop("bootstrap_servers")
    kw["request_timeout_ms"] = int(min(kw["request_timeout_ms"], timeout * 1000))
    closed: list[str] = []
    for host, port, _ in collect_hosts(s.bootstrap_servers, randomize=False):
        conn = None
        try:
            conn = await asyncio.wait_for(create_conn(host, port, **kw), timeout)
            await asyncio.wait_for(conn.send(MetadataRequest()), timeout)
            return  # one broker accepted us: the settings are right
        except (KafkaConnectionError, ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as exc:
            if isinstance(exc, KafkaConnectionError) and "closed" not in str(exc):
                continue  # e.g. refused: not reachable
            closed.append(f"{host}:{port}")
        except (TimeoutError, OSError, KafkaError, KeyError, ValueError) as exc:
            err = classify_connect_error(s, host, port, exc)
            if err is not None:
                raise err from None
        finally:
            if conn is not None:
                conn.close()
    if closed:
        hint = "" if s.ssl_certfile or s.security_protocol == "SASL_PLAINTEXT" else "; a TLS listener that requires client certificates also closes it: then set ssl_certfile/ssl_keyfile"
        raise _refused(
            s, "security_protocol",
            f"{', '.join(closed)} accepted the connection but closed it during the {s.security_protocol} handshake",
            f"match security_protocol to the broker's listener (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL){hint}",
        )  # fmt: skip
