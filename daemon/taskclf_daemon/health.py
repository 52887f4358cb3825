"""``/metrics``, ``/healthz`` and ``/readyz`` on one port, with asyncio streams only.

The server never imports the daemon: it is given callables that return ``(ok, detail)`` and the
metrics exposition bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

Probe = Callable[[], tuple[bool, dict[str, Any]]]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}

#: the whole request head (request line and headers) must arrive within this many seconds
HEAD_DEADLINE_S = 5.0
#: most header lines per request; most bytes per line (asyncio's reader limit)
MAX_HEADERS = 64
MAX_LINE_BYTES = 8192
#: most connections served at once; more are closed at once (a probe retries)
MAX_CONNECTIONS = 64


class HealthServer:
    def __init__(self, host: str, port: int, *, health: Probe, ready: Probe, metrics: Callable[[], bytes]) -> None:
        self.host = host
        self.port = port
        self._health = health
        self._ready = ready
        self._metrics = metrics
        self._server: asyncio.base_events.Server | None = None
        self._open = 0

    async def start(self) -> int:
        """Start listening; returns the bound port (useful with port 0 in tests)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_LINE_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: at most :data:`MAX_CONNECTIONS` at once, the request head within
        :data:`HEAD_DEADLINE_S` (a slow or endless sender is cut off), one request each."""
        if self._open >= MAX_CONNECTIONS:
            writer.close()
            return
        self._open += 1
        try:
            await self._handle(reader, writer)
        finally:
            self._open -= 1
            writer.close()

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[bytes, int]:
        """The request line and the number of header lines (``MAX_HEADERS + 1`` = too many)."""
        line = await reader.readline()
        n = 0
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                return line, n
            n += 1
            if n > MAX_HEADERS:
                return line, n

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line, n_headers = await asyncio.wait_for(self._read_head(reader), HEAD_DEADLINE_S)
            if n_headers > MAX_HEADERS:
                writer.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
            parts = line.decode("latin-1").split()
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"method not allowed\n"
            elif path == "/metrics":
                status, ctype, body = 200, "text/plain; version=0.0.4; charset=utf-8", self._metrics()
            elif path in ("/healthz", "/readyz"):
                try:
                    ok, detail = (self._health if path == "/healthz" else self._ready)()
                except Exception as exc:  # noqa: BLE001 - a failing probe is a failed probe, not a dropped connection
                    ok, detail = False, {"error": f"{type(exc).__name__}: {exc}"}
                status, ctype = (200 if ok else 503), "application/json"
                body = orjson.dumps({"ok": ok, **detail}) + b"\n"
            else:
                status, ctype, body = 404, "text/plain", b"not found: try /metrics /healthz /readyz\n"
            head = f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError, ValueError, asyncio.LimitOverrunError):
            pass
