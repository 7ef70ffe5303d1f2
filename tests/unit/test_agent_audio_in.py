"""The speech server's audio decode: the WAV path gives faster-whisper's samples exactly."""

from __future__ import annotations

import io
import wave

import av
import numpy as np
import pytest
from faster_whisper.audio import decode_audio

from agent.speech import audio_in


def _wav(samples: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return out.getvalue()


def _voice_like(rate: int, seconds: float) -> np.ndarray:
    # A chirp plus noise: energy across the band, so a resampler that differs shows up.
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(7)
    x = 0.4 * np.sin(2 * np.pi * (200 + 1500 * t) * t) + 0.1 * rng.standard_normal(t.size)
    return (np.clip(x, -1, 1) * 32767).astype("<i2")


@pytest.mark.parametrize("rate", [24000, 16000, 48000, 22050, 8000])
def test_agent_audio_in_pcm_wav_matches_faster_whisper(rate: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = _wav(_voice_like(rate, 2.3), rate)
    theirs = decode_audio(io.BytesIO(data), sampling_rate=16000)

    def no_pyav_container(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the worker's WAV went through decode_audio (and its gc.collect)")

    monkeypatch.setattr(audio_in, "decode_audio", no_pyav_container)
    ours = audio_in.samples(data, 16000)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


def _flac(samples: np.ndarray, rate: int) -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in (*stream.encode(frame), *stream.encode(None)):
            container.mux(packet)
    return out.getvalue()


@pytest.mark.parametrize("kind", ["stereo", "8-bit", "flac"])
def test_agent_audio_in_other_formats_go_through_pyav(kind: str) -> None:
    pcm = _voice_like(24000, 1.0)
    if kind == "stereo":
        data = _wav(np.repeat(pcm, 2), 24000, channels=2)
    elif kind == "8-bit":
        data = _wav(((pcm >> 8) + 128).astype(np.uint8), 24000, width=1)
    else:
        data = _flac(pcm, 24000)
    ours = audio_in.samples(data, 16000)
    assert ours.size > 15000  # decoded, not an empty fallback
    np.testing.assert_array_equal(ours, decode_audio(io.BytesIO(data), sampling_rate=16000))


def test_agent_audio_in_empty_wav_is_no_samples() -> None:
    assert audio_in.samples(_wav(np.zeros(0, "<i2"), 24000), 16000).size == 0
