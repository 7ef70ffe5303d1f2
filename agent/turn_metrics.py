"""Where a conversation turn's time goes, from livekit-agents' own per-turn metrics.

livekit-agents 1.8.9 attaches a MetricsReport to every ChatMessage it adds to the chat:
the user message carries `end_of_turn_delay` and `transcription_delay` (both counted from
the VAD's estimate of when the user stopped speaking), the agent's message `llm_node_ttft`,
`tts_node_ttfb`, `e2e_latency` (user stopped -> first agent audio frame pushed to the room)
and `playback_latency`. For each answered turn this module

- logs one line: "turn metrics: e2e=0.61s end_of_turn=0.45s transcription=0.18s ...";
- observes Prometheus histograms, served by the worker's main process on AGENT_METRICS_HOST:
  AGENT_METRICS_PORT (/metrics). Conversations run in job processes, so the metrics use
  prometheus-client's multiprocess mode (one mmap file per process in PROMETHEUS_MULTIPROC_DIR);
- optionally publishes the same record to the room on the TOPIC text stream, so a client
  (bench/bench_voice.py) can line the agent's breakdown up with what it heard.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Mapping

log = logging.getLogger("agent.turn_metrics")

TOPIC = "voicestack.turn-metrics"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds; dense where a good turn lives (0.05-1 s), coarse above.
BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.25,
           1.5, 2.0, 3.0, 5.0)
STAGES = ("end_of_turn", "transcription", "llm_ttft", "tts_ttfb", "e2e", "playback")


@dataclass(frozen=True)
class TurnBreakdown:
    """One answered user turn, seconds (None: livekit-agents did not report the stage)."""

    end_of_turn: float | None      # user stopped -> turn committed
    transcription: float | None    # user stopped -> final transcript
    llm_ttft: float | None         # LLM request -> first token
    tts_ttfb: float | None         # first text to TTS -> first audio chunk
    e2e: float | None              # user stopped -> first agent audio frame pushed
    playback: float | None         # first frame forwarded -> playout started
    interrupted: bool

    def stages(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k in STAGES and v is not None}

    def log_line(self) -> str:
        parts = [f"{k}={v:.3f}s" for k, v in self.stages().items()]
        return "turn metrics: " + " ".join(parts + [f"interrupted={'yes' if self.interrupted else 'no'}"])


def breakdown(user: Mapping[str, Any] | None, agent: Mapping[str, Any],
              interrupted: bool) -> TurnBreakdown:
    """Combine the user message's and the agent message's MetricsReport of one turn."""
    user = user or {}

    def num(report: Mapping[str, Any], key: str) -> float | None:
        value = report.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    return TurnBreakdown(
        end_of_turn=num(user, "end_of_turn_delay"), transcription=num(user, "transcription_delay"),
        llm_ttft=num(agent, "llm_node_ttft"), tts_ttfb=num(agent, "tts_node_ttfb"),
        e2e=num(agent, "e2e_latency"), playback=num(agent, "playback_latency"),
        interrupted=interrupted,
    )


# --- Prometheus ---------------------------------------------------------------------------

def ensure_multiprocess_dir() -> str:
    """Point prometheus-client at a per-start directory, before anything imports it: it picks
    in-memory or file-backed values once, at import. Returns the directory."""
    path = os.environ.get(MULTIPROC_ENV, "").strip()
    if not path:
        # Private /tmp under systemd (PrivateTmp=yes); removed at exit by the process that
        # made it (job processes inherit the variable, not the directory's ownership).
        path = tempfile.mkdtemp(prefix="voicestack-agent-metrics-")
        os.environ[MULTIPROC_ENV] = path
        owner = os.getpid()
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(path, ignore_errors=True))
    os.makedirs(path, exist_ok=True)
    return path


class _Histograms:
    """Created on first use, in the job process, so they are file-backed there."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.stage = Histogram(
            "voicestack_agent_turn_stage_seconds",
            "Per-turn latency by stage (livekit-agents metrics): end_of_turn, transcription "
            "(from the user's end of speech), llm_ttft, tts_ttfb, e2e (end of speech to first "
            "agent audio), playback",
            ["stage"], buckets=BUCKETS)
        self.turns = Counter("voicestack_agent_turns", "Answered user turns", ["interrupted"])


_histograms: _Histograms | None = None


def observe(turn: TurnBreakdown) -> None:
    global _histograms
    if _histograms is None:
        _histograms = _Histograms()
    for stage, value in turn.stages().items():
        _histograms.stage.labels(stage=stage).observe(value)
    _histograms.turns.labels(interrupted=str(turn.interrupted).lower()).inc()


def serve(host: str, port: int) -> None:
    """Serve /metrics of every job process (multiprocess collector) from a daemon thread."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise SystemExit(
            f"failed to serve agent metrics on {host}:{port}: {exc} — free the port or set "
            "AGENT_METRICS_PORT (0 disables the endpoint)") from exc
    log.info("agent metrics on http://%s:%d/metrics", host, port)


# --- the session hook ---------------------------------------------------------------------

class TurnRecorder:
    """Pairs each agent message with the user message it answers; one record per turn."""

    def __init__(self, room: Any = None) -> None:
        self.room = room  # publish records to it when set (TOPIC)
        self._user: Mapping[str, Any] | None = None
        self._tasks: set[Any] = set()

    def attach(self, session: Any) -> None:
        session.on("conversation_item_added", self.on_item)

    def on_item(self, event: Any) -> None:
        item = getattr(event, "item", None)
        role = getattr(item, "role", None)
        if role == "user":
            self._user = dict(item.metrics or {})
            return
        if role != "assistant" or self._user is None:
            return  # the greeting, or a second message for the same turn
        turn = breakdown(self._user, dict(item.metrics or {}), bool(item.interrupted))
        self._user = None
        self.record(turn)

    def record(self, turn: TurnBreakdown) -> None:
        log.info(turn.log_line(), extra={"turn": turn.stages()})
        try:
            observe(turn)
        except Exception as exc:  # noqa: BLE001 - metrics must never break a conversation
            log.warning("failed to record turn metrics: %s", exc)
        if self.room is not None:
            self._publish(turn)

    def _publish(self, turn: TurnBreakdown) -> None:
        import asyncio

        async def send() -> None:
            try:
                await self.room.local_participant.send_text(
                    json.dumps({**turn.stages(), "interrupted": turn.interrupted}), topic=TOPIC)
            except Exception as exc:  # noqa: BLE001 - a closed room just loses the record
                log.warning("failed to publish turn metrics to the room: %s", exc)

        task = asyncio.ensure_future(send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
