"""What a token request may ask for: the two request formats and the rules every token obeys.

Pure functions (no I/O), so the rules are testable on their own and the HTTP layer only routes.

Two request formats share the token URLs:
- the seed's n8n shape:  {"identity", "name"?, "room"?}              -> 200 {token, wsUrl, room}
- LiveKit's standard endpoint format (docs: "Endpoint token generation"), which every
  LiveKit SDK's `TokenSource.endpoint(...)` sends:
  {"room_name"?, "participant_identity"?, "participant_name"?, "participant_metadata"?,
   "participant_attributes"?, "room_config"?}                         -> 201 {server_url, participant_token}

Two kinds of caller:
- `key`: presented the bearer key (backends, or the private page through Caddy). May choose the
  room, identity, name, metadata and attributes, within the rules below.
- `public`: the keyless demo route. May choose only a display name; room and identity are the
  server's, and any other field is refused (403), as the standard asks for fields a caller may not set.

Rules for everyone: identities reserved for the agent and the recorder are refused; attribute
keys in LiveKit's `lk.` and the stack's `voicestack.` namespaces are refused (the page trusts
`voicestack.recording`); room_config may only name the stack's own agent, because room limits
and timeouts are the service's to set.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from google.protobuf.json_format import ParseDict, ParseError
from livekit.protocol.room import RoomConfiguration

from agent.tokens import IDENTITY_RE, ROOM_RE

Format = Literal["legacy", "standard"]
Caller = Literal["key", "public"]

LEGACY_FIELDS = frozenset({"identity", "name", "room"})
STANDARD_FIELDS = frozenset({"room_name", "participant_identity", "participant_name", "participant_metadata",
                             "participant_attributes", "room_config"})
MAX_NAME = 128
MAX_METADATA = 1024        # participant/agent metadata: a small JSON blob, not a payload channel
MAX_ATTRIBUTES = 16
ATTRIBUTE_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_ATTRIBUTE_VALUE = 256
RESERVED_ATTRIBUTE_PREFIXES = ("lk.", "voicestack.")
PUBLIC_ROOM_PREFIX = "call-"   # rooms of the public demo route; counted, and never chosen by callers
# The attribute (participant attribute, or key of the room metadata JSON) that tells the page a
# recording is running. Only the stack (agent, recorder, admin API) may set it.
RECORDING_ATTRIBUTE = "voicestack.recording"


class PolicyError(ValueError):
    """A refused request: `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Policy:
    """The service's side of every token (from ServiceConfig)."""
    agent_name: str | None                  # explicit dispatch name; None = automatic dispatch
    reserved_identity_prefixes: tuple[str, ...] = ("agent-", "recorder")


@dataclass(frozen=True)
class Grant:
    """A checked request: everything the service needs to mint."""
    fmt: Format
    identity: str
    name: str
    room: str
    identity_chosen: bool          # the caller picked identity/room (so presence in the room matters)
    room_chosen: bool
    metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    agent_metadata: str = ""


def request_format(body: dict[str, Any]) -> Format:
    """Which of the two formats `body` is in; an empty body is a standard request ("choose for me")."""
    keys = set(body)
    legacy, standard = keys & LEGACY_FIELDS, keys & STANDARD_FIELDS
    if legacy and standard:
        raise PolicyError(422, f"the body mixes the n8n fields {sorted(legacy)} with the standard fields "
                               f"{sorted(standard)}; send one format")
    if standard or not keys:
        unknown = keys - STANDARD_FIELDS
        if unknown:
            raise PolicyError(422, f"unknown field(s) {sorted(unknown)}; the standard format has "
                                   f"{sorted(STANDARD_FIELDS)}")
        return "standard"
    return "legacy"  # the n8n shape has always ignored extra keys (e.g. "preset"): keep that


def random_identity() -> str:
    return f"user-{secrets.token_hex(6)}"


def random_room(prefix: str = "room-") -> str:
    # 48-64 random bits: rooms are not secrets (the token is), just unlikely to collide.
    return f"{prefix}{secrets.token_hex(8 if prefix == PUBLIC_ROOM_PREFIX else 6)}"


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME or not value.isprintable():
        raise PolicyError(422, f"{what} must be 1-{MAX_NAME} printable characters")
    return value


def _identity(value: Any, what: str, policy: Policy) -> str:
    if not isinstance(value, str) or not IDENTITY_RE.match(value):
        raise PolicyError(422, f"{what} must be 1-128 of letters, digits and _.@:+-")
    low = value.lower()
    for prefix in policy.reserved_identity_prefixes:
        if low.startswith(prefix):
            raise PolicyError(403, f"{what} {value!r} is reserved for the stack's own participants "
                                   f"(prefix {prefix!r}); choose another identity")
    return value


def _room(value: Any, what: str) -> str:
    if not isinstance(value, str) or not ROOM_RE.match(value):
        raise PolicyError(422, f"{what} must be 1-128 of letters, digits and _.-")
    if value.startswith(PUBLIC_ROOM_PREFIX):
        raise PolicyError(403, f"{what} {value!r}: rooms named {PUBLIC_ROOM_PREFIX}* belong to the public "
                               "demo route; choose another name")
    return value


def _metadata(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_METADATA:
        raise PolicyError(422, f"{what} must be a string of at most {MAX_METADATA} characters")
    return value


def _attributes(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_ATTRIBUTES:
        raise PolicyError(422, f"participant_attributes must be an object of at most {MAX_ATTRIBUTES} "
                               "string values")
    out: dict[str, str] = {}
    for key, val in value.items():
        if not ATTRIBUTE_KEY_RE.match(key) or not isinstance(val, str) or len(val) > MAX_ATTRIBUTE_VALUE:
            raise PolicyError(422, f"participant_attributes[{key!r}]: keys are 1-64 of letters, digits "
                                   f"and _.-, values strings of at most {MAX_ATTRIBUTE_VALUE} characters")
        if key.startswith(RESERVED_ATTRIBUTE_PREFIXES):
            raise PolicyError(403, f"participant_attributes[{key!r}]: the {', '.join(RESERVED_ATTRIBUTE_PREFIXES)} "
                                   "namespaces belong to LiveKit and the stack; use another key")
        out[key] = val
    return out


def _agent_metadata(value: Any, policy: Policy, caller: Caller) -> str:
    """The only room_config a caller may send: a dispatch of this stack's own agent."""
    try:
        config = ParseDict(value, RoomConfiguration())
    except (ParseError, TypeError, ValueError) as exc:
        raise PolicyError(422, f"room_config is not a RoomConfiguration: {exc}") from exc
    others = [f.name for f, _ in config.ListFields() if f.name != "agents"]
    if others:
        raise PolicyError(403, f"room_config.{others[0]} may not be set by callers: room limits and timeouts "
                               "are the token service's (TOKEN_MAX_PARTICIPANTS, TOKEN_EMPTY_TIMEOUT, ...)")
    if len(config.agents) > 1:
        raise PolicyError(403, "room_config.agents may name one agent, this stack's own")
    if not config.agents:
        return ""
    agent = config.agents[0]
    extra = [f.name for f, _ in agent.ListFields() if f.name not in ("agent_name", "metadata")]
    if extra:
        raise PolicyError(403, f"room_config.agents[0].{extra[0]} may not be set by callers")
    if agent.agent_name != (policy.agent_name or ""):
        served = repr(policy.agent_name) if policy.agent_name else "the automatically dispatched agent (no name)"
        raise PolicyError(403, f"room_config.agents[0].agent_name {agent.agent_name!r} is not served here; "
                               f"this stack runs {served}")
    if agent.metadata and (caller == "public" or not policy.agent_name):
        raise PolicyError(403, "room_config.agents[0].metadata may not be set on this route"
                          if caller == "public" else
                          "room_config.agents[0].metadata needs an explicitly dispatched agent (AGENT_NAME)")
    return _metadata(agent.metadata, "room_config.agents[0].metadata")


def check(body: Any, policy: Policy, caller: Caller) -> Grant:
    """Validate a token request body for `caller`; raise PolicyError with the status to answer."""
    if not isinstance(body, dict):
        raise PolicyError(400, 'body must be a JSON object, e.g. {"participant_name": "Alice"} '
                               '(standard format) or {"identity": "alice", "name": "Alice"} (n8n)')
    fmt = request_format(body)
    if fmt == "legacy":
        if caller == "public":
            raise PolicyError(403, "the public route chooses room and identity itself; send the standard "
                                   'format with at most "participant_name"')
        identity = _identity(body.get("identity"), "identity", policy)
        name = identity if body.get("name") is None else _name(body.get("name"), "name")
        room_in = body.get("room")
        chosen = room_in not in (None, "")
        room = _room(room_in, "room") if chosen else random_room()
        return Grant("legacy", identity, name, room, identity_chosen=True, room_chosen=chosen)

    present = {k for k, v in body.items() if v not in (None, "", {}, [])}
    if caller == "public":
        refused = sorted(present - {"participant_name", "room_config"})
        if refused:
            raise PolicyError(403, f"{refused[0]} may not be set on the public route: it mints tokens only "
                                   "for a fresh room and identity of its own choosing")
    identity_in = body.get("participant_identity")
    identity_chosen = "participant_identity" in present
    identity = _identity(identity_in, "participant_identity", policy) if identity_chosen else random_identity()
    name = _name(body["participant_name"], "participant_name") if "participant_name" in present else identity
    room_chosen = "room_name" in present
    if room_chosen:
        room = _room(body["room_name"], "room_name")
    else:
        room = random_room(PUBLIC_ROOM_PREFIX if caller == "public" else "room-")
    metadata = _metadata(body["participant_metadata"], "participant_metadata") \
        if "participant_metadata" in present else ""
    attributes = _attributes(body["participant_attributes"]) if "participant_attributes" in present else {}
    agent_metadata = _agent_metadata(body["room_config"], policy, caller) if "room_config" in present else ""
    return Grant("standard", identity, name, room, identity_chosen=identity_chosen, room_chosen=room_chosen,
                 metadata=metadata, attributes=attributes, agent_metadata=agent_metadata)
