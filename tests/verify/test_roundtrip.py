"""The spoken round trip: a client speaks into a fresh room, the agent answers, the client hears it.

Runs under three network conditions for the client: normal; UDP blocked (media over ICE/TCP or
TURN/TCP); only TCP 443 (TURN over TLS on 443). Conditions need the client namespace of a local
environment; elsewhere only the normal condition runs.
"""
from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest

from agent.tokens import mint
from infra.outputs import Outputs
from tests.verify import netcond

ROOT = Path(__file__).resolve().parents[2]
AGENT_PY = ROOT / ".venv-agent" / "bin" / "python"
HINTS = {
    "normal": "check the agent (systemctl status voicestack-agent voicestack-speech) and LiveKit's log",
    "udp-blocked": "media must fall back to ICE/TCP 7881 or TURN/TCP 3478: check those ports and coturn",
    "tcp443-only": "media must use TURN over TLS on 443: check the SNI router (nginx), coturn's TLS port "
                   "and the certificate for the TURN name",
}


def round_trips(outputs: Outputs, count: int, condition: str, timeout: float = 60) -> list[dict]:
    tokens = [mint(outputs.api_key, outputs.api_secret, f"verify-{secrets.token_hex(3)}",
                   f"verify-{condition}-{secrets.token_hex(4)}", preset="speaker", ttl=600) for _ in range(count)]
    args = {"url": outputs.livekit_url, "tokens": tokens, "ca_bundle": outputs.ca_bundle, "timeout": timeout}
    argv = [str(AGENT_PY), "-m", "tests.verify.roundtrip_client", json.dumps(args)]
    if outputs.client_netns:
        argv = ["ip", "netns", "exec", outputs.client_netns, *argv]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120 + count * timeout)
    if proc.returncode != 0:
        raise AssertionError(f"round-trip client crashed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["results"]


def _record(env: str, condition: str, result: dict) -> None:
    """Keep the last round trip per condition for `make up`'s summary."""
    path = ROOT / ".stack" / env / "roundtrip.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[condition] = {"latency_s": round(result["latency_s"], 2), "answer": result["answer"]}
    path.write_text(json.dumps(data, indent=2))


@pytest.mark.parametrize("condition", list(netcond.RULES))
def test_voice_01_spoken_round_trip(outputs: Outputs, condition: str) -> None:
    if condition != "normal" and not outputs.client_netns:
        pytest.skip("network conditions need the client namespace of a local environment")
    if outputs.client_netns:
        with netcond.condition(outputs.client_netns, condition):
            (result,) = round_trips(outputs, 1, condition)
    else:
        (result,) = round_trips(outputs, 1, condition)
    assert result["ok"], f"no spoken round trip with {condition} network: {result['error']}; {HINTS[condition]}"
    assert "voice assistant" in result["greeting"].lower(), f"greeting heard as {result['greeting']!r}"
    assert "turned on the lights" in result["answer"].lower(), (
        f"answer heard as {result['answer']!r}: the agent misunderstood or its speech is garbled")
    _record(outputs.env, condition, result)
    print(f"\n[{condition}] voice-to-voice latency {result['latency_s']:.2f}s, agent joined in "
          f"{result['agent_join_s']:.2f}s")
