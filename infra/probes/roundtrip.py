"""Spoken round trips from the client side (agent/roundtrip_cli.py in the agent venv)."""
from __future__ import annotations

import json
import secrets
import subprocess
from typing import Any

from agent.tokens import mint
from infra.outputs import ROOT, Outputs
from infra.probes import in_client_side
from infra.probes.turn import rest_credentials

AGENT_PY = ROOT / ".venv-agent" / "bin" / "python"


def round_trips(outputs: Outputs, count: int, condition: str, timeout: float = 60,
                phrase: str = "turn on the lights", rooms: list[str] | None = None,
                **options: Any) -> list[dict[str, Any]]:
    """`count` round trips, each in a fresh room (or in `rooms`); one result dict per trip ({ok,
    greeting, answer, latency_s, ice...}). `options` go to agent.roundtrip_cli as they are:
    collect_ice, relay_only, ice_servers, turn_tls (see turn_tls())."""
    rooms = rooms or [f"verify-{condition}-{secrets.token_hex(4)}" for _ in range(count)]
    tokens = [mint(outputs.api_key, outputs.api_secret, f"verify-{secrets.token_hex(3)}", room, preset="speaker",
                   ttl=600) for room in rooms]
    args = {"url": outputs.livekit_url, "tokens": tokens, "ca_bundle": outputs.ca_bundle, "timeout": timeout,
            "phrase": phrase, **options}
    # The arguments hold tokens (and TURN credentials): stdin, never argv.
    argv = in_client_side(outputs, [str(AGENT_PY), "-m", "agent.roundtrip_cli", "-"])
    proc = subprocess.run(argv, cwd=ROOT, input=json.dumps(args), capture_output=True, text=True,
                          timeout=120 + len(rooms) * timeout)
    if proc.returncode != 0:
        raise AssertionError(f"round-trip client crashed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for result in out["results"]:
        result["turn_tls_connections"] = out.get("turn_tls_connections")
    return out["results"]


def turn_tls(outputs: Outputs, user: str = "verify") -> dict[str, Any]:
    """The roundtrip option for "ICE only through the TURN name over TLS on its TLS port" (REST credentials)."""
    username, password = rest_credentials(outputs.turn_secret, user)
    spec = outputs.spec
    return {"host": spec.config.turn_host, "port": spec.config.turn_tls_port, "server_name": spec.config.turn_host,
            "username": username, "password": password}
