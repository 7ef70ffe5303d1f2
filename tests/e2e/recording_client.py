"""Clients on the emulated internet for tests/e2e/test_recording.py. Arguments are one JSON line on stdin.

    ip netns exec <client netns> .venv-agent/bin/python -m tests.e2e.recording_client meeting
        {"url", "ca_bundle", "speakers": [{"identity", "token"}], "script": [{"who", "text"}], "timeout"}
        -> {"indicator": {"shown_at", "to"}} once the recording shows itself; then, after a "go" line on
           stdin (the caller saw the recorder take every track), {"spoke": [{"who", "t", "duration_s"}], "left_at"}
    ip netns exec <client netns> .venv/bin/python -m tests.e2e.recording_client receive
        {"host", "port", "secret"} -> one JSON line per delivery ({"event": ...} or {"bad_signature": true})
    ip netns exec <client netns> .venv/bin/python -m tests.e2e.recording_client download
        {"host", "cafile", "calls": [{"path", "key"?}]} -> [{"path", "status", "content_type", "size", "json"?}]

meeting: every speaker joins and publishes a microphone (silence until it speaks). Once every
speaker sees the recording indicator (room metadata voicestack.recording = "true") the client
says so and waits for "go": the caller checks on the node that the recorder writes every track
(a hidden subscriber is invisible to the publishers). Then the script is spoken in order (piper
in process, one phrase after the other with a short pause: the meeting's script, not a wait for
readiness), and everyone leaves.
receive: a real HTTP server standing in for n8n; checks each delivery's signature.
Traffic goes only to the environment's own node through its cloud firewall.
"""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.server
import io
import json
import os
import ssl
import sys
import time
import wave
from typing import Any

PAUSE_S = 0.6   # between two phrases of the script


async def meeting(args: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from livekit import rtc

    from agent.speech.tts import Synthesizer, TtsConfig

    tts = Synthesizer(TtsConfig.from_env())
    voices: list[tuple[str, np.ndarray, int]] = []
    for line in args["script"]:
        with wave.open(io.BytesIO(await asyncio.to_thread(tts.wav, line["text"]))) as w:
            voices.append((line["who"], np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16), w.getframerate()))
    rate = voices[0][2]
    deadline = time.monotonic() + float(args.get("timeout", 60))

    class Speaker:
        def __init__(self, identity: str) -> None:
            self.identity = identity
            self.room = rtc.Room()
            self.pending = np.zeros(0, dtype=np.int16)
            self.mic: asyncio.Task | None = None

        async def join(self, url: str, token: str) -> None:
            await self.room.connect(url, token, rtc.RoomOptions(auto_subscribe=False, connect_timeout=15))
            self.source = rtc.AudioSource(rate, 1, queue_size_ms=200)
            track = rtc.LocalAudioTrack.create_audio_track(f"{self.identity}-mic", self.source)
            await self.room.local_participant.publish_track(
                track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
            self.mic = asyncio.ensure_future(self._play())

        async def _play(self) -> None:
            step = rate // 100
            while True:
                chunk, self.pending = self.pending[:step], self.pending[step:]
                if chunk.size < step:
                    chunk = np.pad(chunk, (0, step - chunk.size))
                await self.source.capture_frame(rtc.AudioFrame(chunk.tobytes(), rate, 1, step))

        def indicator(self) -> str | None:
            try:
                return json.loads(self.room.metadata or "{}").get("voicestack.recording")
            except ValueError:
                return None

        async def leave(self) -> None:
            if self.mic:
                self.mic.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.mic
            await self.room.disconnect()

    async def until(check, what: str) -> None:
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up waiting for {what}")
            await asyncio.sleep(0.05)

    if args.get("ca_bundle"):
        os.environ["SSL_CERT_FILE"] = args["ca_bundle"]   # the SDK's TLS reads it when it connects
    people = {s["identity"]: Speaker(s["identity"]) for s in args["speakers"]}
    try:
        for s in args["speakers"]:
            await people[s["identity"]].join(args["url"], s["token"])
        await until(lambda: all(p.indicator() == "true" for p in people.values()), "the recording indicator")
        print(json.dumps({"indicator": {"shown_at": time.time(), "to": sorted(people)}}), flush=True)
        go = await asyncio.to_thread(sys.stdin.readline)
        if go.strip() != "go":
            raise RuntimeError(f"expected 'go' on stdin, got {go!r}")
        spoke = []
        for who, pcm, _rate in voices:
            spoke.append({"who": who, "t": time.time(), "duration_s": round(pcm.size / rate, 3)})
            people[who].pending = np.concatenate([people[who].pending, pcm])
            await until(lambda who=who: people[who].pending.size == 0, f"{who} to finish speaking")
            await asyncio.sleep(PAUSE_S)
        return {"spoke": spoke, "left_at": time.time()}
    finally:
        for p in people.values():
            with contextlib.suppress(Exception):
                await p.leave()


def receive(args: dict[str, Any]) -> None:
    from agent.outbox import SIGNATURE_HEADER, verify_signature

    secret = args["secret"]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if verify_signature(secret, body, self.headers.get(SIGNATURE_HEADER)):
                out = {"event": json.loads(body)}
                self.send_response(200)
            else:
                out = {"bad_signature": True}
                self.send_response(401)
            self.end_headers()
            sys.stdout.write(json.dumps(out) + "\n")
            sys.stdout.flush()

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((args["host"], int(args["port"])), Handler)
    sys.stdout.write(json.dumps({"listening": True}) + "\n")
    sys.stdout.flush()
    server.serve_forever()


def download(args: dict[str, Any]) -> list[dict[str, Any]]:
    ctx = ssl.create_default_context(cafile=args["cafile"])
    results = []
    for call in args["calls"]:
        conn = http.client.HTTPSConnection(args["host"], 443, context=ctx, timeout=20)
        try:
            headers = {"Authorization": f"Bearer {call['key']}"} if call.get("key") is not None else {}
            conn.request("GET", call["path"], headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            ctype = resp.getheader("Content-Type") or ""
            result = {"path": call["path"], "status": resp.status, "content_type": ctype, "size": len(body),
                      "head": body[:4].decode("latin-1")}
            if ctype.startswith("application/json"):
                result["json"] = json.loads(body)
            results.append(result)
        finally:
            conn.close()
    return results


def main() -> int:
    command = sys.argv[1]
    args = json.loads(sys.stdin.readline())
    if command == "meeting":
        print(json.dumps(asyncio.run(meeting(args))), flush=True)
        os._exit(0)  # livekit rtc's native runtime may abort at interpreter exit (tests/rtc_participant.py)
    if command == "receive":
        receive(args)
    elif command == "download":
        print(json.dumps(download(args)))
    else:
        raise SystemExit(f"unknown command {command!r}; use meeting, receive or download")
    return 0


if __name__ == "__main__":
    sys.exit(main())
