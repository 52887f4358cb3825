"""The HTTP server under hostile clients: a head deadline, a header-count limit, a connection cap
(issue 9); and the lleaves cache refusing native code from a directory others can write."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from taskclf_daemon import health
from taskclf_daemon.errors import ArtifactError
from taskclf_daemon.pipeline import model as model_mod


def _server() -> health.HealthServer:
    return health.HealthServer("127.0.0.1", 0, health=lambda: (True, {}), ready=lambda: (True, {}), metrics=lambda: b"m 1\n")


async def _request(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(raw)
    await w.drain()
    try:
        return await asyncio.wait_for(r.read(), timeout)
    finally:
        w.close()


def test_a_slow_sender_is_cut_off_at_the_head_deadline(monkeypatch):
    monkeypatch.setattr(health, "HEAD_DEADLINE_S", 0.5)

    async def run() -> tuple[bytes, float]:
        srv = _server()
        port = await srv.start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            w.write(b"GET /healthz HTTP/1.1\r\n")
            for _ in range(10):  # one header line every 0.2 s: each line in time, the head not
                await asyncio.sleep(0.2)
                try:
                    w.write(b"X-Slow: 1\r\n")
                    await w.drain()
                except ConnectionError:
                    break
            try:
                got = await asyncio.wait_for(r.read(), 5.0)
            except ConnectionError:  # the server closed while we were still writing
                got = b""
            took = loop.time() - t0
            w.close()
            return got, took
        finally:
            await srv.stop()

    got, took = asyncio.run(run())
    assert got == b"" and took < 2.5


def test_too_many_headers_get_431_and_a_normal_request_still_works():
    async def run() -> tuple[bytes, bytes]:
        srv = _server()
        port = await srv.start()
        try:
            many = b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(health.MAX_HEADERS + 1)) + b"\r\n"
            ok = b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(health.MAX_HEADERS)) + b"\r\n"
            return await _request(port, many), await _request(port, ok)
        finally:
            await srv.stop()

    too_many, fine = asyncio.run(run())
    assert too_many.startswith(b"HTTP/1.1 431 ")
    assert fine.startswith(b"HTTP/1.1 200 ")


def test_connections_beyond_the_cap_are_closed_at_once(monkeypatch):
    monkeypatch.setattr(health, "MAX_CONNECTIONS", 4)

    async def run() -> tuple[list[bytes], bytes]:
        srv = _server()
        port = await srv.start()
        try:
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
            await asyncio.sleep(0.1)
            r, w = await asyncio.open_connection("127.0.0.1", port)
            extra = await asyncio.wait_for(r.read(), 2.0)  # closed without waiting for a request
            w.close()
            for _r, iw in idle:
                iw.close()
            await asyncio.sleep(0.1)
            after = await _request(port, b"GET /healthz HTTP/1.1\r\n\r\n")
            return [extra], after
        finally:
            await srv.stop()

    (extra,), after = asyncio.run(run())
    assert extra == b""
    assert after.startswith(b"HTTP/1.1 200 ")


def test_lleaves_cache_in_a_directory_others_can_write_is_not_trusted(tmp_path: Path):
    d = tmp_path / "cache"
    d.mkdir(mode=0o700)
    f = d / "model-x.o"
    f.write_bytes(b"\x7fELF....")
    os.chmod(f, 0o644)
    assert model_mod.untrusted_cache_reason(f) is None
    os.chmod(d, 0o777)
    assert "writable by group or others" in model_mod.untrusted_cache_reason(f)
    os.chmod(d, 0o700)
    os.chmod(f, 0o666)
    assert "writable by group or others (mode 666)" in model_mod.untrusted_cache_reason(f)
    assert model_mod.untrusted_cache_reason(d / "missing.o") is None  # a miss, not a threat


def test_a_lleaves_backend_refuses_an_untrusted_cache_naming_the_fix(tmp_path: Path):
    pytest.importorskip("lleaves")
    from helpers_rows import golden_dir

    bundle = next((golden_dir() / "models").glob("2026-*"))
    d = tmp_path / "cache"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(ArtifactError, match="not safe to load native code.*chmod go-w"):
        model_mod.ModelBundle.load(bundle, backend="lleaves", cache_dir=d)
    auto = model_mod.ModelBundle.load(bundle, backend="auto", cache_dir=d)
    assert auto.backend_info()["model_backend"] == "lightgbm" and "not trusted" in auto.backend_note
