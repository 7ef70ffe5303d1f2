"""The token endpoint, in process via aiohttp's own test server, against a real loopback livekit-server.

The server answers the service's RoomService questions (who is in a room, which demo rooms
exist) and proves that the tokens work: a Python client joins with a token it got in LiveKit's
standard endpoint format, and the room limits in the token are enforced by LiveKit itself.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from livekit import api

from agent.token_policy import RECORDING_ATTRIBUTE
from agent.token_service import Buckets, ConfigError, ServiceConfig, TokenBucket, _networks, client_address, create_app
from agent.tokens import mint
from tests.conftest import LOOPBACK_KEY, LOOPBACK_SECRET, LiveKit, free_port, participant

REPO = Path(__file__).resolve().parents[2]
KEY, SECRET = LOOPBACK_KEY, LOOPBACK_SECRET  # the conftest livekit_server's pair
TOKEN_KEY = "k" * 32
AUTH = {"Authorization": f"Bearer {TOKEN_KEY}"}


@pytest.fixture(scope="module")
def livekit_url(livekit_server: LiveKit) -> str:
    """A real livekit-server on loopback, for the RoomService checks and for joining with the tokens."""
    return livekit_server.ws_url


@pytest.fixture
def cfg(livekit_url: str) -> ServiceConfig:
    return ServiceConfig(api_key=KEY, api_secret=SECRET, ws_url=livekit_url, token_key=TOKEN_KEY,
                         agent_name="voice-agent", ttl=600, rate_per_minute=600, burst=50,
                         fail_per_minute=600, fail_burst=50, public_per_minute=600, public_burst=50,
                         public_max_rooms=50)


def with_(cfg: ServiceConfig, **changes: Any) -> ServiceConfig:
    return ServiceConfig(**{**cfg.__dict__, **changes})


def run(fn: Callable[[TestClient], Awaitable[Any]], cfg: ServiceConfig, buckets: Buckets | None = None) -> Any:
    async def main() -> Any:
        async with TestClient(TestServer(create_app(cfg, buckets=buckets), host="127.0.0.1")) as client:
            return await fn(client)
    return asyncio.run(main())


async def post(client: TestClient, body: Any = None, *, headers: dict[str, str] | None = None,
               data: bytes | None = None, path: str = "/api/token") -> tuple[int, dict[str, str], Any]:
    hdrs = AUTH if headers is None else headers
    resp = await (client.post(path, data=data, headers={**hdrs, "Content-Type": "application/json"})
                  if data is not None else client.post(path, json=body, headers=hdrs))
    return resp.status, dict(resp.headers), await resp.json()


def claims_of(token: str) -> api.Claims:
    return api.TokenVerifier(KEY, SECRET).verify(token)


def assert_voice_grant(claims: api.Claims, room: str) -> None:
    video = claims.video
    assert video.room_join and video.room == room
    assert video.can_publish and video.can_subscribe and video.can_publish_sources == ["microphone"]
    assert not video.room_admin and not video.room_create and not video.room_list
    assert not video.can_update_own_metadata


# --- the seed's n8n shape on /api/token -------------------------------------------------------------

def test_agent_token_service_returns_seed_shape_with_voice_grant(cfg: ServiceConfig) -> None:
    status, headers, body = run(lambda c: post(c, {"identity": "alice", "name": "Alice", "room": "demo"}), cfg)
    assert status == 200
    assert set(body) == {"token", "wsUrl", "room"}
    assert (body["wsUrl"], body["room"]) == (cfg.ws_url, "demo")
    assert headers["Cache-Control"] == "no-store"
    claims = claims_of(body["token"])
    assert (claims.identity, claims.name) == ("alice", "Alice")
    assert_voice_grant(claims, "demo")
    rc = claims.room_config
    assert rc.agents[0].agent_name == "voice-agent"
    assert (rc.max_participants, rc.empty_timeout, rc.departure_timeout) == (8, 300, 20)


def test_agent_token_service_defaults_room_and_ignores_admin_requests(cfg: ServiceConfig) -> None:
    status, _, body = run(lambda c: post(c, {"identity": "bob", "name": "Bob", "preset": "admin",
                                             "roomAdmin": True}), cfg)
    assert status == 200
    assert body["room"].startswith("room-")
    assert_voice_grant(claims_of(body["token"]), body["room"])


def test_agent_token_service_health_is_ok(cfg: ServiceConfig) -> None:
    async def go(c: TestClient) -> tuple[int, Any]:
        resp = await c.get("/api/token/health")
        return resp.status, await resp.json()
    assert run(go, cfg) == (200, {"status": "ok"})


@pytest.mark.parametrize("path", ["/api/token", "/call/token"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN_KEY},
                                     {"Authorization": f"Basic {TOKEN_KEY}"}],
                         ids=["missing", "wrong-key", "no-scheme", "basic-scheme"])
def test_agent_token_service_rejects_bad_key_with_401_json(cfg: ServiceConfig, headers: dict[str, str],
                                                           path: str) -> None:
    status, resp_headers, body = run(lambda c: post(c, {"identity": "alice", "name": "A"}, headers=headers,
                                                    path=path), cfg)
    assert status == 401 and "error" in body and resp_headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("body,status", [
    ({"name": "no identity"}, 422),
    ({"identity": "has space", "name": "x"}, 422),
    ({"identity": "a" * 129, "name": "x"}, 422),
    ({"identity": "alice", "name": "x" * 129}, 422),
    ({"identity": "alice", "name": 5}, 422),
    ({"identity": "alice", "name": "A", "room": "../etc"}, 422),
    ({"identity": "alice", "name": "A", "room": "r" * 129}, 422),
    ({"identity": "alice", "room_name": "r"}, 422),
    (["identity", "alice"], 400),
    ("alice", 400),
], ids=["no-identity", "identity-charset", "identity-length", "name-length", "name-type", "room-charset",
        "room-length", "mixed-formats", "array-body", "string-body"])
def test_agent_token_service_rejects_bad_input_with_json_error(cfg: ServiceConfig, body: Any, status: int) -> None:
    got, _, resp = run(lambda c: post(c, body), cfg)
    assert got == status and isinstance(resp["error"], str)


def test_agent_token_service_rejects_malformed_json_and_oversized_body(cfg: ServiceConfig) -> None:
    async def go(c: TestClient) -> list[tuple[int, Any]]:
        bad = await post(c, data=b"{not json")
        big = await post(c, data=json.dumps({"identity": "a", "name": "x" * 10_000}).encode())
        return [(bad[0], bad[2]), (big[0], big[2])]
    (s1, b1), (s2, b2) = run(go, cfg)
    assert s1 == 400 and "JSON" in b1["error"]
    assert s2 == 413 and "error" in b2


# --- token policy: reserved identities, present identities -------------------------------------------

@pytest.mark.parametrize("body", [
    {"identity": "agent-AJ_abc123", "room": "someone-elses-room"},
    {"identity": "Agent-x"},
    {"identity": "recorder"},
    {"participant_identity": "recorder-1"},
    {"participant_identity": "agent-AJ_abc123", "room_name": "demo"},
], ids=["legacy-agent", "legacy-agent-case", "legacy-recorder", "standard-recorder", "standard-agent"])
def test_agent_token_service_refuses_identities_reserved_for_the_stack(cfg: ServiceConfig, body: dict) -> None:
    status, _, resp = run(lambda c: post(c, body), cfg)
    assert status == 403 and "reserved" in resp["error"]


def test_agent_token_service_refuses_an_identity_already_in_the_room(cfg: ServiceConfig) -> None:
    async def go(c: TestClient) -> list[int]:
        first = await post(c, {"participant_identity": "carol", "room_name": "seat-test"})
        assert first[0] == 201, first
        async with participant(first[2]["server_url"], first[2]["participant_token"]) as joined:
            assert joined["joined"], joined
            taken = await post(c, {"participant_identity": "carol", "room_name": "seat-test"})
            legacy = await post(c, {"identity": "carol", "room": "seat-test"})
            elsewhere = await post(c, {"participant_identity": "carol", "room_name": "other-room"})
            other = await post(c, {"participant_identity": "dave", "room_name": "seat-test"})
        assert "already in room" in taken[2]["error"]
        return [taken[0], legacy[0], elsewhere[0], other[0]]
    assert run(go, cfg) == [409, 409, 201, 201]


def test_agent_token_service_fails_closed_when_livekit_is_unreachable(cfg: ServiceConfig) -> None:
    down = with_(cfg, api_url=f"ws://127.0.0.1:{free_port()}")
    status, _, body = run(lambda c: post(c, {"identity": "erin", "room": "demo"}), down)
    assert status == 503 and "RoomService" in body["error"]
    # A server-chosen room needs no question to LiveKit: still served.
    assert run(lambda c: post(c, {"identity": "erin"}), down)[0] == 200


# --- LiveKit's standard endpoint format ------------------------------------------------------------

def test_agent_token_service_standard_format_encodes_every_allowed_field(cfg: ServiceConfig) -> None:
    request = {"room_name": "std-room", "participant_identity": "frank", "participant_name": "Frank",
               "participant_metadata": '{"crm": 42}', "participant_attributes": {"lang": "en"},
               "room_config": {"agents": [{"agent_name": "voice-agent", "metadata": '{"persona": "kind"}'}]}}
    status, headers, body = run(lambda c: post(c, request), cfg)
    assert status == 201 and set(body) == {"server_url", "participant_token"}
    assert body["server_url"] == cfg.ws_url and headers["Cache-Control"] == "no-store"
    claims = claims_of(body["participant_token"])
    assert (claims.identity, claims.name, claims.metadata) == ("frank", "Frank", '{"crm": 42}')
    assert claims.attributes == {"lang": "en"}
    assert_voice_grant(claims, "std-room")
    agent = claims.room_config.agents[0]
    assert (agent.agent_name, agent.metadata) == ("voice-agent", '{"persona": "kind"}')
    assert claims.room_config.max_participants == 8


def test_agent_token_service_standard_format_with_empty_body_chooses_room_and_identity(cfg: ServiceConfig) -> None:
    async def go(c: TestClient) -> list[Any]:
        return [await post(c, {}), await post(c, data=b"")]
    for status, _, body in run(go, cfg):
        assert status == 201
        claims = claims_of(body["participant_token"])
        assert claims.identity.startswith("user-") and claims.video.room.startswith("room-")


@pytest.mark.parametrize("request_body,status,needle", [
    ({"room_config": {"max_participants": 50}}, 403, "max_participants"),
    ({"room_config": {"emptyTimeout": 86400}}, 403, "empty_timeout"),
    ({"room_config": {"egress": {"room": {"room_name": "x"}}}}, 403, "egress"),
    ({"room_config": {"agents": [{"agent_name": "other-agent"}]}}, 403, "not served"),
    ({"room_config": {"agents": [{"agent_name": "voice-agent"}, {"agent_name": "voice-agent"}]}}, 403, "one agent"),
    ({"room_config": {"agents": [{"agent_name": "voice-agent", "deployment": "x"}]}}, 403, "deployment"),
    ({"room_config": {"no_such_field": 1}}, 422, "RoomConfiguration"),
    ({"participant_attributes": {"lk.agent.state": "speaking"}}, 403, "namespaces"),
    ({"participant_attributes": {RECORDING_ATTRIBUTE: "false"}}, 403, "namespaces"),
    ({"participant_attributes": {"k": 1}}, 422, "participant_attributes"),
    ({"participant_metadata": "x" * 1025}, 422, "participant_metadata"),
    ({"participant_name": "\u202eevil"}, 422, "printable"),
    ({"room_name": "call-0123456789abcdef"}, 403, "public"),
    ({"room_name": "x", "grants": {"roomAdmin": True}}, 422, "unknown field"),
], ids=["max-participants", "empty-timeout", "egress", "other-agent", "two-agents", "agent-deployment",
        "bad-room-config", "lk-attribute", "recording-attribute", "attribute-type", "metadata-size", "rlo-name",
        "public-room-name", "unknown-field"])
def test_agent_token_service_standard_format_refuses_fields_a_caller_may_not_set(
        cfg: ServiceConfig, request_body: dict, status: int, needle: str) -> None:
    got, _, body = run(lambda c: post(c, request_body), cfg)
    assert got == status and needle in body["error"], body


def test_agent_token_service_automatic_dispatch_refuses_named_agents(cfg: ServiceConfig) -> None:
    auto = with_(cfg, agent_name=None)
    status, _, body = run(lambda c: post(c, {"room_config": {"agents": [{"agent_name": "voice-agent"}]}}), auto)
    assert status == 403 and "automatically dispatched" in body["error"]
    status, _, body = run(lambda c: post(c, {"room_config": {"agents": [{"agent_name": ""}]}}), auto)
    assert status == 201 and not claims_of(body["participant_token"]).room_config.agents


async def standard_client(base_url: str, key: str, **fields: Any) -> tuple[str, str]:
    """A Python caller of LiveKit's standard token endpoint: POST the fields, get (server_url, token)."""
    async with aiohttp.ClientSession() as http:
        async with http.post(base_url, json=fields, headers={"Authorization": f"Bearer {key}"}) as resp:
            if resp.status != 201:
                raise RuntimeError(f"token endpoint {base_url} answered {resp.status}: {await resp.text()}")
            body = await resp.json()
    return body["server_url"], body["participant_token"]


def test_agent_token_service_python_client_joins_with_a_standard_format_token(cfg: ServiceConfig) -> None:
    async def go(c: TestClient) -> Any:
        url, token = await standard_client(str(c.make_url("/api/token")), TOKEN_KEY, room_name="py-client",
                                           participant_identity="gina", participant_name="Gina",
                                           participant_attributes={"lang": "de"})
        async with participant(url, token) as joined:
            assert joined["joined"], joined
            lk = api.LiveKitAPI(cfg.ws_url.replace("ws://", "http://"), KEY, SECRET)
            try:
                seen = (await lk.room.list_participants(api.ListParticipantsRequest(room="py-client"))).participants
                rooms = (await lk.room.list_rooms(api.ListRoomsRequest(names=["py-client"]))).rooms
            finally:
                await lk.aclose()
        return seen, rooms
    seen, rooms = run(go, cfg)
    assert [(p.identity, p.name, dict(p.attributes)) for p in seen] == [("gina", "Gina", {"lang": "de"})]
    # The room was created by this token: LiveKit took its limits from the token's roomConfig.
    assert (rooms[0].max_participants, rooms[0].empty_timeout, rooms[0].departure_timeout) == (8, 300, 20)


# --- the page's route: private (key from Caddy) and public (keyless demo) ---------------------------

def test_agent_token_service_private_call_route_takes_the_key_caddy_adds(cfg: ServiceConfig) -> None:
    async def go(c: TestClient) -> list[int]:
        keyless = await post(c, {"participant_name": "Hana"}, headers={}, path="/call/token")
        keyed = await post(c, {"participant_name": "Hana"}, path="/call/token")
        assert claims_of(keyed[2]["participant_token"]).name == "Hana"
        return [keyless[0], keyed[0]]
    assert run(go, cfg) == [401, 201]


def test_agent_token_service_public_route_mints_short_lived_demo_tokens(cfg: ServiceConfig) -> None:
    public = with_(cfg, public=True, public_ttl=600)

    async def go(c: TestClient) -> list[Any]:
        return [await post(c, {"participant_name": "Ivy", "room_config": {"agents": [{"agent_name": "voice-agent"}]}},
                           headers={}, path="/call/token"),
                await post(c, {}, headers={}, path="/call/token"),
                await post(c, {"identity": "ivy"}, headers={}, path="/api/token")]
    (s1, _, b1), (s2, _, b2), (s3, _, _) = run(go, public)
    assert (s1, s2, s3) == (201, 201, 401)   # /api/token still wants the key in public mode
    claims = claims_of(b1["participant_token"])
    assert claims.name == "Ivy" and claims.identity.startswith("user-")
    assert claims.video.room.startswith("call-") and claims.video.room != claims_of(b2["participant_token"]).video.room
    assert_voice_grant(claims, claims.video.room)
    raw = jwt.decode(b1["participant_token"], SECRET, algorithms=["HS256"])
    assert raw["exp"] - raw["nbf"] <= 600
    rc = claims.room_config
    assert (rc.max_participants, rc.empty_timeout, rc.departure_timeout) == (2, 30, 5)
    assert rc.agents[0].agent_name == "voice-agent"


@pytest.mark.parametrize("request_body,needle", [
    ({"room_name": "mine"}, "room_name"),
    ({"participant_identity": "me"}, "participant_identity"),
    ({"participant_metadata": "{}"}, "participant_metadata"),
    ({"participant_attributes": {"a": "b"}}, "participant_attributes"),
    ({"room_config": {"agents": [{"agent_name": "voice-agent", "metadata": "x"}]}}, "metadata"),
    ({"room_config": {"max_participants": 10}}, "max_participants"),
    ({"identity": "me"}, "public route"),
], ids=["room", "identity", "metadata", "attributes", "agent-metadata", "room-limits", "legacy"])
def test_agent_token_service_public_route_refuses_caller_chosen_fields(cfg: ServiceConfig, request_body: dict,
                                                                       needle: str) -> None:
    # A key presented on the public route changes nothing: public mode never widens to key rights.
    status, _, body = run(lambda c: post(c, request_body, path="/call/token"), with_(cfg, public=True))
    assert status == 403 and needle in body["error"], body


def test_agent_token_service_public_route_caps_concurrent_demo_calls(cfg: ServiceConfig) -> None:
    async def go(c: TestClient) -> list[int]:
        return [(await post(c, {}, headers={}, path="/call/token"))[0] for _ in range(3)]
    assert run(go, with_(cfg, public=True, public_max_rooms=2)) == [201, 201, 503]


def test_agent_token_service_public_room_admits_only_caller_and_agent(cfg: ServiceConfig) -> None:
    """LiveKit enforces the demo room's max_participants=2 taken from the public token."""
    async def go(c: TestClient) -> list[str]:
        _, _, body = await post(c, {}, headers={}, path="/call/token")
        room_name = claims_of(body["participant_token"]).video.room
        async with contextlib.AsyncExitStack() as stack:
            outcome = []
            for token in [body["participant_token"], mint(KEY, SECRET, "second", room_name, preset="voice", ttl=60),
                          mint(KEY, SECRET, "third", room_name, preset="voice", ttl=60)]:
                joined = await stack.enter_async_context(participant(body["server_url"], token))
                outcome.append("joined" if joined["joined"] else f"refused: {joined['error']}")
        return outcome
    outcome = run(go, with_(cfg, public=True))
    assert outcome[:2] == ["joined", "joined"] and outcome[2].startswith("refused"), outcome


# --- rate limits per client address -------------------------------------------------------------------

def xff(addr: str, key: str | None = TOKEN_KEY) -> dict[str, str]:
    return {**({"Authorization": f"Bearer {key}"} if key else {}), "X-Forwarded-For": addr}


def test_agent_token_service_rate_limits_per_client_with_retry_after(cfg: ServiceConfig) -> None:
    async def go(c: TestClient) -> list[tuple[int, dict[str, str]]]:
        out = []
        for _ in range(4):
            s, h, _ = await post(c, {"identity": "alice", "name": "A"}, headers=xff("198.51.100.7"))
            out.append((s, h))
        # Another client behind the same Caddy has its own bucket.
        s, h, _ = await post(c, {"identity": "bob", "name": "B"}, headers=xff("198.51.100.8"))
        out.append((s, h))
        return out
    buckets = Buckets(ok=TokenBucket(10, 3), failed=TokenBucket(10, 3), public=TokenBucket(10, 3))
    results = run(go, cfg, buckets=buckets)
    assert [s for s, _ in results] == [200, 200, 200, 429, 200]
    assert 1 <= int(results[3][1]["Retry-After"]) <= 6


def test_agent_token_service_wrong_key_flood_cannot_stop_another_address(cfg: ServiceConfig) -> None:
    """The audit's H2 reproduction: wrong keys from A, then the right key from B (and from A)."""
    async def go(c: TestClient) -> dict[str, list[int]]:
        flood = [(await post(c, {"identity": "x"}, headers=xff("203.0.113.66", "guess")))[0] for _ in range(8)]
        b_right = [(await post(c, {"identity": "y"}, headers=xff("198.51.100.9")))[0] for _ in range(3)]
        b_typo = (await post(c, {"identity": "y"}, headers=xff("198.51.100.9", "typo")))[0]
        b_after = (await post(c, {"identity": "y"}, headers=xff("198.51.100.9")))[0]
        # Callers behind one address (a proxy that hides them): the key holder still gets through.
        a_right = (await post(c, {"identity": "x"}, headers=xff("203.0.113.66")))[0]
        a_still_guessing = (await post(c, {"identity": "x"}, headers=xff("203.0.113.66", "guess")))[0]
        return {"flood": flood, "b": b_right + [b_typo, b_after], "a": [a_right, a_still_guessing]}
    buckets = Buckets(ok=TokenBucket(10, 5), failed=TokenBucket(1, 3), public=TokenBucket(10, 5))
    got = run(go, cfg, buckets=buckets)
    assert got["flood"] == [401, 401, 401] + [429] * 5   # wrong keys are cut off after their burst
    assert got["b"] == [200, 200, 200, 401, 200]         # another address is untouched
    assert got["a"] == [200, 429]                        # the right key is never refused for others' failures


def test_agent_token_service_wrong_keys_do_not_spend_the_key_holders_bucket(cfg: ServiceConfig) -> None:
    async def go(c: TestClient) -> list[int]:
        wrong = [(await post(c, {"identity": "x"}, headers=xff("192.0.2.7", "guess")))[0] for _ in range(4)]
        right = [(await post(c, {"identity": "x"}, headers=xff("192.0.2.7")))[0] for _ in range(3)]
        return wrong + right
    buckets = Buckets(ok=TokenBucket(1, 2), failed=TokenBucket(1, 2), public=TokenBucket(1, 2))
    assert run(go, cfg, buckets=buckets) == [401, 401, 429, 429, 200, 200, 429]


def test_agent_token_service_public_route_rate_limits_per_client(cfg: ServiceConfig) -> None:
    async def go(c: TestClient) -> list[int]:
        a = [(await post(c, {}, headers=xff("203.0.113.5", None), path="/call/token"))[0] for _ in range(3)]
        b = (await post(c, {}, headers=xff("203.0.113.6", None), path="/call/token"))[0]
        return a + [b]
    buckets = Buckets(ok=TokenBucket(10, 5), failed=TokenBucket(10, 5), public=TokenBucket(1, 2))
    assert run(go, with_(cfg, public=True), buckets=buckets) == [201, 201, 429, 201]


def test_agent_token_service_believes_forwarded_for_only_from_trusted_proxies(cfg: ServiceConfig) -> None:
    untrusting = with_(cfg, trusted_proxies=_networks("192.0.2.1"))

    async def go(c: TestClient) -> list[int]:
        return [(await post(c, {"identity": "x"}, headers=xff(f"203.0.113.{i}")))[0] for i in range(3)]
    buckets = Buckets(ok=TokenBucket(1, 2), failed=TokenBucket(1, 2), public=TokenBucket(1, 2))
    # The test client is 127.0.0.1, not a trusted proxy here: its XFF is ignored, one bucket for all.
    assert run(go, untrusting, buckets=buckets) == [200, 200, 429]


class _Req:
    def __init__(self, remote: str, forwarded: str | None = None) -> None:
        self.remote = remote
        self.headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}


@pytest.mark.parametrize("remote,forwarded,want", [
    ("127.0.0.1", "198.51.100.7", "198.51.100.7"),
    ("127.0.0.1", "6.6.6.6, 198.51.100.7", "198.51.100.7"),          # forged left entry ignored
    ("127.0.0.1", "198.51.100.7, 10.0.0.5", "198.51.100.7"),         # nginx -> Caddy chain, both trusted
    ("127.0.0.1", "not-an-ip", "127.0.0.1"),
    ("192.0.2.50", "198.51.100.7", "192.0.2.50"),                    # untrusted peer: XFF ignored
    ("127.0.0.1", "2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),       # IPv6 by /64
    ("::ffff:198.51.100.7", None, "198.51.100.7"),
], ids=["one-hop", "forged-left", "proxy-chain", "garbage", "untrusted-peer", "ipv6-64", "v4-mapped"])
def test_agent_token_service_client_address(remote: str, forwarded: str | None, want: str) -> None:
    trusted = _networks("127.0.0.1,::1,10.0.0.0/8")
    assert client_address(_Req(remote, forwarded), trusted) == want  # type: ignore[arg-type]


def test_agent_token_service_token_bucket_refills_and_peek_spends_nothing() -> None:
    now = [0.0]
    bucket = TokenBucket(rate_per_minute=60, burst=1, clock=lambda: now[0])
    assert bucket.peek("c") == 0 and bucket.peek("c") == 0
    assert bucket.take("c") == 0
    assert bucket.peek("c") == pytest.approx(1.0)
    assert bucket.take("c") == pytest.approx(1.0)
    now[0] += 1.0
    assert bucket.take("c") == 0


def test_agent_token_service_bucket_memory_is_bounded() -> None:
    bucket = TokenBucket(rate_per_minute=1, burst=1, max_clients=3)
    for i in range(10):
        bucket.take(f"c{i}")
    assert len(bucket._buckets) == 3


# --- configuration -------------------------------------------------------------------------------

BASE_ENV = {"LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET, "LIVEKIT_WS_URL": "wss://x", "TOKEN_KEY": TOKEN_KEY}


@pytest.mark.parametrize("env,needle", [
    ({}, "LIVEKIT_API_KEY"),
    ({**BASE_ENV, "TOKEN_KEY": "short"}, "openssl rand"),
    ({**BASE_ENV, "TOKEN_TTL": "999999"}, "TOKEN_TTL"),
    ({**BASE_ENV, "TOKEN_PUBLIC_TTL": "3600"}, "TOKEN_PUBLIC_TTL"),
    ({**BASE_ENV, "TOKEN_RATE_BURST": "many"}, "TOKEN_RATE_BURST"),
    ({**BASE_ENV, "TOKEN_PUBLIC": "maybe"}, "TOKEN_PUBLIC"),
    ({**BASE_ENV, "TOKEN_TRUSTED_PROXIES": "caddy"}, "TOKEN_TRUSTED_PROXIES"),
], ids=["missing", "short-key", "ttl-range", "public-ttl-over-10-min", "not-a-number", "public-flag", "proxy"])
def test_agent_token_service_config_errors_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        ServiceConfig.from_env(env)


def test_agent_token_service_config_from_env() -> None:
    cfg = ServiceConfig.from_env({**BASE_ENV, "TOKEN_TTL": "900", "AGENT_NAME": "", "LIVEKIT_URL": "ws://127.0.0.1:7880",
                                  "TOKEN_PUBLIC": "1", "TOKEN_TRUSTED_PROXIES": "127.0.0.1, 10.1.0.0/16"})
    assert (cfg.ttl, cfg.agent_name, cfg.rate_per_minute, cfg.burst) == (900, None, 10.0, 5)
    assert cfg.api_url == "ws://127.0.0.1:7880" and cfg.public and cfg.public_ttl == 300
    assert ipaddress.ip_address("10.1.2.3") in cfg.trusted_proxies[1]
    default = ServiceConfig.from_env(BASE_ENV)
    assert not default.public and default.api_url == "wss://x" and default.reserved_identities == ("agent-", "recorder")
