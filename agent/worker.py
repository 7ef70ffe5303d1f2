"""LiveKit voice-agent worker: silero VAD -> OpenAI-compatible STT -> LLM -> TTS.

    python -m agent.worker            # same as `python -m agent.worker start`

Every setting comes from the environment (a systemd EnvironmentFile), see WorkerConfig.
Nothing here talks to LiveKit Cloud: turns and interruptions are decided by the local
silero VAD, session recording/telemetry is off, and the speech backends are plugin
instances pointed at our own base URLs (a model *string* would route to LiveKit Inference).
SIGTERM drains: the worker stops taking jobs and waits up to AGENT_DRAIN_TIMEOUT seconds
for running conversations to end (livekit-agents' `start` mode).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from agent import tuning, turn_metrics

# Set before livekit imports: no hub downloads, and no 244 MB end-of-turn model preload
# (turn detection is VAD-based, the EOT model is never used).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE", "0")
if __name__ == "__main__":
    # Only the worker process itself (job processes inherit the variable): prometheus-client,
    # imported by livekit-agents, decides at import whether values live in files.
    turn_metrics.ensure_multiprocess_dir()

from aiohttp import ClientSession  # noqa: E402
from livekit.agents import Agent, AgentServer, AgentSession, JobContext, JobProcess, cli, function_tool  # noqa: E402
from livekit.plugins import openai, silero  # noqa: E402

from agent import call_recording  # noqa: E402
from agent.actions import (  # noqa: E402
    TOOL_DESCRIPTION,
    TOOL_NAME,
    TOOL_PARAMETERS,
    ActionClient,
    ActionConfig,
    ActionError,
    from_tool_call,
)
from agent.speech.responder import GREETING  # noqa: E402

log = logging.getLogger("agent.worker")

INSTRUCTIONS = (
    "You are a terse voice assistant for a home: you switch lights, set the thermostat and "
    "tell the time. Answer in one short spoken sentence."
)
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _flag(name: str, default: bool) -> bool:
    value = _env(name, "1" if default else "0").lower()
    if value not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise ValueError(f"{name}={value!r} is not a boolean (use 1 or 0)")
    return value in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class WorkerConfig:
    """The worker's settings; LIVEKIT_URL/API_KEY/API_SECRET are read by livekit-agents."""

    stt_base_url: str = DEFAULT_BASE_URL
    llm_base_url: str = DEFAULT_BASE_URL
    tts_base_url: str = DEFAULT_BASE_URL
    stt_model: str = "whisper-1"
    llm_model: str = "voice-responder"
    tts_model: str = "tts-1"
    tts_voice: str = "alloy"
    # "dummy" is fine for the local speech server, which ignores keys.
    stt_api_key: str = field(default="dummy", repr=False)
    llm_api_key: str = field(default="dummy", repr=False)
    tts_api_key: str = field(default="dummy", repr=False)
    language: str = "en"
    agent_name: str = ""  # "" = automatic dispatch to every room
    health_host: str = "127.0.0.1"
    health_port: int = 8081
    num_idle_processes: int = 2
    drain_timeout: int = 60
    # Capacity in conversations. livekit's default CPU-based load refuses a room whenever the
    # machine-wide CPU was high for ~2.5 s (Whisper on a 2-core node does that), and the
    # server does not re-offer the room: it stays without an agent.
    max_jobs: int = 4
    greeting: str = GREETING
    # --- turn taking: defaults and their reasons in agent/tuning.py (the deploy writes them) ---
    vad_min_silence: float = tuning.VAD_MIN_SILENCE_S         # AGENT_VAD_MIN_SILENCE
    vad_prefix_padding: float = tuning.VAD_PREFIX_PADDING_S   # AGENT_VAD_PREFIX_PADDING
    endpoint_min_delay: float = tuning.ENDPOINT_MIN_DELAY_S   # AGENT_ENDPOINT_MIN_DELAY
    preemptive_tts: bool = tuning.PREEMPTIVE_TTS              # AGENT_PREEMPTIVE_TTS
    interrupt_min_speech: float = tuning.INTERRUPT_MIN_SPEECH_S  # AGENT_INTERRUPT_MIN_SPEECH
    # --- observability ---
    metrics_host: str = "127.0.0.1"
    metrics_port: int = tuning.METRICS_PORT  # AGENT_METRICS_PORT; 0 disables the Prometheus endpoint
    turn_metrics_to_room: bool = tuning.TURN_METRICS_TO_ROOM  # AGENT_TURN_METRICS_TO_ROOM

    @classmethod
    def from_env(cls) -> "WorkerConfig":
        d = cls()
        try:
            return cls(
                stt_base_url=_env("STT_BASE_URL", d.stt_base_url),
                llm_base_url=_env("LLM_BASE_URL", d.llm_base_url),
                tts_base_url=_env("TTS_BASE_URL", d.tts_base_url),
                stt_model=_env("STT_MODEL", d.stt_model),
                llm_model=_env("LLM_MODEL", d.llm_model),
                tts_model=_env("TTS_MODEL", d.tts_model),
                tts_voice=_env("TTS_VOICE", d.tts_voice),
                stt_api_key=_env("STT_API_KEY", d.stt_api_key),
                llm_api_key=_env("LLM_API_KEY", d.llm_api_key),
                tts_api_key=_env("TTS_API_KEY", d.tts_api_key),
                language=_env("STT_LANGUAGE", d.language),
                agent_name=os.environ.get("AGENT_NAME", "").strip(),
                health_host=_env("AGENT_HEALTH_HOST", d.health_host),
                health_port=int(_env("AGENT_HEALTH_PORT", str(d.health_port))),
                num_idle_processes=int(_env("AGENT_NUM_IDLE_PROCESSES", str(d.num_idle_processes))),
                drain_timeout=int(_env("AGENT_DRAIN_TIMEOUT", str(d.drain_timeout))),
                max_jobs=int(_env("AGENT_MAX_JOBS", str(d.max_jobs))),
                greeting=_env("AGENT_GREETING", d.greeting),
                vad_min_silence=float(_env("AGENT_VAD_MIN_SILENCE", str(d.vad_min_silence))),
                vad_prefix_padding=float(_env("AGENT_VAD_PREFIX_PADDING", str(d.vad_prefix_padding))),
                endpoint_min_delay=float(_env("AGENT_ENDPOINT_MIN_DELAY", str(d.endpoint_min_delay))),
                preemptive_tts=_flag("AGENT_PREEMPTIVE_TTS", d.preemptive_tts),
                interrupt_min_speech=float(_env("AGENT_INTERRUPT_MIN_SPEECH",
                                                str(d.interrupt_min_speech))),
                metrics_host=_env("AGENT_METRICS_HOST", d.metrics_host),
                metrics_port=int(_env("AGENT_METRICS_PORT", str(d.metrics_port))),
                turn_metrics_to_room=_flag("AGENT_TURN_METRICS_TO_ROOM", d.turn_metrics_to_room),
            )
        except ValueError as exc:
            raise SystemExit(
                f"failed to read the agent worker configuration: {exc} — AGENT_HEALTH_PORT, "
                "AGENT_METRICS_PORT, AGENT_NUM_IDLE_PROCESSES, AGENT_DRAIN_TIMEOUT and "
                "AGENT_MAX_JOBS must be whole numbers, AGENT_VAD_MIN_SILENCE, AGENT_VAD_PREFIX_PADDING, "
                "AGENT_ENDPOINT_MIN_DELAY and AGENT_INTERRUPT_MIN_SPEECH seconds"
            ) from exc


def build_session(config: WorkerConfig, vad: object) -> AgentSession:
    """The voice pipeline; plugin instances keep every request on our own base URLs."""
    return AgentSession(
        vad=vad,
        stt=openai.STT(model=config.stt_model, base_url=config.stt_base_url,
                       api_key=config.stt_api_key, language=config.language,
                       use_realtime=False),
        llm=openai.LLM(model=config.llm_model, base_url=config.llm_base_url,
                       api_key=config.llm_api_key),
        # pcm: raw 24 kHz s16le, no decoder in the path, lowest latency to first frame.
        tts=openai.TTS(model=config.tts_model, voice=config.tts_voice,
                       base_url=config.tts_base_url, api_key=config.tts_api_key,
                       response_format="pcm"),
        turn_handling={
            # Explicit: the default turn detector may resolve to LiveKit Cloud in dev mode,
            # and the offline one (livekit-local-inference v1-mini) scored short complete
            # questions ("what time is it") below its threshold, so they would wait max_delay.
            "turn_detection": "vad",
            "endpointing": {"mode": "fixed", "min_delay": config.endpoint_min_delay},
            # Adaptive interruption calls LiveKit's gateway; the local VAD decides here.
            "interruption": {"mode": "vad", "min_duration": config.interrupt_min_speech},
            "preemptive_generation": {"enabled": True, "preemptive_tts": config.preemptive_tts},
        },
    )


def device_tools(config: ActionConfig | None) -> list[Any]:
    """The `set_device` tool for a real LLM's tool calls (ACTION_URL set), else none. The offline
    responder never calls tools: the speech server sends its device intents itself."""
    if config is None:
        return []
    client = ActionClient(config)

    async def set_device(raw_arguments: dict[str, object]) -> str:
        try:
            action = from_tool_call(raw_arguments)
        except ActionError as exc:
            return f"Not done: {exc}"   # the model reads this and can ask or correct itself
        async with ClientSession() as session:
            return await client.perform(action, session)

    return [function_tool(set_device, raw_schema={"name": TOOL_NAME, "description": TOOL_DESCRIPTION,
                                                  "parameters": TOOL_PARAMETERS})]


def prewarm(proc: JobProcess) -> None:
    # silero_vad.onnx ships inside livekit-plugins-silero: loading it needs no network.
    config = WorkerConfig.from_env()
    proc.userdata["vad"] = silero.VAD.load(min_silence_duration=config.vad_min_silence,
                                           prefix_padding_duration=config.vad_prefix_padding)
    # Built on first use inside a conversation, they blocked the job's event loop (livekit's
    # loop monitor): the transcript synchroniser's hyphenation tables for 0.12-0.34 s on the
    # first answer, and openai's chat-streaming module import for 0.16 s on the first reply.
    import openai.lib.streaming.chat  # noqa: F401
    from livekit.agents.tokenize import basic

    basic.hyphenate_word("assistant")


async def entrypoint(ctx: JobContext) -> None:
    """One conversation. Module level because job processes receive it pickled; the
    configuration is re-read from the environment they inherit."""
    # Which node's worker holds a room's agent (a cluster places jobs on any node's worker):
    # `journalctl -u voicestack-agent | grep <room>` on each node.
    log.info("agent job %s for room %s", ctx.job.id, ctx.job.room.name)
    config = WorkerConfig.from_env()
    session = build_session(config, ctx.proc.userdata["vad"])
    turn_metrics.TurnRecorder(ctx.room if config.turn_metrics_to_room else None).attach(session)
    # No traces/logs/transcript upload (it only ever goes to *.livekit.cloud); audio only when
    # RECORDING_POLICY records this call, into the node's recordings directory.
    record = await call_recording.record_options(ctx, session)
    tools = device_tools(ActionConfig.from_env())
    await session.start(agent=Agent(instructions=INSTRUCTIONS, tools=tools), room=ctx.room, record=record)
    # The session closes when the caller hangs up: leave the room then, so the job's slot
    # (AGENT_MAX_JOBS) is free at once, not when LiveKit closes the empty room ~20 s later
    # (until then a node that just served four short calls refused the fifth).
    session.on("close", lambda _ev: ctx.shutdown(reason="the agent session closed"))
    await ctx.wait_for_participant()
    session.say(config.greeting)


def job_count_load(server: AgentServer) -> float:
    """Load as the share of AGENT_MAX_JOBS in use (module level: the options are pickled)."""
    max_jobs = max(1, int(_env("AGENT_MAX_JOBS", str(WorkerConfig.max_jobs))))
    return min(1.0, len(server.active_jobs) / max_jobs)


def build_server(config: WorkerConfig) -> AgentServer:
    server = AgentServer(
        setup_fnc=prewarm,
        host=config.health_host,
        port=config.health_port,
        num_idle_processes=config.num_idle_processes,
        drain_timeout=config.drain_timeout,
        load_fnc=job_count_load,
        load_threshold=1.0,  # available while active jobs < AGENT_MAX_JOBS
    )
    server.rtc_session(entrypoint, agent_name=config.agent_name,
                       on_session_end=call_recording.on_session_end)
    return server


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv if argv is None else argv)
    if len(args) == 1:
        args.append("start")  # production mode: local turn detection defaults, drain on SIGTERM
    sys.argv = args
    config = WorkerConfig.from_env()
    try:
        ActionConfig.from_env()   # ACTION_URL / ACTION_SECRET: fail at start, not in every call
    except ActionError as exc:
        raise SystemExit(f"failed to read the voice-action settings: {exc}") from exc
    if config.metrics_port:
        turn_metrics.ensure_multiprocess_dir()
        turn_metrics.serve(config.metrics_host, config.metrics_port)
    cli.run_app(build_server(config))


if __name__ == "__main__":
    main()
