"""Mono 16-bit PCM as WAV bytes and back: what the speech server speaks and hears.

Standard library only: the speech server, the round-trip clients, the recording transcription
and the benchmarks all hand the OpenAI-style speech API the same format.
"""
from __future__ import annotations

import io
import wave


def wav_bytes(pcm: bytes, rate: int) -> bytes:
    """`pcm` (mono, 16-bit little-endian samples at `rate` Hz) in a WAV container."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buf.getvalue()


def read_wav(data: bytes) -> tuple[bytes, int]:
    """The PCM and sample rate of a mono 16-bit WAV; ValueError for any other format."""
    with wave.open(io.BytesIO(data)) as src:
        if src.getnchannels() != 1 or src.getsampwidth() != 2:
            raise ValueError(f"the audio must be mono 16-bit WAV, not {src.getnchannels()} channel(s) of "
                             f"{8 * src.getsampwidth()}-bit samples")
        return src.readframes(src.getnframes()), src.getframerate()
