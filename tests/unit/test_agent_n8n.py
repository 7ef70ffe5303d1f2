"""The shipped n8n workflows (examples/n8n/*.json) in a real n8n, wired to the real voicestack parts.

One n8n 2.41.1 (infra/n8n: pinned lockfile, cached under /var/cache/voicestack/n8n; the first run
installs it, minutes) on loopback with its own user folder. The workflow files are imported as they
are with n8n's own CLI (`import:workflow`, `import:credentials`, `publish:workflow`); then:
- call me: the token workflow calls the real token service and its token joins a real livekit-server;
- voice action: signed exactly as the agent signs (agent/actions.py), it reaches a stand-in Home
  Assistant (a real HTTP server here, recording the call) and answers the sentence the agent speaks;
  a forged signature is refused and reaches nothing;
- room events: livekit-server's own webhooks -> the webhook receiver (agent/webhooks.py, its outbox
  forwarding) -> the room-events workflow: the events are in n8n's execution log;
- with n8n stopped, the events of a call wait in the receiver's outbox and arrive after it returns;
- meeting notes: a queued recording_finished becomes a mail (a stand-in SMTP server) and a stored file;
- spoken: "turn on the lights in the kitchen" through the agent's own loopback stack (livekit-server,
  speech server, worker) reaches the workflow, and the agent speaks the workflow's sentence.
Marked `n8n`: part of `make test` (which installs n8n beside the venvs); `make test-n8n` runs only
these and tests/e2e/test_recording.py's (the same workflow behind a deployed local environment).
"""
from __future__ import annotations

import asyncio
import contextlib
import email
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiohttp import ClientSession

from agent.actions import ActionClient, ActionConfig, DeviceAction
from agent.outbox import Outbox, sign
from agent.roundtrip import HttpSpeech, round_trip
from infra.n8n.install import N8nInstall, install
from infra.n8n.server import N8nServer
from tests import n8n_shipped as shipped
from tests.conftest import LOOPBACK_KEY, LOOPBACK_SECRET, free_port, livekit_binary, participant, wait_until
from tests.home_assistant import HomeAssistant
from tests.unit.test_agent_roundtrip import Stack as VoiceStack
from tests.unit.test_agent_roundtrip import token as voice_token

pytestmark = pytest.mark.n8n

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = shipped.EXAMPLES
SIGNING_SECRET = "n8n-signing-secret-0123456789abcdef0123"   # ACTION_SECRET = FORWARD_SECRET here
TOKEN_KEY = "token-key-for-n8n-0123456789abcdef"
HA_TOKEN = "ha-long-lived-token-0123456789"
HOOKS = ("call-me", "voice-action", "livekit-events")
WORKFLOWS = shipped.WORKFLOWS


# --- the parts around n8n ---------------------------------------------------------------------
class Mailbox:
    """A stand-in SMTP server (plain, no auth): enough of RFC 5321 for n8n's mailer; keeps each message."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(b"220 mailbox ready\r\n")
                mail: dict[str, Any] = {"rcpt": []}
                while line := self.rfile.readline():
                    verb = line.decode(errors="replace").strip().split(" ", 1)[0].upper()
                    if verb == "EHLO":
                        self.wfile.write(b"250-mailbox\r\n250 8BITMIME\r\n")
                    elif verb in ("HELO", "RSET", "NOOP"):
                        self.wfile.write(b"250 ok\r\n")
                    elif verb == "MAIL":
                        mail["from"] = line.decode().split(":", 1)[1].strip()
                        self.wfile.write(b"250 ok\r\n")
                    elif verb == "RCPT":
                        mail["rcpt"].append(line.decode().split(":", 1)[1].strip())
                        self.wfile.write(b"250 ok\r\n")
                    elif verb == "DATA":
                        self.wfile.write(b"354 go on\r\n")
                        data = b""
                        while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                            data += chunk
                        outer.messages.append({**mail, "message": email.message_from_bytes(data)})
                        mail = {"rcpt": []}
                        self.wfile.write(b"250 queued\r\n")
                    elif verb == "QUIT":
                        self.wfile.write(b"221 bye\r\n")
                        return
                    else:
                        self.wfile.write(b"502 not here\r\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def service(argv: list[str], env: dict[str, str], health: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A voicestack service as its own process (as systemd runs it), up once `health` answers."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _ok(health), 60, f"{argv[-1]} on {health}", proc)
        yield proc
    except (TimeoutError, RuntimeError) as exc:
        pytest.fail(f"{exc}; log:\n{log.read_text()[-2000:]}")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@dataclass
class Stack:
    n8n: N8nServer
    ha: HomeAssistant
    mailbox: Mailbox
    notes_dir: Path
    livekit_ws: str
    token_url: str
    outbox: Path
    receiver_log: Path


def credentials(ha_port: int, smtp_port: int) -> list[dict[str, Any]]:
    return [shipped.signing_secret(SIGNING_SECRET), shipped.token_key(TOKEN_KEY),
            shipped.home_assistant(ha_port, HA_TOKEN), shipped.smtp(smtp_port)]


def livekit_config(port: int, webhook_port: int) -> str:
    return (f"port: {port}\nbind_addresses: [127.0.0.1]\n"
            f"rtc: {{tcp_port: {free_port()}, udp_port: {free_port(socket.SOCK_DGRAM)}, node_ip: 127.0.0.1, "
            "use_external_ip: false}\n"
            f"keys: {{{LOOPBACK_KEY}: {LOOPBACK_SECRET}}}\n"
            f"webhook: {{api_key: {LOOPBACK_KEY}, urls: ['http://127.0.0.1:{webhook_port}/webhook']}}\n"
            "logging: {level: warn}\n")


@pytest.fixture(scope="module")
def n8n_install() -> N8nInstall:
    started = time.monotonic()
    inst = install()   # cached: seconds once installed, minutes the first time
    print(f"n8n {inst.version} ready in {time.monotonic() - started:.1f} s: {inst.root}")
    return inst


@pytest.fixture(scope="module")
def stack(n8n_install: N8nInstall, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("n8n-stack")
    ha, mailbox = HomeAssistant(HA_TOKEN), Mailbox()
    notes_dir = tmp / "files" / "meeting-notes"
    notes_dir.mkdir(parents=True)
    lk_port, token_port, receiver_port = free_port(), free_port(), free_port()
    token_url = f"http://127.0.0.1:{token_port}/api/token"
    n8n = N8nServer(n8n_install, tmp / "n8n", env={
        "VOICESTACK_TOKEN_URL": token_url,
        "N8N_BLOCK_ENV_ACCESS_IN_NODE": "false",   # the workflows read these (README "n8n")
        "MEETING_NOTES_TO": "team@example.test", "MEETING_NOTES_DIR": str(notes_dir),
        "N8N_RESTRICT_FILE_ACCESS_TO": str(tmp / "files"),
    })
    n8n.import_credentials(credentials(ha.port, mailbox.port))
    assert n8n.import_workflows([EXAMPLES / name for name in WORKFLOWS]) == list(WORKFLOWS.values())
    for wid in WORKFLOWS.values():
        n8n.publish(wid)
    livekit_env = {"LIVEKIT_API_KEY": LOOPBACK_KEY, "LIVEKIT_API_SECRET": LOOPBACK_SECRET}
    outbox = tmp / "outbox"
    with contextlib.ExitStack() as stack_:
        stack_.callback(ha.close)
        stack_.callback(mailbox.close)
        stack_.callback(n8n.stop)
        lk_log = tmp / "livekit.log"
        stack_.enter_context(service(
            [livekit_binary(), "--config-body", livekit_config(lk_port, receiver_port)], {},
            f"http://127.0.0.1:{lk_port}/", lk_log))
        stack_.enter_context(service([sys.executable, "-m", "agent.token_service"], {
            **livekit_env, "LIVEKIT_WS_URL": f"ws://127.0.0.1:{lk_port}", "LIVEKIT_URL": f"http://127.0.0.1:{lk_port}",
            "TOKEN_KEY": TOKEN_KEY, "TOKEN_HOST": "127.0.0.1", "TOKEN_PORT": str(token_port)},
            f"http://127.0.0.1:{token_port}/api/token/health", tmp / "token.log"))
        receiver_log = tmp / "receiver.log"
        stack_.enter_context(service([sys.executable, "-m", "agent.webhooks"], {
            **livekit_env, "WEBHOOK_HOST": "127.0.0.1", "WEBHOOK_PORT": str(receiver_port),
            "FORWARD_URL": n8n.webhook_url("livekit-events"), "FORWARD_SECRET": SIGNING_SECRET,
            "OUTBOX_DIR": str(outbox), "FORWARD_MIN_BACKOFF": "0.5", "FORWARD_MAX_BACKOFF": "2"},
            f"http://127.0.0.1:{receiver_port}/health", receiver_log))
        started = time.monotonic()
        n8n.start(HOOKS)
        print(f"n8n started in {time.monotonic() - started:.1f} s on {n8n.url}")
        yield Stack(n8n, ha, mailbox, notes_dir, f"ws://127.0.0.1:{lk_port}", token_url, outbox, receiver_log)


# --- helpers ------------------------------------------------------------------------------------
def post_json(url: str, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None,
              timeout: float = 30) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text.decode(errors="replace")


def join(url: str, token: str, while_in: Any = None) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        async with participant(url, token) as joined:
            if while_in is not None and joined.get("joined"):
                await asyncio.to_thread(while_in)
            return joined
    return asyncio.run(main())


def events_in_n8n(stack: Stack, *needles: str) -> list[dict[str, Any]]:
    """Room-events executions whose run data holds every needle (event names, identities, rooms)."""
    return [e for e in stack.n8n.executions(WORKFLOWS["room-events.json"]) if all(n in e["data"] for n in needles)]


def speak(stack: Stack, action: DeviceAction) -> str:
    async def main() -> str:
        async with ClientSession() as session:
            # The agent's default ACTION_TIMEOUT is 4 s; n8n's first execution after a start is slower.
            client = ActionClient(ActionConfig(stack.n8n.webhook_url("voice-action"), SIGNING_SECRET, 20))
            return await client.perform(action, session)
    return asyncio.run(main())


# --- the workflows ---------------------------------------------------------------------------------
def test_n8n_call_me_returns_a_token_that_livekit_accepts(stack: Stack) -> None:
    status, body = post_json(stack.n8n.webhook_url("call-me"), {"userId": "alice", "userName": "Alice",
                                                               "room": "n8n-call"})
    assert status == 200, body
    assert set(body) == {"token", "wsUrl", "room"} and body["room"] == "n8n-call"
    assert body["wsUrl"] == stack.livekit_ws
    joined = join(body["wsUrl"], body["token"])
    assert joined == {"joined": True, "identity": "alice"}, joined


def test_n8n_voice_action_switches_home_assistant_and_answers_the_sentence(stack: Stack) -> None:
    before = len(stack.ha.calls)
    said = speak(stack, DeviceAction("turn_on", "light", "kitchen", None, "turn on the lights in the kitchen"))
    assert said == "Okay, the kitchen lights are on."
    assert stack.ha.calls[before:] == [{"path": "/api/services/light/turn_on", "auth": f"Bearer {HA_TOKEN}",
                                        "body": {"entity_id": "light.kitchen"}}]
    said = speak(stack, DeviceAction("set_temperature", "thermostat", "", 21.0, "set the thermostat to 21"))
    assert said == "Okay, the thermostat is set to 21 degrees."
    assert stack.ha.calls[-1] == {"path": "/api/services/climate/set_temperature", "auth": f"Bearer {HA_TOKEN}",
                                  "body": {"entity_id": "climate.thermostat", "temperature": 21}}
    calls = len(stack.ha.calls)
    assert speak(stack, DeviceAction("raise", "thermostat", "", None, "warmer")) == \
        "Sorry, that is not set up in my home automation yet."
    assert len(stack.ha.calls) == calls


def test_n8n_voice_action_refuses_a_forged_or_stale_signature(stack: Stack) -> None:
    body = json.dumps(DeviceAction("turn_off", "light", "", None, "lights off").body()).encode()
    before = len(stack.ha.calls)
    url = stack.n8n.webhook_url("voice-action")
    forged = post_json(url, None, {"X-Voicestack-Signature": sign("x" * 40, body)}, raw=body)
    stale = post_json(url, None, {"X-Voicestack-Signature": sign(SIGNING_SECRET, body, int(time.time()) - 3600)},
                      raw=body)
    unsigned = post_json(url, None, {}, raw=body)
    assert [forged[0], stale[0], unsigned[0]] == [401, 401, 401], (forged, stale, unsigned)
    assert len(stack.ha.calls) == before   # nothing was switched


def test_n8n_room_events_from_livekit_arrive_in_the_execution_log(stack: Stack) -> None:
    status, body = post_json(stack.n8n.webhook_url("call-me"), {"userId": "bob", "room": "events-room"})
    assert status == 200, body
    assert join(body["wsUrl"], body["token"])["joined"]
    wait_until(lambda: events_in_n8n(stack, "participant_joined", "bob", "events-room"), 60,
               "participant_joined for bob in n8n's executions")
    wait_until(lambda: events_in_n8n(stack, "room_started", "events-room"), 30,
               "room_started for events-room in n8n's executions")
    assert all(e["status"] == "success" for e in events_in_n8n(stack, "events-room"))


def test_n8n_events_wait_in_the_outbox_while_n8n_is_down_and_arrive_after(stack: Stack) -> None:
    stack.n8n.stop()
    try:
        # n8n is down, so this token comes from the token service directly (the same /api/token).
        status, body = post_json(stack.token_url, {"identity": "carol", "room": "while-down"},
                                 {"Authorization": f"Bearer {TOKEN_KEY}"})
        assert status == 200, body

        def queued() -> None:
            wait_until(lambda: len(list(stack.outbox.glob("*.json"))) >= 2, 30,
                       "room_started and participant_joined queued in the outbox")
            wait_until(lambda: "failed to deliver" in stack.receiver_log.read_text(), 30,
                       "a failed delivery attempt while n8n is down")
        assert join(body["wsUrl"], body["token"], while_in=queued)["joined"]
        assert not events_in_n8n(stack, "carol")
    finally:
        stack.n8n.start(HOOKS)
    wait_until(lambda: events_in_n8n(stack, "participant_joined", "carol", "while-down"), 90,
               "carol's participant_joined delivered after n8n came back")
    wait_until(lambda: events_in_n8n(stack, "participant_left", "carol"), 60, "carol's participant_left too")
    wait_until(lambda: not list(stack.outbox.glob("*.json")), 30, "an empty outbox")


def test_n8n_recording_finished_becomes_mailed_and_stored_meeting_notes(stack: Stack) -> None:
    # Queued the way the recordings service queues it (agent/recording_pipeline.py): the receiver delivers it.
    event = {"event": "recording_finished", "id": "RF-rec-n8n-1", "created_at": int(time.time()),
             "recording_id": "rec-n8n-1", "room": "standup", "kind": "meeting", "status": "complete",
             "started_at": "2026-12-01T09:00:00Z", "ended_at": "2026-12-01T09:05:00Z", "duration_s": 300.0,
             "participants": [{"identity": "alice", "name": "Alice", "kind": "standard"}],
             "summary": {"text": "Ship the n8n workflows on Friday.", "model": "extractive-summary"},
             "summary_error": None, "transcript_error": None,
             "transcript": {"text": "Alice: let us ship the n8n workflows on Friday.", "segments": []},
             "download_url": "https://livekit.example.test/api/recordings/rec-n8n-1"}
    Outbox(stack.outbox).enqueue(event)
    note = stack.notes_dir / "rec-n8n-1.md"
    wait_until(lambda: stack.mailbox.messages and note.is_file(), 60, "the meeting notes mailed and stored")
    mail = stack.mailbox.messages[-1]
    text = mail["message"].get_payload(decode=True).decode()
    assert mail["rcpt"] == ["<team@example.test>"]
    assert mail["message"]["Subject"] == "Meeting notes: standup (2026-12-01T09:00:00Z)"
    for body in (text, note.read_text()):
        assert "Ship the n8n workflows on Friday." in body and "let us ship the n8n workflows" in body
        assert "https://livekit.example.test/api/recordings/rec-n8n-1" in body


@pytest.fixture(scope="module")
def voice(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VoiceStack]:
    """The agent's own services on loopback (livekit-server, speech server, worker), with device
    intents going to the n8n voice-action webhook as deployed (ACTION_URL, ACTION_SECRET)."""
    running = VoiceStack(tmp_path_factory.mktemp("voice"))
    try:
        running.start(speech_env={"ACTION_URL": stack.n8n.webhook_url("voice-action"),
                                  "ACTION_SECRET": SIGNING_SECRET, "ACTION_TIMEOUT": "10"})
        yield running
    except Exception:
        for log in running.logdir.glob("*.log"):
            sys.stderr.write(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}\n")
        raise
    finally:
        running.stop()


def test_n8n_a_spoken_command_switches_the_light_and_the_agent_speaks_the_workflows_answer(
        stack: Stack, voice: VoiceStack) -> None:
    before = len(stack.ha.calls)
    result = asyncio.run(round_trip(voice.url, voice_token("n8n-spoken"), speech=HttpSpeech(voice.speech_url),
                                    phrase="turn on the lights in the kitchen", timeout=90))
    # `answer` is what the client heard the agent say (Whisper on the agent's audio): the workflow's
    # sentence, "Okay, the kitchen lights are on.", not the responder's own ("Okay, I turned on ...").
    print(f"agent greeted {result.greeting!r}, then said {result.answer!r} {result.latency_s:.2f} s after the phrase")
    assert "kitchen lights are on" in result.answer.lower(), result.answer
    calls = stack.ha.calls[before:]
    assert calls and all(c["path"] == "/api/services/light/turn_on" and c["body"] == {"entity_id": "light.kitchen"}
                         for c in calls), calls
