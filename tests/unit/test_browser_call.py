"""The voice page in real Chromium: a person connects, hears the greeting, speaks, hears the answer.

By default against a loopback stack this test starts itself (livekit-server, speech server,
agent worker, token services, a page server standing in for Caddy). Point it at a deployed
environment instead with
    VOICESTACK_CALL_URL=https://<livekit name>/call/  VOICESTACK_CALL_CA=<ca_bundle>
    VOICESTACK_CALL_NETNS=<client_netns>  VOICESTACK_CALL_USER=... VOICESTACK_CALL_PASSWORD=...
(the error-message and recording cases need the loopback stack and are skipped then).
Figures (page load -> greeting, bundle size) are printed; the test does not pass or fail on time.

The loopback cases carry the `loopback_stack` marker, which pytest.ini deselects by default (they
take ~3 min; `make test` drives the page against a deployed environment in tests/e2e/test_edge.py).
Run them with `pytest tests/unit/test_browser_call.py -m loopback_stack` or `make test-browser`.
Needs Debian's chromium (scripts/install_host_deps.sh) and npm (web/build.py builds the page).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import Page

from tests.browser.loopback import API_KEY, LoopbackStack
from tests.browser.voice_page import (
    CHROMIUM,
    PHRASE,
    Target,
    check_call,
    chromium,
    converse,
    diagnostics,
    hang_up,
    open_page,
    padded_wav,
    wait_for_segment,
)
from tests.conftest import free_port
from tests.voice_stack import AGENT_PY, Processes, log_dir, running

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = Path(os.environ.get("VOICESTACK_CALL_SCREENSHOT") or REPO / "build" / "browser-call.png")


def _speech_request(base: str, path: str, body: bytes, content_type: str) -> bytes:
    req = urllib.request.Request(f"{base}{path}", data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return resp.read()


def synthesize(speech_url: str, text: str) -> bytes:
    return _speech_request(speech_url, "/audio/speech", json.dumps({"input": text, "response_format": "wav"}).encode(),
                           "application/json")


def transcribe(speech_url: str, audio: bytes, filename: str = "agent.webm") -> str:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + audio + \
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"response_format\"\r\n\r\ntext\r\n" \
        f"--{boundary}--\r\n".encode()
    return _speech_request(speech_url, "/audio/transcriptions", body,
                           f"multipart/form-data; boundary={boundary}").decode().strip()


@pytest.fixture(scope="module")
def page_root() -> Path:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: run scripts/install_host_deps.sh (Debian chromium)")
    proc = subprocess.run([sys.executable, str(REPO / "web" / "build.py")], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"web/build.py failed:\n{proc.stderr}"
    root = Path(proc.stdout.strip().splitlines()[-1])
    facts = json.loads((root / "BUILD.json").read_text())["files"]
    print(f"\nbundle: app.js {facts['app.js']['bytes']} B ({facts['app.js']['gzip_bytes']} B gzip), "
          f"app.css {facts['app.css']['bytes']} B ({facts['app.css']['gzip_bytes']} B gzip), "
          f"index.html {facts['index.html']['bytes']} B")
    return root


@pytest.fixture(scope="module")
def stack(page_root: Path) -> Iterator[LoopbackStack | None]:
    if Target.from_env():
        yield None
        return
    with log_dir("VOICESTACK_CALL_LOGDIR", "browser-call-") as logdir:
        stack = LoopbackStack(logdir)
        with running(stack, lambda: stack.start(page_root)):
            yield stack


@pytest.fixture(scope="module")
def speech_url(stack: LoopbackStack | None) -> Iterator[str]:
    """The speech server for the fake microphone's phrase and for transcribing what the page played."""
    if stack is not None:
        yield stack.speech_url
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="browser-call-speech-") as tmp:
        procs = Processes(Path(tmp), python=AGENT_PY)
        procs.speech(port)
        with running(procs, lambda: procs.wait_http("speech", f"http://127.0.0.1:{port}/health", 90,
                                                    "the speech server")):
            yield f"http://127.0.0.1:{port}/v1"


def target_for(stack: LoopbackStack | None, prefix: str = "/call/") -> Target:
    target = Target.from_env()
    if target is not None:
        return target
    assert stack is not None
    return Target(url=stack.page_url(prefix))


async def _set_room_metadata(stack: LoopbackStack, room: str, metadata: str) -> None:
    from livekit import api
    lk = api.LiveKitAPI(stack.lk_url.replace("ws://", "http://"), API_KEY, stack.api_secret)
    try:
        await lk.room.update_room_metadata(api.UpdateRoomMetadataRequest(room=room, metadata=metadata))
    finally:
        await lk.aclose()


@pytest.mark.loopback_stack
def test_browser_call_greets_hears_the_phrase_and_answers(stack: LoopbackStack | None, speech_url: str,
                                                          tmp_path: Path) -> None:
    wav = tmp_path / "phrase.wav"
    # 9 s lead: the agent joins and finishes its greeting before the user speaks.
    wav.write_bytes(padded_wav(synthesize(speech_url, PHRASE), lead_s=9.0, tail_s=3.0))
    target = target_for(stack)
    with chromium(target, audio_file=wav) as browser:
        page, console = open_page(browser, target)
        try:
            call = converse(page, timeout_s=60)
            if stack is not None:
                # The stack marks the call as recorded: the page must say so.
                # (in a thread: Playwright's sync API already runs an event loop in this one)
                room = diagnostics(page)["room"]
                with ThreadPoolExecutor(1) as pool:
                    pool.submit(asyncio.run, _set_room_metadata(
                        stack, room, json.dumps({"voicestack.recording": "true"}))).result(timeout=30)
                page.wait_for_selector("#recording", state="visible", timeout=15_000)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            diag = diagnostics(page)
            hang_up(page)
        except Exception:
            sys.stderr.write("--- browser console\n" + "\n".join(console[-60:]) + "\n")
            raise
    check_call(call, transcribe(speech_url, call.recorded), diag, SCREENSHOT)
    if stack is not None:
        assert diag["recordingShown"]


@pytest.fixture
def loopback(stack: LoopbackStack | None) -> LoopbackStack:
    if stack is None:
        pytest.skip("error-message cases need the loopback stack (VOICESTACK_CALL_URL is set)")
    return stack


@contextlib.contextmanager
def connected(loopback: LoopbackStack, prefix: str = "/call/", query: str = "",
              allow_microphone: bool = True) -> Iterator[Page]:
    """The page under `prefix` of the loopback stack (no microphone file), Connect clicked."""
    target = target_for(loopback, prefix)
    with chromium(target, audio_file=None, allow_microphone=allow_microphone) as browser:
        page, _ = open_page(browser, target, url=target.url + query)
        page.click("#connect")
        yield page


def wait_for_message(page: Page, text: str, timeout_s: float) -> str:
    """The page's message once it contains `text`."""
    page.wait_for_function("(text) => document.querySelector('#message').textContent.includes(text)", arg=text,
                           timeout=timeout_s * 1000)
    return diagnostics(page)["message"]


@pytest.mark.loopback_stack
def test_browser_call_explains_a_denied_microphone(loopback: LoopbackStack) -> None:
    with connected(loopback, allow_microphone=False) as page:
        assert "Allow the microphone" in wait_for_message(page, "denied", 30)
        assert page.get_attribute("#mic", "aria-pressed") == "false"
        assert diagnostics(page)["room"]   # still in the call: the user can listen


@pytest.mark.loopback_stack
def test_browser_call_explains_a_failed_connection(loopback: LoopbackStack) -> None:
    with connected(loopback, "/nolk/call/") as page:
        assert "server may be down" in wait_for_message(page, "Could not connect", 60)
        assert page.text_content("#connect") == "Connect"


@pytest.mark.loopback_stack
def test_browser_call_explains_when_no_agent_joins(loopback: LoopbackStack) -> None:
    with connected(loopback, "/noagent/call/", query="?agent_timeout=3") as page:
        assert "within 3 s" in wait_for_message(page, "No agent joined", 30)


def _https_page(root: Path, tmp: Path) -> tuple[str, Path, "object"]:
    """The built page over HTTPS on 127.0.0.1 with a certificate from a throwaway CA: (url, ca.pem, server)."""
    import datetime
    import functools
    import http.server
    import ssl
    import threading

    from infra.local import tls as certs

    issued = certs.issue("voicestack test CA", "127.0.0.1", datetime.timedelta(hours=1), ips=("127.0.0.1",))
    (tmp / "ca.pem").write_bytes(issued.ca)
    (tmp / "leaf.pem").write_bytes(issued.cert)
    (tmp / "leaf.key").write_bytes(issued.key)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp / "leaf.pem", tmp / "leaf.key")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"https://127.0.0.1:{server.server_address[1]}/", tmp / "ca.pem", server


def test_browser_call_target_trusts_exactly_the_given_ca(page_root: Path, tmp_path: Path) -> None:
    """The deployed-environment mode: Chromium trusts the environment's CA bundle and nothing else."""
    from playwright.sync_api import Error as PlaywrightError

    url, ca, server = _https_page(page_root, tmp_path)
    try:
        with chromium(Target(url=url, ca_bundle=str(ca)), audio_file=None) as browser:
            page, _ = open_page(browser, Target(url=url))
            assert page.title() == "Voice agent" and page.is_visible("#connect")
        with chromium(Target(url=url), audio_file=None) as browser:
            with pytest.raises(PlaywrightError, match="ERR_CERT_AUTHORITY_INVALID"):
                open_page(browser, Target(url=url))
    finally:
        server.shutdown()  # type: ignore[attr-defined]


@pytest.mark.loopback_stack
def test_browser_call_public_demo_mode_needs_no_key(loopback: LoopbackStack) -> None:
    """Public mode: the page gets a keyless token for a fresh server-chosen room, and the agent greets."""
    with connected(loopback, "/demo/call/") as page:
        greeting = wait_for_segment(page, "agent", "assistant", timeout_s=60)
        diag = diagnostics(page)
        page.click("#connect")
    assert "voice assistant" in greeting.lower()
    assert diag["room"].startswith("call-") and diag["identity"].startswith("user-")
