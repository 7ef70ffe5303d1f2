"""Tokens verify with livekit-api, carry explicit grants, and are refused when stale or forged."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import jwt
import pytest
from livekit import api

from agent.tokens import PRESETS, TokenError, mint

ROOT = Path(__file__).resolve().parents[2]
KEY, SECRET = "APItest", "s" * 48


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_verifies_with_livekit_api(preset: str) -> None:
    token = mint(KEY, SECRET, "alice", "room-1", preset=preset, name="Alice")
    claims = api.TokenVerifier(KEY, SECRET).verify(token)
    assert claims.identity == "alice" and claims.name == "Alice"
    video = claims.video
    assert video.room_join and video.room == "room-1"
    want = PRESETS[preset]
    assert video.can_publish is want.can_publish
    assert video.can_subscribe is want.can_subscribe
    assert bool(video.room_admin) is want.room_admin


def test_publish_and_subscribe_are_always_explicit() -> None:
    raw = jwt.decode(mint(KEY, SECRET, "l", "r", preset="listener"), options={"verify_signature": False})
    assert raw["video"]["canPublish"] is False and raw["video"]["canSubscribe"] is True
    assert raw["iss"] == KEY and raw["sub"] == "l"
    assert raw["exp"] - raw["nbf"] == 3600


def test_voice_preset_publishes_only_the_microphone() -> None:
    claims = api.TokenVerifier(KEY, SECRET).verify(mint(KEY, SECRET, "v", "r", preset="voice"))
    assert claims.video.can_publish and claims.video.can_publish_sources == ["microphone"]
    assert claims.video.can_subscribe and not claims.video.room_admin
    # Nobody but an admin may rewrite their own name/metadata/attributes after joining.
    assert not claims.video.can_update_own_metadata


def test_metadata_attributes_and_room_config_claims() -> None:
    token = mint(KEY, SECRET, "u", "r", preset="voice", metadata='{"a": 1}', attributes={"lang": "en"},
                 room_config={"maxParticipants": 2, "emptyTimeout": 30, "departureTimeout": 5},
                 agent_name="voice-agent")
    claims = api.TokenVerifier(KEY, SECRET).verify(token)
    assert claims.metadata == '{"a": 1}' and claims.attributes == {"lang": "en"}
    rc = claims.room_config
    assert (rc.max_participants, rc.empty_timeout, rc.departure_timeout) == (2, 30, 5)
    assert [a.agent_name for a in rc.agents] == ["voice-agent"]


def test_agent_dispatch_claim() -> None:
    raw = jwt.decode(mint(KEY, SECRET, "u", "r", agent_name="voice-agent"), options={"verify_signature": False})
    assert raw["roomConfig"] == {"agents": [{"agentName": "voice-agent"}]}


def test_expired_token_is_rejected() -> None:
    token = mint(KEY, SECRET, "u", "r", ttl=60, now=time.time() - 3600)
    with pytest.raises(jwt.ExpiredSignatureError):
        api.TokenVerifier(KEY, SECRET).verify(token)


def test_not_yet_valid_token_is_rejected() -> None:
    token = mint(KEY, SECRET, "u", "r", now=time.time() + 3600)
    with pytest.raises(jwt.ImmatureSignatureError):
        api.TokenVerifier(KEY, SECRET).verify(token)


def test_token_signed_with_another_secret_is_rejected() -> None:
    token = mint(KEY, "o" * 48, "u", "r")
    with pytest.raises(jwt.InvalidSignatureError):
        api.TokenVerifier(KEY, SECRET).verify(token)


@pytest.mark.parametrize("kwargs", [{"identity": "bad id"}, {"room": "a/b"}, {"preset": "root"}, {"ttl": 0}],
                         ids=["identity", "room", "preset", "ttl"])
def test_bad_input_is_refused(kwargs: dict) -> None:
    args = {"identity": "u", "room": "r", **kwargs}
    with pytest.raises(TokenError):
        mint(KEY, SECRET, args.pop("identity"), args.pop("room"), **args)


def _script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    return subprocess.run([str(ROOT / "scripts/generate_livekit_token.sh"), *args], cwd=ROOT,
                          env={**base, **env}, capture_output=True, text=True, timeout=60)


def test_script_json_token_verifies() -> None:
    proc = _script("--json", "my-room", "bob", env={"LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET,
                                                    "LIVEKIT_URL": "wss://lk.example.com"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["room"] == "my-room" and out["identity"] == "bob" and out["wsUrl"] == "wss://lk.example.com"
    claims = api.TokenVerifier(KEY, SECRET).verify(out["token"])
    assert claims.video.room == "my-room" and claims.video.can_publish


def test_script_defaults_follow_the_seed() -> None:
    proc = _script("--json", env={"LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET})
    out = json.loads(proc.stdout)
    assert out["room"] == "voice-test" and out["identity"].startswith("user-")
    human = _script(env={"LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET})
    assert "Token:" in human.stdout and "WebSocket:" in human.stdout


def test_script_reads_outputs_of_the_env(tmp_path: Path) -> None:
    import dataclasses

    from infra.outputs import write
    from tests.unit.support import outputs_for, spec_of

    env = "unit-tokens"
    out = outputs_for(spec_of(env=env, domain="unit.test", apiKey=KEY))
    path = write(dataclasses.replace(out, api_secret=SECRET))
    try:
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        proc = _script("--json", "r1", "u1", env={"ENV": env})
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["wsUrl"] == "wss://livekit.unit.test"
        api.TokenVerifier(KEY, SECRET).verify(out["token"])
    finally:
        path.unlink()
        path.parent.rmdir()


def test_script_without_credentials_is_one_line_error() -> None:
    proc = _script(env={"ENV": "no-such-env"})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:")
    assert "Traceback" not in proc.stderr
