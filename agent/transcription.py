"""Transcribe a recording track by track, through an OpenAI-compatible /v1/audio/transcriptions.

Each track belongs to one participant, so the speaker of every word is known without
diarization. A track is decoded as it is read and cut into chunks around speech (energy gate
on 100 ms blocks, at most MAX_CHUNK_S long, cut at the quietest moment of its second half
when speech runs on),
so a long meeting never sits in memory and silence is never sent: it costs nothing and is
where Whisper would invent words. Each chunk goes out as a 16 kHz WAV asking for
`verbose_json`; its segment times plus the chunk's place in the track plus the track's offset
give times on the recording's timeline, on which all speakers are merged.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import numpy as np

from agent.audio_files import iter_pcm
from agent.wav import wav_bytes

log = logging.getLogger("agent.transcription")

RATE = 16000
BLOCK_S = 0.1
VOICED_DBFS = -45.0     # a 100 ms block louder than this counts as speech
END_GAP_S = 0.8         # this much quiet closes a chunk
PAD_S = 0.3             # kept before and after speech, so Whisper hears word edges
MAX_CHUNK_S = 20.0      # bounds memory and how long one request holds a shared speech server


class TranscriptionError(Exception):
    pass


@dataclass
class Chunk:
    start_s: float       # position in the track
    pcm: np.ndarray      # 16 kHz mono int16

    @property
    def duration_s(self) -> float:
        return self.pcm.size / RATE


def _dbfs(block: np.ndarray) -> float:
    if block.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(block.astype(np.float64) ** 2)))
    return 20 * np.log10(max(rms, 1e-9) / 32768.0)


def speech_chunks(blocks: Iterator[np.ndarray], *, voiced_dbfs: float = VOICED_DBFS,
                  max_chunk_s: float = MAX_CHUNK_S) -> Iterator[Chunk]:
    """Chunks of speech from 100 ms blocks; holds at most one chunk (plus pre-roll) in memory."""
    pad = int(round(PAD_S / BLOCK_S))
    gap = int(round(END_GAP_S / BLOCK_S))
    limit = int(round(max_chunk_s / BLOCK_S))
    preroll: list[np.ndarray] = []
    chunk: list[np.ndarray] = []
    levels: list[float] = []
    start = last_voiced = 0
    index = 0

    def emit(upto: int) -> Chunk:
        return Chunk(start * BLOCK_S, np.concatenate(chunk[:upto]))

    for block in blocks:
        level = _dbfs(block)
        voiced = level > voiced_dbfs
        if not chunk:
            if voiced:
                chunk, levels = preroll + [block], [-120.0] * len(preroll) + [level]
                start, last_voiced = index - len(preroll), index
            else:
                preroll = (preroll + [block])[-pad:] if pad else []
            index += 1
            continue
        chunk.append(block)
        levels.append(level)
        if voiced:
            last_voiced = index
        if index - last_voiced >= gap:
            yield emit(last_voiced - start + 1 + pad)
            chunk, levels, preroll = [], [], chunk[-pad:] if pad else []
        elif len(chunk) >= limit:
            # Speech runs on: cut at the quietest block of the chunk's second half (a breath,
            # a pause between sentences), keep the rest for the next chunk.
            tail = max(1, limit // 2)
            quiet = len(chunk) - tail + int(np.argmin(levels[-tail:]))
            yield emit(quiet)
            chunk, levels = chunk[quiet:], levels[quiet:]
            start += quiet
        index += 1
    if chunk:
        yield emit(min(len(chunk), last_voiced - start + 1 + pad))


class SttClient:
    """POSTs chunks to <base_url>/audio/transcriptions; retries transient failures."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, *, model: str = "whisper-1",
                 api_key: str = "dummy", language: str | None = "en", attempts: int = 3,
                 timeout_s: float = 120.0) -> None:
        self.session, self.url = session, base_url.rstrip("/") + "/audio/transcriptions"
        self.model, self.api_key, self.language = model, api_key, language
        self.attempts, self.timeout = attempts, aiohttp.ClientTimeout(total=timeout_s)

    async def segments(self, wav: bytes) -> list[dict[str, Any]]:
        last = ""
        for attempt in range(1, self.attempts + 1):
            form = aiohttp.FormData()
            form.add_field("file", wav, filename="chunk.wav", content_type="audio/wav")
            form.add_field("model", self.model)
            form.add_field("response_format", "verbose_json")
            form.add_field("timestamp_granularities[]", "segment")
            form.add_field("prompt", "")  # no command-vocabulary bias for conversation
            if self.language:
                form.add_field("language", self.language)
            try:
                async with self.session.post(self.url, data=form, timeout=self.timeout,
                                             headers={"Authorization": f"Bearer {self.api_key}"}) as resp:
                    if resp.status == 200:
                        body = await resp.json()
                        return _segments_of(body)
                    last = f"HTTP {resp.status} {(await resp.text())[:300]}"
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        break  # the request itself is wrong: retrying will not help
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(min(30, 2 ** attempt))
        raise TranscriptionError(f"failed to transcribe a {len(wav)} byte chunk at {self.url}: {last} — "
                                 "is the speech server (RECORDING_STT_BASE_URL / STT_BASE_URL) up?")


def _segments_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    segments = body.get("segments")
    if isinstance(segments, list) and segments:
        return [{"start": float(s.get("start", 0)), "end": float(s.get("end", 0)),
                 "text": str(s.get("text", "")).strip()} for s in segments if str(s.get("text", "")).strip()]
    text = str(body.get("text", "")).strip()
    # A server without segments: one segment spanning the chunk (times then come from the chunk).
    return [{"start": 0.0, "end": float(body.get("duration") or 0), "text": text}] if text else []


async def transcribe_track(stt: SttClient, path: Path, *, channel: int | None, offset_s: float,
                           speaker: str, name: str, file: str,
                           voiced_dbfs: float = VOICED_DBFS) -> tuple[list[dict[str, Any]], float]:
    """Segments of one track on the recording's timeline, and the track's duration in seconds.

    Decoding runs in a thread, block by block; only the chunk being sent is held.
    """
    loop = asyncio.get_running_loop()
    samples = 0
    out: list[dict[str, Any]] = []

    def counted() -> Iterator[np.ndarray]:
        nonlocal samples
        for block in iter_pcm(path, RATE, channel, BLOCK_S):
            samples += block.size
            yield block

    chunks = speech_chunks(counted(), voiced_dbfs=voiced_dbfs)
    while True:
        chunk = await loop.run_in_executor(None, next, chunks, None)
        if chunk is None:
            break
        for seg in await stt.segments(wav_bytes(chunk.pcm.astype(np.int16).tobytes(), RATE)):
            end = seg["end"] if seg["end"] > seg["start"] else chunk.duration_s
            out.append({
                "start": round(offset_s + chunk.start_s + seg["start"], 2),
                "end": round(offset_s + chunk.start_s + min(end, chunk.duration_s), 2),
                "speaker": speaker, "name": name, "file": file, "text": seg["text"],
            })
    return out, samples / RATE


def merge(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All speakers on one timeline: by start, then end, then speaker (stable for equal times)."""
    return sorted(segments, key=lambda s: (s["start"], s["end"], s["speaker"]))


def transcript_text(segments: list[dict[str, Any]]) -> str:
    """"[mm:ss] Name: text" lines, the form summaries and mails use."""
    lines = []
    for s in segments:
        minutes, seconds = divmod(int(s["start"]), 60)
        lines.append(f"[{minutes:02d}:{seconds:02d}] {s['name']}: {s['text']}")
    return "\n".join(lines)
