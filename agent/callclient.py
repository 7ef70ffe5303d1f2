"""A caller that stays: round trips on demand and one long call that outlives restarts. Runs in .venv-agent.

    ip netns exec <client_netns> .venv-agent/bin/python -m agent.callclient

Reads one JSON command per line on stdin, writes one JSON object per line on stdout:
  {"cmd": "round_trip", "url", "token", "ca_bundle"?, "timeout"?, "phrase"?, "turn_tls"?}
      -> {"event": "round_trip", ...}: a spoken round trip in a fresh room (agent/roundtrip.py), like
      agent/roundtrip_cli.py (turn_tls and relay_only/ice_servers as there), but the client's models
      are loaded once for the whole session
  {"cmd": "call", "url", "token", "ca_bundle"?, "timeout"?}  -> {"event": "call", "ok", "greeting"}
      join and stay; from then on every room event is written as {"event": "room", "name", "t", ...}
      (connection_state_changed, reconnecting, reconnected, disconnected with its reason,
      participant_connected/disconnected, track_subscribed/unsubscribed)
  {"cmd": "speak", "phrase"?, "timeout"?}  -> {"event": "answer", "ok", "answer", "latency_s"}
      in the live call: say the phrase and wait for the agent's spoken answer
  {"cmd": "hangup"}  -> {"event": "hangup", "connection_state"};  {"cmd": "quit"} ends the process.
Times ("t") are wall-clock seconds (time.time()), comparable with the host's and the machines'.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import sys
import time
from typing import Any

from livekit import rtc

from agent.roundtrip import RECORD_RATE, _Recorder, _utterance, follow_agent, round_trip
from agent.roundtrip_cli import LocalSpeech, ice_policy
from agent.wav import read_wav, wav_bytes


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class _CallRecorder(_Recorder):
    """Follows the agent's audio track across reconnects: every subscription (a new track after a
    full reconnect, or the same track sid again after a resume: a new track object whose old
    stream has ended) gets a reader; the frames go on into one list."""

    def __init__(self) -> None:
        super().__init__()
        self.track: rtc.Track | None = None

    def attach(self, track: rtc.Track) -> None:
        if track is self.track and self.task is not None and not self.task.done():
            return
        if self.task is not None:
            self.task.cancel()
        self.track = track
        self.task = asyncio.ensure_future(self._read(track))
        self.track_ready.set()


class LiveCall:
    """One participant that stays in its room; records what the room tells it."""

    def __init__(self, speech: LocalSpeech) -> None:
        self.speech = speech
        self.room = rtc.Room()
        self.rec = _CallRecorder()
        self.source: rtc.AudioSource | None = None
        self.rate = 0
        self.mic: asyncio.Task[None] | None = None
        self._phrase: collections.deque[bytes] = collections.deque()
        self._phrase_sent: asyncio.Event | None = None
        self.capture_errors = 0
        self._wire()

    def _wire(self) -> None:
        room = self.room
        follow_agent(room, self.rec)  # its audio into self.rec, the end of its utterances

        def event(name: str, **fields: Any) -> None:
            emit({"event": "room", "name": name, "t": time.time(), **fields})

        @room.on("connection_state_changed")
        def _state(state: int) -> None:
            event("connection_state_changed", state=rtc.ConnectionState.Name(state))

        @room.on("reconnecting")
        def _reconnecting() -> None:
            event("reconnecting")

        @room.on("reconnected")
        def _reconnected() -> None:
            event("reconnected")

        @room.on("disconnected")
        def _disconnected(reason: Any = None) -> None:
            try:
                name = rtc.DisconnectReason.Name(reason)
            except (ValueError, TypeError):
                name = str(reason)
            event("disconnected", reason=name)

        @room.on("participant_connected")
        def _joined(p: rtc.RemoteParticipant) -> None:
            event("participant_connected", identity=p.identity, kind=rtc.ParticipantKind.Name(p.kind))

        @room.on("participant_disconnected")
        def _left(p: rtc.RemoteParticipant) -> None:
            event("participant_disconnected", identity=p.identity, kind=rtc.ParticipantKind.Name(p.kind))

        @room.on("track_subscribed")
        def _subscribed(track: rtc.Track, _pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
            event("track_subscribed", identity=p.identity, sid=track.sid)

        @room.on("track_unsubscribed")
        def _unsubscribed(track: rtc.Track, _pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
            event("track_unsubscribed", identity=p.identity, sid=track.sid)

    async def join(self, url: str, token: str, ca_bundle: str | None, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        # The microphone runs at the rate of the client's own voice (piper's), for every phrase.
        _pcm, self.rate = read_wav(await self.speech.synthesize("hello"))
        t_connect = time.monotonic()
        if ca_bundle:
            # For the whole call, not just the connect (as agent/roundtrip.py does): the SDK's
            # reconnects after a server restart open new TLS connections and read it again.
            os.environ["SSL_CERT_FILE"] = ca_bundle
        await self.room.connect(url, token, rtc.RoomOptions(auto_subscribe=True,
                                                           connect_timeout=max(1.0, min(15.0, timeout))))
        await asyncio.wait_for(self.rec.track_ready.wait(), max(0.1, deadline - time.monotonic()))
        self.source = rtc.AudioSource(self.rate, 1, queue_size_ms=1000)
        track = rtc.LocalAudioTrack.create_audio_track("call-mic", self.source)
        await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        self.mic = asyncio.ensure_future(self._microphone())
        g0, g1 = await _utterance(self.rec, t_connect, deadline, "greeting")
        pcm, _ = self.rec.audio_between(g0 - 0.3, g1 + 0.3)
        return {"greeting": await self.speech.transcribe(wav_bytes(pcm, RECORD_RATE)), "agent_join_s": g0 - t_connect}

    async def _microphone(self) -> None:
        """The one writer of the mic track: 10 ms frames of the pending phrase, else silence, as a
        real microphone sends without pause (the agent's VAD needs the silences between turns)."""
        assert self.source is not None
        step = self.rate // 100
        silence = bytes(2 * step)
        while True:
            chunk = self._phrase.popleft() if self._phrase else silence
            if len(chunk) < 2 * step:
                chunk = chunk + bytes(2 * step - len(chunk))
            try:
                await self.source.capture_frame(rtc.AudioFrame(chunk, self.rate, 1, step))
            except Exception as exc:  # noqa: BLE001 - e.g. while the room reconnects; keep the mic going
                self.capture_errors += 1
                if self.capture_errors in (1, 10, 100):
                    emit({"event": "room", "name": "mic_error", "t": time.time(), "count": self.capture_errors,
                          "error": str(exc)})
                await asyncio.sleep(0.01)
            if not self._phrase and self._phrase_sent is not None:
                self._phrase_sent.set()
                self._phrase_sent = None

    async def speak(self, phrase: str, timeout: float) -> dict[str, Any]:
        assert self.source is not None and self.mic is not None
        deadline = time.monotonic() + timeout
        pcm, rate = read_wav(await self.speech.synthesize(phrase))
        if rate != self.rate:
            raise ValueError(f"the phrase is {rate} Hz, the call's microphone {self.rate} Hz")
        step = 2 * (rate // 100)
        sent = asyncio.Event()
        self._phrase.extend(pcm[i:i + step] for i in range(0, len(pcm), step))
        self._phrase_sent = sent
        await asyncio.wait_for(sent.wait(), max(0.1, deadline - time.monotonic()))
        await asyncio.sleep(self.source.queued_duration)  # until the last frame has left the queue
        t_end = time.monotonic()
        a0, a1 = await _utterance(self.rec, t_end, deadline, "answer")
        answer_pcm, _ = self.rec.audio_between(a0 - 0.3, a1 + 0.3)
        return {"answer": await self.speech.transcribe(wav_bytes(answer_pcm, RECORD_RATE)), "latency_s": a0 - t_end}

    async def hangup(self) -> str:
        for task in (self.mic, self.rec.task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        state = rtc.ConnectionState.Name(self.room.connection_state)
        await self.room.disconnect()
        return state


async def serve() -> None:
    speech = LocalSpeech()
    call: LiveCall | None = None
    emit({"event": "ready"})
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        name, timeout = cmd.get("cmd"), float(cmd.get("timeout", 60))
        started = time.monotonic()
        try:
            if name == "round_trip":
                with ice_policy(cmd) as (config, tunnel):
                    r = await round_trip(cmd["url"], cmd["token"], speech=speech,
                                         phrase=cmd.get("phrase", "turn on the lights"),
                                         ca_bundle=cmd.get("ca_bundle"), timeout=timeout, rtc_config=config)
                emit({"event": "round_trip", "ok": True, "greeting": r.greeting, "answer": r.answer,
                      "latency_s": r.latency_s, "agent_join_s": r.agent_join_s, "t": time.time(),
                      "turn_tls_connections": tunnel.connections if tunnel is not None else None})
            elif name == "call":
                call = LiveCall(speech)
                joined = await call.join(cmd["url"], cmd["token"], cmd.get("ca_bundle"), timeout)
                emit({"event": "call", "ok": True, "t": time.time(), **joined})
            elif name == "speak":
                if call is None:
                    raise RuntimeError("no call: send a 'call' command first")
                answer = await call.speak(cmd.get("phrase", "turn on the lights"), timeout)
                emit({"event": "answer", "ok": True, "t": time.time(), "mic_errors": call.capture_errors, **answer})
            elif name == "hangup":
                state = await call.hangup() if call is not None else "none"
                call = None
                emit({"event": "hangup", "ok": True, "connection_state": state, "t": time.time()})
            elif name == "quit":
                break
            else:
                raise ValueError(f"unknown command {name!r}")
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller as a result
            event = {"round_trip": "round_trip", "call": "call", "speak": "answer"}.get(name, "error")
            emit({"event": event, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                  "elapsed": time.monotonic() - started, "t": time.time()})
    if call is not None:
        await call.hangup()


def main() -> int:
    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
