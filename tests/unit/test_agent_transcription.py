"""Track transcription: speech-only chunks, timeline times, bounded memory on a long track —
against the real offline speech server (faster-whisper tiny.en) as its own process."""
from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import time
import tracemalloc
import urllib.request
import wave
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import numpy as np
import pytest

from agent.audio_files import OggOpusWriter
from agent.roundtrip import HttpSpeech
from agent.transcription import RATE, SttClient, merge, speech_chunks, transcribe_track

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def speech_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The speech server as in production: a process of its own (so memory is measured apart)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path_factory.mktemp("speech") / "speech.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "agent.speech_server"], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "SPEECH_PORT": str(port)})
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the speech server did not start: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.2)  # poll interval of the deadline loop
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(20)


def blocks(signal: np.ndarray, size: int = 1600) -> list[np.ndarray]:
    return [signal[i:i + size] for i in range(0, signal.size, size)]


def tone(seconds: float, level: int = 6000) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


def test_agent_transcription_chunks_skip_silence_and_keep_positions() -> None:
    signal = np.concatenate([silence(5), tone(2), silence(10), tone(1.5), silence(3)])
    chunks = list(speech_chunks(iter(blocks(signal))))
    assert [round(c.start_s, 1) for c in chunks] == [4.7, 16.7]  # 0.3 s of lead-in each
    assert [round(c.duration_s, 1) for c in chunks] == [2.6, 2.1]
    assert sum(c.duration_s for c in chunks) < 0.25 * signal.size / RATE  # silence is never sent


def test_agent_transcription_chunks_cut_long_speech_in_its_quietest_moment() -> None:
    # 50 s of talk with a short dip every 7 s: no chunk over the limit, cuts in a dip.
    parts = []
    for _ in range(7):
        parts += [tone(6.8), tone(0.2, level=50)]
    signal = np.concatenate(parts)
    chunks = list(speech_chunks(iter(blocks(signal)), max_chunk_s=20))
    assert all(c.duration_s <= 20.01 for c in chunks)
    assert sum(c.duration_s for c in chunks) == pytest.approx(signal.size / RATE, abs=0.11)
    for c in chunks[1:]:
        assert round(c.start_s % 7.0, 1) in (6.8, 6.9), c.start_s  # began in a dip


def piper_pcm(speech_url: str, text: str) -> np.ndarray:
    wav = asyncio.run(HttpSpeech(speech_url).synthesize(text))
    with wave.open(io.BytesIO(wav)) as src:
        pcm = np.frombuffer(src.readframes(src.getnframes()), dtype=np.int16)
    return np.repeat(pcm, 2)  # 24 kHz -> 48 kHz (sample doubling is plenty for Whisper)


def test_agent_transcription_long_track_in_bounded_memory_with_timeline_times(
        speech_url: str, tmp_path: Path) -> None:
    """Five minutes of one participant's track: three phrases, found where they were said,
    with peak memory a fraction of the decoded track (5 min at 16 kHz is 9.6 MB)."""
    at = {"budget": 12.0, "kitchen": 151.0, "garden": 288.0}
    phrases = {"budget": "The budget review starts now.", "kitchen": "I finished the kitchen drawings.",
               "garden": "The garden party moves to Saturday."}
    path = tmp_path / "01-alice.ogg"
    writer = OggOpusWriter(path)
    pos = 0.0
    for word, start in at.items():
        writer.write_silence(int((start - pos) * 48000))
        pcm = piper_pcm(speech_url, phrases[word])
        writer.write(pcm)
        pos = start + pcm.size / 48000
    writer.write_silence(int((300 - pos) * 48000))
    writer.close()

    async def main() -> tuple[list[dict[str, Any]], float, int]:
        async with aiohttp.ClientSession() as session:
            stt = SttClient(session, speech_url)
            tracemalloc.start()
            try:
                segs, dur = await transcribe_track(stt, path, channel=None, offset_s=100.0, speaker="alice",
                                                   name="Alice", file=path.name)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            return segs, dur, peak

    segments, duration, peak = asyncio.run(main())
    assert duration == pytest.approx(300, abs=0.1)
    print(f"peak traced memory {peak / 1e6:.2f} MB for a {duration:.0f} s track")
    assert peak < 2.5 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    for word, start in at.items():
        hit = next(s for s in segments if word in s["text"].lower())
        assert abs(hit["start"] - (100.0 + start)) < 1.0, (word, hit)  # offset + place in the track
        assert hit["speaker"] == "alice" and hit["name"] == "Alice"
    assert merge(segments) == sorted(segments, key=lambda s: s["start"])
