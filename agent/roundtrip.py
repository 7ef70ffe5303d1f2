"""A spoken round trip through a LiveKit room: the check that the whole stack talks back.

    result = await round_trip(ws_url, token, speech=HttpSpeech("http://127.0.0.1:8000/v1"))
    result.greeting, result.answer, result.latency_s

The client joins with `token` (the agent must be dispatched to the room: automatically, or
by the token's roomConfig), waits for the agent's audio track and its greeting, publishes
the synthesised `phrase`, records the agent's answer and transcribes both. The latency is
voice to voice as a user hears it: from the end of our speech leaving the client to the
first voiced frame of the answer arriving back.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import time
import wave
from dataclasses import dataclass, field
from typing import Callable, Protocol

import aiohttp
import numpy as np
from livekit import rtc

log = logging.getLogger("agent.roundtrip")

RECORD_RATE = 16000       # what Whisper wants; the SDK resamples the agent's 48 kHz track
VOICED_RMS = 300.0        # int16 RMS above which a 10 ms frame counts as speech
END_OF_SPEECH_GAP = 1.2   # seconds of silence that close the agent's utterance


class Speech(Protocol):
    """Where the client's own voice and ears come from (any OpenAI-compatible service)."""

    async def synthesize(self, text: str) -> bytes: ...  # a mono 16-bit WAV
    async def transcribe(self, wav: bytes) -> str: ...


class HttpSpeech:
    """`Speech` over an OpenAI-compatible /v1 base URL (our speech server by default)."""

    def __init__(self, base_url: str, api_key: str = "dummy", timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def synthesize(self, text: str) -> bytes:
        body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "wav"}
        async with aiohttp.ClientSession(timeout=self.timeout) as http:
            async with http.post(f"{self.base_url}/audio/speech", json=body,
                                 headers=self.headers) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"failed to synthesize {text!r}: HTTP {resp.status} "
                                       f"{await resp.text()}")
                return await resp.read()

    async def transcribe(self, wav: bytes) -> str:
        form = aiohttp.FormData()
        form.add_field("file", wav, filename="audio.wav", content_type="audio/wav")
        form.add_field("model", "whisper-1")
        form.add_field("response_format", "json")
        async with aiohttp.ClientSession(timeout=self.timeout) as http:
            async with http.post(f"{self.base_url}/audio/transcriptions", data=form,
                                 headers=self.headers) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"failed to transcribe {len(wav)} bytes: HTTP "
                                       f"{resp.status} {await resp.text()}")
                return str((await resp.json())["text"]).strip()


@dataclass
class RoundTripResult:
    greeting: str            # transcript of what the agent said first
    answer: str              # transcript of its answer to `phrase`
    latency_s: float         # end of our speech -> first voiced answer frame
    agent_join_s: float      # connect -> agent audio track subscribed
    greeting_audio_s: float  # voiced seconds of the greeting
    answer_audio_s: float    # voiced seconds of the answer
    answer_wav: bytes = field(repr=False, default=b"")
    #: With collect_ice: the ICE candidates this client saw, per PeerConnection that has any
    #: ("publisher", "subscriber"; see ice_summary).
    ice: dict | None = None


@dataclass
class _Frame:
    t: float       # monotonic arrival time
    pcm: bytes     # 16 kHz mono s16le
    voiced: bool


class _Recorder:
    """Keeps every frame of the agent's track with its arrival time."""

    def __init__(self) -> None:
        self.frames: list[_Frame] = []
        self.track_ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def attach(self, track: rtc.Track) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(self._read(track))
            self.track_ready.set()

    async def _read(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream.from_track(track=track, sample_rate=RECORD_RATE, num_channels=1)
        try:
            async for event in stream:
                samples = np.frombuffer(event.frame.data, dtype=np.int16)
                rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if samples.size else 0.0
                self.frames.append(_Frame(time.monotonic(), samples.tobytes(), rms > VOICED_RMS))
        finally:
            await stream.aclose()

    def first_voiced_after(self, t0: float) -> float | None:
        return next((f.t for f in self.frames if f.t >= t0 and f.voiced), None)

    def last_voiced_after(self, t0: float) -> float | None:
        return next((f.t for f in reversed(self.frames) if f.t >= t0 and f.voiced), None)

    def audio_between(self, t0: float, t1: float) -> tuple[bytes, float]:
        chosen = [f for f in self.frames if t0 <= f.t <= t1]
        voiced = sum(len(f.pcm) // 2 for f in chosen if f.voiced) / RECORD_RATE
        return b"".join(f.pcm for f in chosen), voiced


async def _poll(predicate: Callable[[], object], deadline: float, what: str,
                interval: float = 0.05) -> None:
    """Wait until `predicate()` is truthy, or fail at the deadline (monotonic seconds)."""
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


async def _utterance(rec: _Recorder, start: float, deadline: float, what: str) -> tuple[float, float]:
    """(first, last) voiced time of the agent's next utterance starting after `start`."""
    await _poll(lambda: rec.first_voiced_after(start), deadline, f"the agent's {what}")
    first = rec.first_voiced_after(start)
    assert first is not None

    def ended() -> bool:
        last = rec.last_voiced_after(first)
        return last is not None and time.monotonic() - last > END_OF_SPEECH_GAP

    await _poll(ended, deadline, f"the end of the agent's {what}")
    last = rec.last_voiced_after(first)
    assert last is not None
    return first, last


def _enum_name(message, field_name: str) -> str:
    """The name of an enum field's value (the SDK's stats are protobuf messages)."""
    enum = message.DESCRIPTOR.fields_by_name[field_name].enum_type
    return enum.values_by_number[getattr(message, field_name)].name


def _candidate(c) -> dict:
    out = {"address": c.address, "port": c.port, "protocol": c.protocol,
           "type": _enum_name(c, "candidate_type").lower()}
    if c.HasField("relay_protocol"):  # candidates that came from a TURN server: udp, tcp or tls to it
        out["relay_protocol"] = _enum_name(c, "relay_protocol").removeprefix("TRANSPORT_").lower()
    if c.url:
        out["url"] = c.url
    return out


def ice_summary(stats: list) -> dict:
    """What one PeerConnection's WebRTC stats say about ICE: every local and remote candidate, and
    the selected pair (from the transport's selected_candidate_pair_id, else the nominated pair)."""
    local, remote, pairs, selected_id = {}, {}, {}, ""
    for s in stats:
        kind = s.WhichOneof("stats")
        if kind == "local_candidate":
            local[s.local_candidate.rtc.id] = _candidate(s.local_candidate.candidate)
        elif kind == "remote_candidate":
            remote[s.remote_candidate.rtc.id] = _candidate(s.remote_candidate.candidate)
        elif kind == "candidate_pair":
            pairs[s.candidate_pair.rtc.id] = s.candidate_pair.candidate_pair
        elif kind == "transport" and s.transport.transport.selected_candidate_pair_id:
            selected_id = s.transport.transport.selected_candidate_pair_id
    pair = pairs.get(selected_id) or next(
        (p for p in pairs.values() if p.nominated and _enum_name(p, "state") == "PAIR_SUCCEEDED"), None)
    selected = None
    if pair is not None and pair.local_candidate_id in local and pair.remote_candidate_id in remote:
        selected = {"local": local[pair.local_candidate_id], "remote": remote[pair.remote_candidate_id]}
    return {"selected": selected, "local": list(local.values()), "remote": list(remote.values())}


def _wav(pcm: bytes, rate: int = RECORD_RATE) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buf.getvalue()


def _read_wav(data: bytes) -> tuple[bytes, int]:
    with wave.open(io.BytesIO(data)) as src:
        if src.getnchannels() != 1 or src.getsampwidth() != 2:
            raise ValueError("the phrase must be mono 16-bit WAV")
        return src.readframes(src.getnframes()), src.getframerate()


async def _speak(source: rtc.AudioSource, pcm: bytes, rate: int) -> None:
    """Push 10 ms frames; capture_frame paces us at real time once the queue is full."""
    step = rate // 100
    samples = np.frombuffer(pcm, dtype=np.int16)
    for i in range(0, samples.size, step):
        chunk = samples[i:i + step]
        if chunk.size < step:
            chunk = np.pad(chunk, (0, step - chunk.size))
        await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), rate, 1, step))


@contextlib.contextmanager
def _trusting(ca_bundle: str | None):
    # The SDK's Rust TLS stack reads SSL_CERT_FILE (rustls-native-certs) when it connects.
    if not ca_bundle:
        yield
        return
    before = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = ca_bundle
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = before


async def round_trip(
    url: str,
    token: str,
    *,
    speech: Speech,
    phrase: str = "turn on the lights",
    ca_bundle: str | None = None,
    rtc_config: rtc.RtcConfiguration | None = None,
    timeout: float = 60.0,
    expect_greeting: bool = True,
    collect_ice: bool = False,
) -> RoundTripResult:
    """Speak `phrase` to the agent in the token's room; return transcripts and latency.

    url: ws(s):// LiveKit URL; token: a join token (publish + subscribe);
    ca_bundle: PEM file to trust (a local ACME root); rtc_config: e.g. relay-only ICE
    to prove TURN; timeout: overall deadline in seconds; collect_ice: read the WebRTC stats
    once the answer arrived and return the ICE candidates seen (`ice`).
    """
    deadline = time.monotonic() + timeout
    pcm, rate = _read_wav(await speech.synthesize(phrase))
    rec = _Recorder()
    room = rtc.Room()

    @room.on("track_subscribed")
    def _on_track(track: rtc.Track, _pub: rtc.RemoteTrackPublication,
                  participant: rtc.RemoteParticipant) -> None:
        if (track.kind == rtc.TrackKind.KIND_AUDIO
                and participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT):
            rec.attach(track)

    options = rtc.RoomOptions(auto_subscribe=True, connect_timeout=max(1.0, min(15.0, timeout)))
    if rtc_config is not None:
        options.rtc_config = rtc_config
    t_connect = time.monotonic()
    with _trusting(ca_bundle):
        await room.connect(url, token, options)
    speaker: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(rec.track_ready.wait(), max(0.1, deadline - time.monotonic()))
        agent_join_s = time.monotonic() - t_connect

        # A deep queue rides out CPU stalls of this process: an underrun would put a gap in the
        # phrase, and the agent's VAD would end the turn in the middle of it.
        source = rtc.AudioSource(rate, 1, queue_size_ms=1000)
        track = rtc.LocalAudioTrack.create_audio_track("roundtrip-mic", source)
        await room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))

        greeting_pcm, greeting_s = b"", 0.0
        if expect_greeting:
            g0, g1 = await _utterance(rec, t_connect, deadline, "greeting")
            greeting_pcm, greeting_s = rec.audio_between(g0 - 0.3, g1 + 0.3)

        silence = bytes(2 * rate // 2)  # 0.5 s
        await _speak(source, silence + pcm, rate)
        await source.wait_for_playout()
        t_end_of_speech = time.monotonic()
        # Keep the mic open with silence so the agent's VAD sees the pause that ends the turn.
        speaker = asyncio.ensure_future(_speak(source, bytes(2 * rate * 3), rate))

        a0, a1 = await _utterance(rec, t_end_of_speech, deadline, "answer")
        ice = None
        if collect_ice:  # while media still flows: the selected pairs are the ones that carried it
            stats = await room.get_rtc_stats()
            # With LiveKit's single-PeerConnection mode one connection carries both directions and
            # the other reports nothing: only connections that gathered candidates are listed.
            summaries = {"publisher": ice_summary(stats.publisher_stats),
                         "subscriber": ice_summary(stats.subscriber_stats)}
            ice = {pc: got for pc, got in summaries.items() if got["local"] or got["remote"]}
        answer_pcm, answer_s = rec.audio_between(a0 - 0.3, a1 + 0.3)
        answer_wav = _wav(answer_pcm)
        greeting = await speech.transcribe(_wav(greeting_pcm)) if greeting_pcm else ""
        answer = await speech.transcribe(answer_wav)
        return RoundTripResult(
            greeting=greeting, answer=answer, latency_s=a0 - t_end_of_speech,
            agent_join_s=agent_join_s, greeting_audio_s=greeting_s, answer_audio_s=answer_s,
            answer_wav=answer_wav, ice=ice,
        )
    finally:
        for task in (speaker, rec.task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await room.disconnect()


def run(url: str, token: str, **kwargs: object) -> RoundTripResult:
    """Synchronous wrapper for pytest/testinfra callers."""
    return asyncio.run(round_trip(url, token, **kwargs))  # type: ignore[arg-type]
