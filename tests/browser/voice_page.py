"""Drive the voice page in real Chromium (Debian's /usr/bin/chromium, through Playwright for Python).

The fake microphone plays a WAV file once (`%noloop`); after it ends Chromium repeats its last
~10 ms, so the file must end in silence (see padded_wav). Works against any base URL: the
loopback stack of tests/unit/test_browser_call.py, or https://<livekit name>/call/ of a
deployed environment (trusting its CA bundle, from inside its client network namespace, with
the page's basic-auth credentials).
"""
from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import tempfile
import wave
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = os.environ.get("VOICESTACK_CHROMIUM", "/usr/bin/chromium")
MEDIA_FLAGS = ["--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required"]


@dataclass(frozen=True)
class Target:
    """Where the page is and how to reach it like a user would."""
    url: str                          # the page, e.g. https://livekit.example/call/
    ca_bundle: str | None = None      # PEM to trust (local environments' ACME root)
    netns: str | None = None          # run the browser inside this network namespace (needs root)
    username: str | None = None       # the page's basic-auth credentials (private mode)
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, default_url: str | None = None) -> "Target | None":
        """VOICESTACK_CALL_URL / _CA / _NETNS / _USER / _PASSWORD, or None when no URL is given."""
        url = os.environ.get("VOICESTACK_CALL_URL") or default_url
        if not url:
            return None
        return cls(url=url, ca_bundle=os.environ.get("VOICESTACK_CALL_CA") or None,
                   netns=os.environ.get("VOICESTACK_CALL_NETNS") or None,
                   username=os.environ.get("VOICESTACK_CALL_USER") or None,
                   password=os.environ.get("VOICESTACK_CALL_PASSWORD") or None)


def padded_wav(wav: bytes, lead_s: float, tail_s: float) -> bytes:
    """The same mono 16-bit WAV with silence before (the agent greets first) and after (Chromium
    repeats the file's last ~10 ms forever once it ends)."""
    with wave.open(io.BytesIO(wav)) as src:
        rate, width, channels, frames = src.getframerate(), src.getsampwidth(), src.getnchannels(), \
            src.readframes(src.getnframes())
    out = io.BytesIO()
    with wave.open(out, "wb") as dst:
        dst.setnchannels(channels)
        dst.setsampwidth(width)
        dst.setframerate(rate)
        silence = lambda s: b"\0" * (int(rate * s) * width * channels)  # noqa: E731
        dst.writeframes(silence(lead_s) + frames + silence(tail_s))
    return out.getvalue()


def _trust_store(home: Path, ca_bundle: str) -> None:
    """Chromium on Linux trusts the NSS database in $HOME/.pki/nssdb: put the CA there."""
    certutil = shutil.which("certutil")
    if certutil is None:
        raise RuntimeError("certutil not found: install libnss3-tools to let Chromium trust "
                           f"{ca_bundle} (scripts/install_host_deps.sh does)")
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    subprocess.run([certutil, "-d", f"sql:{db}", "-N", "--empty-password"], check=True, capture_output=True)
    pem = Path(ca_bundle).read_text()
    certs = [c + "-----END CERTIFICATE-----\n" for c in pem.split("-----END CERTIFICATE-----") if "BEGIN" in c]
    for i, cert in enumerate(certs):
        subprocess.run([certutil, "-d", f"sql:{db}", "-A", "-t", "C,,", "-n", f"voicestack-ca-{i}"],
                       input=cert.encode(), check=True, capture_output=True)


@contextmanager
def chromium(target: Target, *, audio_file: Path | None, allow_microphone: bool = True) -> Iterator[Browser]:
    """A headless Chromium with a fake microphone playing `audio_file` once."""
    args = list(MEDIA_FLAGS)
    if allow_microphone:
        args.append("--use-fake-ui-for-media-stream")    # auto-accept the microphone prompt
    if audio_file is not None:
        args.append(f"--use-file-for-fake-audio-capture={audio_file.resolve()}%noloop")
    with tempfile.TemporaryDirectory(prefix="voicestack-chromium-") as tmp:
        home, executable = Path(tmp) / "home", CHROMIUM
        home.mkdir()
        if target.ca_bundle:
            _trust_store(home, target.ca_bundle)
        if target.netns:
            # Playwright talks to the browser over pipes, so only the browser needs to be inside.
            wrapper = Path(tmp) / "chromium-in-netns"
            wrapper.write_text(f'#!/bin/sh\nexec ip netns exec "{target.netns}" "{CHROMIUM}" "$@"\n')
            wrapper.chmod(0o700)
            executable = str(wrapper)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=executable, headless=True, args=args,
                                         env={**os.environ, "HOME": str(home)}, timeout=60_000)
            try:
                yield browser
            finally:
                browser.close()


def open_page(browser: Browser, target: Target, url: str | None = None) -> tuple[Page, list[str]]:
    credentials = ({"username": target.username, "password": target.password or ""}
                   if target.username else None)
    context = browser.new_context(http_credentials=credentials, viewport={"width": 900, "height": 1000})
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
    page.goto(url or target.url, wait_until="load")
    return page, console


def wait_for_segment(page: Page, who: str, needle: str, timeout_s: float, after: int = 0) -> str:
    """The text of the first final `who` ("user"/"agent") transcript line at index >= after containing needle."""
    handle = page.wait_for_function(
        """([who, needle, after]) => {
            const items = [...document.querySelectorAll('#transcript li')].slice(after);
            const li = items.find((el) => el.classList.contains(who) && el.dataset.final === 'true'
                && el.querySelector('.text').textContent.toLowerCase().includes(needle));
            return li ? li.querySelector('.text').textContent : null;
        }""", arg=[who, needle.lower(), after], timeout=timeout_s * 1000)
    return str(handle.json_value())


def transcript(page: Page) -> list[dict[str, Any]]:
    return page.evaluate("""() => [...document.querySelectorAll('#transcript li')].map((li) => ({
        who: li.classList.contains('user') ? 'user' : 'agent', final: li.dataset.final === 'true',
        text: li.querySelector('.text').textContent }))""")


def wait_for_agent_audio(page: Page, timeout_s: float) -> None:
    """Until the page plays an agent track (an <audio> with a stream under #audio). After a
    reconnect (LiveKit's resume, e.g. a negotiation that timed out on a busy machine) the
    track is subscribed again; recording before that would find nothing."""
    page.wait_for_function("() => { const el = document.querySelector('#audio audio'); "
                           "return !!(el && el.srcObject && el.srcObject.getAudioTracks().length); }",
                           timeout=timeout_s * 1000)


def start_agent_recording(page: Page) -> None:
    """Record what the page plays from the agent (its <audio> element) with MediaRecorder."""
    page.evaluate("""() => {
        const el = document.querySelector('#audio audio');
        if (!el || !el.srcObject) throw new Error('no agent audio element to record');
        const rec = new MediaRecorder(new MediaStream(el.srcObject.getAudioTracks()),
                                      { mimeType: 'audio/webm;codecs=opus' });
        window.__rec = { rec, chunks: [] };
        rec.ondataavailable = (e) => window.__rec.chunks.push(e.data);
        rec.start(250);
    }""")


def stop_agent_recording(page: Page) -> bytes:
    data = page.evaluate("""async () => {
        const { rec, chunks } = window.__rec;
        await new Promise((done) => { rec.onstop = done; rec.stop(); });
        const buf = new Uint8Array(await new Blob(chunks, { type: 'audio/webm' }).arrayBuffer());
        let bin = '';
        for (let i = 0; i < buf.length; i += 0x8000) bin += String.fromCharCode(...buf.subarray(i, i + 0x8000));
        return btoa(bin);
    }""")
    return base64.b64decode(data)


def diagnostics(page: Page) -> dict[str, Any]:
    return page.evaluate("""() => ({ ...window.voicestackCall,
        agentState: document.querySelector('#agent-state').dataset.state,
        message: document.querySelector('#message').hidden ? '' : document.querySelector('#message').textContent,
        recordingShown: !document.querySelector('#recording').hidden,
        userPeak: Number(document.querySelector('#level-user').dataset.peak),
        agentPeak: Number(document.querySelector('#level-agent').dataset.peak),
        agentLevel: Number(document.querySelector('#level-agent').dataset.level) })""")


# ---- one call, as a person makes it ------------------------------------------------------------

#: What the fake microphone says in a call; converse() and check_call() know its answer.
PHRASE = "turn on the lights"


@dataclass(frozen=True)
class Call:
    """What a person saw and heard in one call through the page."""
    greeting: str        # the agent's first final transcript line
    heard: str           # what the page shows the agent heard of PHRASE
    answer: str          # the agent's answer to it
    recorded: bytes      # the agent's audio as the page played it, from PHRASE heard on (WebM/Opus)


def converse(page: Page, timeout_s: float) -> Call:
    """Connect; wait for the greeting, for PHRASE (the fake microphone's file) to be heard, for the
    answer and for the agent to listen again; timeout_s is the deadline of each of these."""
    page.click("#connect")
    greeting = wait_for_segment(page, "agent", "assistant", timeout_s=timeout_s)
    wait_for_agent_audio(page, timeout_s=timeout_s)
    heard = wait_for_segment(page, "user", "light", timeout_s=timeout_s)
    # From here on the agent's track carries the answer only: with the greeting in the same file,
    # tiny.en once transcribed only the greeting's tail ("It's time to help.") on a busy machine.
    # The answer's audio follows the user's final transcript (STT, then the reply, then TTS).
    start_agent_recording(page)
    after = len(transcript(page)) - 1
    answer = wait_for_segment(page, "agent", "lights", timeout_s=timeout_s, after=after)
    page.wait_for_function("() => document.querySelector('#agent-state').dataset.state === 'listening'",
                           timeout=timeout_s * 1000)
    return Call(greeting, heard, answer, stop_agent_recording(page))


def hang_up(page: Page) -> None:
    page.click("#connect")   # the same button disconnects
    page.wait_for_function("() => document.querySelector('main').dataset.state === 'idle'", timeout=15_000)


def check_call(call: Call, spoken: str, diag: dict[str, Any], screenshot: Path) -> None:
    """Print the call's figures and transcripts; assert it went as a person hears it.

    spoken: call.recorded transcribed; diag: diagnostics() at the end of the call.
    """
    timings = diag["timings"]
    print(f"\npage load -> agent greeting (final transcript): {timings['greeting'] / 1000:.2f} s; "
          f"-> first agent audio: {timings['agentAudio'] / 1000:.2f} s; connect -> agent joined: "
          f"{(timings['agentJoined'] - timings['connected']) / 1000:.2f} s")
    print(f"greeting: {call.greeting!r}; heard: {call.heard!r}; answer: {call.answer!r}; "
          f"answer audio transcribed: {spoken!r}; peaks user {diag['userPeak']:.3f} agent {diag['agentPeak']:.3f}; "
          f"screenshot {screenshot}")
    assert "voice assistant" in call.greeting.lower()
    assert "light" in call.heard.lower()
    assert "turned on the lights" in call.answer.lower()
    # The agent's audio track really carried the answer: what the page played, transcribed. The
    # words, not the exact sentence: tiny.en heard the recorded (Opus, re-encoded) "lights" as
    # "light" in one CI run; neither word is in the greeting, so the answer's audio is proven.
    words = set(re.findall(r"[a-z]+", spoken.lower()))
    assert "turned" in words and words & {"light", "lights"}, f"the recorded agent audio transcribes as {spoken!r}"
    assert diag["agentPeak"] > 0.01 and diag["userPeak"] > 0.01, diag
    assert diag["errors"] == [], diag["errors"]
