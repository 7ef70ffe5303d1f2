"""Recording settings and the recording policy, read from the environment in this one place.

    RECORDING_POLICY    off (default) | agent-calls | rooms
    RECORDINGS_DIR      /var/lib/voicestack/recordings   one directory per recording
    ...                 see RecordingConfig for every variable and its default

The policy decides who records what:
  off          nothing is recorded, whatever a room asks (a request is refused with a log line):
               the operator's configuration is the consent boundary.
  agent-calls  every voice-agent call is recorded in process by the agent session (one stereo
               Ogg/Opus file: user, agent); a room that asks for recording gets the recorder.
  rooms        every room gets the hidden recorder (one Ogg/Opus file per audio track, the
               agent's included); the agent does not record a second copy.

A room asks for recording with the key ``voicestack.record`` = "true" in its metadata (a JSON
object), set when the room is created through the API or by a token's roomConfig.metadata;
a token's roomConfig may also dispatch the recorder agent directly.

Whoever records shows it: the room metadata key ``voicestack.recording`` is "true" while a
recording runs and "false" after it; browser pages display it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

POLICIES = ("off", "agent-calls", "rooms")
REQUEST_KEY = "voicestack.record"      # set by whoever creates the room: "please record"
INDICATOR_KEY = "voicestack.recording"  # set only by the recorder/agent: "true" while recording
DEFAULT_DIR = "/var/lib/voicestack/recordings"
DEFAULT_SPEECH_URL = "http://127.0.0.1:8000/v1"
EXTRACTIVE_MODEL = "extractive-summary"  # the offline speech server's deterministic summariser


class RecordingConfigError(ValueError):
    pass


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"))


def parse_metadata(metadata: str | None) -> dict[str, Any] | None:
    """Room metadata as a JSON object; {} when empty, None when it is something else."""
    if not metadata or not metadata.strip():
        return {}
    try:
        value = json.loads(metadata)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def room_requests_recording(metadata: str | None) -> bool:
    """True if the room's metadata asks for a recording (``"voicestack.record": "true"``)."""
    parsed = parse_metadata(metadata)
    return bool(parsed) and _truthy(parsed.get(REQUEST_KEY))  # type: ignore[union-attr]


def with_indicator(metadata: str | None, recording: bool) -> str:
    """The room metadata with the recording indicator set, everything else kept.

    Metadata that is not a JSON object cannot take a key without being replaced; it is kept
    verbatim under "voicestack.metadata" because showing the recording matters more.
    """
    parsed = parse_metadata(metadata)
    if parsed is None:
        parsed = {"voicestack.metadata": metadata}
    parsed[INDICATOR_KEY] = "true" if recording else "false"
    return json.dumps(parsed, separators=(",", ":"))


def _env(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def _public_url(env: Mapping[str, str]) -> str:
    """https://<livekit name> from LIVEKIT_WS_URL (wss://…), where Caddy routes /api/recordings."""
    explicit = env.get("RECORDINGS_PUBLIC_URL", "").strip()
    if explicit:
        return explicit.rstrip("/")
    ws = urlsplit(env.get("LIVEKIT_WS_URL", "").strip())
    if ws.scheme in ("ws", "wss") and ws.netloc:
        return f"{'https' if ws.scheme == 'wss' else 'http'}://{ws.netloc}"
    return ""


@dataclass(frozen=True)
class RecordingConfig:
    """Every recording setting; one object, read once (RecordingConfig.from_env)."""

    policy: str = "off"
    root: Path = Path(DEFAULT_DIR)
    retention_days: float = 30.0          # RECORDING_RETENTION_DAYS; 0 keeps recordings forever
    min_free_mb: int = 1024               # RECORDING_MIN_FREE_MB: stop recording below this
    recorder_agent_name: str = "recorder"  # RECORDER_AGENT_NAME: the explicitly dispatched recorder
    end_grace_s: float = 10.0             # RECORDING_END_GRACE: no human left this long = the end
    stale_after_s: float = 30.0           # RECORDING_STALE_AFTER: no heartbeat this long = crashed
    sample_rate: int = 48000              # RECORDING_SAMPLE_RATE of the recorder's files
    bitrate: int = 24000                  # RECORDING_BITRATE (Opus, per track)
    # Post-processing backends (OpenAI-compatible), defaulting to the agent's own.
    stt_base_url: str = DEFAULT_SPEECH_URL
    stt_model: str = "whisper-1"
    stt_api_key: str = field(default="dummy", repr=False)
    language: str = "en"
    summary_base_url: str = DEFAULT_SPEECH_URL
    summary_model: str = EXTRACTIVE_MODEL
    summary_api_key: str = field(default="dummy", repr=False)
    # The download API (Caddy routes https://<livekit name>/api/recordings* here).
    api_host: str = "127.0.0.1"
    api_port: int = 8092
    public_url: str = ""                  # https://<livekit name>, for links in the event
    token_key: str = field(default="", repr=False)  # the bearer key, shared with /api/token

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RecordingConfig":
        e = dict(os.environ if env is None else env)
        d = cls()
        policy = _env(e, "RECORDING_POLICY", d.policy).lower()
        if policy not in POLICIES:
            raise RecordingConfigError(
                f"RECORDING_POLICY is {policy!r}; use one of {', '.join(POLICIES)}")
        root = Path(_env(e, "RECORDINGS_DIR", str(d.root)))
        if not root.is_absolute():
            raise RecordingConfigError(f"RECORDINGS_DIR is {str(root)!r}; it must be an absolute path")
        try:
            cfg = cls(
                policy=policy,
                root=root,
                retention_days=float(_env(e, "RECORDING_RETENTION_DAYS", str(d.retention_days))),
                min_free_mb=int(_env(e, "RECORDING_MIN_FREE_MB", str(d.min_free_mb))),
                recorder_agent_name=_env(e, "RECORDER_AGENT_NAME", d.recorder_agent_name),
                end_grace_s=float(_env(e, "RECORDING_END_GRACE", str(d.end_grace_s))),
                stale_after_s=float(_env(e, "RECORDING_STALE_AFTER", str(d.stale_after_s))),
                sample_rate=int(_env(e, "RECORDING_SAMPLE_RATE", str(d.sample_rate))),
                bitrate=int(_env(e, "RECORDING_BITRATE", str(d.bitrate))),
                stt_base_url=_env(e, "RECORDING_STT_BASE_URL", _env(e, "STT_BASE_URL", d.stt_base_url)),
                stt_model=_env(e, "RECORDING_STT_MODEL", _env(e, "STT_MODEL", d.stt_model)),
                stt_api_key=_env(e, "RECORDING_STT_API_KEY", _env(e, "STT_API_KEY", d.stt_api_key)),
                language=_env(e, "RECORDING_LANGUAGE", _env(e, "STT_LANGUAGE", d.language)),
                summary_base_url=_env(e, "SUMMARY_BASE_URL", _env(e, "LLM_BASE_URL", d.summary_base_url)),
                summary_model=_env(e, "SUMMARY_MODEL", d.summary_model),
                summary_api_key=_env(e, "SUMMARY_API_KEY", _env(e, "LLM_API_KEY", d.summary_api_key)),
                api_host=_env(e, "RECORDINGS_HOST", d.api_host),
                api_port=int(_env(e, "RECORDINGS_PORT", str(d.api_port))),
                public_url=_public_url(e),
                token_key=e.get("TOKEN_KEY", ""),
            )
        except ValueError as exc:
            raise RecordingConfigError(
                f"failed to read the recording configuration: {exc} — RECORDING_RETENTION_DAYS, "
                "RECORDING_MIN_FREE_MB, RECORDING_END_GRACE, RECORDING_STALE_AFTER, "
                "RECORDING_SAMPLE_RATE, RECORDING_BITRATE and RECORDINGS_PORT must be numbers") from exc
        if cfg.sample_rate not in (8000, 12000, 16000, 24000, 48000):
            raise RecordingConfigError(
                f"RECORDING_SAMPLE_RATE is {cfg.sample_rate}; Opus takes 8000, 12000, 16000, 24000 or 48000")
        if not 6000 <= cfg.bitrate <= 256000:
            raise RecordingConfigError(f"RECORDING_BITRATE is {cfg.bitrate}; use 6000..256000 bit/s")
        if cfg.retention_days < 0 or cfg.min_free_mb < 0:
            raise RecordingConfigError("RECORDING_RETENTION_DAYS and RECORDING_MIN_FREE_MB must not be negative")
        return cfg

    # ---- the policy, in one place ------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.policy != "off"

    def recorder_wanted(self, room_metadata: str | None) -> bool:
        """Should the hidden recorder record this room?"""
        if self.policy == "off":
            return False
        return self.policy == "rooms" or room_requests_recording(room_metadata)

    def agent_records_call(self, room_metadata: str | None) -> bool:
        """Should the voice agent record its own call in process?

        Not when the recorder takes the room: one recording per room, not two copies.
        """
        return self.policy == "agent-calls" and not room_requests_recording(room_metadata)

    @property
    def min_free_bytes(self) -> int:
        return self.min_free_mb * 1024 * 1024
