"""Webhook verification, signed exactly as livekit-server signs (protocol webhook/url_notifier.go)."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from google.protobuf.json_format import MessageToJson
from livekit import api
from livekit.protocol.webhook import WebhookEvent

from agent.outbox import SIGNATURE_HEADER, ForwardConfig, verify_signature
from agent.webhooks import ReplayCache, WebhookError, WebhookVerifier, create_app

KEY, SECRET = "APIwebhookkey", "w" * 40
ROOT = Path(__file__).resolve().parents[2]
_counter = iter(range(1_000_000))


def event(kind: str = "participant_joined", *, created_at: float | None = None, eid: str | None = None,
          **fields: Any) -> str:
    """A protojson WebhookEvent body, camelCase like Go's protojson."""
    ev = WebhookEvent(event=kind, id=eid or f"EV_test{next(_counter)}",
                      created_at=int(created_at if created_at is not None else time.time()),
                      room=api.Room(name="demo", sid="RM_1"), **fields)
    return MessageToJson(ev)


def sign(body: str, *, ttl: timedelta = timedelta(minutes=5), secret: str = SECRET) -> str:
    # What livekit-server does: a token with only the body hash, valid 5 minutes.
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return api.AccessToken(KEY, secret).with_sha256(digest).with_ttl(ttl).to_jwt()


def test_agent_webhooks_accepts_valid_participant_joined() -> None:
    body = event(participant=api.ParticipantInfo(identity="alice", sid="PA_1", name="Alice",
                                                  kind=api.ParticipantInfo.Kind.STANDARD))
    ev = WebhookVerifier(KEY, SECRET).verify(body.encode(), sign(body))
    assert (ev["event"], ev["room"], ev["room_sid"], ev["known"]) == ("participant_joined", "demo", "RM_1", True)
    assert ev["participant"] == {"identity": "alice", "sid": "PA_1", "name": "Alice", "kind": "standard"}
    assert ev["track"] is None and ev["egress"] is None


@pytest.mark.parametrize("kind,fields,check", [
    ("room_started", {}, lambda ev: ev["participant"] is None),
    ("room_finished", {}, lambda ev: ev["room"] == "demo"),
    ("participant_left", {"participant": api.ParticipantInfo(identity="bob")},
     lambda ev: ev["participant"]["identity"] == "bob"),
    ("track_published", {"participant": api.ParticipantInfo(identity="bob"),
                         "track": api.TrackInfo(sid="TR_1", type=api.TrackType.AUDIO,
                                                source=api.TrackSource.MICROPHONE)},
     lambda ev: ev["track"] == {"sid": "TR_1", "name": "", "type": "audio", "source": "microphone"}),
    ("track_unpublished", {"track": api.TrackInfo(sid="TR_1")}, lambda ev: ev["track"]["sid"] == "TR_1"),
    ("egress_ended", {"egress_info": api.EgressInfo(
        egress_id="EG_1", room_name="demo", status=api.EgressStatus.EGRESS_COMPLETE,
        file_results=[api.FileInfo(filename="rec.ogg", location="s3://bucket/rec.ogg")])},
     lambda ev: ev["egress"] == {"id": "EG_1", "status": "egress_complete", "error": None,
                                 "files": ["s3://bucket/rec.ogg"], "segments": []}),
], ids=["room_started", "room_finished", "participant_left", "track_published", "track_unpublished",
        "egress_ended"])
def test_agent_webhooks_normalizes_seed_events(kind: str, fields: dict[str, Any], check: Any) -> None:
    body = event(kind, **fields)
    ev = WebhookVerifier(KEY, SECRET).verify(body, sign(body))
    assert ev["event"] == kind and check(ev)


def test_agent_webhooks_rejects_tampered_body() -> None:
    body = event()
    tampered = body.replace('"demo"', '"other"')
    with pytest.raises(WebhookError, match="does not match") as err:
        WebhookVerifier(KEY, SECRET).verify(tampered, sign(body))
    assert err.value.status == 401


@pytest.mark.parametrize("auth", ["", "not-a-jwt", None], ids=["empty", "garbage", "missing"])
def test_agent_webhooks_rejects_missing_or_garbage_auth(auth: str | None) -> None:
    with pytest.raises(WebhookError) as err:
        WebhookVerifier(KEY, SECRET).verify(event(), auth)
    assert err.value.status == 401


def test_agent_webhooks_rejects_wrong_secret() -> None:
    body = event()
    with pytest.raises(WebhookError, match="signature"):
        WebhookVerifier(KEY, SECRET).verify(body, sign(body, secret="x" * 40))


def test_agent_webhooks_rejects_expired_token() -> None:
    body = event()
    with pytest.raises(WebhookError, match="expired"):
        WebhookVerifier(KEY, SECRET).verify(body, sign(body, ttl=timedelta(seconds=-30)))


def test_agent_webhooks_rejects_old_event_even_with_fresh_token() -> None:
    body = event(created_at=time.time() - 600)
    with pytest.raises(WebhookError, match="stale webhook: event .* 600 s old"):
        WebhookVerifier(KEY, SECRET).verify(body, sign(body))


def test_agent_webhooks_rejects_replay() -> None:
    verifier = WebhookVerifier(KEY, SECRET)
    body = event()
    verifier.verify(body, sign(body))
    with pytest.raises(WebhookError, match="replayed") as err:
        verifier.verify(body, sign(body))  # even re-signed: same event id
    assert err.value.status == 409


def test_agent_webhooks_forged_delivery_does_not_burn_the_event_id() -> None:
    verifier = WebhookVerifier(KEY, SECRET)
    body = event(eid="EV_fixed")
    with pytest.raises(WebhookError):
        verifier.verify(body, sign(body, secret="x" * 40))
    assert verifier.verify(body, sign(body))["id"] == "EV_fixed"


def test_agent_webhooks_replay_cache_forgets_after_window_and_is_bounded() -> None:
    cache = ReplayCache(window=10, max_entries=3)
    assert not cache.seen("a", now=0) and cache.seen("a", now=5)
    assert not cache.seen("a", now=11)  # out of the window: the age check covers it now
    for i in range(10):
        cache.seen(f"id{i}", now=12)
    assert len(cache) == 3


FORWARD_SECRET = "f" * 40


def test_agent_webhooks_receiver_service_and_signed_forwarding(tmp_path: Path) -> None:
    forwarded: list[tuple[dict[str, Any], bytes, str]] = []

    async def sink(request: web.Request) -> web.Response:
        raw = await request.read()
        forwarded.append((json.loads(raw), raw, request.headers.get(SIGNATURE_HEADER, "")))
        return web.json_response({})

    async def main() -> list[tuple[int, Any]]:
        sink_app = web.Application()
        sink_app.router.add_post("/n8n", sink)
        async with TestServer(sink_app, host="127.0.0.1") as sink_srv:
            forward = ForwardConfig(url=str(sink_srv.make_url("/n8n")), secret=FORWARD_SECRET,
                                    outbox_dir=tmp_path / "outbox")
            app = create_app(WebhookVerifier(KEY, SECRET), forward=forward)
            async with TestClient(TestServer(app, host="127.0.0.1")) as client:
                body = event("room_started")
                hdrs = {"Authorization": sign(body), "Content-Type": "application/webhook+json"}
                out = []
                for data, h in [(body, hdrs), (body, hdrs), (body + " ", hdrs), (body, {})]:
                    resp = await client.post("/webhook", data=data, headers=h)
                    out.append((resp.status, await resp.json()))
                health = await client.get("/health")
                out.append((health.status, await health.json()))
                deadline = time.monotonic() + 10
                while not forwarded and time.monotonic() < deadline:  # the outbox delivers in the background
                    await asyncio.sleep(0.02)
                return out
    results = asyncio.run(main())
    assert [s for s, _ in results] == [200, 409, 401, 401, 200]
    assert results[0][1]["event"] == "room_started"
    assert all("error" in b for _, b in results[1:4])
    assert [f["event"] for f, _, _ in forwarded] == ["room_started"]
    _, raw, signature = forwarded[0]
    assert verify_signature(FORWARD_SECRET, raw, signature)
    assert not list((tmp_path / "outbox").glob("*.json"))  # acknowledged, so deleted


def test_agent_webhooks_queue_events_on_disk_while_the_forward_url_is_down(tmp_path: Path) -> None:
    """Verified events survive a receiver restart while n8n is down, then arrive."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    forward = ForwardConfig(url=f"http://127.0.0.1:{port}/n8n", secret=FORWARD_SECRET,
                            outbox_dir=tmp_path / "outbox", min_backoff_s=0.05, max_backoff_s=0.2)
    bodies = [event("participant_joined", participant=api.ParticipantInfo(identity=f"p{i}")) for i in range(3)]

    async def deliver_while_down() -> list[int]:
        app = create_app(WebhookVerifier(KEY, SECRET), forward=forward)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            return [(await client.post("/webhook", data=b, headers={"Authorization": sign(b)})).status
                    for b in bodies]

    assert asyncio.run(deliver_while_down()) == [200, 200, 200]
    assert len(list((tmp_path / "outbox").glob("*.json"))) == 3  # the receiver stopped; the events did not go

    got: list[str] = []

    async def back_up() -> None:
        async def sink(request: web.Request) -> web.Response:
            got.append((await request.json())["participant"]["identity"])
            return web.json_response({})
        sink_app = web.Application()
        sink_app.router.add_post("/n8n", sink)
        runner = web.AppRunner(sink_app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        app = create_app(WebhookVerifier(KEY, SECRET), forward=forward)
        async with TestClient(TestServer(app, host="127.0.0.1")):
            deadline = time.monotonic() + 10
            while len(got) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        await runner.cleanup()

    asyncio.run(back_up())
    assert got == ["p0", "p1", "p2"]


def test_agent_webhooks_service_refuses_forwarding_without_a_secret() -> None:
    env = {"LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET, "PATH": "/usr/bin:/bin",
           "FORWARD_URL": "http://127.0.0.1:9/hook"}
    proc = subprocess.run([sys.executable, "-m", "agent.webhooks"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "FORWARD_SECRET" in proc.stderr and "Traceback" not in proc.stderr


def test_agent_webhooks_cli_verify(tmp_path: Path) -> None:
    body = event("egress_ended", egress_info=api.EgressInfo(egress_id="EG_9", status=api.EgressStatus.EGRESS_COMPLETE))
    (tmp_path / "body.json").write_text(body)
    env = {"LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET, "PATH": "/usr/bin:/bin"}

    def cli(auth: str, path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.webhooks", "verify", "--body", str(path), "--auth", auth],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    ok = cli(sign(body), tmp_path / "body.json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["egress"]["id"] == "EG_9"
    (tmp_path / "tampered.json").write_text(body.replace("EG_9", "EG_8"))
    bad = cli(sign(body), tmp_path / "tampered.json")
    assert bad.returncode == 1 and bad.stderr.startswith("error: body does not match")
    assert "Traceback" not in bad.stderr


def test_agent_webhooks_unqueueable_event_gets_503_and_livekits_retry_is_accepted(tmp_path: Path) -> None:
    """A broken outbox must not turn LiveKit's retry into a rejected replay."""
    outbox = tmp_path / "outbox"
    forward = ForwardConfig(url="http://127.0.0.1:9/n8n", secret=FORWARD_SECRET, outbox_dir=outbox)
    body = event("room_started")

    async def main() -> list[int]:
        app = create_app(WebhookVerifier(KEY, SECRET), forward=forward)  # creates the directory
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            shutil.rmtree(outbox)
            outbox.write_text("a file where the outbox should be")  # fails for root too
            first = (await client.post("/webhook", data=body, headers={"Authorization": sign(body)})).status
            outbox.unlink()
            retry = (await client.post("/webhook", data=body, headers={"Authorization": sign(body)})).status
            return [first, retry]

    assert asyncio.run(main()) == [503, 200]
    assert len(list(outbox.glob("*.json"))) == 1
