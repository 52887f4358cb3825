"""The JSON API of the HTTP server (health.py) with fake handlers: routing, URL-decoded user ids,
bearer auth, disabled user routes, failing and hanging handlers -- and every answer checked
against the committed OpenAPI document (docs/openapi.json), which the server also serves."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from taskclf_daemon import health
from taskclf_daemon.health import Api, HealthServer, authorized, openapi_document, user_route

REPO = Path(__file__).resolve().parents[1]
DOC_PATH = REPO / "docs" / "openapi.json"
DOC = json.loads(DOC_PATH.read_bytes())
TOKEN = "t0ken-with spaces/and=signs"

PRED = {"user_id": "u-1", "bucket_start_ts": "2026-04-01T09:00:00Z", "mapped_label_name": "Build", "confidence": 0.9, "model_bundle_id": "b1", "core_probs": [0.1] * 8}
MODEL = {
    "bundle_id": "b1",
    "schema": {"version": "v1", "hash": "4077fe0dba70"},
    "label_set": ["Build", "Write"],
    "backend": {"model_backend": "lightgbm", "model_backend_requested": "lightgbm"},
    "training_metrics": {"macro_f1": 0.5},
    "feature_importance": [{"feature": "keys_per_min", "gain": 0.75}, {"feature": "hour_of_day", "gain": 0.25}],
    "calibration": {"store_id": "store@1234abcd", "method": "temperature", "per_user_calibrators": 2, "path": "/x", "model_bundle_id": "b1", "created_at": None},
    "policy": {"reject_threshold": 0.55},
    "last_reload": None,
}


class FakeDaemon:
    """Users 'u-1' and 'a/b ü' are owned (partition 1); 'elsewhere' maps to partition 3,
    owned by another instance; anything else is an unknown user of partition 0."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.fail = False
        self.hang = False

    def _partition(self, uid: str) -> int:
        return 3 if uid == "elsewhere" else (1 if uid in ("u-1", "a/b ü") else 0)

    async def model(self) -> tuple[int, Any]:
        if self.fail:
            raise RuntimeError("boom")
        return 200, MODEL

    async def user(self, uid: str) -> tuple[int, Any]:
        self.seen.append(uid)
        if self.hang:
            await asyncio.sleep(60)
        p = self._partition(uid)
        if p == 3:
            return 404, {"error": "not owned here", "partition": p}
        if p == 0:
            return 404, {"error": "unknown user", "partition": p}
        body = {
            "user_id": uid,
            "partition": p,
            "windows_seen": 7,
            "last_window_ts": "2026-04-01T09:00:00Z",
            "calibrator": {"scope": "user", "kind": "temperature", "method": "temperature"},
            "recent_labels": {"windows": 3, "labels": {"Build": 2, "Write": 1}},
            "last_prediction": PRED,
            "personalisation": None if uid != "u-1" else {
                "evidence": {"labeled_windows": 240, "labeled_days": 4, "distinct_labels": 5, "is_eligible": True, "labels_total": 240, "pending_windows": 12, "known_spans": 3},
                "in_force": {"scope": "user", "kind": "head", "version": "h1"},
                "last_decision": {"adopted": {"kind": "head", "version": "h1"}, "reason": "best held-out NLL"},
                "top_features": [{"feature": "logp_Build", "weight": 1.25, "pushes_toward": "Debug", "toward_weight": 0.9}],
            },
        }
        return 200, body

    async def prediction(self, uid: str) -> tuple[int, Any]:
        status, body = await self.user(uid)
        return (200, body["last_prediction"]) if status == 200 else (status, body)


async def request(port: int, path: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode("latin-1"))
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines)}
    return int(status_line.split(" ")[1]), hdrs, body


def serve(fake: FakeDaemon, test: Callable[[int], Awaitable[None]], *, token: str | None = TOKEN, user_routes: bool = True) -> None:
    api = Api(model=fake.model, user=fake.user if user_routes else None, prediction=fake.prediction if user_routes else None, auth_token=token)

    async def main() -> None:
        srv = HealthServer("127.0.0.1", 0, health=lambda: (True, {}), ready=lambda: (False, {"x": 1}), metrics=lambda: b"m 1\n", api=api)
        port = await srv.start()
        try:
            await asyncio.wait_for(test(port), 60)
        finally:
            await srv.stop()

    asyncio.run(main())


AUTH = {"Authorization": f"Bearer {TOKEN}"}


# --- the document ------------------------------------------------------------------------------
def test_the_served_document_is_the_committed_one() -> None:
    assert openapi_document() == DOC_PATH.read_bytes()
    assert DOC["openapi"].startswith("3.1")

    async def t(port: int) -> None:
        status, hdrs, body = await request(port, "/openapi.json")
        assert status == 200 and hdrs["content-type"] == "application/json"
        assert body == DOC_PATH.read_bytes()

    serve(FakeDaemon(), t)


def _template(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{user_id}", path)


def test_every_route_the_server_answers_is_documented() -> None:
    srv = HealthServer("127.0.0.1", 0, health=lambda: (True, {}), ready=lambda: (True, {}), metrics=lambda: b"")
    documented = set(DOC["paths"])
    assert set(srv.routes) <= documented
    assert {health.USERS_PREFIX + "{user_id}", health.USERS_PREFIX + "{user_id}/prediction"} <= documented
    assert documented == set(srv.routes) | {health.USERS_PREFIX + "{user_id}", health.USERS_PREFIX + "{user_id}/prediction"}


def check(path_template: str, status: int, hdrs: dict[str, str], body: bytes) -> None:
    """The answer conforms to the document: a documented status, and a JSON body valid against
    the documented schema."""
    responses = DOC["paths"][path_template]["get"]["responses"]
    assert str(status) in responses, (path_template, status, body)
    content = responses[str(status)].get("content", {})
    ctype = hdrs["content-type"].split(";")[0]
    assert ctype in content, (path_template, status, ctype)
    if ctype == "application/json":
        schema = {"components": DOC["components"], **content[ctype]["schema"]}
        jsonschema.Draft202012Validator(schema).validate(json.loads(body))


# --- routes ------------------------------------------------------------------------------------
def test_model_and_probes_are_open_and_conform() -> None:
    async def t(port: int) -> None:
        for path in ("/v1/model", "/healthz", "/readyz", "/metrics", "/openapi.json"):
            status, hdrs, body = await request(port, path)  # no token: these stay open
            check(path, status, hdrs, body)
            assert status == (503 if path == "/readyz" else 200), path
        status, _, body = await request(port, "/v1/model")
        assert json.loads(body) == MODEL

    serve(FakeDaemon(), t)


def test_user_routes_conform_and_decode_the_user_id() -> None:
    fake = FakeDaemon()

    async def t(port: int) -> None:
        status, hdrs, body = await request(port, "/v1/users/u-1", headers=AUTH)
        check("/v1/users/{user_id}", status, hdrs, body)
        assert status == 200 and json.loads(body)["windows_seen"] == 7
        status, hdrs, body = await request(port, "/v1/users/u-1/prediction?x=1", headers=AUTH)
        check("/v1/users/{user_id}/prediction", status, hdrs, body)
        assert status == 200 and json.loads(body) == PRED
        status, _, body = await request(port, "/v1/users/" + quote("a/b ü", safe=""), headers=AUTH)
        assert status == 200 and json.loads(body)["user_id"] == "a/b ü"
        assert fake.seen[-1] == "a/b ü"

    serve(fake, t)


def test_a_user_owned_elsewhere_is_404_with_its_partition() -> None:
    async def t(port: int) -> None:
        for path in ("/v1/users/elsewhere", "/v1/users/elsewhere/prediction"):
            status, hdrs, body = await request(port, path, headers=AUTH)
            check(_template(path.replace("elsewhere", "{user_id}")), status, hdrs, body)
            assert (status, json.loads(body)) == (404, {"error": "not owned here", "partition": 3})
        status, _, body = await request(port, "/v1/users/nobody", headers=AUTH)
        assert (status, json.loads(body)) == (404, {"error": "unknown user", "partition": 0})

    serve(FakeDaemon(), t)


def test_bad_paths() -> None:
    fake = FakeDaemon()

    async def t(port: int) -> None:
        for path in ("/v1/users/", "/v1/users//prediction", "/v1/users/u-1/other", "/v1/users/u-1/prediction/x", "/v1/user/u-1", "/v1", "/v1/model/x"):
            status, _, _ = await request(port, path, headers=AUTH)
            assert status == 404, path
        status, hdrs, body = await request(port, "/v1/users/%ff%fe", headers=AUTH)  # not UTF-8
        check("/v1/users/{user_id}", status, hdrs, body)
        assert status == 400
        status, hdrs, _ = await request(port, "/v1/users/u-1", method="POST", headers=AUTH)
        assert status == 405 and hdrs["allow"] == "GET, HEAD"  # RFC 9110: a 405 lists the methods
        assert fake.seen == []  # no handler was called for any of them

    serve(fake, t)


def test_user_routes_need_the_bearer_token() -> None:
    fake = FakeDaemon()

    async def t(port: int) -> None:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}, {"Authorization": f"Bearer {TOKEN}x"}):
            for path in ("/v1/users/u-1", "/v1/users/u-1/prediction"):
                status, hdrs, body = await request(port, path, headers=headers)
                check(_template(path.replace("u-1", "{user_id}")), status, hdrs, body)
                assert status == 401 and hdrs["www-authenticate"].startswith("Bearer"), headers
        assert fake.seen == []
        status, _, _ = await request(port, "/v1/users/u-1", headers={"authorization": f"bearer {TOKEN}"})
        assert status == 200  # scheme and header name are case-insensitive
        status, _, _ = await request(port, "/metrics")
        assert status == 200

    serve(fake, t)


def test_without_a_token_user_routes_are_open() -> None:
    async def t(port: int) -> None:
        status, _, _ = await request(port, "/v1/users/u-1")
        assert status == 200

    serve(FakeDaemon(), t, token=None)


def test_disabled_user_routes_are_404_even_with_the_token() -> None:
    fake = FakeDaemon()

    async def t(port: int) -> None:
        for path in ("/v1/users/u-1", "/v1/users/u-1/prediction"):
            status, hdrs, body = await request(port, path, headers=AUTH)
            check(_template(path.replace("u-1", "{user_id}")), status, hdrs, body)
            assert status == 404 and json.loads(body) == {"error": "user routes are disabled"}
        status, _, _ = await request(port, "/v1/model")
        assert status == 200
        assert fake.seen == []

    serve(fake, t, user_routes=False)


def test_failing_and_hanging_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "HANDLER_TIMEOUT_S", 0.3)
    fake = FakeDaemon()

    async def t(port: int) -> None:
        fake.fail = True
        status, hdrs, body = await request(port, "/v1/model")
        check("/v1/model", status, hdrs, body)
        assert status == 500 and b"boom" not in body
        fake.hang = True
        status, hdrs, body = await request(port, "/v1/users/u-1", headers=AUTH)
        check("/v1/users/{user_id}", status, hdrs, body)
        assert status == 503
        status, _, _ = await request(port, "/healthz")
        assert status == 200

    serve(fake, t)


def test_head_of_an_api_route() -> None:
    async def t(port: int) -> None:
        status, hdrs, body = await request(port, "/v1/model", method="HEAD")
        assert status == 200 and body == b"" and int(hdrs["content-length"]) > 0

    serve(FakeDaemon(), t)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(uid=st.text(min_size=1, max_size=40), pred=st.booleans())
def test_any_user_id_round_trips_and_every_answer_conforms(uid: str, pred: bool) -> None:
    fake = FakeDaemon()
    path = "/v1/users/" + quote(uid, safe="") + ("/prediction" if pred else "")

    async def t(port: int) -> None:
        status, hdrs, body = await request(port, path, headers=AUTH)
        check("/v1/users/{user_id}" + ("/prediction" if pred else ""), status, hdrs, body)
        assert fake.seen == [uid]

    serve(fake, t)


def test_authorized() -> None:
    assert authorized(None, None) and authorized("anything", None)
    assert not authorized(None, "t") and not authorized("Bearer", "t") and not authorized("Bearer tt", "t")
    assert authorized("Bearer t", "t") and authorized("BEARER  t ", "t")
    # a non-ASCII token: the header's raw bytes (read as latin-1) are its UTF-8
    assert authorized("Bearer " + "pässwörd".encode().decode("latin-1"), "pässwörd") and not authorized("Bearer pässwörd", "pässwörd")
    assert user_route("/v1/users/a%20b") == ("a b", False)
    assert user_route("/v1/users/a%2Fb/prediction") == ("a/b", True)
    assert user_route("/v1/users/") is None and user_route("/v1/users/a/b") is None
