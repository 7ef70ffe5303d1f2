"""Token endpoint: backends (n8n) and the voice page get LiveKit tokens without ever seeing the API secret.

    python -m agent.token_service     # env: see ServiceConfig.from_env (TOKEN_HOST, TOKEN_PORT for the bind)

Routes (Caddy terminates TLS and proxies them here; the service binds loopback/private only):
- POST /api/token    bearer key (`Authorization: Bearer <TOKEN_KEY>`); the seed's n8n shape
                     {identity, name?, room?} -> 200 {token, wsUrl, room}, or LiveKit's standard
                     endpoint format -> 201 {server_url, participant_token} (agent/token_policy.py).
- POST /call/token   the voice page's route, both formats too.
                     Private mode (default): Caddy's basic auth guards /call/* and Caddy replaces the
                     browser's Authorization header upstream with `Authorization: Bearer <TOKEN_KEY>`,
                     so this route checks the same bearer key and the browser never holds it.
                     Public mode (TOKEN_PUBLIC=1): no key; only short-lived tokens for a fresh
                     server-chosen room with the agent dispatched, 2 participants, short timeouts.
                     A key sent here is ignored: public mode never widens to key rights.
- GET  /api/token/health

Abuse limits, all per client address (X-Forwarded-For, believed only from TOKEN_TRUSTED_PROXIES):
requests with a wrong or no key spend a bucket of their own, so a flood of wrong keys never
touches the requests that present the right one (from another address, or even from the same
shared address); requests with the key and public requests have their own buckets.
"""
from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import math
import os
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol
from urllib.parse import urlparse

import aiohttp
from aiohttp import web

from agent.token_policy import PUBLIC_ROOM_PREFIX, Caller, Grant, Policy, PolicyError, check
from agent.tokens import DEFAULT_TTL, MAX_TTL, TokenError, mint

log = logging.getLogger("agent.token_service")

PRESET = "voice"          # fixed: microphone only, never roomAdmin, whatever the caller sends
MAX_BODY = 4096           # the largest valid request (16 attributes, 1 KiB metadata) fits
MAX_CLIENTS = 10_000      # rate-limit buckets kept in memory per kind before the oldest are dropped
PUBLIC_MAX_TTL = 600      # the public route's tokens live at most 10 minutes
PUBLIC_MAX_PARTICIPANTS = 2   # the caller and the agent
LIVEKIT_API_TIMEOUT = 5.0     # seconds per RoomService call: a token request must not hang


class ConfigError(ValueError):
    pass


def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for item in (p.strip() for p in raw.split(",")):
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ConfigError(f"TOKEN_TRUSTED_PROXIES entry {item!r} is not an address or CIDR: {exc}") from exc
    return tuple(nets)


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the service reads from the environment, read once at start-up (from_env)."""
    api_key: str                  # LIVEKIT_API_KEY: signs the tokens (iss)
    api_secret: str               # LIVEKIT_API_SECRET
    ws_url: str                   # LIVEKIT_WS_URL: the public wss:// URL handed to clients
    token_key: str                # TOKEN_KEY: the bearer key of /api/token (and /call/token in private mode)
    # LIVEKIT_URL: where the service itself reaches LiveKit's RoomService (presence and room
    # checks); on a node the local ws://127.0.0.1:7880. Default: ws_url.
    api_url: str = ""
    agent_name: str | None = None  # AGENT_NAME: tokens dispatch this agent; empty = automatic dispatch
    ttl: int = DEFAULT_TTL        # TOKEN_TTL: seconds a key-route token stays valid for joining (60..86400)
    rate_per_minute: float = 10.0  # TOKEN_RATE_PER_MINUTE: authenticated requests per client address
    burst: int = 5                # TOKEN_RATE_BURST
    fail_per_minute: float = 5.0  # TOKEN_FAIL_RATE_PER_MINUTE: wrong-key attempts per client address
    fail_burst: int = 5           # TOKEN_FAIL_BURST
    # TOKEN_TRUSTED_PROXIES: addresses/CIDRs whose X-Forwarded-For is believed (Caddy on loopback).
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = \
        field(default_factory=lambda: _networks("127.0.0.1,::1"))
    # TOKEN_RESERVED_IDENTITIES: identity prefixes no caller may take (agents join as agent-<job>).
    reserved_identities: tuple[str, ...] = ("agent-", "recorder")
    max_participants: int = 8     # TOKEN_MAX_PARTICIPANTS: per room created by a key-route token
    empty_timeout: int = 300      # TOKEN_EMPTY_TIMEOUT: s a created room waits for its first participant
    departure_timeout: int = 20   # TOKEN_DEPARTURE_TIMEOUT: s a room lives on after the last one left
    public: bool = False          # TOKEN_PUBLIC: 1 = /call/token mints keyless demo tokens
    public_ttl: int = 300         # TOKEN_PUBLIC_TTL: s, at most 600
    public_per_minute: float = 2.0  # TOKEN_PUBLIC_RATE_PER_MINUTE: per client address
    public_burst: int = 3         # TOKEN_PUBLIC_BURST
    public_max_rooms: int = 3     # TOKEN_PUBLIC_MAX_ROOMS: demo calls at once (each runs an agent job)
    public_empty_timeout: int = 30  # TOKEN_PUBLIC_EMPTY_TIMEOUT: s
    public_departure_timeout: int = 5  # TOKEN_PUBLIC_DEPARTURE_TIMEOUT: s

    @property
    def policy(self) -> Policy:
        return Policy(agent_name=self.agent_name, reserved_identity_prefixes=self.reserved_identities)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ServiceConfig":
        env = dict(os.environ if env is None else env)
        missing = [k for k in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "LIVEKIT_WS_URL", "TOKEN_KEY")
                   if not env.get(k)]
        if missing:
            raise ConfigError(f"{', '.join(missing)} not set; the token service needs all of "
                              "LIVEKIT_API_KEY, LIVEKIT_API_SECRET, LIVEKIT_WS_URL and TOKEN_KEY")
        if len(env["TOKEN_KEY"]) < 16:
            raise ConfigError(f"TOKEN_KEY is {len(env['TOKEN_KEY'])} characters; use at least 16 — "
                              'generate one with "openssl rand -hex 32"')

        def num(name: str, default: float, lo: float, hi: float, kind: type = int) -> Any:
            raw = env.get(name, "")
            try:
                value = kind(raw) if raw.strip() else kind(default)
            except ValueError:
                raise ConfigError(f"{name} is {raw!r}; it must be a number in {lo:g}..{hi:g}") from None
            if not lo <= value <= hi:
                raise ConfigError(f"{name} is {value}; use {lo:g}..{hi:g}")
            return value

        public_raw = env.get("TOKEN_PUBLIC", "0").strip().lower()
        if public_raw not in ("0", "1", "false", "true", "no", "yes", ""):
            raise ConfigError(f"TOKEN_PUBLIC is {public_raw!r}; use 1 (public demo route) or 0 (private, default)")
        reserved = tuple(p.strip().lower() for p in env.get("TOKEN_RESERVED_IDENTITIES", "agent-,recorder").split(",")
                         if p.strip())
        return cls(
            api_key=env["LIVEKIT_API_KEY"], api_secret=env["LIVEKIT_API_SECRET"], ws_url=env["LIVEKIT_WS_URL"],
            token_key=env["TOKEN_KEY"], api_url=env.get("LIVEKIT_URL") or env["LIVEKIT_WS_URL"],
            agent_name=env.get("AGENT_NAME", "").strip() or None,
            ttl=num("TOKEN_TTL", DEFAULT_TTL, 60, MAX_TTL),
            rate_per_minute=num("TOKEN_RATE_PER_MINUTE", 10, 0.01, 10_000, float),
            burst=num("TOKEN_RATE_BURST", 5, 1, 10_000),
            fail_per_minute=num("TOKEN_FAIL_RATE_PER_MINUTE", 5, 0.01, 10_000, float),
            fail_burst=num("TOKEN_FAIL_BURST", 5, 1, 10_000),
            trusted_proxies=_networks(env.get("TOKEN_TRUSTED_PROXIES", "127.0.0.1,::1")),
            reserved_identities=reserved,
            max_participants=num("TOKEN_MAX_PARTICIPANTS", 8, 2, 1000),
            empty_timeout=num("TOKEN_EMPTY_TIMEOUT", 300, 10, 86_400),
            departure_timeout=num("TOKEN_DEPARTURE_TIMEOUT", 20, 1, 86_400),
            public=public_raw in ("1", "true", "yes"),
            public_ttl=num("TOKEN_PUBLIC_TTL", 300, 60, PUBLIC_MAX_TTL),
            public_per_minute=num("TOKEN_PUBLIC_RATE_PER_MINUTE", 2, 0.01, 10_000, float),
            public_burst=num("TOKEN_PUBLIC_BURST", 3, 1, 10_000),
            public_max_rooms=num("TOKEN_PUBLIC_MAX_ROOMS", 3, 1, 10_000),
            public_empty_timeout=num("TOKEN_PUBLIC_EMPTY_TIMEOUT", 30, 10, 600),
            public_departure_timeout=num("TOKEN_PUBLIC_DEPARTURE_TIMEOUT", 5, 1, 600),
        )


class TokenBucket:
    """Per-client token buckets: `burst` requests at once, refilled at `rate_per_minute`.

    Memory is bounded by evicting the least recently seen client; an evicted client simply
    starts again with a full bucket, which errs towards serving rather than refusing.
    """

    def __init__(self, rate_per_minute: float, burst: int, *, max_clients: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst)
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, client: str, now: float) -> float:
        tokens, last = self._buckets.get(client, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def peek(self, client: str) -> float:
        """Seconds until `client` has a token (0 = it has one now); spends nothing."""
        tokens = self._level(client, self.clock())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, client: str) -> float:
        """Spend one token for `client`; return 0 if allowed, else seconds until the next token."""
        now = self.clock()
        tokens = self._level(client, now)
        self._buckets.pop(client, None)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


@dataclass
class Buckets:
    """One bucket per kind of request, so one kind can never exhaust another."""
    ok: TokenBucket       # requests that presented the right key
    failed: TokenBucket   # requests that presented a wrong or no key
    public: TokenBucket   # keyless requests on the public route

    @classmethod
    def for_config(cls, cfg: ServiceConfig) -> "Buckets":
        return cls(TokenBucket(cfg.rate_per_minute, cfg.burst), TokenBucket(cfg.fail_per_minute, cfg.fail_burst),
                   TokenBucket(cfg.public_per_minute, cfg.public_burst))


class RoomLookup(Protocol):
    """The two questions the service asks LiveKit (RoomService over Twirp)."""

    async def identities(self, room: str) -> set[str]: ...
    async def rooms_with_prefix(self, prefix: str) -> set[str]: ...


class LiveKitRooms:
    """RoomLookup against a real livekit-server with livekit-api's RoomService client."""

    def __init__(self, url: str, api_key: str, api_secret: str) -> None:
        from livekit import api  # imported here: the rest of the module needs only pyjwt and aiohttp

        parsed = urlparse(url)
        scheme = {"wss": "https", "ws": "http"}.get(parsed.scheme, parsed.scheme)
        self.url = parsed._replace(scheme=scheme).geturl().rstrip("/")
        self._api = api
        # failover=False: region failover is a LiveKit Cloud feature; here it would only retry a dead node.
        self._lk = api.LiveKitAPI(self.url, api_key, api_secret, failover=False,
                                  timeout=aiohttp.ClientTimeout(total=LIVEKIT_API_TIMEOUT))

    async def identities(self, room: str) -> set[str]:
        try:
            resp = await self._lk.room.list_participants(self._api.ListParticipantsRequest(room=room))
        except self._api.TwirpError as exc:
            if exc.code == "not_found":   # no such room yet: nobody is in it
                return set()
            raise
        return {p.identity for p in resp.participants}

    async def rooms_with_prefix(self, prefix: str) -> set[str]:
        resp = await self._lk.room.list_rooms(self._api.ListRoomsRequest())
        return {r.name for r in resp.rooms if r.name.startswith(prefix)}

    async def aclose(self) -> None:
        await self._lk.aclose()


class PublicRooms:
    """Demo rooms in use: those LiveKit reports plus those minted recently and not joined yet.

    A token creates its room only when it is used, so rooms minted in the last empty-timeout
    window count too; otherwise a burst of requests could mint far more calls than the cap.
    """

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._minted: dict[str, float] = {}

    def pending(self) -> set[str]:
        now = self.clock()
        self._minted = {r: t for r, t in self._minted.items() if now - t < self.window}
        return set(self._minted)

    def add(self, room: str) -> None:
        self._minted[room] = self.clock()


CONFIG_KEY = web.AppKey("config", ServiceConfig)
BUCKETS_KEY = web.AppKey("buckets", Buckets)
ROOMS_KEY = web.AppKey("rooms", object)
PUBLIC_ROOMS_KEY = web.AppKey("public_rooms", PublicRooms)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _too_many(wait: float, what: str) -> web.Response:
    return _error(429, f"too many {what} from this address; retry in {max(1, math.ceil(wait))} s",
                  headers={"Retry-After": str(max(1, math.ceil(wait)))})


def client_address(request: web.Request, trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> str:
    """The caller's address, as the key of its rate-limit buckets.

    X-Forwarded-For is read only when the peer is a trusted proxy, from the right: each trusted
    proxy appends the address it saw, so the right-most entry that is not itself a trusted proxy
    is the client; anything further left came from the client and could be forged. IPv6
    clients are bucketed by /64, the block one subscriber usually gets.
    """
    def parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(text.strip())
        except ValueError:
            return None

    def is_trusted(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(addr in net for net in trusted)

    addr = parse(request.remote or "")
    if addr is None:
        return request.remote or "unknown"
    if is_trusted(addr):
        for entry in reversed(request.headers.get("X-Forwarded-For", "").split(",")):
            hop = parse(entry)
            if hop is None:
                break
            addr = hop
            if not is_trusted(hop):
                break
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr.ipv4_mapped or addr) if isinstance(addr, ipaddress.IPv6Address) else str(addr)


def _key_ok(request: web.Request, token_key: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    # compare_digest on bytes: constant time regardless of where the first difference is.
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token_key.encode())


async def _read_json(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PolicyError(413, f"body is {request.content_length} bytes; the limit is {MAX_BODY}")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PolicyError(413, f"body exceeds {MAX_BODY} bytes") from None
    if not raw.strip():
        return {}   # TokenSource.endpoint() with no options may send an empty body: "choose for me"
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise PolicyError(400, 'body is not valid JSON; send {"identity": ..., "name": ..., "room": ...} '
                               'or the standard {"room_name": ..., "participant_name": ...}') from None


async def _check_room(request: web.Request, grant: Grant, caller: Caller) -> None:
    """The checks that need LiveKit: identity already present, demo rooms all busy."""
    cfg, rooms = request.app[CONFIG_KEY], request.app[ROOMS_KEY]
    try:
        if caller == "public":
            pending = request.app[PUBLIC_ROOMS_KEY]
            busy = await rooms.rooms_with_prefix(PUBLIC_ROOM_PREFIX) | pending.pending()
            if len(busy) >= cfg.public_max_rooms:
                raise PolicyError(503, f"all {cfg.public_max_rooms} demo calls are in use; try again in a minute")
        elif grant.identity_chosen and grant.room_chosen:
            # LiveKit disconnects the older participant when a second one joins with its identity:
            # refuse rather than let a token holder take over someone's seat.
            if grant.identity in await rooms.identities(grant.room):
                raise PolicyError(409, f"identity {grant.identity!r} is already in room {grant.room!r}; choose "
                                       "another identity, or leave it out to get a fresh one")
    except PolicyError:
        raise
    except Exception as exc:  # LiveKit down or slow: fail closed, a token for a dead server is useless anyway
        log.warning("LiveKit RoomService check failed: %s", exc)
        raise PolicyError(503, f"cannot reach LiveKit's RoomService at {getattr(rooms, 'url', '?')} to check "
                               f"the room ({type(exc).__name__}); check that livekit-server is running") from exc


def _room_config(cfg: ServiceConfig, caller: Caller) -> dict[str, int]:
    if caller == "public":
        return {"maxParticipants": PUBLIC_MAX_PARTICIPANTS, "emptyTimeout": cfg.public_empty_timeout,
                "departureTimeout": cfg.public_departure_timeout}
    return {"maxParticipants": cfg.max_participants, "emptyTimeout": cfg.empty_timeout,
            "departureTimeout": cfg.departure_timeout}


async def _issue(request: web.Request, caller: Caller) -> web.Response:
    cfg = request.app[CONFIG_KEY]
    try:
        grant = check(await _read_json(request), cfg.policy, caller)
        await _check_room(request, grant, caller)
        room_config: dict[str, Any] = dict(_room_config(cfg, caller))
        if cfg.agent_name:
            agent: dict[str, str] = {"agentName": cfg.agent_name}
            if grant.agent_metadata:
                agent["metadata"] = grant.agent_metadata
            room_config["agents"] = [agent]
        ttl = cfg.public_ttl if caller == "public" else cfg.ttl
        token = mint(cfg.api_key, cfg.api_secret, grant.identity, grant.room, preset=PRESET, name=grant.name,
                     ttl=ttl, metadata=grant.metadata or None, attributes=grant.attributes or None,
                     room_config=room_config)
    except PolicyError as exc:
        return _error(exc.status, str(exc))
    except TokenError as exc:
        return _error(422, str(exc))
    if caller == "public":
        request.app[PUBLIC_ROOMS_KEY].add(grant.room)
    log.info("token issued format=%s caller=%s identity=%s room=%s ttl=%s",
             grant.fmt, caller, grant.identity, grant.room, ttl)
    headers = {"Cache-Control": "no-store"}
    if grant.fmt == "legacy":
        return web.json_response({"token": token, "wsUrl": cfg.ws_url, "room": grant.room}, headers=headers)
    return web.json_response({"server_url": cfg.ws_url, "participant_token": token}, status=201, headers=headers)


async def _with_key(request: web.Request) -> web.Response:
    cfg, buckets = request.app[CONFIG_KEY], request.app[BUCKETS_KEY]
    client = client_address(request, cfg.trusted_proxies)
    # The key is compared first (constant time), so the right key is never refused for failures
    # it did not make: when many callers share one address (behind a proxy that hides them), a
    # wrong-key flood must not lock out the key holders. Wrong keys spend a bucket of their own
    # and get 429 once it is empty. This is not what protects the key (TOKEN_KEY has >= 24 random
    # characters, far beyond online guessing); it keeps floods cheap and visible.
    if not _key_ok(request, cfg.token_key):
        wait = buckets.failed.take(client)
        if wait > 0:
            return _too_many(wait, "failed key attempts")
        return _error(401, "missing or wrong Authorization: Bearer <TOKEN_KEY>",
                      headers={"WWW-Authenticate": "Bearer"})
    wait = buckets.ok.take(client)
    if wait > 0:
        return _too_many(wait, "token requests")
    return await _issue(request, "key")


async def api_token(request: web.Request) -> web.Response:
    return await _with_key(request)


async def call_token(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG_KEY]
    if not cfg.public:
        return await _with_key(request)
    wait = request.app[BUCKETS_KEY].public.take(client_address(request, cfg.trusted_proxies))
    if wait > 0:
        return _too_many(wait, "token requests")
    return await _issue(request, "public")


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def with_json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                           error: Callable[[int, str], web.Response]) -> web.StreamResponse:
    """handler(request), its 4xx/5xx HTTPExceptions answered by error(status, reason) instead.

    aiohttp's own 404/405/413 pages are text/plain; callers (n8n, browsers) expect JSON.
    """
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason)


@web.middleware
async def json_errors(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    return await with_json_errors(request, handler, _error)


def create_app(cfg: ServiceConfig, *, buckets: Buckets | None = None,
               rooms: RoomLookup | None = None) -> web.Application:
    """The service; `rooms` defaults to LiveKit's RoomService at cfg.api_url (opened with the app)."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[json_errors])
    app[CONFIG_KEY] = cfg
    app[BUCKETS_KEY] = buckets or Buckets.for_config(cfg)
    app[PUBLIC_ROOMS_KEY] = PublicRooms(cfg.public_empty_timeout)

    async def livekit_rooms(app: web.Application) -> AsyncIterator[None]:
        if rooms is not None:
            app[ROOMS_KEY] = rooms
            yield
            return
        client = LiveKitRooms(cfg.api_url or cfg.ws_url, cfg.api_key, cfg.api_secret)
        app[ROOMS_KEY] = client
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    app.cleanup_ctx.append(livekit_rooms)
    app.router.add_get("/api/token/health", health)
    app.router.add_post("/api/token", api_token)
    app.router.add_post("/call/token", call_token)
    return app


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = ServiceConfig.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host = os.environ.get("TOKEN_HOST", "127.0.0.1")
    port = int(os.environ.get("TOKEN_PORT", "8090"))
    log.info("token service on %s:%s, /call/token %s", host, port,
             "public (keyless demo tokens)" if cfg.public else "private (bearer key from Caddy)")
    web.run_app(create_app(cfg), host=host, port=port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
