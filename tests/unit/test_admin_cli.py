"""agent.admin against a real livekit-server on loopback (operator venv).

The binary comes from LIVEKIT_SERVER_BIN, else `python -m infra.local livekit-bin`; a missing
binary fails the module rather than skipping it, so CI cannot pass without exercising the API.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from livekit import api

import infra.outputs
from agent.admin import AdminError, http_url, resolve_target
from tests.conftest import LOOPBACK_KEY as KEY
from tests.conftest import LOOPBACK_SECRET as SECRET
from tests.conftest import LiveKit, free_port
from tests.unit.support import outputs_for, spec_of

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(livekit_server: LiveKit) -> str:
    return livekit_server.url


def admin(url: str, *args: str, secret: str = SECRET, wrapper: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LIVEKIT_URL": url.replace("http://", "ws://"), "LIVEKIT_API_KEY": KEY,
           "LIVEKIT_API_SECRET": secret}
    cmd = [str(ROOT / "scripts" / "lk-admin.sh")] if wrapper else [sys.executable, "-m", "agent.admin"]
    return subprocess.run([*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def create_room(url: str, name: str) -> None:
    async def go() -> None:
        lk = api.LiveKitAPI(url, KEY, SECRET)
        try:
            await lk.room.create_room(api.CreateRoomRequest(name=name, empty_timeout=300))
        finally:
            await lk.aclose()
    asyncio.run(go())


def test_admin_cli_lists_shows_and_deletes_a_room(server: str) -> None:
    create_room(server, "admin-demo")

    rooms = admin(server, "rooms", wrapper=True)
    assert rooms.returncode == 0, rooms.stderr
    assert any(line.startswith("admin-demo\tsid=RM_") for line in rooms.stdout.splitlines())

    shown = admin(server, "--json", "room", "admin-demo")
    assert shown.returncode == 0, shown.stderr
    assert [r["name"] for r in json.loads(shown.stdout)] == ["admin-demo"]

    people = admin(server, "participants", "admin-demo")
    assert (people.returncode, people.stdout) == (0, "")
    assert "no participants" in people.stderr

    deleted = admin(server, "delete", "admin-demo")
    assert deleted.returncode == 0, deleted.stderr
    assert "admin-demo" not in admin(server, "rooms").stdout


def test_admin_cli_unknown_room_is_a_one_line_error(server: str) -> None:
    res = admin(server, "room", "no-such-room")
    assert res.returncode == 1
    assert res.stderr.startswith("error: room 'no-such-room' not found") and res.stderr.count("\n") == 1


def test_admin_cli_bad_secret_is_a_clear_error(server: str) -> None:
    res = admin(server, "rooms", secret="b" * 40)
    assert res.returncode == 1
    assert f"rejected API key '{KEY}'" in res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1


def test_admin_cli_unreachable_server_is_a_clear_error() -> None:
    res = admin(f"http://127.0.0.1:{free_port()}", "rooms")
    assert res.returncode == 1
    assert "cannot reach the server" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("url,expected", [
    ("wss://lk.example.test", "https://lk.example.test"),
    ("ws://127.0.0.1:7880/", "http://127.0.0.1:7880"),
    ("https://lk.example.test", "https://lk.example.test"),
], ids=["wss", "ws", "https"])
def test_admin_cli_converts_ws_urls_to_http(url: str, expected: str) -> None:
    assert http_url(url) == expected


def test_admin_cli_reads_credentials_and_ca_from_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(infra.outputs, "STACK_DIR", tmp_path)
    out = outputs_for(spec_of(env="t1", livekitHost="lk.t1.test", apiKey="APIadmintest"))
    infra.outputs.write(dataclasses.replace(out, ca_bundle="/tmp/root.pem"))
    t = resolve_target("t1", None, None)
    assert (t.url, t.api_key, t.api_secret, t.ca_bundle) == ("https://lk.t1.test", "APIadmintest", out.api_secret,
                                                             "/tmp/root.pem")
    assert resolve_target("t1", "ws://127.0.0.1:7880", "/other.pem").url == "http://127.0.0.1:7880"
    with pytest.raises(AdminError, match="make up ENV=t2"):
        resolve_target("t2", None, None)
