"""After the call, on a deployed node: recordings, and voice actions through a real n8n.

Recording: a meeting of three speakers on the emulated internet is recorded by the node's hidden
recorder, transcribed and summarised there, announced to a real HTTP receiver and downloadable
through Caddy with the key only. Voice actions: a spoken command reaches the shipped voice-action
workflow in a real n8n, which switches a (stand-in) Home Assistant, and the agent speaks the
workflow's answer.

One environment (`e2erec`, one node, `recording: rooms`, the voice agent on explicit dispatch so
that the meeting is people only; the verify client's call asks for it by name), one `up`, one
deploy. Everything standing in for the operator's services runs in the client namespace, so what
the node sends crosses the same cloud firewall a real service's would: the receiver standing in for
n8n's event webhook (forwardUrl), the pinned n8n (infra/n8n, cached under /var/cache/voicestack/n8n;
minutes the first time) that actionUrl points at, with the stack's derived forward secret as its
signing credential (as README "n8n" tells an operator), and the stand-in Home Assistant
(tests/home_assistant.py) that n8n's Home Assistant credential points at. Speakers are synthesised
(piper) in the client namespace; each speaks one phrase, in order. The voice-action caller is the
verify suite's own round-trip client: what it hears is Whisper on the agent's audio. Figures
(meeting -> event latency) are printed, not asserted.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import queue
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiohttp import ClientSession

from agent.actions import ActionClient, ActionConfig, DeviceAction
from agent.tokens import mint
from infra import outputs as outputsmod
from infra.local import machines
from infra.local.names import EnvNames
from infra.n8n.install import install
from infra.n8n.server import N8nServer
from infra.probes.roundtrip import AGENT_PY, round_trips
from infra.secrets import forward_secret
from tests import n8n_shipped as shipped
from tests.e2e import envs
from tests.e2e.nsprocess import NamespaceProcess

ENV = "e2erec"
ROOT = Path(__file__).resolve().parents[2]
RECEIVER_PORT = 18765
RECORDINGS = "/var/lib/voicestack/recordings"
SCRIPT = [  # (speaker, phrase, a word Whisper must return)
    ("alice", "Good morning everyone, the budget review starts now.", "budget"),
    ("bob", "I finished the kitchen drawings yesterday.", "kitchen"),
    ("carol", "The garden party moves to Saturday afternoon.", "garden"),
]
EVENT_DEADLINE_S = 180   # recording end (10 s after the last person left) + transcription of three tracks
N8N_PORT = 15678                         # in the client namespace: nothing else listens there
HA_TOKEN = "ha-e2e-long-lived-token-0123456789"
VOICE_ACTION = shipped.WORKFLOWS["voice-action.json"]
PHRASE = "turn on the lights in the kitchen"

pytestmark = pytest.mark.e2e


def ssh(ctx: Any, command: str, timeout: float = 60, stdin: str | None = None) -> str:
    proc = subprocess.run(machines.ssh_command(ctx.names, ctx.names.node_public_ip(0), command), input=stdin,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"on the node: {command}\n{proc.stderr[-2000:]}"
    return proc.stdout


class Receiver(NamespaceProcess):
    """tests/e2e/recording_client.py receive, in the client namespace: every delivery, in order."""

    def __init__(self, out: outputsmod.Outputs, host: str) -> None:
        super().__init__(out.client_netns, ["-m", "tests.e2e.recording_client", "receive"],
                         {"host": host, "port": RECEIVER_PORT, "secret": forward_secret(out.api_secret)})
        assert self.ready == {"listening": True}, self.ready
        self.seen: list[dict[str, Any]] = []

    def wait_for(self, event: str, room: str, deadline_s: float) -> dict[str, Any]:
        end = time.monotonic() + deadline_s
        while True:
            for item in self.seen:
                ev = item.get("event") or {}
                if ev.get("event") == event and ev.get("room") == room:
                    return ev
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event} for room {room} within {deadline_s:.0f} s; got "
                                     f"{[(i.get('event') or i).get('event', i) for i in self.seen]}")
            try:
                self.seen.append(self.lines.get(timeout=min(left, 2.0)))
            except queue.Empty:
                pass


class NamespaceHomeAssistant(NamespaceProcess):
    """tests/home_assistant.py inside a network namespace: its port, and every call it got."""

    def __init__(self, netns: str) -> None:
        super().__init__(netns, ["-m", "tests.home_assistant"], {"token": HA_TOKEN})
        self.port = int(self.ready["listening"])
        self.calls: list[dict[str, Any]] = []

    def calls_so_far(self) -> list[dict[str, Any]]:
        while True:
            try:
                self.calls.append(self.lines.get_nowait()["call"])
            except queue.Empty:
                return list(self.calls)


def perform(url: str, secret: str, action: DeviceAction, timeout: float) -> str:
    """One voice action as the agent sends it (agent/actions.py: body, signature, the answer to speak)."""
    async def main() -> str:
        async with ClientSession() as session:
            return await ActionClient(ActionConfig(url, secret, timeout)).perform(action, session)
    return asyncio.run(main())


def start_n8n(out: outputsmod.Outputs, client_ip: str, workdir: Path, ha_port: int) -> N8nServer:
    """The pinned n8n in the client namespace with the shipped voice-action workflow, published,
    its credentials those an operator creates (README "n8n"), warmed by one signed call."""
    started = time.monotonic()
    inst = install()  # cached: seconds once installed
    n8n = N8nServer(inst, workdir, port=N8N_PORT, host=client_ip, netns=out.client_netns)
    try:
        n8n.import_credentials([shipped.signing_secret(forward_secret(out.api_secret)),
                                shipped.home_assistant(ha_port, HA_TOKEN)])
        assert n8n.import_workflows([shipped.EXAMPLES / "voice-action.json"]) == [VOICE_ACTION]
        n8n.publish(VOICE_ACTION)
        n8n.start(["voice-action"])
        # n8n's first execution after a start loads its nodes (seconds on this host), longer than
        # the agent's 4 s ACTION_TIMEOUT; a long-running n8n is warm. One signed call from the
        # operator's side warms it, and shows the workflow answers before the node is involved.
        said = perform(n8n.webhook_url("voice-action"), forward_secret(out.api_secret),
                       DeviceAction("turn_off", "light", "bedroom", None, "turn off the bedroom light"),
                       timeout=120)
        assert "bedroom" in said.lower(), (said, n8n.log_tail())
    except BaseException:
        n8n.stop()
        raise
    print(f"n8n {inst.version} installed, started and answering in {time.monotonic() - started:.1f} s")
    return n8n


@dataclass
class AfterCall:
    """The module's environment and what stands in for the operator's services beside it."""
    ctx: Any
    out: outputsmod.Outputs
    receiver: Receiver
    n8n: N8nServer
    ha: NamespaceHomeAssistant


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AfterCall]:
    envs.require_host()
    envs.down(ENV)  # leftovers of an earlier, interrupted run
    started = time.monotonic()
    client_ip = EnvNames(ENV).client_ip
    tmp = tmp_path_factory.mktemp("rec")
    config = envs.write_config(tmp / f"Pulumi.{ENV}.yaml", {
        "recording": "rooms", "agentName": "voice-agent",
        "forwardUrl": f"http://{client_ip}:{RECEIVER_PORT}/webhook/livekit",
        "actionUrl": f"http://{client_ip}:{N8N_PORT}/webhook/voice-action"})
    ctx = envs.up(ENV, 1, config)
    receiver: Receiver | None = None
    ha: NamespaceHomeAssistant | None = None
    n8n: N8nServer | None = None
    try:
        out = outputsmod.read(ENV)
        receiver = Receiver(out, client_ip)
        ha = NamespaceHomeAssistant(out.client_netns)
        n8n = start_n8n(out, client_ip, tmp / "n8n", ha.port)
        result = envs.deploy(ENV)
        print(f"up + n8n + deploy: {time.monotonic() - started:.0f} s; deploy rc={result.returncode}\n"
              f"{result.stdout[-2000:]}")
        assert result.returncode == 0, result.stderr[-4000:]
        yield AfterCall(ctx, out, receiver, n8n, ha)
    finally:
        for service in (n8n, ha, receiver):
            if service is not None:
                service.stop()
        envs.down(ENV)


def wait_for_tracks(ctx: Any, room: str, count: int, deadline_s: float) -> float:
    """Poll the node until the recording of `room` writes `count` tracks; the time it did."""
    check = (f"python3 -c 'import json, glob, sys; ms = [json.load(open(p)) for p in glob.glob(\"{RECORDINGS}/*/manifest.json\")];"
             f" sys.exit(0 if any(m.get(\"room\") == \"{room}\" and len(m.get(\"tracks\", [])) >= {count} for m in ms)"
             " else 1)'")
    end = time.monotonic() + deadline_s
    while True:
        probe = subprocess.run(machines.ssh_command(ctx.names, ctx.names.node_public_ip(0), check),
                               capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return time.time()
        if time.monotonic() > end:
            raise AssertionError(f"the recorder did not write {count} tracks for {room} within {deadline_s:.0f} s: "
                                 f"{probe.stderr[-500:]}\n" + ssh(ctx, "journalctl -u voicestack-recorder -n 30 --no-pager"))
        time.sleep(0.5)  # poll interval of the deadline loop


@pytest.fixture(scope="module")
def meeting(env) -> dict[str, Any]:
    """The meeting, then the recording_finished event it produced."""
    ctx, out, receiver = env.ctx, env.out, env.receiver
    room = f"weekly-{int(time.time())}"
    speakers = [{"identity": who, "token": mint(out.api_key, out.api_secret, who, room, name=who.title(), ttl=600)}
                for who in dict.fromkeys(w for w, *_ in SCRIPT)]
    args = {"url": out.livekit_url, "ca_bundle": out.ca_bundle, "speakers": speakers, "timeout": 90,
            "script": [{"who": who, "text": text} for who, text, _ in SCRIPT]}
    argv = ["ip", "netns", "exec", out.client_netns, str(AGENT_PY), "-m", "tests.e2e.recording_client", "meeting"]
    errors = tempfile.TemporaryFile("w+")   # a file, not a pipe: the SDK's logs must never block the client
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True)

    def stderr() -> str:
        errors.seek(0)
        return errors.read()[-3000:]

    try:
        proc.stdin.write(json.dumps(args) + "\n")   # tokens: stdin, never argv
        proc.stdin.flush()
        shown = proc.stdout.readline()
        assert shown, f"the meeting client ended before the recording showed itself:\n{stderr()}"
        indicator = json.loads(shown)["indicator"]
        tracks = wait_for_tracks(ctx, room, len(speakers), deadline_s=30)
        proc.stdin.write("go\n")
        proc.stdin.close()
        script = json.loads(proc.stdout.readline() or "null") or {}
        assert proc.wait(timeout=120) == 0 and script, f"the meeting client failed:\n{stderr()}"
    finally:
        if proc.poll() is None:
            proc.kill()
        errors.close()
    script["indicator"] = indicator
    script["tracks_at"] = tracks
    event = receiver.wait_for("recording_finished", room, EVENT_DEADLINE_S)
    print(f"meeting left at {script['left_at']:.1f}; recording_finished after {time.time() - script['left_at']:.1f} s")
    return {"room": room, "script": script, "event": event}


def test_the_meeting_saw_the_recording_indicator_before_anyone_spoke(meeting) -> None:
    script = meeting["script"]
    assert script["indicator"]["to"] == ["alice", "bob", "carol"]
    assert script["indicator"]["shown_at"] <= script["tracks_at"] <= script["spoke"][0]["t"]


def test_recording_finished_reaches_the_receiver_with_transcript_and_summary(env, meeting) -> None:
    out, receiver = env.out, env.receiver
    ev = meeting["event"]
    assert (ev["kind"], ev["status"], ev["partial_reason"], ev["room"]) == ("meeting", "complete", None,
                                                                            meeting["room"])
    assert {p["identity"] for p in ev["participants"]} == {"alice", "bob", "carol"}
    assert sorted(f["participant"] for f in ev["files"]) == ["alice", "bob", "carol"]
    assert all(f["name"].endswith(".ogg") and f["size"] > 1000 and f["duration_s"] > 3 for f in ev["files"])
    assert 5 < ev["duration_s"] < 120 and ev["started_at"] < ev["ended_at"]
    # Each phrase attributed to its speaker, in the order spoken.
    segments = ev["transcript"]["segments"]
    hits = []
    for _who, _text, word in SCRIPT:
        found = [s for s in segments if word in s["text"].lower()]
        assert found, f"no segment says {word!r}: {[(s['speaker'], s['text']) for s in segments]}"
        hits.append(found[0])
    assert [h["speaker"] for h in hits] == [who for who, *_ in SCRIPT]
    assert [h["start"] for h in hits] == sorted(h["start"] for h in hits)
    assert "Participants: Alice, Bob, Carol." in ev["summary"]["text"]
    assert ev["download_url"] == f"{out.spec.recordings_url}/{ev['recording_id']}"
    assert not any(i.get("bad_signature") for i in receiver.seen)


#: Run on the node (python3 -): what the recording directory holds, as JSON.
LISTING = """
import json, os, pwd, sys
def info(p):
    st = os.stat(p)
    return {"mode": st.st_mode & 0o777, "owner": pwd.getpwuid(st.st_uid).pw_name}
d = os.path.join(sys.argv[1], sys.argv[2])
print(json.dumps({"root": info(sys.argv[1]), "dir": info(d),
                  "files": {n: info(os.path.join(d, n)) for n in os.listdir(d)},
                  "transcript": json.load(open(os.path.join(d, "transcript.json"))),
                  "summary": json.load(open(os.path.join(d, "summary.json")))}))
"""


def test_the_recording_directory_on_the_node_holds_tracks_transcript_and_summary(env, meeting) -> None:
    ctx = env.ctx
    ev = meeting["event"]
    got = json.loads(ssh(ctx, f"python3 - {RECORDINGS} {ev['recording_id']}", stdin=LISTING))
    files = got["files"]
    print(f"on the node: {RECORDINGS} {oct(got['root']['mode'])} {got['root']['owner']}, recording directory "
          f"{oct(got['dir']['mode'])}, files {sorted((n, oct(f['mode'])) for n, f in files.items())}")
    tracks = sorted(n for n in files if n.endswith(".ogg") and n != "mix.ogg")
    assert tracks == sorted(f["name"] for f in ev["files"]) and len(tracks) == 3, tracks
    assert all(any(who in n for n in tracks) for who in ("alice", "bob", "carol")), tracks
    assert {"manifest.json", "transcript.json", "summary.json", "mix.ogg"} <= set(files), sorted(files)
    # Personal data: the service user's only (no access for others, no writing for the group).
    for name, f in {RECORDINGS: got["root"], ev["recording_id"]: got["dir"], **files}.items():
        assert f["owner"] == "voicestack" and f["mode"] & 0o027 == 0, (name, oct(f["mode"]), f["owner"])
    assert got["transcript"]["segments"] == ev["transcript"]["segments"]
    assert got["summary"]["text"] == ev["summary"]["text"]


def test_downloads_through_caddy_need_the_bearer_key(env, meeting) -> None:
    out = env.out
    rid = meeting["event"]["recording_id"]
    track = meeting["event"]["files"][0]["name"]
    base = f"/api/recordings/{rid}"
    calls = [{"path": base, "key": out.token_key}, {"path": f"{base}/transcript", "key": out.token_key},
             {"path": f"{base}/summary", "key": out.token_key}, {"path": f"{base}/files/{track}", "key": out.token_key},
             {"path": base}, {"path": f"{base}/transcript", "key": "not-the-key-0123456789"},
             {"path": "/api/recordings/..%2F..%2Fetc%2Fpasswd", "key": out.token_key}]
    argv = ["ip", "netns", "exec", out.client_netns, sys.executable, "-m", "tests.e2e.recording_client", "download"]
    proc = subprocess.run(argv, cwd=ROOT, input=json.dumps({"host": out.livekit_domain, "cafile": out.ca_bundle,
                                                            "calls": calls}) + "\n",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    audio, transcript, summary, one, no_key, wrong_key, escape = json.loads(proc.stdout)
    assert (audio["status"], audio["content_type"], audio["head"]) == (200, "audio/ogg", "OggS"), audio
    assert audio["size"] > 1000
    assert transcript["status"] == 200 and transcript["json"]["segments"] == meeting["event"]["transcript"]["segments"]
    assert summary["status"] == 200 and summary["json"]["text"] == meeting["event"]["summary"]["text"]
    assert (one["status"], one["head"]) == (200, "OggS"), one
    assert (no_key["status"], wrong_key["status"]) == (401, 401), (no_key, wrong_key)
    # Caddy cleans the path (/etc/passwd then matches only LiveKit's catch-all, which refuses it: 401);
    # whatever answers, nothing outside the recordings directory is served.
    assert escape["status"] in (400, 401, 404) and escape["head"] != "root", escape


# --- voice actions: last, so that the meeting above has the node to itself -----------------------

@pytest.mark.n8n
def test_n8n_a_spoken_command_through_the_deployed_node_runs_the_workflow_and_the_agent_speaks_its_answer(
        env) -> None:
    out, n8n, ha = env.out, env.n8n, env.ha
    before = len(ha.calls_so_far())
    runs_before = len(n8n.executions(VOICE_ACTION))
    (r,) = round_trips(out, 1, phrase=PHRASE, timeout=90, label="n8n")
    print(f"transcript: caller said {PHRASE!r}; agent greeted {r.get('greeting')!r}, then said "
          f"{r.get('answer')!r} {r.get('latency_s', 0):.2f} s after the phrase")
    assert r["ok"], r
    # The workflow's sentence ("Okay, the kitchen lights are on."), not the offline responder's own
    # ("Okay, I turned on the lights in the kitchen.") nor its fallback ("Sorry, I could not reach ...").
    assert "kitchen lights are on" in r["answer"].lower(), r
    calls = ha.calls_so_far()[before:]
    assert calls == [{"path": "/api/services/light/turn_on", "auth": f"Bearer {HA_TOKEN}",
                      "body": {"entity_id": "light.kitchen"}}], calls
    runs = n8n.executions(VOICE_ACTION)[runs_before:]
    assert [e["status"] for e in runs] == ["success"], runs
    (received,) = bodies_in(runs[0]["data"])
    # What the node heard (its Whisper), signed and sent: the execution keeps the raw body.
    print(f"n8n received: {received}")
    assert (received["device"], received["action"], received["room"]) == ("light", "turn_on", "kitchen"), received
    assert PHRASE in received["words"].lower(), received


def bodies_in(run_data: str) -> list[dict[str, Any]]:
    """The voice-action bodies in an execution's run data: the webhook keeps the raw body (the
    signature is checked over it), which n8n stores base64-encoded."""
    found = []
    for chunk in re.findall(r'"([A-Za-z0-9+/]{40,}={0,2})"', run_data):
        with contextlib.suppress(ValueError):
            body = json.loads(base64.b64decode(chunk, validate=True))
            if isinstance(body, dict) and body.get("type") == "voice_action":
                found.append(body)
    return found
