"""What the Python `livekit` SDK would cost as the load generator (the comparison behind loadgen's choice).

    .venv-agent/bin/python bench/loadgen/python_cost.py --url ws://127.0.0.1:7880 --listeners 20 --seconds 15

One process joins a broadcast room as one speaker (PCM pushed 10 ms at a time, as a client
must: the SDK encodes Opus itself) and N listeners (each reads an AudioStream: the SDK
decodes every track), then prints its own CPU per received stream. Key and secret come from
LIVEKIT_API_KEY / LIVEKIT_API_SECRET. Compare with loadgen's `loadgen_cpu_cores` for
`--shape broadcast --rooms 1 --size N`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import time

import numpy as np
from livekit import api, rtc

RATE = 48000


def token(room: str, identity: str, publish: bool) -> str:
    grants = api.VideoGrants(room_join=True, room=room, can_publish=publish, can_subscribe=True)
    return (api.AccessToken(os.environ["LIVEKIT_API_KEY"], os.environ["LIVEKIT_API_SECRET"])
            .with_identity(identity).with_grants(grants).to_jwt())


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--listeners", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=15)
    args = ap.parse_args()
    room_name = f"pycost-{secrets.token_hex(3)}"
    frames = [0]

    async def count(track: rtc.Track) -> None:
        async for _ in rtc.AudioStream.from_track(track=track, sample_rate=RATE, num_channels=1):
            frames[0] += 1

    rooms = []
    for i in range(args.listeners):
        r = rtc.Room()
        r.on("track_subscribed", lambda t, *_: asyncio.ensure_future(count(t)))
        await r.connect(args.url, token(room_name, f"l{i}", False))
        rooms.append(r)
    speaker = rtc.Room()
    await speaker.connect(args.url, token(room_name, "speaker", True))
    source = rtc.AudioSource(RATE, 1)
    await speaker.local_participant.publish_track(rtc.LocalAudioTrack.create_audio_track("mic", source))
    tone = (3000 * np.sin(2 * np.pi * 220 * np.arange(RATE // 100) / RATE)).astype(np.int16).tobytes()

    async def speak() -> None:
        while True:
            await source.capture_frame(rtc.AudioFrame(tone, RATE, 1, RATE // 100))

    task = asyncio.ensure_future(speak())
    await asyncio.sleep(3)
    c0, f0, t0 = cpu(), frames[0], time.monotonic()
    await asyncio.sleep(args.seconds)
    c1, f1, t1 = cpu(), frames[0], time.monotonic()
    task.cancel()
    cores = (c1 - c0) / (t1 - t0)
    print(f"python sdk: {args.listeners} listeners, {(f1 - f0) / (t1 - t0) / args.listeners:.0f} frames/s each, "
          f"{cores:.3f} cores, {1000 * cores / args.listeners:.2f} millicores per received stream")
    for r in [*rooms, speaker]:
        await r.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
