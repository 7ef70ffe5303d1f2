"""The durable outbox against real HTTP receivers: down, failing, killed mid-delivery, full."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from aiohttp import ClientSession, web

from agent.outbox import (
    SIGNATURE_HEADER,
    ForwardConfig,
    Outbox,
    OutboxError,
    OutboxLimits,
    Sender,
    sign,
    verify_signature,
)

SECRET = "s" * 40
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Receiver:
    """A real HTTP server standing in for n8n: records deliveries, answers `status`."""

    def __init__(self, port: int, status: int = 200) -> None:
        self.port, self.status = port, status
        self.got: list[tuple[dict[str, Any], dict[str, str], bytes]] = []
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append((json.loads(body), dict(request.headers), body))
        return web.json_response({}, status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


def config(tmp_path: Path, port: int, **kw: Any) -> ForwardConfig:
    return ForwardConfig(url=f"http://127.0.0.1:{port}/hook", secret=SECRET, outbox_dir=tmp_path / "outbox",
                         min_backoff_s=0.05, max_backoff_s=0.3, timeout_s=2, **kw)


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def run_with_sender(cfg: ForwardConfig, body: Callable[[Sender], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        sender = Sender(cfg.outbox(), cfg, poll_s=0.05)
        async with ClientSession() as session:
            task = asyncio.create_task(sender.run(session))
            try:
                return await body(sender)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    return asyncio.run(main())


def test_agent_outbox_delivers_in_order_after_the_receiver_was_down(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    cfg = config(tmp_path, port)
    outbox = cfg.outbox()
    for i in range(3):
        outbox.enqueue({"event": "room_started", "id": f"EV_{i}", "room": "demo"})
    receiver = Receiver(port)

    async def body(sender: Sender) -> None:
        # Nobody listens yet: the sender must fail and keep the events.
        await until(lambda: sum("failed to deliver" in r.message for r in caplog.records) >= 2, 10,
                    "two failed delivery attempts")
        assert len(outbox.pending()) == 3
        await receiver.start()
        try:
            await until(lambda: len(receiver.got) == 3, 10, "the three events")
            await until(lambda: not outbox.pending(), 5, "the outbox to empty")
        finally:
            await receiver.stop()

    with caplog.at_level(logging.WARNING, logger="agent.outbox"):
        run_with_sender(cfg, body)
    assert [ev["id"] for ev, _, _ in receiver.got] == ["EV_0", "EV_1", "EV_2"]
    for ev, headers, raw in receiver.got:
        assert verify_signature(SECRET, raw, headers[SIGNATURE_HEADER])
        assert headers["X-Voicestack-Event-Id"] == ev["id"]
        assert headers["X-Voicestack-Event"] == "room_started"


def test_agent_outbox_retries_a_failing_receiver_until_it_acknowledges(tmp_path: Path) -> None:
    port = free_port()
    cfg = config(tmp_path, port)
    cfg.outbox().enqueue({"event": "recording_finished", "id": "RF-1"})
    receiver = Receiver(port, status=503)

    async def body(_sender: Sender) -> None:
        await receiver.start()
        try:
            await until(lambda: len(receiver.got) >= 3, 10, "three attempts")
            assert len(cfg.outbox().pending()) == 1  # 503 is no acknowledgement
            receiver.status = 204
            await until(lambda: not cfg.outbox().pending(), 10, "the acknowledged delivery")
        finally:
            await receiver.stop()

    run_with_sender(cfg, body)
    assert {ev["id"] for ev, _, _ in receiver.got} == {"RF-1"}


SENDER_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from aiohttp import ClientSession
    from agent.outbox import ForwardConfig, Sender
    cfg = ForwardConfig(url=sys.argv[1], secret="s" * 40, outbox_dir=Path(sys.argv[2]), timeout_s=60)
    async def main():
        async with ClientSession() as session:
            await Sender(cfg.outbox(), cfg, poll_s=0.05).run(session)
    asyncio.run(main())
""")


def test_agent_outbox_keeps_an_event_when_the_sender_is_killed_mid_delivery(tmp_path: Path) -> None:
    port = free_port()
    cfg = config(tmp_path, port)
    cfg.outbox().enqueue({"event": "recording_finished", "id": "RF-kill"})
    seen = asyncio.Event()

    async def scenario() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        hang = asyncio.Event()

        async def handle(request: web.Request) -> web.Response:
            got.append(await request.json())
            seen.set()
            await hang.wait()  # never answers: the sender is killed while waiting
            return web.json_response({})

        app = web.Application()
        app.router.add_post("/hook", handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        proc = subprocess.Popen([sys.executable, "-c", SENDER_SCRIPT, cfg.url, str(cfg.outbox_dir)],
                                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            await asyncio.wait_for(seen.wait(), 30)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
            hang.set()
            await runner.cleanup()
        return got

    got = asyncio.run(scenario())
    assert [e["id"] for e in got] == ["RF-kill"]
    assert len(cfg.outbox().pending()) == 1  # unacknowledged: still queued

    receiver = Receiver(port)

    async def body(_sender: Sender) -> None:
        await receiver.start()
        try:
            await until(lambda: not cfg.outbox().pending(), 10, "redelivery by a new sender")
        finally:
            await receiver.stop()

    run_with_sender(cfg, body)
    assert [ev["id"] for ev, _, _ in receiver.got] == ["RF-kill"]


def test_agent_outbox_is_bounded_and_drops_the_oldest_with_a_log_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outbox = Outbox(tmp_path / "outbox", OutboxLimits(max_events=3, max_bytes=10_000))
    with caplog.at_level(logging.WARNING, logger="agent.outbox"):
        for i in range(5):
            outbox.enqueue({"event": "participant_joined", "id": f"EV_{i}"})
    kept = [json.loads(p.read_bytes())["id"] for p in outbox.pending()]
    assert kept == ["EV_2", "EV_3", "EV_4"]
    dropped = [r.message for r in caplog.records if "dropped the oldest event" in r.message]
    assert len(dropped) == 2 and "EV_0" in dropped[0] and "EV_1" in dropped[1]


def test_agent_outbox_byte_bound_refuses_an_event_larger_than_the_outbox(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox", OutboxLimits(max_events=10, max_bytes=200))
    with pytest.raises(OutboxError, match="OUTBOX_MAX_BYTES"):
        outbox.enqueue({"event": "recording_finished", "id": "RF-big", "transcript": "x" * 500})
    assert outbox.pending() == []


def test_agent_outbox_signature_rejects_tampering_wrong_key_and_staleness() -> None:
    body = b'{"event":"room_started","id":"EV_1"}'
    header = sign(SECRET, body)
    assert verify_signature(SECRET, body, header)
    assert not verify_signature(SECRET, body.replace(b"EV_1", b"EV_2"), header)
    assert not verify_signature("t" * 40, body, header)
    assert not verify_signature(SECRET, body, sign(SECRET, body, int(time.time()) - 3600))
    assert not verify_signature(SECRET, body, None)


@pytest.mark.parametrize("env,fragment", [
    ({"FORWARD_URL": "http://127.0.0.1:1/hook"}, "openssl rand -hex 32"),
    ({"FORWARD_URL": "http://127.0.0.1:1/hook", "FORWARD_SECRET": "short"}, "at least 32"),
    ({"FORWARD_URL": "ftp://x/hook", "FORWARD_SECRET": SECRET}, "http(s)://"),
    ({"FORWARD_URL": "http://127.0.0.1:1/hook", "FORWARD_SECRET": SECRET, "OUTBOX_MAX_EVENTS": "many"},
     "must be numbers"),
], ids=["no-secret", "short-secret", "bad-scheme", "bad-limit"])
def test_agent_outbox_config_errors_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(OutboxError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        ForwardConfig.from_env(env)


def test_agent_outbox_is_off_without_a_forward_url() -> None:
    assert ForwardConfig.from_env({"FORWARD_SECRET": SECRET}) is None
