"""The verify suite's calls ask for the agent when the stack dispatches it by name (agentName):
the agent then joins only the rooms whose token names it, and a call without it would wait for an
agent that never comes. The deployed proof is tests/e2e/test_recording.py (agentName set, the verify
client's round trip answered)."""
from __future__ import annotations

import json
import subprocess
from typing import Any

import jwt
import pytest

from infra.probes import agent_dispatch
from infra.probes import roundtrip as probe
from tests.unit.support import SECRET, outputs_for, spec_of


def dispatched(monkeypatch: pytest.MonkeyPatch, **config: Any) -> list[Any]:
    """The agent dispatches in the tokens round_trips hands its client (read from the client's stdin)."""
    seen: dict[str, Any] = {}

    def client(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        seen.update(json.loads(kw["input"]))
        return subprocess.CompletedProcess(argv, 0, json.dumps({"results": [{"ok": True}]}), "")

    monkeypatch.setattr(probe.subprocess, "run", client)
    out = outputs_for(spec_of(1, **config))
    assert probe.round_trips(out, 1) == [{"ok": True, "turn_tls_connections": None}]
    (token,) = seen["tokens"]
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_aud": False})
    return claims.get("roomConfig", {}).get("agents", [])


def test_a_stack_with_agent_name_gets_that_agent_dispatched_to_every_verify_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert agent_dispatch(outputs_for(spec_of(1, agentName="voice-agent"))) == "voice-agent"
    assert dispatched(monkeypatch, agentName="voice-agent") == [{"agentName": "voice-agent"}]


def test_a_stack_without_agent_name_leaves_dispatch_to_the_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    assert agent_dispatch(outputs_for(spec_of(1))) is None
    assert dispatched(monkeypatch) == []
