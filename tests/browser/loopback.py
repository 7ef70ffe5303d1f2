"""The whole voice stack on loopback for the browser test: real processes, no mocks.

livekit-server, the speech server, the agent worker and token services (agent venv), plus the
page server standing in for Caddy's /call/ routes. Every port is free-picked on 127.0.0.1;
every process is stopped by its own PID.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
AGENT_PY = str(REPO / ".venv-agent" / "bin" / "python")
API_KEY = "devkey"
AGENT_NAME = "voice-agent"


def livekit_server_bin() -> str:
    """LIVEKIT_SERVER_BIN, else the pinned build the local environment caches (built on first use)."""
    if os.environ.get("LIVEKIT_SERVER_BIN"):
        return os.environ["LIVEKIT_SERVER_BIN"]
    from infra.config import DEFAULTS
    from infra.local import artifacts
    return str(artifacts.livekit_binary(DEFAULTS["livekitVersion"]))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


class LoopbackStack:
    """Start with start(page_root); the page is then at page_url('/call/')."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen] = {}
        self.api_secret = secrets.token_hex(24)
        self.token_key = secrets.token_hex(24)
        self.lk_port, self.speech_port, self.page_port = free_port(), free_port(), free_port()
        self.lk_url = f"ws://127.0.0.1:{self.lk_port}"
        self.speech_url = f"http://127.0.0.1:{self.speech_port}/v1"

    def page_url(self, prefix: str = "/call/") -> str:
        return f"http://127.0.0.1:{self.page_port}{prefix}"

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def token_service(self, name: str, **env: str) -> str:
        port = free_port()
        proc = self.spawn(name, [AGENT_PY, "-m", "agent.token_service"], {
            "LIVEKIT_API_KEY": API_KEY, "LIVEKIT_API_SECRET": self.api_secret, "LIVEKIT_WS_URL": self.lk_url,
            "LIVEKIT_URL": self.lk_url, "TOKEN_KEY": self.token_key, "AGENT_NAME": AGENT_NAME,
            "TOKEN_HOST": "127.0.0.1", "TOKEN_PORT": str(port), **env})
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/api/token/health"), 30, f"token service {name}", proc)
        return f"http://127.0.0.1:{port}"

    def start(self, page_root: Path) -> None:
        config = (f"port: {self.lk_port}\nbind_addresses: [127.0.0.1]\n"
                  f"rtc: {{tcp_port: {free_port()}, udp_port: {free_port(socket.SOCK_DGRAM)}, "
                  "node_ip: 127.0.0.1, use_external_ip: false}\n"
                  f"keys: {{{API_KEY}: {self.api_secret}}}\nlogging: {{level: info}}\n")
        # The config body carries the API secret: pass it through the environment, not argv.
        lk = self.spawn("livekit", [livekit_server_bin()], {"LIVEKIT_CONFIG": config})
        speech = self.spawn("speech", [AGENT_PY, "-m", "agent.speech_server"], {"SPEECH_PORT": str(self.speech_port)})
        worker = self.spawn("worker", [AGENT_PY, "-m", "agent.worker"], {
            "LIVEKIT_URL": self.lk_url, "LIVEKIT_API_KEY": API_KEY, "LIVEKIT_API_SECRET": self.api_secret,
            "AGENT_NAME": AGENT_NAME, "STT_BASE_URL": self.speech_url, "LLM_BASE_URL": self.speech_url,
            "TTS_BASE_URL": self.speech_url, "AGENT_HEALTH_PORT": str(free_port()),
            "AGENT_NUM_IDLE_PROCESSES": "1", "AGENT_DRAIN_TIMEOUT": "5"})
        wait_until(lambda: http_ok(f"http://127.0.0.1:{self.lk_port}/"), 30, "livekit-server", lk)
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
        wait_until(lambda: http_ok(self.page_url()), 30, "the page server", self.procs["page"])
        wait_until(lambda: http_ok(f"http://127.0.0.1:{self.speech_port}/health"), 90, "the speech server", speech)
        wait_until(lambda: b"registered worker" in (self.logdir / "worker.log").read_bytes(), 90,
                   "the worker to register with livekit-server", worker)

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
