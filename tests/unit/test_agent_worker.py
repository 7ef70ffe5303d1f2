"""The worker's configuration and its OpenAI plugins against our speech server (no LiveKit)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from livekit import rtc
from livekit.agents import llm as lk_llm

from agent import worker
from agent.speech_server import create_app, load_backends


@pytest.fixture(scope="module")
def backends() -> tuple[Any, Any]:
    return load_backends()


def test_agent_worker_config_reads_every_setting_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "STT_BASE_URL": "http://stt:1/v1", "LLM_BASE_URL": "http://llm:2/v1",
        "TTS_BASE_URL": "http://tts:3/v1", "STT_MODEL": "m-stt", "LLM_MODEL": "m-llm",
        "TTS_MODEL": "m-tts", "TTS_VOICE": "v", "STT_API_KEY": "k1", "LLM_API_KEY": "k2",
        "TTS_API_KEY": "k3", "AGENT_NAME": "voice-agent", "AGENT_HEALTH_PORT": "9999",
        "AGENT_NUM_IDLE_PROCESSES": "3", "AGENT_DRAIN_TIMEOUT": "30",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = worker.WorkerConfig.from_env()
    assert (config.stt_base_url, config.llm_base_url, config.tts_base_url) == (
        "http://stt:1/v1", "http://llm:2/v1", "http://tts:3/v1")
    assert (config.stt_model, config.llm_model, config.tts_model, config.tts_voice) == (
        "m-stt", "m-llm", "m-tts", "v")
    assert (config.stt_api_key, config.llm_api_key, config.tts_api_key) == ("k1", "k2", "k3")
    assert (config.agent_name, config.health_port, config.num_idle_processes,
            config.drain_timeout) == ("voice-agent", 9999, 3, 30)
    assert "k1" not in repr(config)  # keys stay out of logs


def test_agent_worker_defaults_to_local_backends_and_automatic_dispatch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("STT_BASE_URL", "AGENT_NAME", "AGENT_HEALTH_PORT", "AGENT_HEALTH_HOST"):
        monkeypatch.delenv(key, raising=False)
    config = worker.WorkerConfig.from_env()
    assert config.stt_base_url == "http://127.0.0.1:8000/v1"
    assert config.agent_name == ""
    assert config.health_host == "127.0.0.1"


def test_agent_worker_rejects_a_non_numeric_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_HEALTH_PORT", "eighty")
    with pytest.raises(SystemExit, match="AGENT_HEALTH_PORT"):
        worker.WorkerConfig.from_env()


def test_agent_worker_session_decides_turns_on_local_vad() -> None:
    from livekit.plugins import silero

    async def build() -> Any:  # AgentSession binds to the running event loop
        return worker.build_session(worker.WorkerConfig(), silero.VAD.load())

    session = asyncio.run(build())
    assert session.turn_detection == "vad"
    assert session.options.interruption["mode"] == "vad"


def test_agent_worker_turn_taking_settings_reach_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    from livekit.plugins import silero

    for key, value in {"AGENT_ENDPOINT_MIN_DELAY": "0.65", "AGENT_PREEMPTIVE_TTS": "0",
                       "AGENT_INTERRUPT_MIN_SPEECH": "0.35", "AGENT_VAD_MIN_SILENCE": "0.45"}.items():
        monkeypatch.setenv(key, value)
    config = worker.WorkerConfig.from_env()
    assert config.vad_min_silence == 0.45

    async def build() -> Any:
        return worker.build_session(config, silero.VAD.load())

    options = asyncio.run(build()).options
    assert options.endpointing["min_delay"] == 0.65
    assert options.preemptive_generation == {**options.preemptive_generation,
                                             "enabled": True, "preemptive_tts": False}
    assert options.interruption["min_duration"] == 0.35


def test_agent_worker_defaults_generate_speech_before_the_turn_commits() -> None:
    config = worker.WorkerConfig()
    assert config.preemptive_tts is True
    assert config.vad_min_silence < 0.55  # livekit's default; see the comment on the field
    assert (config.metrics_host, config.metrics_port) == ("127.0.0.1", 8082)


@pytest.mark.parametrize(("key", "value"), [("AGENT_VAD_MIN_SILENCE", "short"),
                                            ("AGENT_VAD_PREFIX_PADDING", "some"),
                                            ("AGENT_PREEMPTIVE_TTS", "maybe"),
                                            ("AGENT_METRICS_PORT", "http")])
def test_agent_worker_rejects_bad_turn_settings(monkeypatch: pytest.MonkeyPatch, key: str,
                                                value: str) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit, match=key):
        worker.WorkerConfig.from_env()


def test_agent_worker_prewarm_loads_vad_with_the_configured_silence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_VAD_MIN_SILENCE", "0.35")
    monkeypatch.setenv("AGENT_VAD_PREFIX_PADDING", "0.25")

    class Proc:  # the one attribute livekit's JobProcess hands to setup_fnc
        userdata: dict[str, Any] = {}

    proc = Proc()
    worker.prewarm(proc)  # type: ignore[arg-type]
    opts = proc.userdata["vad"]._opts
    assert (opts.min_silence_duration, opts.prefix_padding_duration) == (0.35, 0.25)


def test_agent_worker_never_preloads_hub_or_cloud_models() -> None:
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE"] == "0"


def test_agent_worker_silero_model_ships_in_the_wheel() -> None:
    import livekit.plugins.silero as silero_pkg

    model = Path(silero_pkg.__file__).parent / "resources" / "silero_vad.onnx"
    assert model.stat().st_size > 1_000_000


def test_agent_worker_plugins_speak_and_listen_through_the_speech_server(
        backends: tuple[Any, Any]) -> None:
    """The exact requests livekit-agents' openai plugins make are served by our server."""

    async def main() -> tuple[str, str, list[rtc.AudioFrame]]:
        async with TestServer(create_app(*backends)) as server:
            config = worker.WorkerConfig(
                stt_base_url=str(server.make_url("/v1")), llm_base_url=str(server.make_url("/v1")),
                tts_base_url=str(server.make_url("/v1")))
            from livekit.plugins import silero

            session = worker.build_session(config, silero.VAD.load())
            tts, stt, model = session.tts, session.stt, session.llm
            assert tts is not None and stt is not None and model is not None

            frames = [ev.frame async for ev in tts.synthesize("turn on the lights")]
            heard = await stt.recognize(frames)

            ctx = lk_llm.ChatContext()
            ctx.add_message(role="system", content=worker.INSTRUCTIONS)
            ctx.add_message(role="user", content=heard.alternatives[0].text)
            parts = []
            async with model.chat(chat_ctx=ctx) as stream:
                async for chunk in stream:
                    if chunk.delta and chunk.delta.content:
                        parts.append(chunk.delta.content)
            return heard.alternatives[0].text, "".join(parts), frames

    heard, answer, frames = asyncio.run(main())
    assert {f.sample_rate for f in frames} == {24000}
    assert sum(f.samples_per_channel for f in frames) > 24000 * 0.5
    assert "turn on the lights" in heard.lower()
    assert answer == "Okay, I turned on the lights."


def test_agent_deployed_tuning_reads_back_as_the_code_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the deploy writes to agent.env (agent.tuning.env()) parses to exactly the defaults
    the worker and the speech server would use without it: the node runs the measured values."""
    from agent import tuning
    from agent.speech.stt import SttConfig
    from agent.speech.tts import TtsConfig

    for key in tuning.env():
        monkeypatch.delenv(key, raising=False)
    defaults = (worker.WorkerConfig.from_env(), SttConfig.from_env(), TtsConfig.from_env())
    for key, value in tuning.env().items():
        monkeypatch.setenv(key, value)
    assert (worker.WorkerConfig.from_env(), SttConfig.from_env(), TtsConfig.from_env()) == defaults
    assert (defaults[0].vad_min_silence, defaults[1].window_s, defaults[2].by_clause) == \
        (tuning.VAD_MIN_SILENCE_S, tuning.STT_WINDOW_S, tuning.TTS_STREAM_CLAUSES)
    # And a changed line takes effect (the file is not decoration).
    monkeypatch.setenv("STT_WINDOW_S", "0")
    monkeypatch.setenv("AGENT_ENDPOINT_MIN_DELAY", "0.7")
    assert SttConfig.from_env().window_s == 0 and worker.WorkerConfig.from_env().endpoint_min_delay == 0.7
