"""The daemon's HTTP server on one port, with asyncio streams only: ``/metrics``, ``/healthz``,
``/readyz``, ``/openapi.json`` and the JSON API (``/v1/model``, ``/v1/users/{user_id}``,
``/v1/users/{user_id}/prediction``), documented in ``openapi.json`` (package data; the same file
is committed as ``docs/openapi.json``).

A small router: a table of exact paths and one pattern, ``/v1/users/{user_id}[/prediction]``
(the user id is one percent-encoded path segment, so ``%2F`` is a slash inside the id). The
server never imports the daemon: it is given the probes (``(ok, detail)``), the metrics
exposition bytes and an :class:`Api` of async handlers returning ``(status, JSON-able body)``.

Auth: with :attr:`Api.auth_token` set, the user routes need ``Authorization: Bearer <token>``
(compared in constant time); anything else is 401 with ``WWW-Authenticate: Bearer``. The
probes, ``/metrics``, ``/openapi.json`` and ``/v1/model`` (no per-user data) stay open.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import unquote

import orjson

Probe = Callable[[], tuple[bool, dict[str, Any]]]
#: an API handler: ``(HTTP status, JSON-able body)``
JsonHandler = Callable[[], Awaitable[tuple[int, Any]]]
UserHandler = Callable[[str], Awaitable[tuple[int, Any]]]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

#: the whole request head (request line and headers) must arrive within this many seconds
HEAD_DEADLINE_S = 5.0
#: most header lines per request; most bytes per line (asyncio's reader limit)
MAX_HEADERS = 64
MAX_LINE_BYTES = 8192
#: most connections served at once; more are closed at once (a probe retries)
MAX_CONNECTIONS = 64
#: an API handler (a call to a pipeline worker) that takes longer answers 503
HANDLER_TIMEOUT_S = 5.0

USERS_PREFIX = "/v1/users/"
JSON = "application/json"
NOT_FOUND = b"not found: try /metrics /healthz /readyz /openapi.json /v1/model /v1/users/{user_id}\n"


def openapi_document() -> bytes:
    """The OpenAPI 3.1 description of this server (``taskclf_daemon/openapi.json``)."""
    return resources.files("taskclf_daemon").joinpath("openapi.json").read_bytes()


@dataclass(frozen=True, slots=True)
class Api:
    """The JSON routes beside the probes. ``user``/``prediction`` ``None`` = the user routes
    are off (404); ``auth_token`` set = they need that bearer token."""

    model: JsonHandler | None = None
    user: UserHandler | None = None
    prediction: UserHandler | None = None
    auth_token: str | None = None


#: (status, content type, body, extra header lines)
Response = tuple[int, str, bytes, str]


def _json(status: int, body: Any) -> Response:
    return status, JSON, orjson.dumps(body) + b"\n", ""


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header value (as read: latin-1, i.e. the raw bytes) carries
    ``token`` as its UTF-8 bytes (any header, if ``token`` is None). Constant-time compare."""
    if token is None:
        return True
    if header is None:
        return False
    scheme, _, given = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("latin-1", "replace"), token.encode("utf-8", "surrogateescape"))


def user_route(path: str) -> tuple[str, bool] | None:
    """``/v1/users/{user_id}`` -> ``(user_id, False)``, ``.../prediction`` -> ``(user_id, True)``,
    anything else under the prefix -> None. The id is percent-decoded as UTF-8 (strict:
    :class:`UnicodeDecodeError` for bytes that are not UTF-8)."""
    segs = path[len(USERS_PREFIX) :].split("/")
    if len(segs) == 2 and segs[1] == "prediction":
        pred = True
    elif len(segs) == 1:
        pred = False
    else:
        return None
    uid = unquote(segs[0], errors="strict")
    return (uid, pred) if uid else None


class HealthServer:
    def __init__(self, host: str, port: int, *, health: Probe, ready: Probe, metrics: Callable[[], bytes], api: Api | None = None, openapi: bytes | None = None) -> None:
        self.host = host
        self.port = port
        self._health = health
        self._ready = ready
        self._metrics = metrics
        self._api = api or Api()
        self._openapi = openapi if openapi is not None else openapi_document()
        self._server: asyncio.base_events.Server | None = None
        self._open = 0
        #: the exact paths; everything under :data:`USERS_PREFIX` goes to :meth:`_user`
        self.routes: dict[str, Callable[[], Awaitable[Response]]] = {
            "/metrics": self._get_metrics,
            "/healthz": self._get_health,
            "/readyz": self._get_ready,
            "/openapi.json": self._get_openapi,
            "/v1/model": self._get_model,
        }

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

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[bytes, int, str | None]:
        """The request line, the number of header lines (``MAX_HEADERS + 1`` = too many) and
        the ``Authorization`` header (the only one used)."""
        line = await reader.readline()
        n = 0
        auth = None
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                return line, n, auth
            n += 1
            if n > MAX_HEADERS:
                return line, n, auth
            name, sep, value = h.partition(b":")
            if sep and name.strip().lower() == b"authorization":
                auth = value.strip().decode("latin-1")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line, n_headers, auth = await asyncio.wait_for(self._read_head(reader), HEAD_DEADLINE_S)
            if n_headers > MAX_HEADERS:
                writer.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
            parts = line.decode("latin-1").split()
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body, extra = 405, "text/plain", b"method not allowed\n", "Allow: GET, HEAD\r\n"
            else:
                status, ctype, body, extra = await self._route(path, auth)
            head = f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
            writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError, ValueError, asyncio.LimitOverrunError):
            pass

    async def _route(self, path: str, auth: str | None) -> Response:
        exact = self.routes.get(path)
        if exact is not None:
            return await exact()
        if path.startswith(USERS_PREFIX):
            return await self._user(path, auth)
        return 404, "text/plain", NOT_FOUND, ""

    # --- the routes ------------------------------------------------------------------------------
    async def _get_metrics(self) -> Response:
        return 200, "text/plain; version=0.0.4; charset=utf-8", self._metrics(), ""

    def _probe(self, probe: Probe) -> Response:
        try:
            ok, detail = probe()
        except Exception as exc:  # noqa: BLE001 - a failing probe is a failed probe, not a dropped connection
            ok, detail = False, {"error": f"{type(exc).__name__}: {exc}"}
        return _json(200 if ok else 503, {"ok": ok, **detail})

    async def _get_health(self) -> Response:
        return self._probe(self._health)

    async def _get_ready(self) -> Response:
        return self._probe(self._ready)

    async def _get_openapi(self) -> Response:
        return 200, JSON, self._openapi, ""

    async def _get_model(self) -> Response:
        if self._api.model is None:
            return 404, "text/plain", NOT_FOUND, ""
        return await self._call(self._api.model)

    async def _user(self, path: str, auth: str | None) -> Response:
        api = self._api
        if api.user is None or api.prediction is None:
            return _json(404, {"error": "user routes are disabled"})
        if not authorized(auth, api.auth_token):
            status, ctype, body, _ = _json(401, {"error": "unauthorized"})
            return status, ctype, body, 'WWW-Authenticate: Bearer realm="taskclf-daemon"\r\n'
        try:
            route = user_route(path)
        except UnicodeDecodeError:
            return _json(400, {"error": "the user id is not percent-encoded UTF-8"})
        if route is None:
            return 404, "text/plain", NOT_FOUND, ""
        uid, pred = route
        handler = api.prediction if pred else api.user
        return await self._call(lambda: handler(uid))

    async def _call(self, handler: JsonHandler) -> Response:
        """A handler's answer as JSON; a handler that fails is 500, one that hangs 503."""
        try:
            status, body = await asyncio.wait_for(handler(), HANDLER_TIMEOUT_S)
            return _json(status, body)
        except TimeoutError:
            return _json(503, {"error": f"no answer within {HANDLER_TIMEOUT_S:g} s"})
        except Exception as exc:  # noqa: BLE001 - one failing request never stops the server
            return _json(500, {"error": type(exc).__name__})
