"""schemathesis against the server and its own OpenAPI document (docs/openapi.json): generated
requests for every operation (user ids of every kind, with and without the token), every answer
checked by schemathesis' checks (documented status, content type, response schema, ...). A fake
daemon is behind the server (tests/test_http_api.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis

from taskclf_daemon.health import Api, HealthServer
from test_http_api import AUTH, TOKEN, FakeDaemon

SCHEMA = schemathesis.openapi.from_path(str(Path(__file__).resolve().parents[1] / "docs" / "openapi.json"))


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """The server with a fake daemon behind it, on its own event loop in a thread."""
    fake = FakeDaemon()
    loop = asyncio.new_event_loop()
    srv = HealthServer("127.0.0.1", 0, health=lambda: (True, {}), ready=lambda: (True, {}), metrics=lambda: b"m 1\n", api=Api(fake.model, fake.user, fake.prediction, TOKEN))
    port = loop.run_until_complete(srv.start())
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)


@SCHEMA.parametrize()
def test_api_conforms_to_its_openapi_document(case, base_url):
    case.call_and_validate(base_url=base_url, headers=AUTH)


@SCHEMA.parametrize()
def test_api_conforms_without_the_token(case, base_url):
    case.call_and_validate(base_url=base_url)
