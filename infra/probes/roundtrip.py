"""Spoken round trips from the client side (agent/roundtrip_cli.py in the agent venv)."""
from __future__ import annotations

import json
import secrets
import subprocess
from typing import Any

from agent.tokens import mint
from infra.outputs import ROOT, Outputs
from infra.probes import in_client_side

AGENT_PY = ROOT / ".venv-agent" / "bin" / "python"


def round_trips(outputs: Outputs, count: int, condition: str, timeout: float = 60,
                phrase: str = "turn on the lights") -> list[dict[str, Any]]:
    """`count` round trips, each in a fresh room; one result dict per trip ({ok, greeting, answer, latency_s...})."""
    tokens = [mint(outputs.api_key, outputs.api_secret, f"verify-{secrets.token_hex(3)}",
                   f"verify-{condition}-{secrets.token_hex(4)}", preset="speaker", ttl=600) for _ in range(count)]
    args = {"url": outputs.livekit_url, "tokens": tokens, "ca_bundle": outputs.ca_bundle, "timeout": timeout,
            "phrase": phrase}
    argv = in_client_side(outputs, [str(AGENT_PY), "-m", "agent.roundtrip_cli", json.dumps(args)])
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120 + count * timeout)
    if proc.returncode != 0:
        raise AssertionError(f"round-trip client crashed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["results"]
