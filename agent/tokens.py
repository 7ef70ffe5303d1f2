"""LiveKit access tokens, minted with pyjwt in exactly the claim layout livekit-server expects.

LiveKit reads `iss` (API key), `sub` (identity), `nbf`/`exp`, `name`, `metadata`, `attributes`,
a `video` grant with camelCase keys and an optional `roomConfig` (RoomConfiguration in protobuf
JSON). A grant that leaves canPublish/canSubscribe out is treated as "allowed", so every preset
spells both out; canUpdateOwnMetadata is spelled out too, because a participant that may rewrite
its own attributes could fake the attributes other participants rely on.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Mapping

import jwt

DEFAULT_TTL = 3600  # one hour: tokens leak into logs and browsers; keep them short-lived
MAX_TTL = 24 * 3600
IDENTITY_RE = re.compile(r"^[A-Za-z0-9_.@:+-]{1,128}$")
ROOM_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class TokenError(ValueError):
    pass


@dataclass(frozen=True)
class Preset:
    name: str
    can_publish: bool
    can_subscribe: bool
    can_publish_data: bool
    room_admin: bool = False
    # None: every source LiveKit knows; otherwise only these ("microphone", "camera", ...).
    publish_sources: tuple[str, ...] | None = None


PRESETS: dict[str, Preset] = {
    "listener": Preset("listener", can_publish=False, can_subscribe=True, can_publish_data=False),
    "speaker": Preset("speaker", can_publish=True, can_subscribe=True, can_publish_data=True),
    # What a person talking to the agent needs and nothing more: the microphone, what others
    # publish, and data (chat / text input to the agent). No camera, no screen share.
    "voice": Preset("voice", can_publish=True, can_subscribe=True, can_publish_data=True,
                    publish_sources=("microphone",)),
    "admin": Preset("admin", can_publish=True, can_subscribe=True, can_publish_data=True, room_admin=True),
}


def video_grant(preset: Preset, room: str) -> dict[str, Any]:
    grant: dict[str, Any] = {
        "roomJoin": True,
        "room": room,
        "canPublish": preset.can_publish,
        "canSubscribe": preset.can_subscribe,
        "canPublishData": preset.can_publish_data,
        "canUpdateOwnMetadata": preset.room_admin,
    }
    if preset.publish_sources is not None:
        grant["canPublishSources"] = list(preset.publish_sources)
    if preset.room_admin:
        grant["roomAdmin"] = True
        grant["roomList"] = True
        grant["roomCreate"] = True
    return grant


def mint(
    api_key: str,
    api_secret: str,
    identity: str,
    room: str,
    *,
    preset: str = "speaker",
    name: str | None = None,
    ttl: int = DEFAULT_TTL,
    agent_name: str | None = None,
    metadata: str | None = None,
    attributes: Mapping[str, str] | None = None,
    room_config: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """Return a signed HS256 JWT for `identity` in `room` with the given preset's grant.

    `room_config` is a RoomConfiguration in protobuf JSON (camelCase keys, e.g.
    {"maxParticipants": 2, "emptyTimeout": 60}); LiveKit applies it when this token's join
    creates the room. `agent_name` adds an explicit dispatch of that agent to it.
    """
    if not api_key or not api_secret:
        raise TokenError("API key and secret are required (LIVEKIT_API_KEY / LIVEKIT_API_SECRET)")
    if preset not in PRESETS:
        raise TokenError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    if not IDENTITY_RE.match(identity):
        raise TokenError(f"identity {identity!r} must be 1-128 of letters, digits and _.@:+-")
    if not ROOM_RE.match(room):
        raise TokenError(f"room {room!r} must be 1-128 of letters, digits and _.-")
    if not 1 <= ttl <= MAX_TTL:
        raise TokenError(f"ttl {ttl} must be between 1 and {MAX_TTL} seconds")
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "iss": api_key,
        "sub": identity,
        "nbf": issued,
        "exp": issued + ttl,
        "name": name or identity,
        "video": video_grant(PRESETS[preset], room),
    }
    if metadata:
        claims["metadata"] = metadata
    if attributes:
        claims["attributes"] = dict(attributes)
    config: dict[str, Any] = dict(room_config or {})
    if agent_name:
        config["agents"] = [{"agentName": agent_name}]
    if config:
        claims["roomConfig"] = config
    return jwt.encode(claims, api_secret, algorithm="HS256")


def admin_api_token(api_key: str, api_secret: str, *, room: str | None = None, ttl: int = 600) -> str:
    """A short-lived server-API token (list/create rooms, admin one room), for Twirp calls."""
    now = int(time.time())
    video: dict[str, Any] = {"roomList": True, "roomCreate": True, "roomAdmin": True}
    if room:
        video["room"] = room
    return jwt.encode({"iss": api_key, "sub": "admin-cli", "nbf": now, "exp": now + ttl, "video": video},
                      api_secret, algorithm="HS256")
