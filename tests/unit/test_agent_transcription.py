"""Track transcription: speech-only chunks, timeline times, bounded memory on a long track —
against the real offline speech server (faster-whisper tiny.en) in process."""
from __future__ import annotations

import asyncio
import io
import tracemalloc
import wave
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from agent.audio_files import OggOpusWriter
from agent.speech_server import create_app, load_backends
from agent.transcription import RATE, SttClient, merge, speech_chunks, transcribe_track


@pytest.fixture(scope="module")
def backends() -> tuple[Any, Any]:
    return load_backends()


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


def piper_pcm(backends: tuple[Any, Any], text: str) -> np.ndarray:
    with wave.open(io.BytesIO(backends[1].wav(text))) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    return np.repeat(pcm, 2)  # 24 kHz -> 48 kHz (sample doubling is plenty for Whisper)


def test_agent_transcription_long_track_in_bounded_memory_with_timeline_times(
        backends: tuple[Any, Any], tmp_path: Path) -> None:
    """Ten minutes of one participant's track: three phrases, found where they were said,
    with peak memory far below the decoded track (10 min at 16 kHz is 19 MB)."""
    at = {"budget": 12.0, "kitchen": 301.0, "garden": 588.0}
    phrases = {"budget": "The budget review starts now.", "kitchen": "I finished the kitchen drawings.",
               "garden": "The garden party moves to Saturday."}
    path = tmp_path / "01-alice.ogg"
    writer = OggOpusWriter(path)
    pos = 0.0
    for word, start in at.items():
        writer.write_silence(int((start - pos) * 48000))
        pcm = piper_pcm(backends, phrases[word])
        writer.write(pcm)
        pos = start + pcm.size / 48000
    writer.write_silence(int((600 - pos) * 48000))
    writer.close()

    async def main() -> tuple[list[dict[str, Any]], float, int]:
        async with TestServer(create_app(*backends)) as server, aiohttp.ClientSession() as session:
            stt = SttClient(session, str(server.make_url("/v1")))
            tracemalloc.start()
            try:
                segs, dur = await transcribe_track(stt, path, channel=None, offset_s=100.0, speaker="alice",
                                                   name="Alice", file=path.name)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            return segs, dur, peak

    segments, duration, peak = asyncio.run(main())
    assert duration == pytest.approx(600, abs=0.1)
    assert peak < 6 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    for word, start in at.items():
        hit = next(s for s in segments if word in s["text"].lower())
        assert abs(hit["start"] - (100.0 + start)) < 1.0, (word, hit)  # offset + place in the track
        assert hit["speaker"] == "alice" and hit["name"] == "Alice"
    assert merge(segments) == sorted(segments, key=lambda s: s["start"])
