"""Recording figures: recorder CPU and memory per track; transcription time per minute of audio.

    LIVEKIT_SERVER_BIN=$(.venv/bin/python -m infra.local livekit-bin) \\
        .venv-agent/bin/python bench/bench_recording.py [--tracks 1,3,6] [--seconds 20] [--minutes 2]

Part 1 runs a real livekit-server on loopback and the real recorder worker (python -m
agent.recorder), dispatches it into a room where N synthetic participants talk (speech-like
noise bursts), and reads the recording job process's CPU time and resident memory.
Part 2 transcribes a speech-dense track and a meeting-like track (a quarter speech) through
the offline speech server in process (faster-whisper tiny.en, STT_CPU_THREADS threads), the
way the recordings service does. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from livekit import api, rtc  # noqa: E402

from agent.audio_files import OggOpusWriter  # noqa: E402
from agent.tokens import mint  # noqa: E402

KEY, SECRET = "benchkey", "bench-secret-bench-secret-bench-secret-0123"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
    return value


def speechlike(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Noise in syllable-length bursts with pauses: what an Opus encoder sees from a voice."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * rate), dtype=np.int16)
    pos = 0
    while pos < out.size:
        burst = int(rng.uniform(0.15, 0.4) * rate)
        out[pos:pos + burst] = (rng.standard_normal(min(burst, out.size - pos)) * 3000).astype(np.int16)
        pos += burst + int(rng.uniform(0.05, 0.3) * rate)
    return out


async def talkers(url: str, room: str, n: int, seconds: float, started: asyncio.Event,
                  talked: asyncio.Event, measured: asyncio.Event) -> None:
    rate, step = 48000, 480
    rooms, sources = [], []
    for i in range(n):
        r = rtc.Room()
        await r.connect(url, mint(KEY, SECRET, f"talker{i}", room, ttl=600))
        src = rtc.AudioSource(rate, 1)
        track = rtc.LocalAudioTrack.create_audio_track("mic", src)
        await r.local_participant.publish_track(track, rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_MICROPHONE))
        rooms.append(r)
        sources.append(src)
    await started.wait()

    async def play(src: rtc.AudioSource, pcm: np.ndarray) -> None:
        for i in range(0, pcm.size - step, step):
            await src.capture_frame(rtc.AudioFrame(pcm[i:i + step].tobytes(), rate, 1, step))

    await asyncio.gather(*(play(s, speechlike(seconds, rate, i)) for i, s in enumerate(sources)))
    talked.set()
    await measured.wait()  # hang up only after the recorder's CPU time was read
    for r in rooms:
        await r.disconnect()


def bench_recorder(track_counts: list[int], seconds: float, sample_rate: int) -> None:
    server_bin = os.environ.get("LIVEKIT_SERVER_BIN", "/var/cache/voicestack/go/bin/server")
    with tempfile.TemporaryDirectory(prefix="bench-recording-") as tmp:
        lk_port = free_port()
        config = (f"port: {lk_port}\nbind_addresses: [127.0.0.1]\n"
                  f"rtc: {{tcp_port: {free_port()}, udp_port: {free_port(socket.SOCK_DGRAM)}, "
                  f"node_ip: 127.0.0.1, use_external_ip: false}}\nkeys: {{{KEY}: {SECRET}}}\n")
        url = f"ws://127.0.0.1:{lk_port}"
        env = {**os.environ, "LIVEKIT_URL": url, "LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET,
               "RECORDING_POLICY": "rooms", "RECORDINGS_DIR": f"{tmp}/recordings", "RECORDING_END_GRACE": "1",
               "RECORDING_SAMPLE_RATE": str(sample_rate), "RECORDER_HEALTH_PORT": str(free_port()),
               "RECORDER_NUM_IDLE_PROCESSES": "1", "PYTHONPATH": str(REPO)}
        log = open(f"{tmp}/recorder.log", "wb")
        lk = subprocess.Popen([server_bin, "--config-body", config], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        rec = subprocess.Popen([sys.executable, "-m", "agent.recorder"], cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: b"registered worker" in Path(f"{tmp}/recorder.log").read_bytes(), 90,
                     "the recorder to register")
            print(f"\nrecorder: {seconds:.0f} s per run, {sample_rate} Hz mono Opus 24 kbit/s per track")
            print("  tracks  job_cpu_s  cpu_%_of_one_core  per_track_%  job_rss_mb  files_kb")
            for n in track_counts:
                room = f"bench-{n}"
                cpu, rss, size = asyncio.run(_one_run(url, room, n, seconds, Path(tmp) / "recordings"))
                print(f"  {n:6d}  {cpu:9.2f}  {100 * cpu / seconds:17.1f}  {100 * cpu / seconds / n:11.2f}"
                      f"  {rss:10.0f}  {size / 1024:8.0f}")
        finally:
            for p in (rec, lk):
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()


async def _one_run(url: str, room: str, n: int, seconds: float, root: Path) -> tuple[float, float, int]:
    async with api.LiveKitAPI(url, KEY, SECRET) as lk:
        await lk.room.create_room(api.CreateRoomRequest(name=room, departure_timeout=2))
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="recorder", room=room))
    started, talked, measured = asyncio.Event(), asyncio.Event(), asyncio.Event()
    talk = asyncio.ensure_future(talkers(url, room, n, seconds, started, talked, measured))

    def manifest() -> dict | None:
        for m in root.glob("*/manifest.json"):
            data = json.loads(m.read_text())
            if data["room"] == room and len(data["tracks"]) == n:
                return data
        return None

    deadline = time.monotonic() + 60
    while (m := manifest()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the recorder did not write {n} tracks")
        await asyncio.sleep(0.1)
    job = psutil.Process(m["pid"])
    cpu0 = sum(job.cpu_times()[:2])
    started.set()
    t0, peak = time.monotonic(), 0.0
    while not talked.is_set():
        peak = max(peak, job.memory_info().rss / 1e6)
        await asyncio.sleep(0.5)
    cpu = sum(job.cpu_times()[:2]) - cpu0
    elapsed = time.monotonic() - t0
    measured.set()
    await talk
    if elapsed > seconds * 1.2:
        print(f"  (the talkers needed {elapsed:.0f} s for {seconds:.0f} s of audio: the machine is busy)")
    size = sum(f.stat().st_size for f in (root / m["id"]).glob("*.ogg"))
    return cpu, peak, size


def _cpu_s() -> float:
    """CPU seconds of this process, all threads (the in-process speech server's Whisper too)."""
    t = os.times()
    return t.user + t.system


def bench_transcription(minutes: float) -> None:
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from agent.speech_server import create_app, load_backends
    from agent.transcription import SttClient, transcribe_track

    stt, tts = load_backends()
    phrases = ["Good morning everyone, the budget review starts now.",
               "I finished the kitchen drawings yesterday and sent them to the client.",
               "The garden party moves to Saturday afternoon because of the weather.",
               "Please send me the invoice by Friday so that accounting can close the month."]
    clips = []
    for p in phrases:
        with wave.open(io.BytesIO(tts.wav(p))) as w:
            clips.append(np.repeat(np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16), 2))
    print(f"\ntranscription: faster-whisper tiny.en int8, {stt.config.cpu_threads} threads, beam "
          f"{stt.config.beam_size}, on {os.cpu_count()} cores; per minute of track audio")
    print("  track            audio_min  speech_min  wall_s  wall_s_per_audio_min  cpu_s_per_audio_min  chunks")
    with tempfile.TemporaryDirectory(prefix="bench-stt-") as tmp:
        for label, speech_share in (("speech-dense", 0.9), ("meeting (1/4)", 0.25)):
            path = Path(tmp) / f"{label[:7]}.ogg"
            writer = OggOpusWriter(path)
            total, speech, i = int(minutes * 60 * 48000), 0, 0
            while writer.samples < total:
                clip = clips[i % len(clips)]
                writer.write(clip)
                speech += clip.size
                pause = int(clip.size * (1 - speech_share) / speech_share)
                writer.write_silence(max(int(0.5 * 48000), pause))
                i += 1
            writer.close()

            async def run(path: Path = path) -> tuple[float, float, int]:
                async with TestServer(create_app(stt, tts)) as server, ClientSession() as session:
                    client = SttClient(session, str(server.make_url("/v1")))
                    sent = 0
                    original = client.segments

                    async def counting(wav: bytes):  # type: ignore[no-untyped-def]
                        nonlocal sent
                        sent += 1
                        return await original(wav)
                    client.segments = counting  # type: ignore[method-assign]
                    start, cpu0 = time.perf_counter(), _cpu_s()
                    await transcribe_track(client, path, channel=None, offset_s=0, speaker="a", name="A",
                                           file=path.name)
                    return time.perf_counter() - start, _cpu_s() - cpu0, sent
            wall, cpu, chunks = asyncio.run(run())
            audio_min = writer.samples / 48000 / 60
            print(f"  {label:15s}  {audio_min:9.2f}  {speech / 48000 / 60:10.2f}  {wall:6.1f}  "
                  f"{wall / audio_min:20.1f}  {cpu / audio_min:19.1f}  {chunks:6d}")
    print(f"  load_avg_after={os.getloadavg()[0]:.2f} (wall times stretch with other load; CPU seconds less so)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", default="1,3,6", help="participant counts to record")
    ap.add_argument("--seconds", type=float, default=20.0, help="talk time per recorder run")
    ap.add_argument("--sample-rate", type=int, default=48000)
    ap.add_argument("--minutes", type=float, default=2.0, help="length of each transcribed track")
    ap.add_argument("--skip-recorder", action="store_true")
    ap.add_argument("--skip-transcription", action="store_true")
    args = ap.parse_args()
    print(f"cpus={os.cpu_count()} load_avg={os.getloadavg()[0]:.2f}")
    if not args.skip_recorder:
        bench_recorder([int(n) for n in args.tracks.split(",")], args.seconds, args.sample_rate)
    if not args.skip_transcription:
        bench_transcription(args.minutes)


if __name__ == "__main__":
    main()
