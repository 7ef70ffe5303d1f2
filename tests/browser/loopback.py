"""The whole voice stack on loopback for the browser test: real processes, no mocks.

livekit-server, the speech server, the agent worker and token services (agent venv), plus the
page server standing in for Caddy's /call/ routes. Every port is free-picked on 127.0.0.1;
every process is stopped by its own PID.
"""
from __future__ import annotations

import secrets
import sys
from pathlib import Path

from tests.conftest import free_port
from tests.voice_stack import AGENT_PY, Processes

API_KEY = "devkey"
AGENT_NAME = "voice-agent"


class LoopbackStack(Processes):
    """Start with start(page_root); the page is then at page_url('/call/')."""

    def __init__(self, logdir: Path) -> None:
        super().__init__(logdir, python=AGENT_PY)
        self.api_secret = secrets.token_hex(24)
        self.token_key = secrets.token_hex(24)
        self.lk_port, self.speech_port, self.page_port = free_port(), free_port(), free_port()
        self.lk_url = f"ws://127.0.0.1:{self.lk_port}"
        self.speech_url = f"http://127.0.0.1:{self.speech_port}/v1"

    def page_url(self, prefix: str = "/call/") -> str:
        return f"http://127.0.0.1:{self.page_port}{prefix}"

    def token_service(self, name: str, **env: str) -> str:
        port = free_port()
        self.module(name, "agent.token_service", {
            "LIVEKIT_API_KEY": API_KEY, "LIVEKIT_API_SECRET": self.api_secret, "LIVEKIT_WS_URL": self.lk_url,
            "LIVEKIT_URL": self.lk_url, "TOKEN_KEY": self.token_key, "AGENT_NAME": AGENT_NAME,
            "TOKEN_HOST": "127.0.0.1", "TOKEN_PORT": str(port), **env})
        self.wait_http(name, f"http://127.0.0.1:{port}/api/token/health", 30, f"token service {name}")
        return f"http://127.0.0.1:{port}"

    def start(self, page_root: Path) -> None:
        self.livekit(self.lk_port, API_KEY, self.api_secret)
        self.speech(self.speech_port)
        self.module("worker", "agent.worker", {
            "LIVEKIT_URL": self.lk_url, "LIVEKIT_API_KEY": API_KEY, "LIVEKIT_API_SECRET": self.api_secret,
            "AGENT_NAME": AGENT_NAME, "STT_BASE_URL": self.speech_url, "LLM_BASE_URL": self.speech_url,
            "TTS_BASE_URL": self.speech_url, "AGENT_HEALTH_PORT": str(free_port()),
            "AGENT_NUM_IDLE_PROCESSES": "1", "AGENT_DRAIN_TIMEOUT": "5"})
        self.wait_http("livekit", f"http://127.0.0.1:{self.lk_port}/", 30, "livekit-server")
        main = self.token_service("token")
        # Two broken set-ups for the page's error messages: a LiveKit URL nobody answers, and an
        # agent name no worker serves (so no agent ever joins).
        dead_lk = self.token_service("token-nolk", LIVEKIT_WS_URL=f"ws://127.0.0.1:{free_port()}")
        no_agent = self.token_service("token-noagent", AGENT_NAME="nobody-serves-this")
        # Public demo mode: keyless tokens for fresh rooms (the page server sends no key there).
        public = self.token_service("token-public", TOKEN_PUBLIC="1")
        self.spawn("page", [sys.executable, "-m", "tests.browser.page_server", "--root", str(page_root),
                            "--port", str(self.page_port), "--route", f"/call/={main}",
                            "--route", f"/nolk/call/={dead_lk}", "--route", f"/noagent/call/={no_agent}",
                            "--public-route", f"/demo/call/={public}"],
                   {"TOKEN_KEY": self.token_key})
        self.wait_http("page", self.page_url(), 30, "the page server")
        self.wait_http("speech", f"http://127.0.0.1:{self.speech_port}/health", 90, "the speech server")
        self.wait_registered("worker", 90)
