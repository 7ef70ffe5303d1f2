"""What README "n8n" tells an operator to create for the shipped workflows (examples/n8n): the
credentials, under the fixed ids and names the workflow files reference (imported so, the files run
untouched), and the workflows' own ids. Shared by tests/unit/test_agent_n8n.py (n8n on loopback)
and tests/e2e/test_recording.py (n8n on the emulated internet, behind a deployed environment)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "n8n"
WORKFLOWS = {"call-me.json": "vsCallMe00000001", "voice-action.json": "vsVoiceAction001",
             "room-events.json": "vsRoomEvents0001", "meeting-notes.json": "vsMeetingNotes01"}


def signing_secret(secret: str) -> dict[str, Any]:
    """The agent's ACTION_SECRET and the receiver's FORWARD_SECRET (one secret for both)."""
    return {"id": "vsSignSecret0001", "name": "Voicestack signing secret", "type": "crypto",
            "data": {"hmacSecret": secret}}


def token_key(key: str) -> dict[str, Any]:
    return {"id": "vsTokenKey000001", "name": "Voicestack token key", "type": "httpBearerAuth",
            "data": {"token": key}}


def home_assistant(port: int, token: str, host: str = "127.0.0.1") -> dict[str, Any]:
    return {"id": "vsHomeAssist0001", "name": "Home Assistant", "type": "homeAssistantApi",
            "data": {"host": host, "port": port, "ssl": False, "accessToken": token}}


def smtp(port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    return {"id": "vsSmtp0000000001", "name": "SMTP (meeting notes)", "type": "smtp",
            "data": {"user": "", "password": "", "host": host, "port": port, "secure": False,
                     "disableStartTls": True}}
