"""The agent-facing services from the outside: the token endpoint and the admin API."""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tempfile
import time

import pytest
from livekit import api

from agent.tokens import mint
from infra import verify
from infra.outputs import ROOT, Outputs
from infra.probes import in_client_side
from infra.probes.roundtrip import AGENT_PY


def test_token_01_endpoint_returns_the_seed_shape(outputs: Outputs, probe, cafile) -> None:
    got = probe("http_post", url=outputs.token_endpoint, body={"identity": "verify-user", "name": "Verify"},
                cafile=cafile, bearer=outputs.token_key)
    assert got["status"] == 200, (f"POST {outputs.token_endpoint} answered {got.get('status')} "
                                  f"{got.get('json') or got.get('text') or got.get('error')}: "
                                  "check voicestack-token and Caddy's /api/token route")
    body = got["json"]
    assert set(body) >= {"token", "wsUrl", "room"} and body["wsUrl"] == outputs.livekit_url
    claims = api.TokenVerifier(outputs.api_key, outputs.api_secret).verify(body["token"])
    assert claims.identity == "verify-user" and claims.video.room == body["room"]
    assert claims.video.can_publish and claims.video.can_subscribe and not claims.video.room_admin


def test_token_02_endpoint_refuses_bad_key_and_bad_input(outputs: Outputs, probe, cafile) -> None:
    wrong = probe("http_post", url=outputs.token_endpoint, body={"identity": "u", "name": "U"}, cafile=cafile,
                  bearer="not-the-key")
    assert wrong["status"] == 401 and "error" in wrong.get("json", {}), f"a wrong bearer key got {wrong}"
    bad = probe("http_post", url=outputs.token_endpoint, body={"identity": "no spaces allowed", "name": "U"},
                cafile=cafile, bearer=outputs.token_key)
    assert bad["status"] in (400, 422) and "error" in bad.get("json", {}), f"an invalid identity got {bad}"


def test_rec_01_recordings_download_route_needs_the_key(spec, outputs: Outputs, probe, cafile) -> None:
    """With recording on, https://<livekit name>/api/recordings/ answers, and only to the bearer key."""
    if not spec.recording:
        pytest.skip("recording is off in this environment: no recordings service, no route")
    base = spec.recordings_url
    health = probe("https_get", url=f"{base}/health", cafile=cafile)
    assert health["status"] == 200, (f"GET {base}/health answered {health.get('status')} {health.get('error', '')}: "
                                     "check voicestack-recordings and Caddy's /api/recordings route")
    unknown = f"{base}/rec-verify-{secrets.token_hex(4)}"
    for key in (None, "not-the-key"):
        got = probe("https_get", url=unknown, cafile=cafile, bearer=key)
        assert got["status"] == 401, f"GET {unknown} with key {key!r} answered {got.get('status')}, want 401"
    assert probe("https_get", url=unknown, cafile=cafile, bearer=outputs.token_key)["status"] == 404


def _admin(outputs: Outputs, *args: str) -> subprocess.CompletedProcess[str]:
    argv = in_client_side(outputs, [sys.executable, "-m", "agent.admin", "--env", outputs.env, "--json", *args])
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_admin_01_lists_the_room_with_client_and_agent(outputs: Outputs) -> None:
    """While a client is in a call with the agent, the admin CLI sees both in the room (LiveKit's
    Twirp API). The client only joins (no speech): it holds one of the suite's call slots from its
    connect until it leaves."""
    room = f"verify-admin-{secrets.token_hex(4)}"
    token = mint(outputs.api_key, outputs.api_secret, "verify-admin-client", room, preset="speaker", ttl=600)
    args = {"url": outputs.livekit_url, "tokens": [token], "ca_bundle": outputs.ca_bundle, "timeout": 60,
            "join_only": True, "slot": verify.call_slot_args(outputs)}
    # The token goes on stdin, never on a command line; closing stdin makes the client leave.
    argv = in_client_side(outputs, [str(AGENT_PY), "-m", "agent.roundtrip_cli", "-"])
    errors = tempfile.TemporaryFile("w+")  # a file, not a pipe: nobody reads it while the call lasts
    client = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True)
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write(json.dumps(args) + "\n")
    client.stdin.flush()
    seen: list[dict] = []
    try:
        # The client's first line says the agent's audio reached it (it gives up after its timeout).
        joined = client.stdout.readline()
        if not joined.startswith('{"joined"'):
            client.wait(timeout=60)
            errors.seek(0)
            raise AssertionError(f"the client never had the agent in its room: {joined!r} {errors.read()[-1500:]}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            proc = _admin(outputs, "participants", room)
            if proc.returncode == 0 and proc.stdout.strip():
                seen = json.loads(proc.stdout)
                kinds = {p.get("kind", "STANDARD") for p in seen}
                if any(p["identity"] == "verify-admin-client" for p in seen) and "AGENT" in kinds:
                    break
            time.sleep(0.5)  # poll interval of a deadline loop, not a readiness guess
        rooms = _admin(outputs, "rooms")
    finally:
        # Leave cleanly: a killed client would keep the agent's job (a slot of AGENT_MAX_JOBS)
        # until LiveKit notices it gone.
        client.stdin.close()
        client.wait(timeout=60)
        errors.close()
    assert any(p["identity"] == "verify-admin-client" for p in seen), f"admin CLI never saw the client: {seen}"
    assert any(p.get("kind") == "AGENT" for p in seen), f"admin CLI never saw the agent in {room}: {seen}"
    assert rooms.returncode == 0 and any(r["name"] == room for r in json.loads(rooms.stdout)), rooms.stdout
