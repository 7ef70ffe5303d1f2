"""The token endpoint, in process via aiohttp's own test server (no pytest-aiohttp)."""
from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient, TestServer
from livekit import api

from agent.token_service import ConfigError, ServiceConfig, TokenBucket, create_app

KEY, SECRET = "APItestkey", "s" * 40
TOKEN_KEY = "k" * 32
AUTH = {"Authorization": f"Bearer {TOKEN_KEY}"}
CFG = ServiceConfig(api_key=KEY, api_secret=SECRET, ws_url="wss://lk.example.test", token_key=TOKEN_KEY,
                    agent_name="voice-agent", ttl=600, rate_per_minute=600, burst=50)


def run(fn: Callable[[TestClient], Awaitable[Any]], cfg: ServiceConfig = CFG,
        bucket: TokenBucket | None = None) -> Any:
    async def main() -> Any:
        async with TestClient(TestServer(create_app(cfg, bucket=bucket), host="127.0.0.1")) as client:
            return await fn(client)
    return asyncio.run(main())


async def post(client: TestClient, body: Any = None, *, headers: dict[str, str] | None = None,
               data: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    hdrs = AUTH if headers is None else headers
    resp = await (client.post("/api/token", data=data, headers={**hdrs, "Content-Type": "application/json"})
                  if data is not None else client.post("/api/token", json=body, headers=hdrs))
    return resp.status, dict(resp.headers), await resp.json()


def test_agent_token_service_returns_seed_shape_with_speaker_grant() -> None:
    status, headers, body = run(lambda c: post(c, {"identity": "alice", "name": "Alice", "room": "demo"}))
    assert status == 200
    assert set(body) == {"token", "wsUrl", "room"}
    assert (body["wsUrl"], body["room"]) == ("wss://lk.example.test", "demo")
    assert headers["Cache-Control"] == "no-store"
    claims = api.TokenVerifier(KEY, SECRET).verify(body["token"])
    assert (claims.identity, claims.name, claims.video.room) == ("alice", "Alice", "demo")
    assert claims.video.room_join and claims.video.can_publish and claims.video.can_subscribe
    assert not claims.video.room_admin and not claims.video.room_create and not claims.video.room_list
    assert claims.room_config.agents[0].agent_name == "voice-agent"


def test_agent_token_service_defaults_room_and_ignores_admin_requests() -> None:
    status, _, body = run(lambda c: post(c, {"identity": "bob", "name": "Bob", "preset": "admin",
                                             "roomAdmin": True}))
    assert status == 200
    assert body["room"].startswith("room-")
    claims = api.TokenVerifier(KEY, SECRET).verify(body["token"])
    assert claims.video.room == body["room"] and not claims.video.room_admin


def test_agent_token_service_health_is_ok() -> None:
    async def go(c: TestClient) -> tuple[int, Any]:
        resp = await c.get("/api/token/health")
        return resp.status, await resp.json()
    assert run(go) == (200, {"status": "ok"})


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN_KEY},
                                     {"Authorization": f"Basic {TOKEN_KEY}"}],
                         ids=["missing", "wrong-key", "no-scheme", "basic-scheme"])
def test_agent_token_service_rejects_bad_key_with_401_json(headers: dict[str, str]) -> None:
    status, _, body = run(lambda c: post(c, {"identity": "alice", "name": "A"}, headers=headers))
    assert status == 401 and "error" in body


@pytest.mark.parametrize("body,status", [
    ({"name": "no identity"}, 422),
    ({"identity": "has space", "name": "x"}, 422),
    ({"identity": "a" * 129, "name": "x"}, 422),
    ({"identity": "alice", "name": "x" * 129}, 422),
    ({"identity": "alice", "name": 5}, 422),
    ({"identity": "alice", "name": "A", "room": "../etc"}, 422),
    ({"identity": "alice", "name": "A", "room": "r" * 129}, 422),
    (["identity", "alice"], 400),
    ("alice", 400),
], ids=["no-identity", "identity-charset", "identity-length", "name-length", "name-type", "room-charset",
        "room-length", "array-body", "string-body"])
def test_agent_token_service_rejects_bad_input_with_json_error(body: Any, status: int) -> None:
    got, _, resp = run(lambda c: post(c, body))
    assert got == status and isinstance(resp["error"], str)


def test_agent_token_service_rejects_malformed_json_and_oversized_body() -> None:
    async def go(c: TestClient) -> list[tuple[int, Any]]:
        bad = await post(c, data=b"{not json")
        big = await post(c, data=json.dumps({"identity": "a", "name": "x" * 10_000}).encode())
        return [(bad[0], bad[2]), (big[0], big[2])]
    (s1, b1), (s2, b2) = run(go)
    assert s1 == 400 and "JSON" in b1["error"]
    assert s2 == 413 and "error" in b2


def test_agent_token_service_rate_limits_per_client_with_retry_after() -> None:
    async def go(c: TestClient) -> list[tuple[int, dict[str, str]]]:
        out = []
        for _ in range(4):
            s, h, _ = await post(c, {"identity": "alice", "name": "A"},
                                 headers={**AUTH, "X-Forwarded-For": "198.51.100.7"})
            out.append((s, h))
        # Another client behind the same Caddy has its own bucket.
        s, h, _ = await post(c, {"identity": "bob", "name": "B"},
                             headers={**AUTH, "X-Forwarded-For": "198.51.100.8"})
        out.append((s, h))
        return out
    results = run(go, bucket=TokenBucket(rate_per_minute=10, burst=3))
    assert [s for s, _ in results] == [200, 200, 200, 429, 200]
    assert 1 <= int(results[3][1]["Retry-After"]) <= 6


def test_agent_token_service_rate_limit_also_guards_the_key() -> None:
    async def go(c: TestClient) -> list[int]:
        return [(await post(c, {"identity": "a"}, headers={"Authorization": "Bearer guess"}))[0] for _ in range(3)]
    assert run(go, bucket=TokenBucket(rate_per_minute=10, burst=2)) == [401, 401, 429]


def test_agent_token_service_token_bucket_refills() -> None:
    now = [0.0]
    bucket = TokenBucket(rate_per_minute=60, burst=1, clock=lambda: now[0])
    assert bucket.take("c") == 0
    assert bucket.take("c") == pytest.approx(1.0)
    now[0] += 1.0
    assert bucket.take("c") == 0


def test_agent_token_service_bucket_memory_is_bounded() -> None:
    bucket = TokenBucket(rate_per_minute=1, burst=1, max_clients=3)
    for i in range(10):
        bucket.take(f"c{i}")
    assert len(bucket._buckets) == 3


@pytest.mark.parametrize("env,needle", [
    ({}, "LIVEKIT_API_KEY"),
    ({"LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET, "LIVEKIT_WS_URL": "wss://x", "TOKEN_KEY": "short"},
     "openssl rand"),
    ({"LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET, "LIVEKIT_WS_URL": "wss://x", "TOKEN_KEY": TOKEN_KEY,
      "TOKEN_TTL": "999999"}, "TOKEN_TTL"),
], ids=["missing", "short-key", "ttl-range"])
def test_agent_token_service_config_errors_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        ServiceConfig.from_env(env)


def test_agent_token_service_config_from_env() -> None:
    cfg = ServiceConfig.from_env({"LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET, "LIVEKIT_WS_URL": "wss://x",
                                  "TOKEN_KEY": TOKEN_KEY, "TOKEN_TTL": "900", "AGENT_NAME": ""})
    assert (cfg.ttl, cfg.agent_name, cfg.rate_per_minute, cfg.burst) == (900, None, 10.0, 5)
