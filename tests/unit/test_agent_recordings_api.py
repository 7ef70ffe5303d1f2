"""GET /api/recordings/<id>: the bearer key, 401 without it, nothing outside the directory."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.audio_files import OggOpusWriter
from agent.recording_store import Store, write_json_atomic
from agent.recordings_api import create_app
from agent.token_service import TokenBucket

KEY = "k" * 32
AUTH = {"Authorization": f"Bearer {KEY}"}


def make_recording(root: Path, files: int = 1, status: str = "complete") -> str:
    store = Store(root)
    rec = store.create(kind="meeting", room="demo", room_sid=None)
    for i in range(files):
        name = f"0{i + 1}-p{i}.ogg"
        w = OggOpusWriter(rec.path / name)
        w.write(np.zeros(4800, dtype=np.int16))
        w.close()
        rec.manifest["tracks"].append({"file": name, "participant": f"p{i}", "offset_s": 0.0, "channel": None})
    rec.finish(status) if status != "recording" else rec.save()
    write_json_atomic(rec.path / "transcript.json", {"segments": [], "text": ""})
    return rec.id


def call(root: Path, fn: Callable[[TestClient], Awaitable[Any]], bucket: TokenBucket | None = None) -> Any:
    async def main() -> Any:
        async with TestClient(TestServer(create_app(Store(root), KEY, bucket=bucket))) as client:
            return await fn(client)
    return asyncio.run(main())


def test_agent_recordings_api_serves_audio_and_json_with_the_key(tmp_path: Path) -> None:
    rid = make_recording(tmp_path)

    async def go(client: TestClient) -> list[tuple[int, str, bytes]]:
        out = []
        for path in (rid, f"{rid}/transcript", f"{rid}/manifest", f"{rid}/files/01-p0.ogg"):
            resp = await client.get(f"/api/recordings/{path}", headers=AUTH)
            out.append((resp.status, resp.content_type, await resp.read()))
        return out
    (s1, t1, audio), (s2, t2, transcript), (s3, _, manifest), (s4, _, track) = call(tmp_path, go)
    assert (s1, t1) == (200, "audio/ogg") and audio[:4] == b"OggS" and audio == track
    assert (s2, t2) == (200, "application/json") and b'"segments"' in transcript
    assert s3 == 200 and rid.encode() in manifest and s4 == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key-wrong-key"},
                                     {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}],
                         ids=["none", "wrong", "no-scheme", "basic"])
def test_agent_recordings_api_refuses_without_the_right_key(tmp_path: Path, headers: dict[str, str]) -> None:
    rid = make_recording(tmp_path)

    async def go(client: TestClient) -> tuple[int, str, dict[str, Any]]:
        resp = await client.get(f"/api/recordings/{rid}", headers=headers)
        return resp.status, resp.headers.get("WWW-Authenticate", ""), await resp.json()
    status, challenge, body = call(tmp_path, go)
    assert (status, challenge) == (401, "Bearer") and "TOKEN_KEY" in body["error"]


def test_agent_recordings_api_rate_limits_wrong_keys(tmp_path: Path) -> None:
    rid = make_recording(tmp_path)

    async def go(client: TestClient) -> list[int]:
        return [(await client.get(f"/api/recordings/{rid}", headers={"Authorization": "Bearer nope"})).status
                for _ in range(4)] + [(await client.get(f"/api/recordings/{rid}", headers=AUTH)).status]
    assert call(tmp_path, go, bucket=TokenBucket(1, 2)) == [401, 401, 429, 429, 200]


@pytest.mark.parametrize("path", [
    "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "rec-x/files/..%2Fmanifest.json",
    "{rid}/files/..%2F..%2F..%2Fetc%2Fpasswd", "{rid}/files/.%2E%2Fmanifest.json", "{rid}/files/manifest.json",
    "{rid}/files/%2Fetc%2Fpasswd", "rec-doesnotexist",
], ids=["dotdot", "encoded-dotdot", "encoded-dots", "file-dotdot", "file-deep", "file-mixed",
        "file-not-in-manifest", "file-absolute", "unknown"])
def test_agent_recordings_api_ids_and_names_cannot_escape(tmp_path: Path, path: str) -> None:
    root = tmp_path / "recordings"
    rid = make_recording(root)
    (tmp_path / "outside.txt").write_text("secret")

    async def go(client: TestClient) -> tuple[int, bytes]:
        resp = await client.get(f"/api/recordings/{path.format(rid=rid)}", headers=AUTH)
        return resp.status, await resp.read()
    status, body = call(root, go)
    assert status in (400, 404) and b"secret" not in body and b"root:" not in body


def test_agent_recordings_api_says_when_a_recording_is_not_ready(tmp_path: Path) -> None:
    running = make_recording(tmp_path, status="recording")
    meeting = make_recording(tmp_path, files=2)  # finished, but mix.ogg not written yet

    async def go(client: TestClient) -> list[int]:
        return [(await client.get(f"/api/recordings/{rid}", headers=AUTH)).status for rid in (running, meeting)] + [
            (await client.get(f"/api/recordings/{meeting}/summary", headers=AUTH)).status]
    assert call(tmp_path, go) == [409, 409, 409]


def test_agent_recordings_api_health_needs_no_key(tmp_path: Path) -> None:
    async def go(client: TestClient) -> int:
        return (await client.get("/api/recordings/health")).status
    assert call(tmp_path, go) == 200
