"""Uploaded audio → 16 kHz mono float32 samples for Whisper.

The worker's STT requests are 16-bit PCM WAV (livekit's `AudioFrame.to_wav_bytes`, 24 kHz
mono). faster-whisper's `decode_audio` handles any container but ends every call with
`gc.collect()` (SYSTRAN/faster-whisper#390), which took 0.04-0.09 s per request in the speech
server's process, as much as the encoder on the short window. Such a WAV is read with the
stdlib and resampled by the same libswresample resampler (PyAV, same settings), so the samples
are identical; anything else still goes through `decode_audio`.
"""

from __future__ import annotations

import io
import wave

import av
import numpy as np
from faster_whisper.audio import decode_audio

from agent.wav import read_wav


def _pcm16_mono_wav(audio: bytes) -> tuple[np.ndarray, int] | None:
    """(int16 samples, rate) of a mono 16-bit PCM WAV, else None."""
    if audio[:4] != b"RIFF" or audio[8:12] != b"WAVE":
        return None
    try:
        pcm, rate = read_wav(audio)   # wave reads only uncompressed PCM
    except (ValueError, wave.Error, EOFError):
        return None
    return np.frombuffer(pcm, dtype="<i2"), rate


def _resample(pcm: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target or pcm.size == 0:
        return pcm
    # The resampler faster-whisper's decode_audio builds, fed the whole clip as one frame.
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=target)
    chunks = [f.to_ndarray() for f in (*resampler.resample(frame), *resampler.resample(None))]
    return np.concatenate(chunks, axis=1).ravel() if chunks else np.zeros(0, np.int16)


def samples(audio: bytes, rate: int) -> np.ndarray:
    """float32 mono samples at `rate` of an encoded audio file (wav, mp3, ogg… what PyAV
    decodes)."""
    wav = _pcm16_mono_wav(audio)
    if wav is None:
        return decode_audio(io.BytesIO(audio), sampling_rate=rate)
    pcm, source_rate = wav
    return _resample(pcm, source_rate, rate).astype(np.float32) / 32768.0
