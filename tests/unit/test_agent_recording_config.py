"""The recording policy and its settings: who records what, and errors that name the variable."""
from __future__ import annotations

import json

import pytest

from agent.recording_config import (
    INDICATOR_KEY,
    RecordingConfig,
    RecordingConfigError,
    room_requests_recording,
    with_indicator,
)

ASKS = json.dumps({"voicestack.record": "true"})


@pytest.mark.parametrize("policy,metadata,recorder,agent", [
    ("off", "", False, False),
    ("off", ASKS, False, False),            # off is off, whatever the room says
    ("agent-calls", "", False, True),
    ("agent-calls", ASKS, True, False),     # the recorder takes the room: one recording, not two
    ("rooms", "", True, False),
    ("rooms", ASKS, True, False),
], ids=["off", "off-room-asks", "agent-calls", "agent-calls-room-asks", "rooms", "rooms-room-asks"])
def test_agent_recording_policy_decides_who_records(policy: str, metadata: str, recorder: bool,
                                                    agent: bool) -> None:
    cfg = RecordingConfig.from_env({"RECORDING_POLICY": policy})
    assert (cfg.recorder_wanted(metadata), cfg.agent_records_call(metadata)) == (recorder, agent)


def test_agent_recording_policy_defaults_to_off() -> None:
    cfg = RecordingConfig.from_env({})
    assert cfg.policy == "off" and not cfg.enabled
    assert str(cfg.root) == "/var/lib/voicestack/recordings" and cfg.api_port == 8092


@pytest.mark.parametrize("metadata,asks", [
    ('{"voicestack.record": "true"}', True), ('{"voicestack.record": true}', True),
    ('{"voicestack.record": "false"}', False), ('{"voicestack.recording": "true"}', False),
    ("record me please", False), ("", False), ("[1, 2]", False),
], ids=["string", "bool", "false", "indicator-is-not-a-request", "not-json", "empty", "json-list"])
def test_agent_recording_room_request_is_an_explicit_metadata_key(metadata: str, asks: bool) -> None:
    assert room_requests_recording(metadata) is asks


def test_agent_recording_indicator_merges_into_room_metadata() -> None:
    merged = json.loads(with_indicator('{"topic": "weekly", "voicestack.record": "true"}', True))
    assert merged == {"topic": "weekly", "voicestack.record": "true", INDICATOR_KEY: "true"}
    assert json.loads(with_indicator(json.dumps(merged), False))[INDICATOR_KEY] == "false"
    # Metadata that is not a JSON object is kept, not lost, when the indicator must be shown.
    assert json.loads(with_indicator("plain text", True)) == {"voicestack.metadata": "plain text",
                                                              INDICATOR_KEY: "true"}


@pytest.mark.parametrize("env,fragment", [
    ({"RECORDING_POLICY": "always"}, "use one of off, agent-calls, rooms"),
    ({"RECORDINGS_DIR": "recordings"}, "absolute path"),
    ({"RECORDING_RETENTION_DAYS": "a month"}, "must be numbers"),
    ({"RECORDING_SAMPLE_RATE": "44100"}, "Opus takes"),
    ({"RECORDING_BITRATE": "1000"}, "6000..256000"),
    ({"RECORDING_MIN_FREE_MB": "-1"}, "must not be negative"),
], ids=["policy", "relative-dir", "retention", "sample-rate", "bitrate", "negative"])
def test_agent_recording_config_errors_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(RecordingConfigError, match=fragment):
        RecordingConfig.from_env(env)


def test_agent_recording_config_falls_back_to_the_agent_backends_and_hides_keys() -> None:
    cfg = RecordingConfig.from_env({"STT_BASE_URL": "http://stt/v1", "LLM_BASE_URL": "http://llm/v1",
                                    "LLM_API_KEY": "sk-secret", "TOKEN_KEY": "t" * 32,
                                    "LIVEKIT_WS_URL": "wss://lk.example.org"})
    assert (cfg.stt_base_url, cfg.summary_base_url) == ("http://stt/v1", "http://llm/v1")
    assert cfg.public_url == "https://lk.example.org"
    assert "sk-secret" not in repr(cfg) and "t" * 32 not in repr(cfg)
