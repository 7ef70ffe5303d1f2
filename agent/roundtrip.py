"""A spoken round trip through a LiveKit room: the check that the whole stack talks back.

    result = await round_trip(ws_url, token, speech=HttpSpeech("http://127.0.0.1:8000/v1"))
    result.greeting, result.answer, result.latency_s

The client joins with `token` (the agent must be dispatched to the room: automatically, or
by the token's roomConfig), waits for the agent's audio track and its greeting, publishes
the synthesised `phrase`, records the agent's answer and transcribes both. The latency is
voice to voice as a user hears it: from the end of our speech leaving the client to the
first voiced frame of the answer arriving back.

`Conversation` keeps one room open for many turns (the benchmark speaks a whole phrase set
in it) and reads what the agent heard and answered from the room's `lk.transcription` text
streams, which livekit-agents publishes for every user and agent turn; `barge_in` speaks
while the agent is talking and measures when its audio stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol

import aiohttp
import numpy as np
from livekit import rtc

from agent.wav import read_wav, wav_bytes

log = logging.getLogger("agent.roundtrip")

RECORD_RATE = 16000       # what Whisper wants; the SDK resamples the agent's 48 kHz track
VOICED_RMS = 300.0        # int16 RMS above which a 10 ms frame counts as speech
#: Seconds of silence that close the agent's utterance. The agent streams its speech clause by
#: clause; on a CPU-starved node the next clause can take well over a second to synthesise (a
#: greeting was heard as just "Hello." with 1.2 s at load 20), so the client waits longer than a
#: natural pause. Latency is measured to the *start* of the answer, so this costs no figure.
END_OF_SPEECH_GAP = 2.5
#: The agent says when it stops speaking (livekit-agents sets its participant attribute
#: lk.agent.state from "speaking" to "listening" once its playout is done). After that, this much
#: silence closes the utterance: the end of its audio may still be in flight behind the attribute
#: (signalling and media take different paths). Saves the 2.5 s wait twice per round trip.
SETTLE_AFTER_SPEAKING = 0.5
#: While the agent's state still says "speaking", a silence is its next clause being synthesised,
#: not the end (on a busy 2-core CI machine an answer was cut after "Okay," and heard as "Okay.
#: Okay."): only this long a gap ends the utterance then, so a stuck attribute cannot hang a call.
SPEAKING_GAP = 10.0
AGENT_STATE = "lk.agent.state"


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
        return await self._post("/audio/speech", f"synthesize {text!r}", json=body)

    async def transcribe(self, wav: bytes) -> str:
        form = aiohttp.FormData()
        form.add_field("file", wav, filename="audio.wav", content_type="audio/wav")
        form.add_field("model", "whisper-1")
        form.add_field("response_format", "json")
        answer = await self._post("/audio/transcriptions", f"transcribe {len(wav)} bytes", data=form)
        return str(json.loads(answer)["text"]).strip()

    async def _post(self, path: str, what: str, **body: Any) -> bytes:
        async with aiohttp.ClientSession(timeout=self.timeout) as http:
            async with http.post(f"{self.base_url}{path}", headers=self.headers, **body) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"failed to {what}: HTTP {resp.status} {await resp.text()}")
                return await resp.read()


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
        self.agent_state = ""
        #: When the agent last said it stopped speaking (its state left "speaking"), monotonic s.
        self.stopped_speaking: float | None = None

    def state_changed(self, state: str) -> None:
        if self.agent_state == "speaking" and state != "speaking":
            self.stopped_speaking = time.monotonic()
        self.agent_state = state

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

    def last_voiced_between(self, t0: float, t1: float) -> float | None:
        return next((f.t for f in reversed(self.frames) if t0 <= f.t <= t1 and f.voiced), None)

    def voiced_runs(self, t0: float, t1: float, gap: float = 0.15) -> list[tuple[float, float]]:
        """(start, end) of voiced stretches between t0 and t1; pauses under `gap` join them."""
        runs: list[list[float]] = []
        for f in self.frames:
            if t0 <= f.t <= t1 and f.voiced:
                if runs and f.t - runs[-1][1] <= gap:
                    runs[-1][1] = f.t
                else:
                    runs.append([f.t, f.t])
        return [(a, b) for a, b in runs]

    def voiced_seconds_between(self, t0: float, t1: float) -> float:
        return sum(len(f.pcm) // 2 for f in self.frames
                   if t0 <= f.t <= t1 and f.voiced) / RECORD_RATE

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


async def _utterance(rec: _Recorder, start: float, deadline: float, what: str,
                     gap: float = END_OF_SPEECH_GAP) -> tuple[float, float]:
    """(first, last) voiced time of the agent's next utterance starting after `start`;
    it ends with `gap` seconds of silence."""
    await _poll(lambda: rec.first_voiced_after(start), deadline, f"the agent's {what}")
    first = rec.first_voiced_after(start)
    assert first is not None

    def ended() -> bool:
        last = rec.last_voiced_after(first)
        if last is None:
            return False
        quiet = time.monotonic() - last
        if rec.stopped_speaking is not None and rec.stopped_speaking > first:
            return quiet > SETTLE_AFTER_SPEAKING   # it said it is done: let the tail arrive
        return quiet > (max(gap, SPEAKING_GAP) if rec.agent_state == "speaking" else gap)

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


def follow_agent(room: rtc.Room, rec: _Recorder) -> None:
    """Record the agent's audio track in `rec` once subscribed, and follow its `lk.agent.state`
    (the end of its utterances). Every client of the agent (round trips, agent.callclient) uses it."""

    @room.on("track_subscribed")
    def _on_track(track: rtc.Track, _pub: rtc.RemoteTrackPublication,
                  participant: rtc.RemoteParticipant) -> None:
        if (track.kind == rtc.TrackKind.KIND_AUDIO
                and participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT):
            rec.attach(track)
            rec.state_changed(participant.attributes.get(AGENT_STATE, ""))

    @room.on("participant_attributes_changed")
    def _on_attributes(changed: dict[str, str], participant: rtc.Participant) -> None:
        if AGENT_STATE in changed and participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            rec.state_changed(changed[AGENT_STATE])


def _agent_room(timeout: float, rtc_config: rtc.RtcConfiguration | None,
                ) -> tuple[rtc.Room, _Recorder, rtc.RoomOptions]:
    """A room whose recorder follows the agent (follow_agent), and the options to join it with."""
    rec = _Recorder()
    room = rtc.Room()
    follow_agent(room, rec)
    options = rtc.RoomOptions(auto_subscribe=True, connect_timeout=max(1.0, min(15.0, timeout)))
    if rtc_config is not None:
        options.rtc_config = rtc_config
    return room, rec, options


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
    gate: contextlib.AbstractContextManager[object] | None = None,
) -> RoundTripResult:
    """Speak `phrase` to the agent in the token's room; return transcripts and latency.

    url: ws(s):// LiveKit URL; token: a join token (publish + subscribe);
    ca_bundle: PEM file to trust (a local ACME root); rtc_config: e.g. relay-only ICE
    to prove TURN; timeout: overall deadline in seconds; collect_ice: read the WebRTC stats
    once the answer arrived and return the ICE candidates seen (`ice`); gate: held (entered in a
    thread, it may wait) from before the connect until the client left the room, e.g. a call
    slot (agent.locks.slot): the phrase is synthesised before it and what was heard is
    transcribed after it, so the slot covers only the time the agent is in the call.
    """
    pcm, rate = read_wav(await speech.synthesize(phrase))
    deadline = time.monotonic() + timeout
    async with _agent_call(url, token, ca_bundle=ca_bundle, rtc_config=rtc_config, timeout=timeout,
                           deadline=deadline, gate=gate) as call:
        heard = await _converse(call, pcm, rate, deadline, expect_greeting=expect_greeting,
                                collect_ice=collect_ice)
    greeting = await speech.transcribe(wav_bytes(heard.greeting_pcm, RECORD_RATE)) if heard.greeting_pcm else ""
    answer_wav = wav_bytes(heard.answer_pcm, RECORD_RATE)
    answer = await speech.transcribe(answer_wav)
    return RoundTripResult(
        greeting=greeting, answer=answer, latency_s=heard.latency_s, agent_join_s=call.agent_join_s,
        greeting_audio_s=heard.greeting_s, answer_audio_s=heard.answer_s, answer_wav=answer_wav, ice=heard.ice,
    )


@dataclass
class _Heard:
    """What the client recorded in one call, before transcription."""
    greeting_pcm: bytes
    greeting_s: float
    answer_pcm: bytes
    answer_s: float
    latency_s: float
    ice: dict | None


@dataclass
class _Call:
    """A joined room with the agent's audio track arriving (what _agent_call yields)."""
    room: rtc.Room
    rec: _Recorder
    t_connect: float
    agent_join_s: float
    #: Tasks of the caller's that must stop before the room is left (e.g. a mic feeding silence).
    tasks: list[asyncio.Future[None]]
    #: (seconds from the connect, "reconnecting" | "reconnected") for each change of the client's
    #: signalling: a failed call's report says whether its signalling was cut on the way.
    signalling: list[tuple[float, str]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def _agent_call(url: str, token: str, *, ca_bundle: str | None, rtc_config: rtc.RtcConfiguration | None,
                      timeout: float, deadline: float,
                      gate: contextlib.AbstractContextManager[object] | None) -> AsyncIterator[_Call]:
    """Behind `gate` (entered in a thread: it may wait), join the token's room and wait (until
    `deadline`) for the agent's audio track; on the way out stop the recorder and the caller's
    tasks, leave the room, then the gate. The one opening and closing of every client call."""
    with contextlib.ExitStack() as held:
        if gate is not None:
            await asyncio.to_thread(held.enter_context, gate)
        room, rec, options = _agent_room(timeout, rtc_config)
        call = _Call(room, rec, time.monotonic(), 0.0, [])
        for event in ("reconnecting", "reconnected"):
            room.on(event, lambda e=event: call.signalling.append((round(time.monotonic() - call.t_connect, 1), e)))
        with _trusting(ca_bundle):
            await room.connect(url, token, options)
        try:
            await asyncio.wait_for(rec.track_ready.wait(), max(0.1, deadline - time.monotonic()))
            call.agent_join_s = time.monotonic() - call.t_connect
            yield call
        except Exception as exc:
            if call.signalling:
                exc.add_note("signalling during the call: "
                             + ", ".join(f"{what} at +{at:.1f} s" for at, what in call.signalling))
            raise
        finally:
            for task in (*call.tasks, rec.task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            await room.disconnect()


async def _converse(call: _Call, pcm: bytes, rate: int, deadline: float, *, expect_greeting: bool,
                    collect_ice: bool) -> _Heard:
    """In a joined call: hear the greeting, speak `pcm`, record the answer."""
    room, rec = call.room, call.rec
    # A deep queue rides out CPU stalls of this process: an underrun would put a gap in the
    # phrase, and the agent's VAD would end the turn in the middle of it.
    source = rtc.AudioSource(rate, 1, queue_size_ms=1000)
    track = rtc.LocalAudioTrack.create_audio_track("roundtrip-mic", source)
    await room.local_participant.publish_track(
        track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))

    greeting_pcm, greeting_s = b"", 0.0
    if expect_greeting:
        g0, g1 = await _utterance(rec, call.t_connect, deadline, "greeting")
        greeting_pcm, greeting_s = rec.audio_between(g0 - 0.3, g1 + 0.3)

    silence = bytes(2 * rate // 2)  # 0.5 s
    await _speak(source, silence + pcm, rate)
    await source.wait_for_playout()
    t_end_of_speech = time.monotonic()
    # Keep the mic open with silence so the agent's VAD sees the pause that ends the turn.
    call.tasks.append(asyncio.ensure_future(_speak(source, bytes(2 * rate * 3), rate)))

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
    return _Heard(greeting_pcm=greeting_pcm, greeting_s=greeting_s, answer_pcm=answer_pcm, answer_s=answer_s,
                  latency_s=a0 - t_end_of_speech, ice=ice)


async def join_until(url: str, token: str, leave: Callable[[], Awaitable[object]], *, ca_bundle: str | None = None,
                     rtc_config: rtc.RtcConfiguration | None = None, timeout: float = 60.0,
                     gate: contextlib.AbstractContextManager[object] | None = None,
                     on_joined: Callable[[float], None] = lambda _s: None) -> float:
    """Join the token's room, wait until the agent's audio track arrives (at most `timeout` s),
    call `on_joined(seconds it took)`, then stay until `leave()` returns and disconnect. No
    speech: for checks that only need a caller and the agent in a room (the admin CLI's). `gate`
    as for round_trip. Returns the seconds until the agent joined."""
    async with _agent_call(url, token, ca_bundle=ca_bundle, rtc_config=rtc_config, timeout=timeout,
                           deadline=time.monotonic() + timeout, gate=gate) as call:
        on_joined(call.agent_join_s)
        await leave()
        return call.agent_join_s


def run(url: str, token: str, **kwargs: object) -> RoundTripResult:
    """Synchronous wrapper for pytest/testinfra callers."""
    return asyncio.run(round_trip(url, token, **kwargs))  # type: ignore[arg-type]


# --- many turns in one room -------------------------------------------------------------

TRANSCRIPTION_TOPIC = "lk.transcription"        # livekit-agents' TOPIC_TRANSCRIPTION
TURN_METRICS_TOPIC = "voicestack.turn-metrics"  # agent.turn_metrics.TOPIC (the worker's breakdown)
TRANSCRIPTION_FINAL = "lk.transcription_final"  # attribute set on a segment's closing stream
STOPPED_QUIET_S = 0.5  # barge-in: the agent counts as stopped after this long without voice
# The agent closes its transcript when an utterance has played out; then this much silence
# lets the audio's tail arrive (jitter buffer) before the next turn may start.
ANSWER_QUIET_S = 0.3


def voiced_span(pcm: bytes, rate: int) -> tuple[float, float]:
    """(start, end) in seconds of the voiced part of a mono s16le clip. TTS voices pad both
    sides with silence; a user's speech starts and ends where the voice does."""
    samples = np.frombuffer(pcm, dtype=np.int16)
    step = max(1, rate // 100)
    n = samples.size // step
    if n == 0:
        return 0.0, 0.0
    frames = samples[:n * step].reshape(n, step).astype(np.float64)
    voiced = np.nonzero(np.sqrt((frames ** 2).mean(axis=1)) > VOICED_RMS)[0]
    if voiced.size == 0:
        return 0.0, n / 100
    return voiced[0] / 100, (voiced[-1] + 1) / 100


@dataclass
class Transcript:
    """One closed `lk.transcription` stream: a user transcript or an agent's spoken text."""

    sender: str
    text: str
    final: bool
    opened: float  # monotonic arrival of the stream header
    closed: float  # monotonic arrival of its end


@dataclass
class Turn:
    phrase: str                # what we said (reference text, for the caller's scoring)
    latency_s: float | None    # end of our voiced speech -> first voiced answer frame; None: no answer
    heard: str                 # the agent's final transcript(s) of what we said
    answer: str                # the agent's answer as it spoke it (its own transcript)
    answer_audio_s: float      # voiced seconds of the answer
    overlap_s: float           # agent voice while we were still speaking (a premature reply)
    speech_s: float            # voiced length of what we said
    error: str = ""
    agent_metrics: dict[str, float] = field(default_factory=dict)  # the worker's breakdown


@dataclass
class BargeIn:
    into_s: float            # how far into the agent's utterance our voice started
    # our voice starts -> the last voiced frame of the interrupted utterance (its voice up to
    # the first STOPPED_QUIET_S of silence); None: it never went quiet before the deadline
    stop_s: float | None
    played_s: float          # voiced seconds of the interrupted utterance that reached us
    interrupted_text: str    # what the agent's transcript says it got to say
    turn: Turn               # the answer to what we said over it
    # the agent's voiced stretches, seconds from the start of our voice, until its answer
    timeline: list[tuple[float, float]] = field(default_factory=list)


class Conversation:
    """A client in one room with the agent: speak clips, get turns. Use `conversation()`."""

    def __init__(self, room: rtc.Room, rec: _Recorder, source: rtc.AudioSource, rate: int,
                 t_connect: float, gap: float) -> None:
        self.room, self.rec, self.source, self.rate = room, rec, source, rate
        self.t_connect, self.gap = t_connect, gap
        self.transcripts: list[Transcript] = []
        self.turn_metrics: list[tuple[float, dict[str, float]]] = []  # (arrival, record)
        self._metrics_used = 0  # records before this index belong to earlier turns
        self._mic = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._silence = rtc.AudioFrame(bytes(2 * rate // 50), rate, 1, rate // 50)  # 20 ms

    @property
    def identity(self) -> str:
        return self.room.local_participant.identity

    # transcripts -------------------------------------------------------------------------
    def on_text_stream(self, reader: rtc.TextStreamReader, sender: str) -> None:
        opened = time.monotonic()

        async def read() -> None:
            try:
                text = await reader.read_all()
            except Exception as exc:  # noqa: BLE001 - a broken stream only loses one transcript
                log.warning("failed to read a transcription stream from %s: %s", sender, exc)
                return
            final = (reader.info.attributes or {}).get(TRANSCRIPTION_FINAL) == "true"
            self.transcripts.append(Transcript(sender, text.strip(), final, opened, time.monotonic()))

        self._spawn(read())

    def on_turn_metrics(self, reader: rtc.TextStreamReader, _sender: str) -> None:
        async def read() -> None:
            try:
                record = json.loads(await reader.read_all())
            except Exception as exc:  # noqa: BLE001 - a broken record only loses one breakdown
                log.warning("failed to read a turn-metrics record: %s", exc)
                return
            self.turn_metrics.append((time.monotonic(), record))

        self._spawn(read())

    def _metrics_after(self, t: float, take: bool = False) -> dict[str, float] | None:
        """The first record of a later turn that arrived after `t` (and consume it)."""
        for i in range(self._metrics_used, len(self.turn_metrics)):
            at, record = self.turn_metrics[i]
            if at >= t:
                if take:
                    self._metrics_used = i + 1
                return record
        return None

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _user_text(self, since: float) -> str:
        return " ".join(t.text for t in self.transcripts
                        if t.sender == self.identity and t.final and t.closed >= since and t.text)

    def _agent_text(self, opened_after: float, opened_before: float) -> Transcript | None:
        found = [t for t in self.transcripts if t.sender != self.identity and t.final
                 and opened_after <= t.opened <= opened_before]
        return found[-1] if found else None

    # the microphone ----------------------------------------------------------------------
    async def keep_mic_open(self) -> None:
        """Feed silence whenever we are not speaking: the agent's VAD ends a turn only on
        silence it receives, and a track without frames never ends one."""
        while True:
            async with self._mic:
                if self.source.queued_duration < 0.1:
                    await self.source.capture_frame(self._silence)
                    continue
            await asyncio.sleep(0.01)

    def _resampled(self, pcm: bytes, rate: int) -> bytes:
        if rate == self.rate:
            return pcm
        resampler = rtc.AudioResampler(rate, self.rate, num_channels=1)
        frames = resampler.push(rtc.AudioFrame(pcm, rate, 1, len(pcm) // 2)) + resampler.flush()
        return b"".join(bytes(f.data) for f in frames)

    async def speak(self, pcm: bytes, rate: int) -> tuple[float, float]:
        """Say a mono s16le clip; return the monotonic (start, end) of its voice as it left us."""
        pcm = self._resampled(pcm, rate)
        v0, v1 = voiced_span(pcm, self.rate)
        duration = len(pcm) / 2 / self.rate
        async with self._mic:
            self.source.clear_queue()  # drop queued silence: the clip starts now
            t0 = time.monotonic()
            await _speak(self.source, pcm, self.rate)
            await self.source.wait_for_playout()
            t1 = time.monotonic()
        return t0 + v0, t1 - (duration - v1)

    # turns -------------------------------------------------------------------------------
    async def _agent_utterance(self, start: float, deadline: float, what: str) -> tuple[float, float]:
        """(first, last) voiced time of the agent's next utterance after `start`. It has ended
        when the agent closed a transcript opened after `start` and ANSWER_QUIET_S passed
        without voice, or, without transcripts, after `gap` seconds of silence."""
        await _poll(lambda: self.rec.first_voiced_after(start), deadline, f"the agent's {what}")
        first = self.rec.first_voiced_after(start)
        assert first is not None

        def ended() -> bool:
            last = self.rec.last_voiced_after(first)
            quiet = time.monotonic() - (last if last is not None else first)
            said = self._agent_text(start, time.monotonic())
            return quiet > self.gap or (said is not None and quiet > ANSWER_QUIET_S)

        await _poll(ended, deadline, f"the end of the agent's {what}")
        last = self.rec.last_voiced_after(first)
        return first, last if last is not None else first

    async def greeting(self, timeout: float = 30.0) -> tuple[float, str]:
        """Wait for the agent's first utterance to end: (voiced seconds, its text)."""
        deadline = time.monotonic() + timeout
        g0, g1 = await self._agent_utterance(self.t_connect, deadline, "greeting")
        text = self._agent_text(self.t_connect, g1)
        return self.rec.voiced_seconds_between(g0, g1), text.text if text else ""

    async def say(self, pcm: bytes, rate: int, phrase: str = "", timeout: float = 30.0) -> Turn:
        """Speak a clip after the agent went quiet and wait for its whole answer."""
        deadline = time.monotonic() + timeout
        s0, s1 = await self.speak(pcm, rate)
        return await self._answer(phrase, s0, s1, deadline)

    async def _answer(self, phrase: str, s0: float, s1: float, deadline: float,
                      after: float | None = None) -> Turn:
        """The agent's answer to what we said in [s0, s1]: its first utterance after `after`
        (default s1); the latency is counted from s1 either way."""
        overlap = self.rec.voiced_seconds_between(s0, s1)
        try:
            a0, a1 = await self._agent_utterance(s1 if after is None else after, deadline, "answer")
        except TimeoutError as exc:
            return Turn(phrase, None, self._user_text(s0), "", 0.0, overlap, s1 - s0, error=str(exc))
        # The agent closes its transcript stream once the audio has played out.
        with contextlib.suppress(TimeoutError):
            await _poll(lambda: self._agent_text(s0, a1) and self._user_text(s0),
                        min(deadline, time.monotonic() + 5), "the agent's transcripts")
        # The worker publishes the turn's breakdown once the answer has played out.
        with contextlib.suppress(TimeoutError):
            await _poll(lambda: self._metrics_after(a0) is not None,
                        min(deadline, time.monotonic() + 2), "the agent's turn metrics")
        said = self._agent_text(s1, a1)
        return Turn(phrase, a0 - s1, self._user_text(s0), said.text if said else "",
                    self.rec.voiced_seconds_between(a0, a1), overlap, s1 - s0,
                    agent_metrics=self._metrics_after(a0, take=True) or {})

    def _ended_voice(self, t0: float) -> float | None:
        """The end of the agent's voice from `t0` (pauses under STOPPED_QUIET_S joined) once
        STOPPED_QUIET_S of silence followed it; None while it may still be talking."""
        now = time.monotonic()
        runs = self.rec.voiced_runs(t0, now, gap=STOPPED_QUIET_S)
        if not runs:
            return None
        end = runs[0][1]
        return end if len(runs) > 1 or now - end >= STOPPED_QUIET_S else None

    async def barge_in(self, pcm: bytes, rate: int, *, phrase: str = "", after_s: float = 0.5,
                       trigger: tuple[bytes, int] | None = None, timeout: float = 40.0) -> BargeIn:
        """Speak `pcm` `after_s` seconds into the agent's next utterance: its answer to the
        `trigger` clip if given, else whatever it says next (its greeting, on a fresh join).

        The interrupted utterance ends at its first STOPPED_QUIET_S of silence, however long
        after our voice that comes (a loaded host stops late, which is a figure, not a failure);
        the answer is the agent's next utterance after that."""
        deadline = time.monotonic() + timeout
        since = time.monotonic()
        if trigger is not None:
            _, since = await self.speak(*trigger)
        await _poll(lambda: self.rec.first_voiced_after(since), deadline, "the agent to speak")
        a0 = self.rec.first_voiced_after(since)
        assert a0 is not None
        # Not a readiness wait: this picks the moment, inside the agent's speech, we talk over it.
        await asyncio.sleep(max(0.0, a0 + after_s - time.monotonic()))
        s0, s1 = await self.speak(pcm, rate)
        stop: float | None = None
        with contextlib.suppress(TimeoutError):
            await _poll(lambda: self._ended_voice(a0) is not None, deadline, "the agent to stop talking")
            stop = self._ended_voice(a0)
        stop_s = None if stop is None else max(0.0, stop - s0)
        played = self.rec.voiced_seconds_between(a0, stop if stop is not None else s1)
        turn = await self._answer(phrase, s0, s1, deadline, after=None if stop is None else
                                  max(s1, stop + 1e-3))
        cut = self._agent_text(since, s1 + 1.0)
        end = s1 + (turn.latency_s or 0.0) + turn.answer_audio_s + 0.5
        timeline = [(a - s0, b - s0) for a, b in self.rec.voiced_runs(a0, end)]
        return BargeIn(s0 - a0, stop_s, played, cut.text if cut else "", turn, timeline)


@contextlib.asynccontextmanager
async def conversation(url: str, token: str, *, ca_bundle: str | None = None,
                       rtc_config: rtc.RtcConfiguration | None = None, rate: int = 24000,
                       gap: float = END_OF_SPEECH_GAP,
                       timeout: float = 30.0) -> AsyncIterator[Conversation]:
    """Join the token's room, wait for the agent's audio, publish a microphone that sends
    silence between clips; yields a `Conversation`. `gap`: silence that ends an agent turn."""
    deadline = time.monotonic() + timeout
    room, rec, options = _agent_room(timeout, rtc_config)
    # queue_size_ms as in round_trip: rides out CPU stalls of this process.
    source = rtc.AudioSource(rate, 1, queue_size_ms=1000)
    t_connect = time.monotonic()
    conv = Conversation(room, rec, source, rate, t_connect, gap)
    # Registered before connecting: the agent may publish its greeting's transcript at once.
    room.register_text_stream_handler(TRANSCRIPTION_TOPIC, conv.on_text_stream)
    room.register_text_stream_handler(TURN_METRICS_TOPIC, conv.on_turn_metrics)
    with _trusting(ca_bundle):
        await room.connect(url, token, options)
    mic: asyncio.Task[None] | None = None
    try:
        track = rtc.LocalAudioTrack.create_audio_track("conversation-mic", source)
        await room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        mic = asyncio.ensure_future(conv.keep_mic_open())
        await asyncio.wait_for(rec.track_ready.wait(), max(0.1, deadline - time.monotonic()))
        yield conv
    finally:
        for task in (mic, rec.task, *list(conv._tasks)):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await room.disconnect()
