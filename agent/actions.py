"""Voice actions: a device intent becomes a signed POST to ACTION_URL (an n8n webhook), and the
sentence the workflow answers is what the agent speaks.

    client = ActionClient(ActionConfig.from_env())          # None config: actions are off
    action = from_intent(intent("turn on the kitchen lights"), "turn on the kitchen lights")
    sentence = await client.perform(action, session)        # never raises: a fallback on failure

The request (JSON, UTF-8):
    {"type": "voice_action", "id": "va-…", "action": "turn_on", "device": "light",
     "room": "kitchen", "value": null, "words": "turn on the kitchen lights", "time": 1764590000}
signed like the forwarded events (agent/outbox.py), so one n8n check serves both:
    X-Voicestack-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(ACTION_SECRET, "<t>." + body)>
    X-Voicestack-Event: voice_action
    X-Voicestack-Event-Id: <id>
The answer: 2xx with {"say": "<one sentence>"} (or a text/plain sentence). Anything else — an
error status, a timeout (ACTION_TIMEOUT, default 4 s: the caller is waiting in silence), an
unreadable body — is logged with the reason and answered with a FALLBACK_* sentence instead.

Two ways in: the offline responder's intents (agent/speech_server.py calls `from_intent`), and a
real LLM's tool calls (`set_device`, TOOL_PARAMETERS; agent/worker.py registers it when
ACTION_URL is set, and `from_tool_call` validates the model's arguments).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from aiohttp import ClientError, ClientSession, ClientTimeout

from agent.outbox import SIGNATURE_HEADER, sign
from agent.speech.responder import ROOMS, Intent

log = logging.getLogger("agent.actions")

EVENT = "voice_action"
MAX_ANSWER_CHARS = 400   # one or two spoken sentences; longer is not an answer for a voice call
MAX_ANSWER_BYTES = 16 * 1024
FALLBACK_TIMEOUT = "Sorry, the home automation did not answer in time."
FALLBACK_ERROR = "Sorry, I could not reach the home automation."
FALLBACK_UNREADABLE = "Sorry, the home automation gave an answer I cannot read."
DEVICES = {"light": ("turn_on", "turn_off"), "thermostat": ("set_temperature", "raise", "lower")}


class ActionError(ValueError):
    pass


@dataclass(frozen=True)
class ActionConfig:
    url: str
    secret: str = field(repr=False)
    timeout_s: float = 4.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ActionConfig | None":
        """None when ACTION_URL is unset (the responder answers on its own); errors name the variable."""
        e = dict(os.environ if env is None else env)
        url = e.get("ACTION_URL", "").strip()
        if not url:
            return None
        if not url.startswith(("http://", "https://")):
            raise ActionError(f"ACTION_URL is {url!r}; it must be an http(s):// URL (the n8n voice-action webhook)")
        secret = e.get("ACTION_SECRET", "")
        if len(secret) < 32:
            raise ActionError(f"ACTION_SECRET is {len(secret)} characters; voice actions are signed with it and it "
                              'needs at least 32 — generate one with "openssl rand -hex 32" and give n8n the same')
        raw = e.get("ACTION_TIMEOUT", "").strip() or "4"
        try:
            timeout = float(raw)
        except ValueError:
            timeout = -1.0
        if not 0.2 <= timeout <= 30:
            raise ActionError(f"ACTION_TIMEOUT is {raw!r}; use seconds between 0.2 and 30 (default 4)")
        return cls(url=url, secret=secret, timeout_s=timeout)


@dataclass(frozen=True)
class DeviceAction:
    """What to do: the workflow switches on `device` + `action`; `words` is what the user said."""
    action: str
    device: str
    room: str = ""
    value: float | None = None
    words: str = ""

    def body(self, now: float | None = None) -> dict[str, Any]:
        return {"type": EVENT, "id": f"va-{uuid.uuid4().hex[:16]}", "action": self.action,
                "device": self.device, "room": self.room, "value": self.value, "words": self.words,
                "time": int(time.time() if now is None else now)}


def from_intent(what: Intent, words: str) -> DeviceAction | None:
    """The device action an offline-responder intent asks for; None for questions and small talk."""
    if what.name == "lights" and what.state in ("on", "off"):
        return DeviceAction(f"turn_{what.state}", "light", what.room, None, words)
    if what.name == "thermostat_set" and what.value is not None:
        return DeviceAction("set_temperature", "thermostat", "", what.value, words)
    if what.name in ("thermostat_up", "thermostat_down"):
        return DeviceAction("raise" if what.name == "thermostat_up" else "lower", "thermostat", "", None, words)
    return None


#: JSON schema of the `set_device` tool's arguments (OpenAI function calling).
TOOL_NAME = "set_device"
TOOL_DESCRIPTION = ("Switch a home device: lights on or off (optionally in one room), or the thermostat "
                    "to a temperature, up or down. Returns the sentence to say to the user.")
TOOL_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "device": {"type": "string", "enum": sorted(DEVICES)},
        "action": {"type": "string", "enum": sorted({a for acts in DEVICES.values() for a in acts})},
        "room": {"type": "string", "description": "a room, or empty for the whole home",
                 "enum": ["", *ROOMS]},
        "value": {"type": ["number", "null"], "description": "degrees Celsius for set_temperature"},
    },
    "required": ["device", "action"],
    "additionalProperties": False,
}


def from_tool_call(arguments: str | Mapping[str, Any], words: str = "") -> DeviceAction:
    """Validate an LLM's `set_device` arguments (a JSON string or a dict) into a DeviceAction."""
    try:
        args = json.loads(arguments) if isinstance(arguments, str) else dict(arguments)
    except ValueError as exc:
        raise ActionError(f"set_device arguments are not JSON: {exc}") from exc
    if not isinstance(args, dict):
        raise ActionError(f"set_device arguments must be an object, got {type(args).__name__}")
    device, action = str(args.get("device", "")), str(args.get("action", ""))
    if action not in DEVICES.get(device, ()):
        raise ActionError(f"set_device: {device!r} has no action {action!r}; "
                          f"valid: {', '.join(f'{d}/{a}' for d, acts in DEVICES.items() for a in acts)}")
    room = str(args.get("room") or "").strip().lower()
    if room and room not in ROOMS:
        raise ActionError(f"set_device: unknown room {room!r}; valid: {', '.join(ROOMS)}")
    value = args.get("value")
    if action == "set_temperature":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 5 <= value <= 35:
            raise ActionError(f"set_device: set_temperature needs a value between 5 and 35 degrees, got {value!r}")
        value = float(value)
    else:
        value = None
    return DeviceAction(action, device, room, value, words)


def _sentence(text: str) -> str | None:
    text = " ".join(text.split())
    return text if 0 < len(text) <= MAX_ANSWER_CHARS else None


class ActionClient:
    """Calls the action URL; `perform` always returns something to say."""

    def __init__(self, config: ActionConfig) -> None:
        self.config = config

    async def perform(self, action: DeviceAction, session: ClientSession) -> str:
        body = json.dumps(action.body(), separators=(",", ":"), ensure_ascii=False).encode()
        event_id = json.loads(body)["id"]
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.config.secret, body),
                   "X-Voicestack-Event": EVENT, "X-Voicestack-Event-Id": event_id}
        started = time.monotonic()
        try:
            async with session.post(self.config.url, data=body, headers=headers,
                                    timeout=ClientTimeout(total=self.config.timeout_s)) as resp:
                raw = await resp.content.read(MAX_ANSWER_BYTES + 1)
                status, ctype = resp.status, resp.content_type
        except asyncio.TimeoutError:
            log.warning("voice action %s %s/%s: %s did not answer within %.1f s (ACTION_TIMEOUT)", event_id,
                        action.device, action.action, self.config.url, self.config.timeout_s)
            return FALLBACK_TIMEOUT
        except (ClientError, OSError) as exc:
            log.warning("voice action %s %s/%s: failed to reach %s: %s", event_id, action.device, action.action,
                        self.config.url, f"{type(exc).__name__}: {exc}")
            return FALLBACK_ERROR
        took = time.monotonic() - started
        if not 200 <= status < 300:
            log.warning("voice action %s %s/%s: %s answered HTTP %d %r after %.2f s", event_id, action.device,
                        action.action, self.config.url, status, raw[:200], took)
            return FALLBACK_ERROR
        sentence = self._read(raw, ctype)
        if sentence is None:
            log.warning("voice action %s: %s answered %d bytes of %s without a readable 'say' sentence: %r",
                        event_id, self.config.url, len(raw), ctype, raw[:200])
            return FALLBACK_UNREADABLE
        log.info("voice action %s %s/%s room=%r: answered in %.2f s", event_id, action.device, action.action,
                 action.room, took)
        return sentence

    @staticmethod
    def _read(raw: bytes, ctype: str) -> str | None:
        if len(raw) > MAX_ANSWER_BYTES:
            return None
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            return None
        if ctype == "application/json" or text.lstrip().startswith(("{", "[")):
            try:
                data = json.loads(text)
            except ValueError:
                return None
            if isinstance(data, list) and len(data) == 1:   # n8n's "all incoming items" shape
                data = data[0]
            say = data.get("say") if isinstance(data, dict) else None
            return _sentence(say) if isinstance(say, str) else None
        return _sentence(text)
