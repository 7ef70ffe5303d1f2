"""Test support shared by every suite and both venvs: standard library only.

free_port, wait_until (a deadline poll, never a fixed sleep) and a real livekit-server on
loopback (`livekit_server` fixture), the binary from LIVEKIT_SERVER_BIN or built by
`python -m infra.local livekit-bin`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
READY_DEADLINE = 30.0
#: The loopback server's key pair (tests mint tokens with it).
LOOPBACK_KEY = "devkey"
LOOPBACK_SECRET = "loopback-secret-0123456789abcdef0123456789"


def require(*tools: str, root: bool = False) -> None:
    """Fail, never skip, when a host tool `make deps` installs is missing (or root is needed): a
    skipped check on a machine that lacks the tool would pass CI without having run."""
    missing = [t for t in tools if shutil.which(t) is None]
    if root and os.geteuid() != 0:
        pytest.fail("needs root (network namespaces, nftables)")
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run 'make deps'")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], object], timeout: float, what: str, proc: subprocess.Popen | None = None,
               interval: float = 0.1) -> None:
    """Poll `check` until truthy; fail at the deadline, or at once when `proc` exits."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def http_ok(url: str, body: bytes | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200 and (body is None or resp.read().strip() == body)
    except OSError:
        return False


def livekit_binary() -> str:
    path = os.environ.get("LIVEKIT_SERVER_BIN", "")
    if not path:
        proc = subprocess.run([sys.executable, "-m", "infra.local", "livekit-bin"], cwd=ROOT,
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.fail(f"failed to get livekit-server: python -m infra.local livekit-bin: {proc.stderr.strip()}")
        path = proc.stdout.strip().splitlines()[-1]
    if not os.access(path, os.X_OK):
        # Fail, never skip: `make test` provides it.
        pytest.fail(f"livekit-server binary {path!r} is missing or not executable; "
                    "set LIVEKIT_SERVER_BIN or run 'python -m infra.local livekit-bin'")
    return path


@dataclass(frozen=True)
class LiveKit:
    url: str          # http://127.0.0.1:<port>
    api_key: str
    api_secret: str

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")


@pytest.fixture(scope="module")
def livekit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKit]:
    """A real livekit-server on loopback: no STUN lookup, one TCP and one UDP media port."""
    tmp = tmp_path_factory.mktemp("livekit")
    server = LiveKit(f"http://127.0.0.1:{free_port()}", LOOPBACK_KEY, LOOPBACK_SECRET)
    port = int(server.url.rsplit(":", 1)[1])
    config = tmp / "livekit.yaml"
    config.write_text(f"""port: {port}
bind_addresses: [127.0.0.1]
rtc:
  tcp_port: {free_port()}
  udp_port: {free_port(socket.SOCK_DGRAM)}
  use_external_ip: false
  node_ip: 127.0.0.1
keys:
  {server.api_key}: {server.api_secret}
logging:
  level: warn
""")
    log = open(tmp / "livekit.log", "wb")
    proc = subprocess.Popen([livekit_binary(), "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: http_ok(server.url + "/", b"OK"), READY_DEADLINE, f"livekit-server on {server.url}", proc)
    except (TimeoutError, RuntimeError) as exc:
        proc.kill()
        log.close()
        pytest.fail(f"{exc}; log:\n{(tmp / 'livekit.log').read_text()[-2000:]}")
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.asynccontextmanager
async def participant(url: str, token: str) -> AsyncIterator[dict[str, Any]]:
    """Someone in the room while the block runs (tests/rtc_participant.py, in its own process: the
    rtc runtime stays out of the pytest process). Yields its joined/identity/error line."""
    repo = Path(__file__).resolve().parents[1]
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tests.rtc_participant", cwd=repo,
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdin and proc.stdout
    try:
        proc.stdin.write(json.dumps({"url": url, "token": token}).encode() + b"\n")
        await proc.stdin.drain()
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        yield json.loads(line or b'{"joined": false, "error": "the participant process exited"}')
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
