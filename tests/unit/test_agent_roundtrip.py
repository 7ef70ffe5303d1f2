"""A spoken round trip on loopback: livekit-server + speech server + worker + rtc client.

Real processes, no mocks (tests/voice_stack.py). Needs the livekit-server binary the local
environment builds (LIVEKIT_SERVER_BIN, else `python -m infra.local livekit-bin`); `make test` sets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest
from livekit import api

from agent.roundtrip import BargeIn, HttpSpeech, RoundTripResult, Turn, conversation, round_trip, voiced_span
from agent.speech.responder import HELP, heard_greeting
from tests.conftest import free_port
from tests.voice_stack import Processes, log_dir, running

API_KEY, API_SECRET = "devkey", "roundtrip-secret-roundtrip-secret-0123456789"


class Stack(Processes):
    def __init__(self, logdir: Path) -> None:
        super().__init__(logdir)
        self.lk_port, self.speech_port, self.health_port = free_port(), free_port(), free_port()
        self.metrics_port = free_port()
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.url = f"ws://127.0.0.1:{self.lk_port}"
        self.speech_url = f"http://127.0.0.1:{self.speech_port}/v1"

    def start(self, agent_env: dict[str, str] | None = None,
              speech_env: dict[str, str] | None = None) -> None:
        # As the deploy renders it: node_ip advertised, candidates only from that one address.
        self.livekit(self.lk_port, API_KEY, API_SECRET, udp_port=self.udp_port,
                          rtc_extra=", ips: {includes: [127.0.0.1/32]}, enable_loopback_candidate: true")
        self.speech(self.speech_port, speech_env)
        self.worker = self.module("worker", "agent.worker", {
            "LIVEKIT_URL": self.url, "LIVEKIT_API_KEY": API_KEY, "LIVEKIT_API_SECRET": API_SECRET,
            "STT_BASE_URL": self.speech_url, "LLM_BASE_URL": self.speech_url,
            "TTS_BASE_URL": self.speech_url, "AGENT_HEALTH_PORT": str(self.health_port),
            "AGENT_METRICS_PORT": str(self.metrics_port),
            "AGENT_NUM_IDLE_PROCESSES": "1", "AGENT_DRAIN_TIMEOUT": "10", **(agent_env or {}),
        })
        self.wait_http("livekit", f"http://127.0.0.1:{self.lk_port}/", 30, "livekit-server")
        self.wait_http("speech", f"http://127.0.0.1:{self.speech_port}/health", 60, "the speech server")
        self.wait_registered("worker", 60)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # AGENT_ROUNDTRIP_LOGDIR keeps the three services' logs for a post-mortem.
    with log_dir("AGENT_ROUNDTRIP_LOGDIR", "agent-roundtrip-") as logdir:
        running_stack = Stack(logdir)
        with running(running_stack, running_stack.start):
            yield running_stack


def token(room: str, identity: str = "roundtrip-client") -> str:
    return (api.AccessToken(API_KEY, API_SECRET).with_identity(identity)
            .with_grants(api.VideoGrants(room_join=True, room=room, can_publish=True,
                                         can_subscribe=True))
            .with_ttl(timedelta(minutes=5)).to_jwt())


def speak(stack: Stack, room: str, phrase: str) -> RoundTripResult:
    return asyncio.run(round_trip(stack.url, token(room), speech=HttpSpeech(stack.speech_url),
                                  phrase=phrase, timeout=90))


def test_agent_roundtrip_greets_and_turns_on_the_lights(stack: Stack) -> None:
    result = speak(stack, "roundtrip-lights", "turn on the lights")
    assert heard_greeting(result.greeting), result.greeting
    assert "turned on the lights" in result.answer.lower()
    assert result.latency_s > 0


def test_agent_roundtrip_sets_the_thermostat(stack: Stack) -> None:
    result = speak(stack, "roundtrip-thermostat", "set the thermostat to 21 degrees")
    assert "thermostat to 21" in result.answer.lower()


def _pcm(wav: bytes) -> tuple[bytes, int]:
    import io
    import wave

    with wave.open(io.BytesIO(wav)) as src:
        return src.readframes(src.getnframes()), src.getframerate()


def test_agent_roundtrip_conversation_answers_each_turn_with_its_breakdown(stack: Stack) -> None:
    speech = HttpSpeech(stack.speech_url)

    async def go() -> list[Turn]:
        async with conversation(stack.url, token("roundtrip-conversation"), timeout=60) as conv:
            await conv.greeting(60)
            turns = []
            for phrase in ("turn off the lights", "set the thermostat to 19 degrees"):
                turns.append(await conv.say(*_pcm(await speech.synthesize(phrase)), phrase, 60))
            return turns

    lights, thermostat = asyncio.run(go())
    assert "turn off the lights" in lights.heard.lower()
    assert lights.answer == "Okay, I turned off the lights."
    assert thermostat.answer == "Okay, I set the thermostat to 19 degrees."
    for turn in (lights, thermostat):
        assert turn.latency_s is not None and turn.latency_s > 0
        # The worker's own breakdown of the turn reached the client.
        assert {"end_of_turn", "transcription", "llm_ttft", "tts_ttfb", "e2e"} <= set(turn.agent_metrics)
        assert 0 < turn.agent_metrics["e2e"] < turn.latency_s + 0.5
    assert stack.log("worker").count("turn metrics: ") >= 2
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5) as resp:
        exposed = resp.read().decode()
    assert 'voicestack_agent_turn_stage_seconds_count{stage="e2e"}' in exposed


def test_agent_roundtrip_barging_in_stops_the_agent_and_is_answered(stack: Stack) -> None:
    speech = HttpSpeech(stack.speech_url)

    async def go() -> tuple[BargeIn, float]:
        trigger = _pcm(await speech.synthesize("what can you do"))
        phrase = _pcm(await speech.synthesize("turn on the lights in the kitchen"))
        full, rate = _pcm(await speech.synthesize(HELP))
        start, end = voiced_span(full, rate)
        async with conversation(stack.url, token("roundtrip-barge-in"), timeout=60) as conv:
            await conv.greeting(60)
            # Talk over the answer to "what can you do" 0.8 s after it starts.
            result = await conv.barge_in(*phrase, phrase="turn on the lights in the kitchen",
                                         after_s=0.8, trigger=trigger, timeout=60)
        return result, end - start

    result, help_s = asyncio.run(go())
    assert result.stop_s is not None, "the agent kept talking while the user spoke over it"
    # It stopped well before the end of its answer (which lasts help_s) ...
    assert result.played_s < help_s - 1.0, (result.played_s, help_s)
    assert result.interrupted_text != HELP
    # ... and answered what the user said over it.
    assert "kitchen" in result.turn.heard.lower()
    assert result.turn.answer == "Okay, I turned on the lights in the kitchen."
    print(f"\nbarge-in: agent audio stopped {result.stop_s:.2f} s after the user's voice started")
def test_agent_roundtrip_reports_the_ice_candidates_the_client_saw(stack: Stack) -> None:
    """The client's WebRTC stats: what the verify suite checks LiveKit's advertised addresses with."""
    result = asyncio.run(round_trip(stack.url, token("roundtrip-ice"), speech=HttpSpeech(stack.speech_url),
                                    timeout=90, collect_ice=True))
    assert result.ice, result.ice
    for pc, seen in result.ice.items():
        assert seen["remote"] and {c["address"] for c in seen["remote"]} == {"127.0.0.1"}, (pc, seen)  # node_ip
        selected = seen["selected"]
        assert selected["remote"] == {"address": "127.0.0.1", "port": stack.udp_port, "protocol": "udp",
                                      "type": "host"}, selected
        assert selected["local"]["type"] == "host"


def _nice_of_threads(pid: int) -> set[int]:
    """The niceness of every thread of `pid` (/proc/<pid>/task/*/stat, field 19)."""
    out = set()
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(FileNotFoundError):
            out.add(int(stat.read_text().rsplit(")", 1)[1].split()[16]))
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may take a niced process back to 0")
def test_agent_roundtrip_cli_holds_its_slot_at_normal_priority_and_exits_cleanly(stack: Stack,
                                                                                 tmp_path: Path) -> None:
    """The client as the verify suite starts it (infra/probes/roundtrip.py): niced, with a call
    slot that says so. While it is in the call every thread runs at nice 0 and the slot is held;
    when its stdin closes it leaves, prints its result and exits 0 (no native teardown abort)."""
    slots = tmp_path / "slots"
    slots.mkdir()
    args = {"url": stack.url, "tokens": [token("cli-join")], "timeout": 60, "join_only": True,
            "slot": {"dir": str(slots), "slots": 1, "worker": "w", "niced": 10}}
    proc = subprocess.Popen(["nice", "-n", "10", sys.executable, "-m", "agent.roundtrip_cli", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(args) + "\n")
        proc.stdin.flush()
        joined = json.loads(proc.stdout.readline() or "{}")
        assert joined.get("joined", 0) > 0, proc.stderr.read() if proc.poll() is not None else joined
        assert _nice_of_threads(proc.pid) == {0}
        fd = os.open(slots / ".verify-call-0.lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # the one slot is the client's while it is in the call
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        out, err = proc.communicate(timeout=60)  # closes its stdin: time to leave
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    (result,) = json.loads(out.strip().splitlines()[-1])["results"]
    assert result["ok"] and round(result["agent_join_s"], 3) == joined["joined"]


def test_agent_roundtrip_worker_drains_and_exits_on_sigterm(stack: Stack) -> None:
    stack.worker.send_signal(signal.SIGTERM)
    assert stack.worker.wait(timeout=30) == 0
    assert "draining worker" in stack.log("worker")


def test_agent_roundtrip_turn_tls_options_make_ice_relay_only_through_the_tunnel() -> None:
    """The round-trip CLI and the session client (agent.callclient) share ice_policy: turn_tls
    means relay-only ICE through a live loopback tunnel; nothing means the SDK's defaults."""
    from livekit import rtc

    from agent.roundtrip_cli import ice_policy

    with ice_policy({}) as (config, tunnel):
        assert (config, tunnel) == (None, None)
    turn = {"host": "127.0.0.1", "port": 9, "server_name": "turn.example.test", "username": "u", "password": "p"}
    with ice_policy({"turn_tls": turn}) as (config, tunnel):
        assert tunnel is not None and config is not None
        assert config.ice_transport_type == rtc.IceTransportType.TRANSPORT_RELAY
        (server,) = config.ice_servers
        (url,) = server.urls
        port = int(url.removeprefix("turn:127.0.0.1:").removesuffix("?transport=tcp"))
        assert (server.username, server.password) == ("u", "p")
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the tunnel listens where ICE is told to go
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5)  # and is gone afterwards
