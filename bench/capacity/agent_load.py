"""Concurrent conversations with the deployed agent: voice-to-voice latency, CPU and memory per level.

    level = run_level(outputs, node, concurrency=2, seconds=60, client_cpus="1")

The callers run in bench.capacity.conversation_client (agent venv, in the client namespace);
the node is read before, during (memory peaks, every ~2 s) and after. CPU is split into the
agent worker (VAD, WebRTC, the pipeline; what a node with external STT/LLM/TTS still pays)
and the offline speech server (Whisper + piper + the responder).
"""
from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.capacity import node as nodemod
from bench.capacity.node import Node
from infra.outputs import Outputs

ROOT = Path(__file__).resolve().parents[2]
AGENT_PY = ROOT / ".venv-agent" / "bin" / "python"
MIB = 1024 * 1024


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


@dataclass
class Level:
    concurrency: int
    trips: int
    ok: int
    understood: int
    p50_s: float
    p95_s: float
    max_s: float
    agent_join_p50_s: float
    agent_cores: float          # voicestack-agent (worker + job processes)
    speech_cores: float         # voicestack-speech (offline STT/LLM/TTS)
    livekit_cores: float
    agent_mem_idle_mib: float
    agent_mem_peak_mib: float
    speech_mem_peak_mib: float
    errors: list[str]
    seconds: float

    def row(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class _MemoryPeaks(threading.Thread):
    """Samples the agent's and the speech server's memory until stopped; keeps the peaks."""

    def __init__(self, node: Node) -> None:
        super().__init__(daemon=True)
        self.node, self.agent, self.speech = node, 0, 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(2.0):
            try:
                snap = self.node.snapshot()
            except Exception:  # noqa: BLE001 - a missed sample only lowers the peak's resolution
                continue
            self.agent = max(self.agent, snap["units"]["voicestack-agent"]["mem_bytes"])
            self.speech = max(self.speech, snap["units"]["voicestack-speech"]["mem_bytes"])


def run_level(outputs: Outputs, node: Node, concurrency: int, seconds: float, client_cpus: str | None,
              phrase: str = "turn on the lights", timeout: float = 60) -> Level:
    args = {"url": outputs.livekit_url, "api_key": outputs.api_key, "api_secret": outputs.api_secret,
            "ca_bundle": outputs.ca_bundle, "concurrency": concurrency, "seconds": seconds,
            "phrase": phrase, "prefix": f"lgc{secrets.token_hex(3)}", "timeout": timeout}
    argv = [str(AGENT_PY), "-m", "bench.capacity.conversation_client"]
    if client_cpus:
        argv = ["taskset", "-c", client_cpus, *argv]
    if outputs.client_netns:
        argv = ["ip", "netns", "exec", outputs.client_netns, *argv]
    idle = node.snapshot()
    peaks = _MemoryPeaks(node)
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(args))
    proc.stdin.close()
    start = end = None
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds + timeout + 300
    try:
        for line in proc.stdout:
            if time.monotonic() > deadline:
                break
            ev = json.loads(line) if line.startswith("{") else {}
            if ev.get("event") == "window_start":
                start = node.snapshot()
                peaks.start()
            elif ev.get("event") == "window_end":
                end = node.snapshot()
                peaks.stopped.set()
            elif ev.get("event") == "results":
                results = ev["results"]
        proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        peaks.stopped.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if start is None or end is None or proc.returncode != 0:
        raise RuntimeError(f"the conversation client failed (exit {proc.returncode}): "
                           f"{proc.stderr.read()[-2000:] if proc.stderr else ''}")
    good = [r for r in results if r["ok"]]
    lat = [r["latency_s"] for r in good]
    return Level(
        concurrency=concurrency, trips=len(results), ok=len(good),
        understood=sum(1 for r in good if r.get("understood")),
        p50_s=pct(lat, 0.5), p95_s=pct(lat, 0.95), max_s=max(lat) if lat else float("nan"),
        agent_join_p50_s=pct([r["agent_join_s"] for r in good], 0.5),
        agent_cores=nodemod.cores(start, end, "voicestack-agent"),
        speech_cores=nodemod.cores(start, end, "voicestack-speech"),
        livekit_cores=nodemod.cores(start, end, "livekit"),
        agent_mem_idle_mib=idle["units"]["voicestack-agent"]["mem_bytes"] / MIB,
        agent_mem_peak_mib=max(peaks.agent, end["units"]["voicestack-agent"]["mem_bytes"]) / MIB,
        speech_mem_peak_mib=max(peaks.speech, end["units"]["voicestack-speech"]["mem_bytes"]) / MIB,
        errors=sorted({r["error"][:160] for r in results if not r["ok"]}),
        seconds=end["t"] - start["t"],
    )
