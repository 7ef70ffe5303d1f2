"""Recording end to end on loopback: real livekit-server, speech server, webhook receiver,
recorder, recordings service and voice agent; synthesised speakers; a real HTTP receiver for
the events (standing in for n8n). Needs root for one small tmpfs (the disk-space guard).
"""
from __future__ import annotations

import asyncio
import contextlib
import http.server
import io
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import wave
from pathlib import Path
from typing import Any, Callable, Iterator

import av
import numpy as np
import pytest
from livekit import api, rtc

from agent.audio_files import duration_s
from agent.outbox import SIGNATURE_HEADER, verify_signature
from agent.roundtrip import HttpSpeech, round_trip
from agent.tokens import mint
from tests.conftest import free_port
from tests.voice_stack import Processes, log_dir, running

REPO = Path(__file__).resolve().parents[2]
API_KEY, API_SECRET = "devkey", "recording-secret-recording-secret-0123456789"
FORWARD_SECRET = "forward-secret-" + "x" * 32
TOKEN_KEY = "download-key-0123456789abcdef"
TMPFS_MB = 48
MIN_FREE_MB = 8
VOICE_AGENT = "voice-agent"


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)  # poll interval of the deadline loop


async def await_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


class EventReceiver:
    """A real HTTP server standing in for n8n's webhook: records every delivery."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.events: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if verify_signature(FORWARD_SECRET, body, self.headers.get(SIGNATURE_HEADER)):
                    outer.events.append(json.loads(body))
                    self.send_response(200)
                else:
                    outer.bad_signatures += 1
                    self.send_response(401)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.allow_reuse_address = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def recording_finished(self, recording_id: str | None = None, room: str | None = None) -> dict | None:
        for ev in self.events:
            if ev.get("event") == "recording_finished" and (
                    recording_id in (None, ev["recording_id"])) and room in (None, ev["room"]):
                return ev
        return None


class Stack(Processes):
    """livekit-server, speech server and recordings service for the whole module; the
    policy-dependent services (webhook receiver, recorder, voice agent) per policy."""

    def __init__(self, tmp: Path, recordings: Path) -> None:
        # Each service a process group of its own, stopped like systemd's KillMode=mixed.
        super().__init__(tmp / "logs", own_group=True, stop_timeout=30)
        self.logdir.mkdir()
        self.tmp, self.recordings = tmp, recordings
        self.outbox = tmp / "outbox"
        self.ports = {n: free_port() for n in ("lk", "speech", "webhooks", "recordings", "n8n",
                                                "agent_health", "recorder_health")}
        self.url = f"ws://127.0.0.1:{self.ports['lk']}"
        self.speech_url = f"http://127.0.0.1:{self.ports['speech']}/v1"
        self.api_url = f"http://127.0.0.1:{self.ports['recordings']}/api/recordings"
        self.receiver = EventReceiver(self.ports["n8n"])
        self.policy: str | None = None
        self.env.update({
            "LIVEKIT_URL": self.url, "LIVEKIT_API_KEY": API_KEY, "LIVEKIT_API_SECRET": API_SECRET,
            "LIVEKIT_WS_URL": "wss://livekit.example.test",
            "STT_BASE_URL": self.speech_url, "LLM_BASE_URL": self.speech_url, "TTS_BASE_URL": self.speech_url,
            "RECORDINGS_DIR": str(recordings), "RECORDINGS_PORT": str(self.ports["recordings"]),
            "RECORDING_STALE_AFTER": "3", "RECORDING_END_GRACE": "1", "RECORDING_MIN_FREE_MB": str(MIN_FREE_MB),
            "FORWARD_URL": f"http://127.0.0.1:{self.ports['n8n']}/webhook/livekit",
            "FORWARD_SECRET": FORWARD_SECRET, "OUTBOX_DIR": str(self.outbox),
            "FORWARD_MIN_BACKOFF": "0.2", "FORWARD_MAX_BACKOFF": "1",
            "TOKEN_KEY": TOKEN_KEY, "WEBHOOK_PORT": str(self.ports["webhooks"]),
            "AGENT_NAME": VOICE_AGENT, "AGENT_HEALTH_PORT": str(self.ports["agent_health"]),
            "AGENT_NUM_IDLE_PROCESSES": "1", "AGENT_DRAIN_TIMEOUT": "5",
            "RECORDER_HEALTH_PORT": str(self.ports["recorder_health"]), "RECORDER_NUM_IDLE_PROCESSES": "1",
            "RECORDER_DRAIN_TIMEOUT": "3",
        })

    def start(self) -> None:
        self.livekit(self.ports["lk"], API_KEY, API_SECRET, extra=(
            f"webhook: {{api_key: {API_KEY}, urls: ['http://127.0.0.1:{self.ports['webhooks']}/webhook']}}\n"))
        self.speech(self.ports["speech"])
        self.module("recordings", "agent.recordings")
        self.receiver.start()
        self.wait_http("livekit", f"http://127.0.0.1:{self.ports['lk']}/", 90, "livekit-server")
        self.wait_http("speech", f"http://127.0.0.1:{self.ports['speech']}/health", 90, "the speech server")
        self.wait_http("recordings", f"{self.api_url}/health", 90, "the recordings service")

    def use_policy(self, policy: str) -> None:
        """(Re)start the webhook receiver, recorder and voice agent with RECORDING_POLICY=policy."""
        if self.policy == policy:
            return
        for name in ("webhooks", "recorder", "agent"):
            self.stop(name)
        env = {"RECORDING_POLICY": policy}
        self.module("webhooks", "agent.webhooks", env)
        self.module("recorder", "agent.recorder", env)
        self.module("agent", "agent.worker", env)
        self.wait_http("webhooks", f"http://127.0.0.1:{self.ports['webhooks']}/health", 60, "the webhook receiver")
        for name in ("recorder", "agent"):
            self.wait_registered(name, 90, f"the {name} worker to register")
        self.policy = policy

    def stop(self, *names: str) -> None:
        if not names:
            self.receiver.stop()
        super().stop(*names)

    # ---- helpers for the tests ----------------------------------------------------------------

    def tails(self, names: tuple[str, ...] = ("recorder", "recordings", "webhooks")) -> str:
        """The end of each service's log, for a failure message."""
        out = []
        for name in names:
            lines = [ln for ln in self.log(name).splitlines() if '"level": "DEBUG"' not in ln]
            out.append(f"--- {name}\n" + "\n".join(ln[:300] for ln in lines[-15:]))
        return "\n".join(out)

    def recordings_of(self, room: str) -> list[dict[str, Any]]:
        out = []
        for manifest in sorted(self.recordings.glob("*/manifest.json")):
            try:
                m = json.loads(manifest.read_text())
            except (OSError, ValueError):
                continue
            if m.get("room") == room:
                out.append(m)
        return out

    def download(self, path: str, key: str | None = TOKEN_KEY) -> tuple[int, bytes, str]:
        req = urllib.request.Request(f"{self.api_url}/{path}")
        if key is not None:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers.get("Content-Type", "")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with log_dir("AGENT_RECORDING_LOGDIR", "agent-recording-") as tmp:
        recordings = tmp / "recordings"
        recordings.mkdir()
        # A small filesystem of its own, so the disk-space guard can be driven for real.
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m,mode=0750", "tmpfs",
                                str(recordings)], capture_output=True, text=True)
        if mount.returncode != 0:
            pytest.fail(f"failed to mount a tmpfs for the recordings (needs root): {mount.stderr.strip()}")
        try:
            running_stack = Stack(tmp, recordings)
            with running(running_stack, running_stack.start):
                yield running_stack
        finally:
            subprocess.run(["umount", "-l", str(recordings)], check=False)


# ---- synthesised participants --------------------------------------------------------------

def join_token(room: str, identity: str, name: str, agent: str | None = None) -> str:
    return mint(API_KEY, API_SECRET, identity, room, name=name, ttl=600, agent_name=agent)


class Speaker:
    """A participant with a microphone that plays silence until it is told to say something."""

    def __init__(self, identity: str, name: str) -> None:
        self.identity, self.name = identity, name
        self.room = rtc.Room()
        self.pending = np.zeros(0, dtype=np.int16)
        self.rate = 24000
        self.spoke_at: list[float] = []
        self._mic: asyncio.Task | None = None

    async def join(self, url: str, room: str, agent: str | None = None) -> None:
        """Join (the token dispatches `agent` if the join creates the room) and open the mic."""
        await self.room.connect(url, join_token(room, self.identity, self.name, agent=agent))
        self.source = rtc.AudioSource(self.rate, 1, queue_size_ms=200)
        track = rtc.LocalAudioTrack.create_audio_track(f"{self.identity}-mic", self.source)
        await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        self._mic = asyncio.ensure_future(self._play())

    async def _play(self) -> None:
        step = self.rate // 100
        while True:
            chunk, self.pending = self.pending[:step], self.pending[step:]
            if chunk.size < step:
                chunk = np.pad(chunk, (0, step - chunk.size))
            await self.source.capture_frame(rtc.AudioFrame(chunk.tobytes(), self.rate, 1, step))

    def say(self, pcm: np.ndarray) -> None:
        self.spoke_at.append(time.time())
        self.pending = np.concatenate([self.pending, pcm])

    async def say_all(self, pcm: np.ndarray, timeout: float = 20) -> None:
        """Say `pcm` and return once the mic has sent all of it."""
        self.say(pcm)
        await await_until(lambda: self.pending.size == 0, timeout, f"{self.identity}'s phrase")

    async def leave(self) -> None:
        if self._mic:
            self._mic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mic
        await self.room.disconnect()


async def recording_started(stack: Stack, room: str, tracks: int = 1) -> dict[str, Any]:
    """The room's recording once the recorder writes `tracks` tracks."""
    found = await await_until(lambda: [m for m in stack.recordings_of(room) if len(m["tracks"]) >= tracks], 30,
                              f"the recorder writing {tracks} track(s) of {room}")
    return found[0]


async def recorded_phrase(stack: Stack, room: str, identity: str, text: str,
                          agent: str | None = None) -> tuple[Speaker, dict[str, Any]]:
    """`identity` joins `room`, and once the recorder writes their track says `text` to the end."""
    who = Speaker(identity, identity.title())
    phrase = await synthesize(HttpSpeech(stack.speech_url), text)
    await who.join(stack.url, room, agent=agent)
    rec = await recording_started(stack, room)
    await who.say_all(phrase)
    return who, rec


async def synthesize(speech: HttpSpeech, text: str) -> np.ndarray:
    with wave.open(io.BytesIO(await speech.synthesize(text))) as wav:
        assert wav.getframerate() == 24000
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)


def metadata_of(room: rtc.Room) -> dict[str, Any]:
    try:
        return json.loads(room.metadata or "{}")
    except ValueError:
        return {}


async def create_room(stack: Stack, name: str, metadata: dict[str, str] | None = None,
                      agent: str | None = None) -> None:
    """A room made through the server API (a token's roomConfig only applies to rooms it creates)."""
    agents = [api.RoomAgentDispatch(agent_name=agent)] if agent else []
    async with api.LiveKitAPI(stack.url, API_KEY, API_SECRET) as lk:
        await lk.room.create_room(api.CreateRoomRequest(name=name, empty_timeout=30, departure_timeout=5,
                                                        metadata=json.dumps(metadata or {}), agents=agents))


async def room_metadata(stack: Stack, name: str) -> dict[str, Any] | None:
    async with api.LiveKitAPI(stack.url, API_KEY, API_SECRET) as lk:
        rooms = (await lk.room.list_rooms(api.ListRoomsRequest(names=[name]))).rooms
    return json.loads(rooms[0].metadata or "{}") if rooms else None


def find(segments: list[dict[str, Any]], word: str) -> dict[str, Any]:
    hits = [s for s in segments if word in s["text"].lower()]
    assert hits, f"no segment says {word!r}: {[(s['speaker'], s['text']) for s in segments]}"
    return hits[0]


# ---- the tests ------------------------------------------------------------------------------

MEETING = [  # (speaker, phrase, keyword Whisper must return, seconds after the previous start)
    ("alice", "Good morning everyone, the budget review starts now.", "budget", 0.5),
    ("bob", "I finished the kitchen drawings yesterday.", "kitchen", 4.5),
    ("carol", "The garden party moves to Saturday afternoon.", "garden", 4.0),
    # Over carol's phrase. Its keyword is "friday": tiny.en once heard "invoice" as "end voice"
    # (in a CI run), and what this test checks is who said what when, not Whisper's vocabulary.
    ("alice", "Please send me the invoice by Friday.", "friday", 1.2),
]


def test_agent_recording_meeting_three_speakers_transcribed_in_order_and_delivered(stack: Stack) -> None:
    stack.use_policy("agent-calls")  # meetings are recorded when the room asks
    room = "meeting-notes"
    speech = HttpSpeech(stack.speech_url)

    async def meeting() -> dict[str, Any]:
        await create_room(stack, room, {"voicestack.record": "true", "topic": "weekly"})
        people = {n: Speaker(n, n.title()) for n in ("alice", "bob", "carol")}
        phrases = [(who, await synthesize(speech, text), word, gap) for who, text, word, gap in MEETING]
        for p in people.values():
            await p.join(stack.url, room)
        # The recording shows itself to participants, and every track is being written, first.
        await await_until(lambda: metadata_of(people["bob"].room).get("voicestack.recording") == "true",
                          30, "the recording indicator in the room metadata")
        assert metadata_of(people["bob"].room)["topic"] == "weekly"  # merged, not replaced
        await await_until(lambda: len((stack.recordings_of(room) or [{}])[-1].get("tracks", [])) == 3, 30,
                          "the recorder to write three tracks")
        for who, pcm, _word, gap in phrases:
            await asyncio.sleep(gap)  # the meeting's script: when each person speaks
            people[who].say(pcm)
        await await_until(lambda: all(p.pending.size == 0 for p in people.values()), 30, "the last phrase")
        await asyncio.sleep(1.0)  # the script's closing pause before everyone hangs up
        for p in people.values():
            await p.leave()
        return {"alice_invoice_at": people["alice"].spoke_at[-1], "carol_at": people["carol"].spoke_at[0]}

    script = asyncio.run(meeting())
    ev = wait_until(lambda: stack.receiver.recording_finished(room=room), 120, "recording_finished")
    assert (ev["kind"], ev["status"], ev["partial_reason"]) == ("meeting", "complete", None), stack.tails()
    assert len(stack.recordings_of(room)) == 1, "one meeting, one recording"
    for key in ("recording_id", "room", "started_at", "ended_at", "duration_s", "participants", "files",
                "transcript", "summary"):
        assert ev[key] not in (None, ""), key
    assert {p["identity"] for p in ev["participants"]} == {"alice", "bob", "carol"}
    assert sorted(f["participant"] for f in ev["files"]) == ["alice", "bob", "carol"]
    assert all(f["size"] > 1000 and f["duration_s"] > 8 and f["name"].endswith(".ogg") for f in ev["files"])
    assert 10 < ev["duration_s"] < 60

    segments = ev["transcript"]["segments"]
    hits = [find(segments, word) for _who, _text, word, _gap in MEETING]
    assert [h["speaker"] for h in hits] == [who for who, *_ in MEETING]
    assert [h["start"] for h in hits] == sorted(h["start"] for h in hits), \
        [(h["speaker"], h["start"], h["text"]) for h in hits]
    garden, invoice = hits[2], hits[3]
    assert garden["start"] < invoice["start"] < garden["end"], "the overlap is kept on the timeline"
    # Timeline times match when the phrases were said (the recording started at started_at).
    assert abs((script["alice_invoice_at"] - script["carol_at"]) - (invoice["start"] - garden["start"])) < 1.0
    assert ev["transcript"]["text"].splitlines()[0].startswith("[00:")
    assert "Participants: Alice, Bob, Carol." in ev["summary"]["text"]
    assert "garden" in ev["summary"]["text"].lower()
    assert stack.receiver.bad_signatures == 0

    # Downloads: with the key, not without; ids cannot leave the recordings directory.
    rid = ev["recording_id"]
    status, audio, ctype = stack.download(rid)
    assert (status, ctype) == (200, "audio/ogg")
    with av.open(io.BytesIO(audio)) as mix:
        assert mix.streams.audio[0].codec_context.name in ("opus", "libopus")
    status, body, _ = stack.download(f"{rid}/transcript")
    assert status == 200 and json.loads(body)["segments"] == segments
    status, body, _ = stack.download(f"{rid}/summary")
    assert status == 200 and json.loads(body)["text"] == ev["summary"]["text"]
    name = ev["files"][0]["name"]
    assert stack.download(f"{rid}/files/{name}")[0] == 200
    for path, key in [(rid, None), (rid, "wrong-key-0123456789"), (f"{rid}/transcript", None)]:
        assert stack.download(path, key)[0] == 401, (path, key)
    for evil in ["..%2F..%2Fetc%2Fpasswd", "%2E%2E", f"{rid}/files/..%2Fmanifest.json",
                 f"{rid}/files/..%2F..%2F..%2Fetc%2Fpasswd", "rec-x%00"]:
        assert stack.download(evil)[0] in (400, 404), evil


def test_agent_recording_agent_call_recorded_in_process_and_delivered_after_receiver_outage(
        stack: Stack) -> None:
    stack.use_policy("agent-calls")
    room = "agent-call"
    seen_indicator: list[str] = []

    async def call() -> Any:
        async def watch() -> None:
            while True:
                meta = await room_metadata(stack, room) or {}
                if "voicestack.recording" in meta:
                    seen_indicator.append(meta["voicestack.recording"])
                await asyncio.sleep(0.2)
        watcher = asyncio.ensure_future(watch())
        try:
            return await round_trip(stack.url, join_token(room, "caller", "Caller", agent=VOICE_AGENT),
                                    speech=HttpSpeech(stack.speech_url), phrase="turn on the lights", timeout=120)
        finally:
            watcher.cancel()

    stack.receiver.stop()  # n8n is down for a while
    try:
        result = asyncio.run(call())
        assert result.answer  # the call itself worked (its words are test_agent_roundtrip's business)
        assert "true" in seen_indicator
        rec = wait_until(lambda: [m for m in stack.recordings_of(room) if m["status"] == "complete"], 60,
                         "the agent call's recording to complete")[0]
        assert rec["kind"] == "agent_call"
        # The event waits on disk while the receiver is down...
        queued = wait_until(lambda: [p for p in stack.outbox.glob("*.json") if f"RF-{rec['id']}" in p.name],
                            120, "recording_finished in the outbox")
        assert json.loads(queued[0].read_text())["recording_id"] == rec["id"]
        assert stack.receiver.recording_finished(rec["id"]) is None
    finally:
        stack.receiver.start()  # ... and arrives once it is back.
    ev = wait_until(lambda: stack.receiver.recording_finished(rec["id"]), 30, "delivery after the outage")
    assert not [p for p in stack.outbox.glob("*.json") if f"RF-{rec['id']}" in p.name]

    files = ev["files"]
    assert len(files) == 1 and files[0]["name"] == "audio.ogg" and files[0]["channels"][0] == "caller"
    agent_identity = files[0]["channels"][1]
    assert agent_identity.startswith("agent-")
    segments = ev["transcript"]["segments"]
    greeting = find(segments, "assistant")
    # "turn on": Whisper tiny.en heard the recorded "lights" as "white(s)" in some runs; the
    # point here is whose words sit where on the timeline, not the word error rate.
    asked = find([s for s in segments if s["speaker"] == "caller"], "turn on")
    answer = find([s for s in segments if s["start"] > asked["start"]], "turned")
    assert (greeting["speaker"], answer["speaker"]) == (agent_identity, agent_identity)
    assert greeting["start"] < asked["start"] < answer["start"]
    assert (stack.recordings / rec["id"] / "chat.json").is_file()  # the live transcript, beside it
    assert stack.download(ev["recording_id"])[1][:4] == b"OggS"


def test_agent_recording_token_room_config_asks_for_the_recorder(stack: Stack) -> None:
    """A token whose roomConfig dispatches the recorder records a room the policy alone would not."""
    stack.use_policy("agent-calls")
    room = "token-asks"

    async def meeting() -> None:
        # The recorder this waits for is the one the token dispatched.
        gina, _ = await recorded_phrase(stack, room, "gina", "The printer on the second floor is broken.",
                                        agent="recorder")
        await asyncio.sleep(1.0)  # a pause before she hangs up
        await gina.leave()

    asyncio.run(meeting())
    ev = wait_until(lambda: stack.receiver.recording_finished(room=room), 120, "recording_finished")
    assert find(ev["transcript"]["segments"], "printer")["speaker"] == "gina"
    assert "recorder dispatched to room token-asks" not in stack.log("webhooks")  # the token did it


def test_agent_recording_killed_recorder_leaves_what_it_recorded_and_reports_it(stack: Stack) -> None:
    stack.use_policy("rooms")  # every room, no request needed
    room = "standup"
    speech = HttpSpeech(stack.speech_url)

    async def meeting() -> str:
        dave, erin = Speaker("dave", "Dave"), Speaker("erin", "Erin")
        phrase = await synthesize(speech, "The database migration is finished.")
        await dave.join(stack.url, room)
        await erin.join(stack.url, room)
        rec = await recording_started(stack, room, tracks=2)
        await dave.say_all(phrase)
        track = next(t for t in rec["tracks"] if t["participant"] == "dave")
        said_until = time.time() - rec["started_at"] - track["offset_s"]
        # Killed only once the phrase is on disk: a decodable file that long.
        await await_until(lambda: duration_s(stack.recordings / rec["id"] / track["file"]) > said_until + 0.3,
                          20, "dave's phrase in the file")
        os.kill(rec["pid"], signal.SIGKILL)
        await await_until(lambda: stack.recordings_of(room) and next(
            m for m in stack.recordings_of(room) if m["id"] == rec["id"])["status"] != "recording", 30,
            "the recordings service to notice the dead recorder")
        await dave.leave()
        await erin.leave()
        return rec["id"]

    rid = asyncio.run(meeting())
    ev = wait_until(lambda: stack.receiver.recording_finished(rid), 120, "recording_finished of the partial one")
    assert (ev["status"], ev["partial_reason"]) == ("partial", "recorder_stopped")
    assert {f["participant"] for f in ev["files"]} == {"dave", "erin"}
    hit = find(ev["transcript"]["segments"], "migration")
    assert hit["speaker"] == "dave"
    assert stack.download(f"{rid}/files/{next(f['name'] for f in ev['files'] if f['participant'] == 'dave')}")[0] == 200


def test_agent_recording_service_stop_mid_meeting_closes_the_recording_as_partial(stack: Stack) -> None:
    """A deploy restarting the recorder cuts a meeting short: kept, finished, reported as partial."""
    stack.use_policy("rooms")
    room = "restart-meeting"

    async def meeting() -> str:
        hank, rec = await recorded_phrase(stack, room, "hank", "The quarterly report goes out on Monday.")
        stack.stop("recorder")  # SIGTERM: drains RECORDER_DRAIN_TIMEOUT (3 s), then ends the job
        stack.policy = None     # the next test starts a fresh recorder
        await hank.leave()
        return rec["id"]

    rid = asyncio.run(meeting())
    m = json.loads((stack.recordings / rid / "manifest.json").read_text())
    assert (m["status"], m["partial_reason"]) == ("partial", "recorder_shutdown")
    ev = wait_until(lambda: stack.receiver.recording_finished(rid), 120, "recording_finished after the restart")
    assert find(ev["transcript"]["segments"], "quarterly")["speaker"] == "hank"


def test_agent_recording_disk_guard_stops_the_recording_before_the_disk_fills(stack: Stack) -> None:
    stack.use_policy("rooms")
    room = "long-meeting"
    filler = stack.recordings / "filler.bin"

    async def meeting() -> str:
        frank = Speaker("frank", "Frank")
        await frank.join(stack.url, room)
        rec = (await await_until(lambda: [m for m in stack.recordings_of(room) if m["tracks"]], 30,
                                 "the recorder to write frank's track"))[0]
        free = os.statvfs(stack.recordings)
        # Leave half the guard's margin free: the recorder must stop on its own.
        fill = free.f_bavail * free.f_frsize - (MIN_FREE_MB // 2) * 1024 * 1024
        with open(filler, "wb") as out:
            out.truncate(0)
            out.write(b"\0" * fill)
        await await_until(lambda: next(m for m in stack.recordings_of(room) if m["id"] == rec["id"])["status"]
                          != "recording", 30, "the disk guard to stop the recording")
        await frank.leave()
        return rec["id"]

    try:
        rid = asyncio.run(meeting())
    finally:
        filler.unlink(missing_ok=True)
    m = json.loads((stack.recordings / rid / "manifest.json").read_text())
    assert (m["status"], m["partial_reason"]) == ("partial", "disk_space")
    assert (stack.recordings / rid / m["tracks"][0]["file"]).stat().st_size > 0
    ev = wait_until(lambda: stack.receiver.recording_finished(rid), 120, "recording_finished after the guard")
    assert (ev["status"], ev["partial_reason"]) == ("partial", "disk_space")
    assert "RECORDING_MIN_FREE_MB" in stack.log("recorder")


def test_agent_recording_off_writes_nothing_even_when_a_room_asks(stack: Stack) -> None:
    stack.use_policy("off")
    room = "private-call"
    before = sorted(p.name for p in stack.recordings.iterdir())
    events_before = len(stack.receiver.events)

    metadata_seen: list[dict[str, Any]] = []

    async def call() -> Any:
        await create_room(stack, room, {"voicestack.record": "true"}, agent=VOICE_AGENT)

        async def watch() -> None:
            while True:
                metadata_seen.append(await room_metadata(stack, room) or {})
                await asyncio.sleep(0.2)
        watcher = asyncio.ensure_future(watch())
        try:
            return await round_trip(stack.url, join_token(room, "visitor", "Visitor"),
                                    speech=HttpSpeech(stack.speech_url), phrase="what time is it", timeout=90)
        finally:
            watcher.cancel()

    result = asyncio.run(call())
    assert result.answer  # the call itself worked
    assert metadata_seen and not any("voicestack.recording" in m for m in metadata_seen)
    wait_until(lambda: "asks for a recording (voicestack.record) but RECORDING_POLICY=off" in stack.log("webhooks"),
               30, "the receiver to refuse the room's request")
    # The room_finished webhook comes after everything the call could have written.
    wait_until(lambda: any(e.get("event") == "room_finished" and e.get("room") == room
                           for e in stack.receiver.events[events_before:]), 60, "room_finished")
    assert sorted(p.name for p in stack.recordings.iterdir()) == before
    assert stack.receiver.recording_finished(room=room) is None
    assert not [p for p in stack.outbox.glob("*.json") if "RF-" in p.name]
