"""HealthServer: /healthz /readyz /metrics over raw HTTP/1.1 on asyncio streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from taskclf_daemon.health import HealthServer

METRICS = b"# HELP taskclf_predictions_total Predictions emitted\n# TYPE taskclf_predictions_total counter\ntaskclf_predictions_total 42\n"


class Probes:
    def __init__(self) -> None:
        self.healthy = True
        self.ready = False
        self.metric_calls = 0

    def health(self) -> tuple[bool, dict[str, Any]]:
        return self.healthy, {"poll_age_s": 0.5}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.ready, {"assigned": 3 if self.ready else 0}

    def metrics(self) -> bytes:
        self.metric_calls += 1
        return METRICS


async def request(port: int, method: str, path: str, *, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)  # server closes: read to EOF
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    proto, status, _reason = status_line.split(" ", 2)
    assert proto == "HTTP/1.1"
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    return int(status), headers, body


def run_with_server(probes: Probes, test: Callable[[int], Awaitable[None]]) -> None:
    async def main() -> None:
        srv = HealthServer("127.0.0.1", 0, health=probes.health, ready=probes.readiness, metrics=probes.metrics)
        port = await srv.start()
        assert port > 0 and srv.port == port
        try:
            await asyncio.wait_for(test(port), 20)
        finally:
            await srv.stop()

    asyncio.run(main())


def test_healthz_follows_the_probe() -> None:
    probes = Probes()

    async def t(port: int) -> None:
        status, headers, body = await request(port, "GET", "/healthz")
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert int(headers["content-length"]) == len(body)
        assert json.loads(body) == {"ok": True, "poll_age_s": 0.5}

        probes.healthy = False
        status, _, body = await request(port, "GET", "/healthz")
        assert status == 503
        assert json.loads(body) == {"ok": False, "poll_age_s": 0.5}

    run_with_server(probes, t)


def test_readyz_follows_the_probe() -> None:
    probes = Probes()

    async def t(port: int) -> None:
        status, _, body = await request(port, "GET", "/readyz")
        assert status == 503
        assert json.loads(body) == {"ok": False, "assigned": 0}

        probes.ready = True
        status, headers, body = await request(port, "GET", "/readyz?verbose=1")
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {"ok": True, "assigned": 3}

    run_with_server(probes, t)


def test_metrics_exposition() -> None:
    probes = Probes()

    async def t(port: int) -> None:
        status, headers, body = await request(port, "GET", "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain")
        assert int(headers["content-length"]) == len(METRICS)
        assert body == METRICS
        assert probes.metric_calls == 1

    run_with_server(probes, t)


def test_unknown_path_and_method() -> None:
    probes = Probes()

    async def t(port: int) -> None:
        status, _, body = await request(port, "GET", "/nope")
        assert status == 404
        assert b"/metrics" in body
        for method in ("POST", "PUT", "DELETE"):
            status, _, _ = await request(port, method, "/healthz")
            assert status == 405, method
        status, _, _ = await request(port, "POST", "/metrics")
        assert status == 405
        assert probes.metric_calls == 0  # a refused method never computes the body

    run_with_server(probes, t)


def test_head_returns_headers_only() -> None:
    probes = Probes()
    probes.ready = True

    async def t(port: int) -> None:
        status, headers, body = await request(port, "HEAD", "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain")
        assert int(headers["content-length"]) == len(METRICS)
        assert body == b""
        status, headers, body = await request(port, "HEAD", "/readyz")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0

    run_with_server(probes, t)


def test_silent_and_vanishing_clients_do_not_break_the_server() -> None:
    probes = Probes()

    async def t(port: int) -> None:
        # a client that connects and sends nothing, held open while others are served
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        # a client that connects and hangs up at once
        _, gone_w = await asyncio.open_connection("127.0.0.1", port)
        gone_w.close()
        # a client that sends half a request line and hangs up
        _, half_w = await asyncio.open_connection("127.0.0.1", port)
        half_w.write(b"GET /hea")
        await half_w.drain()
        half_w.close()
        await asyncio.sleep(0.05)

        for _ in range(3):
            status, _, body = await request(port, "GET", "/healthz", timeout=2.0)
            assert status == 200 and json.loads(body)["ok"] is True
        idle_w.close()
        await asyncio.sleep(0.05)
        status, _, _ = await request(port, "GET", "/metrics", timeout=2.0)
        assert status == 200

    run_with_server(probes, t)
