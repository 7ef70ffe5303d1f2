"""Token endpoint for browsers and n8n: POST /api/token -> {token, wsUrl, room}.

    python -m agent.token_service     # env: TOKEN_HOST (127.0.0.1), TOKEN_PORT (8090)

Caddy terminates TLS and proxies /api/token here, so the service only ever binds loopback.
Every token carries the fixed "speaker" grant: callers choose who and where, never what.

Env: LIVEKIT_API_KEY, LIVEKIT_API_SECRET, LIVEKIT_WS_URL, TOKEN_KEY (the bearer key callers
send), AGENT_NAME (optional: the token dispatches this agent into the room), TOKEN_TTL
(seconds, default 3600), TOKEN_RATE_PER_MINUTE (10), TOKEN_RATE_BURST (5),
TOKEN_TRUSTED_PROXIES (comma list, default 127.0.0.1,::1).
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import os
import secrets
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from agent.tokens import DEFAULT_TTL, IDENTITY_RE, MAX_TTL, ROOM_RE, TokenError, mint

log = logging.getLogger("agent.token_service")

PRESET = "speaker"        # fixed: a public endpoint must never hand out roomAdmin
MAX_NAME = 128
MAX_BODY = 4096           # {identity, name, room} fits in a few hundred bytes
MAX_CLIENTS = 10_000      # rate-limit buckets kept in memory before the oldest are dropped


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the service reads from the environment, read once at start-up."""
    api_key: str
    api_secret: str
    ws_url: str
    token_key: str
    agent_name: str | None = None
    ttl: int = DEFAULT_TTL
    rate_per_minute: float = 10.0
    burst: int = 5
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")

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
        try:
            ttl = int(env.get("TOKEN_TTL", DEFAULT_TTL))
            rate = float(env.get("TOKEN_RATE_PER_MINUTE", 10))
            burst = int(env.get("TOKEN_RATE_BURST", 5))
        except ValueError as exc:
            raise ConfigError(f"TOKEN_TTL / TOKEN_RATE_PER_MINUTE / TOKEN_RATE_BURST must be numbers: {exc}") from exc
        if not 60 <= ttl <= MAX_TTL:
            raise ConfigError(f"TOKEN_TTL is {ttl}; use 60..{MAX_TTL} seconds")
        if rate <= 0 or burst < 1:
            raise ConfigError(f"TOKEN_RATE_PER_MINUTE ({rate}) must be > 0 and TOKEN_RATE_BURST ({burst}) >= 1")
        proxies = tuple(p.strip() for p in env.get("TOKEN_TRUSTED_PROXIES", "127.0.0.1,::1").split(",") if p.strip())
        return cls(api_key=env["LIVEKIT_API_KEY"], api_secret=env["LIVEKIT_API_SECRET"],
                   ws_url=env["LIVEKIT_WS_URL"], token_key=env["TOKEN_KEY"],
                   agent_name=env.get("AGENT_NAME") or None, ttl=ttl, rate_per_minute=rate,
                   burst=burst, trusted_proxies=proxies)


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

    def take(self, client: str) -> float:
        """Spend one token for `client`; return 0 if allowed, else seconds until the next token."""
        now = self.clock()
        tokens, last = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


CONFIG_KEY = web.AppKey("config", ServiceConfig)
BUCKET_KEY = web.AppKey("bucket", TokenBucket)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def client_address(request: web.Request, trusted: tuple[str, ...]) -> str:
    """The caller's address: Caddy's X-Forwarded-For when the peer is a trusted proxy, else the peer.

    Only the right-most XFF entry is used: it is the one Caddy itself appended; anything to
    its left came from the client and could be forged to dodge the rate limit.
    """
    peer = request.remote or "unknown"
    xff = request.headers.get("X-Forwarded-For", "")
    if xff and peer in trusted:
        candidate = xff.split(",")[-1].strip()
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            pass
    return peer


def _validate(body: Any) -> tuple[str, str, str] | str:
    """(identity, name, room) from the request body, or an error message."""
    if not isinstance(body, dict):
        return "body must be a JSON object like {\"identity\": \"alice\", \"name\": \"Alice\"}"
    identity, name, room = body.get("identity"), body.get("name"), body.get("room")
    if not isinstance(identity, str) or not IDENTITY_RE.match(identity):
        return "identity must be 1-128 of letters, digits and _.@:+-"
    if name is None:
        name = identity
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or not name.isprintable():
        return f"name must be 1-{MAX_NAME} printable characters"
    if room is None or room == "":
        # 48 random bits: rooms are not secrets (the token is), just unlikely to collide.
        room = f"room-{secrets.token_hex(6)}"
    if not isinstance(room, str) or not ROOM_RE.match(room):
        return "room must be 1-128 of letters, digits and _.-"
    return identity, name, room


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def issue_token(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG_KEY]
    # Rate limit before the key check, so the limit also slows down guessing the key.
    wait = request.app[BUCKET_KEY].take(client_address(request, cfg.trusted_proxies))
    if wait > 0:
        return _error(429, "too many token requests; retry later",
                      headers={"Retry-After": str(max(1, math.ceil(wait)))})
    auth = request.headers.get("Authorization", "")
    scheme, _, presented = auth.partition(" ")
    # compare_digest on bytes: constant time regardless of where the first difference is.
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), cfg.token_key.encode()):
        return _error(401, "missing or wrong Authorization: Bearer <TOKEN_KEY>",
                      headers={"WWW-Authenticate": "Bearer"})
    if request.content_length is not None and request.content_length > MAX_BODY:
        return _error(413, f"body is {request.content_length} bytes; the limit is {MAX_BODY}")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"body exceeds {MAX_BODY} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _error(400, "body is not valid JSON; send {\"identity\": ..., \"name\": ..., \"room\": ...}")
    checked = _validate(body)
    if isinstance(checked, str):
        return _error(422 if isinstance(body, dict) else 400, checked)
    identity, name, room = checked
    try:
        token = mint(cfg.api_key, cfg.api_secret, identity, room, preset=PRESET, name=name,
                     ttl=cfg.ttl, agent_name=cfg.agent_name)
    except TokenError as exc:
        return _error(422, str(exc))
    log.info("token issued identity=%s room=%s ttl=%s", identity, room, cfg.ttl)
    return web.json_response({"token": token, "wsUrl": cfg.ws_url, "room": room},
                             headers={"Cache-Control": "no-store"})


@web.middleware
async def json_errors(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    # aiohttp's own 404/405/413 pages are text/plain; callers (n8n, browsers) expect JSON.
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)


def create_app(cfg: ServiceConfig, *, bucket: TokenBucket | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[json_errors])
    app[CONFIG_KEY] = cfg
    app[BUCKET_KEY] = bucket or TokenBucket(cfg.rate_per_minute, cfg.burst)
    app.router.add_get("/api/token/health", health)
    app.router.add_post("/api/token", issue_token)
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
    web.run_app(create_app(cfg), host=host, port=port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
