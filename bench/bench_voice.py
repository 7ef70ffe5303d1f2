"""Voice benchmark: voice-to-voice latency, the agent's per-turn breakdown, accuracy and
barge-in, in one run. Figures only: nothing here passes or fails on a time.

    # development: a loopback stack it starts itself (livekit-server + speech server + worker)
    LIVEKIT_SERVER_BIN=$(.venv/bin/python -m infra.local livekit-bin) \\
        .venv-agent/bin/python bench/bench_voice.py --loopback [--speech-env STT_WINDOW_S=0 ...]
    # a deployed environment: the client runs in its client network namespace (root)
    .venv-agent/bin/python bench/bench_voice.py --env local [--conditions normal,udp-blocked]

What it does: synthesises every phrase of bench/phrases.yaml in each voice (piper's joe, as
the agent speaks, and espeak-ng's en-us), then, per network condition, a client joins a room,
waits for the agent's greeting and speaks the clips one after another, each after the
agent's previous answer has ended. Per turn it records

- voice to voice: from the end of the clip's voice leaving the client to the first voiced
  frame of the answer arriving back (the clip's own trailing silence is not counted);
- what the agent heard and answered (the room's lk.transcription streams): word error rate
  against the phrase, and intent accuracy (agent.speech.responder.intent of what it heard
  against the phrase's label);
- the agent's own breakdown (end of turn, transcription, LLM TTFT, TTS TTFB, e2e), which the
  worker publishes per turn on the "voicestack.turn-metrics" text stream.

The normal condition speaks the whole phrase set in every voice (at least --round-trips
turns); other conditions speak --round-trips turns of the joe voice. Barge-in: the client
asks "what can you do" and talks over the answer; it reports how long the agent's audio took
to stop at the client and whether the new utterance was answered.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.wav import wav_bytes  # noqa: E402

PHRASES = ROOT / "bench" / "phrases.yaml"
VOICES = ("joe", "espeak")
BARGE_TRIGGER = "what can you do"          # answered with the responder's longest sentence
BARGE_PHRASE = "turn on the lights in the kitchen"
STAGES = ("end_of_turn", "transcription", "llm_ttft", "tts_ttfb", "e2e")


# --- clips ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Clip:
    phrase: str
    label: str      # the intent the agent must recognise
    voice: str
    path: str       # mono 16-bit WAV


def load_phrases(path: Path = PHRASES) -> list[dict[str, str]]:
    import yaml

    phrases = yaml.safe_load(path.read_text())["phrases"]
    for p in phrases:
        if not p.get("text") or not p.get("intent"):
            raise SystemExit(f"{path}: every phrase needs 'text' and 'intent', got {p!r}")
    return phrases


def synthesize_clips(phrases: list[dict[str, str]], voices: list[str], outdir: Path) -> list[Clip]:
    """Every phrase in every voice, as WAV files in `outdir`."""
    clips = []
    joe = None
    if "joe" in voices:
        from agent.speech.tts import OUTPUT_SAMPLE_RATE, Synthesizer, TtsConfig

        # The user's voice: the bundled piper voice, untrimmed, deterministic (noise 0).
        cfg = TtsConfig.from_env()
        joe = Synthesizer(TtsConfig(cfg.model_path, cfg.config_path, by_clause=False,
                                    trim_lead=False))
    if "espeak" in voices and not shutil.which("espeak-ng"):
        raise SystemExit("espeak-ng is not installed: apt-get install -y espeak-ng "
                         "(or pass --voices joe)")
    extra = set(voices) - set(VOICES)
    if extra:
        raise SystemExit(f"unknown voice(s) {sorted(extra)}; use {', '.join(VOICES)}")
    for voice in voices:
        for i, p in enumerate(phrases):
            path = outdir / f"{voice}-{i:02d}.wav"
            if voice == "joe":
                assert joe is not None
                path.write_bytes(wav_bytes(joe.pcm(p["text"]), OUTPUT_SAMPLE_RATE))
            else:
                # en-us at 160 words/min: a clear, robotic second voice (22.05 kHz WAV).
                proc = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "--stdout", p["text"]],
                                      capture_output=True, check=False)
                if proc.returncode != 0 or not proc.stdout:
                    raise SystemExit(f"espeak-ng failed on {p['text']!r}: {proc.stderr.decode()[-500:]}")
                path.write_bytes(_normalised_wav(proc.stdout))
            clips.append(Clip(p["text"], p["intent"], voice, str(path)))
    return clips


def _normalised_wav(data: bytes) -> bytes:
    """espeak-ng writes a streaming WAV header (length 0xFFFFFFFF): rewrite it properly."""
    with wave.open(io.BytesIO(data)) as src:
        rate = src.getframerate()
    pcm = data[44:]
    return wav_bytes(pcm[: len(pcm) // 2 * 2], rate)


# --- the client side (runs in the env's client namespace) -------------------------------------

def _read_clip(path: str) -> tuple[bytes, int]:
    with wave.open(path) as src:
        return src.readframes(src.getnframes()), src.getframerate()


async def _run_room(url: str, room: dict[str, Any], ca_bundle: str | None, timeout: float,
                    gap: float) -> dict[str, Any]:
    from agent.roundtrip import conversation

    out: dict[str, Any] = {"name": room["name"], "turns": [], "barge_ins": [], "error": ""}
    try:
        async with conversation(url, room["token"], ca_bundle=ca_bundle, gap=gap,
                                timeout=timeout) as conv:
            greeting_s, greeting = await conv.greeting(timeout)
            out["greeting"] = greeting
            for item in room.get("turns", []):
                pcm, rate = _read_clip(item["clip"])
                turn = await conv.say(pcm, rate, item["phrase"], timeout)
                out["turns"].append({**item, **asdict(turn)})
                print(f"  [{room['name']}] {_fmt(turn.latency_s)}  {item['phrase'][:50]!r} -> "
                      f"heard {turn.heard[:60]!r}{'  ' + turn.error if turn.error else ''}",
                      file=sys.stderr, flush=True)
            for item in room.get("barge_ins", []):
                pcm, rate = _read_clip(item["clip"])
                result = await conv.barge_in(pcm, rate, phrase=item["phrase"],
                                             after_s=item.get("after_s", 0.8),
                                             trigger=_read_clip(item["trigger"]), timeout=timeout + 10)
                out["barge_ins"].append({**item, **asdict(result)})
                print(f"  [{room['name']}] barge-in: stopped after {_fmt(result.stop_s)}, "
                      f"answer {result.turn.answer[:50]!r}", file=sys.stderr, flush=True)
    except Exception as exc:  # noqa: BLE001 - reported with the turns that did run
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


async def client_main(args: dict[str, Any]) -> dict[str, Any]:
    rooms = []
    for room in args["rooms"]:
        rooms.append(await _run_room(args["url"], room, args.get("ca_bundle"),
                                     float(args.get("timeout", 30)), float(args.get("gap", 1.0))))
    return {"rooms": rooms}


def _fmt(v: float | None) -> str:
    return "   n/a" if v is None else f"{v:5.2f}s"


# --- scoring ---------------------------------------------------------------------------------

_CONTRACTIONS = {"what's": "what is", "it's": "it is", "i'm": "i am", "that's": "that is",
                 "you're": "you are", "don't": "do not", "can't": "cannot", "let's": "let us",
                 "okay": "ok", "today's": "today is"}


def words(text: str) -> list[str]:
    """Words for WER: lower case, no punctuation, contractions spelled out and numbers as
    digits on both sides (so "twenty one" and "21" are the same words)."""
    from agent.speech.responder import _TENS, _UNITS

    text = text.lower().replace("-", " ").replace("°", " degrees ")
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)
    raw = re.sub(r"[^a-z0-9.' ]+", " ", text).split()
    expanded: list[str] = []
    for w in raw:
        expanded.extend(_CONTRACTIONS.get(w, w).split())
    out: list[str] = []
    i = 0
    while i < len(expanded):
        w = expanded[i]
        if w in _TENS or w in _UNITS:
            value = 0.0
            while i < len(expanded) and (expanded[i] in _TENS or expanded[i] in _UNITS):
                value += _TENS.get(expanded[i], 0) + _UNITS.get(expanded[i], 0)
                i += 1
            if expanded[i:i + 3] == ["and", "a", "half"]:
                value, i = value + 0.5, i + 3
            out.append(f"{value:g}")
            continue
        if re.fullmatch(r"\d+(?:\.\d+)?", w) and expanded[i + 1:i + 4] == ["and", "a", "half"]:
            out.append(f"{float(w) + 0.5:g}")
            i += 4
            continue
        out.append(w)
        i += 1
    return out


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions + deletions + insertions)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def summary(values: list[float]) -> str:
    if not values:
        return "n=0"
    return (f"n={len(values):3d}  p50 {statistics.median(values):5.3f}s  p95 {pct(values, 0.95):5.3f}s  "
            f"mean {statistics.fmean(values):5.3f}s  min {min(values):5.3f}s  max {max(values):5.3f}s")


@dataclass
class Accuracy:
    n: int
    wer: float
    intent_accuracy: float
    misses: list[tuple[str, str, str]]   # (phrase, what was heard, the intent that was heard)


def accuracy(said: list[tuple[str, str, str]]) -> Accuracy:
    """Word error rate and intent accuracy of (phrase, its intent label, what was heard)."""
    from agent.speech.responder import Intent, intent

    edits = sum(edit_distance(words(phrase), words(heard)) for phrase, _, heard in said)
    ref_words = sum(len(words(phrase)) for phrase, _, _ in said)
    misses = [(phrase, heard, got.label) for phrase, label, heard in said
              if (got := intent(heard)) != Intent.parse(label)]
    return Accuracy(len(said), edits / max(1, ref_words), (len(said) - len(misses)) / max(1, len(said)),
                    misses)


def report_condition(condition: str, rooms: list[dict[str, Any]]) -> dict[str, Any]:
    from agent.speech.responder import Intent, intent

    turns = [t for r in rooms for t in r["turns"]]
    premature = [t for t in turns if t["latency_s"] is not None and t["overlap_s"] > 0.2]
    ok = [t for t in turns if t["latency_s"] is not None and t not in premature]
    lat = [t["latency_s"] for t in ok]
    print(f"\n== {condition}: voice to voice (end of the user's voice -> first answer audio at the client)")
    print(f"   {summary(lat)}")
    failed = [t for t in turns if t["latency_s"] is None]
    print(f"   turns {len(turns)}, no answer {len(failed)}, agent spoke while the user was still "
          f"speaking {len(premature)}" + "".join(f"\n   room error: {r['error']}" for r in rooms if r["error"]))
    for t in failed[:5]:
        print(f"     no answer to {t['phrase']!r}: {t['error']}")
    for t in premature[:5]:
        print(f"     premature reply during {t['phrase']!r} ({t['overlap_s']:.2f}s of agent voice)")

    print("   agent's breakdown (livekit-agents metrics, from the user's end of speech as its VAD saw it):")
    stage_values: dict[str, list[float]] = {}
    for stage in STAGES:
        values = [t["agent_metrics"][stage] for t in ok if stage in t["agent_metrics"]]
        stage_values[stage] = values
        print(f"     {stage:14s} {summary(values)}")
    rest = [t["latency_s"] - t["agent_metrics"]["e2e"] for t in ok if "e2e" in t["agent_metrics"]]
    print(f"     {'client - e2e':14s} {summary(rest)}   (VAD end estimate, transport, jitter buffer, playout)")

    result: dict[str, Any] = {"condition": condition, "turns": len(turns), "latency": lat,
                              "premature": len(premature), "no_answer": len(failed),
                              "stages": stage_values, "accuracy": {}}
    by_voice: dict[str, list[dict[str, Any]]] = {}
    for t in turns:
        by_voice.setdefault(t["voice"], []).append(t)
    print("   accuracy (what the agent heard):")
    print(f"     {'voice':8s} {'turns':>5s} {'WER':>7s} {'intent':>8s}")
    misses: list[str] = []
    groups = {**by_voice, "all": [t for vt in by_voice.values() for t in vt]} if by_voice else {}
    for voice, vt in groups.items():
        acc = accuracy([(t["phrase"], t["label"], t["heard"]) for t in vt])
        if voice != "all":
            misses += [f"{voice}: {phrase!r} heard {heard!r} -> {got}" for phrase, heard, got in acc.misses]
        result["accuracy"][voice] = {"turns": acc.n, "wer": acc.wer, "intent_accuracy": acc.intent_accuracy}
        print(f"     {voice:8s} {acc.n:5d} {100 * acc.wer:6.1f}% {100 * acc.intent_accuracy:7.1f}%")
    for m in misses:
        print(f"     missed: {m}")

    barges = [b for r in rooms for b in r["barge_ins"]]
    if barges:
        stops = [b["stop_s"] for b in barges if b["stop_s"] is not None]
        answered = sum(intent(b["turn"]["heard"]) == Intent.parse(b["label"]) for b in barges)
        print("   barge-in (user talks over the agent's answer; user's voice starts -> agent's audio stops at the client):")
        print(f"     stop   {summary(stops)}; did not stop: {len(barges) - len(stops)}")
        print(f"     new utterance understood {answered}/{len(barges)}; its voice to voice "
              f"{summary([b['turn']['latency_s'] for b in barges if b['turn']['latency_s'] is not None])}")
        result["barge_in"] = {"stop": stops, "not_stopped": len(barges) - len(stops),
                              "understood": answered, "n": len(barges)}
    return result


# --- the host side ---------------------------------------------------------------------------

def plan_rooms(clips: list[Clip], condition: str, round_trips: int, barge_ins: int,
               clip_for: dict[str, str], mint: Any) -> list[dict[str, Any]]:
    """Rooms and what to say in each, for one condition."""
    voices = sorted({c.voice for c in clips}, key=VOICES.index)
    rooms = []
    if condition == "normal":
        for voice in voices:
            vc = [c for c in clips if c.voice == voice]
            # The whole phrase set per voice; repeated if the set is shorter than round_trips.
            rounds = [vc[i % len(vc)] for i in range(max(len(vc), round_trips // len(voices) + 1))]
            rooms.append({"name": f"{condition}-{voice}", "turns": [_item(c) for c in rounds]})
        if barge_ins:
            rooms.append({"name": f"{condition}-barge-in", "turns": [], "barge_ins": [
                {"clip": clip_for["barge"], "trigger": clip_for["trigger"], "phrase": BARGE_PHRASE,
                 "label": "lights state=on room=kitchen", "voice": "joe", "after_s": 0.8}
                for _ in range(barge_ins)]})
    else:
        vc = [c for c in clips if c.voice == voices[0]]
        rooms.append({"name": f"{condition}-{voices[0]}",
                      "turns": [_item(vc[i % len(vc)]) for i in range(round_trips)]})
    for room in rooms:
        room["token"] = mint(room["name"])
    return rooms


def _item(c: Clip) -> dict[str, str]:
    return {"clip": c.path, "phrase": c.phrase, "label": c.label, "voice": c.voice}


def run_client(argv_prefix: list[str], payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The client in a subprocess (inside the env's namespace); tokens go through stdin."""
    argv = [*argv_prefix, sys.executable, str(Path(__file__).resolve()), "client"]
    proc = subprocess.run(argv, cwd=ROOT, input=json.dumps(payload), capture_output=False,
                          stdout=subprocess.PIPE, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"the benchmark client failed (exit {proc.returncode}): {' '.join(argv)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def parse_metrics(text: str) -> dict[str, tuple[float, float]]:
    """stage -> (sum, count) of the worker's per-stage histogram, from Prometheus text."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r'voicestack_agent_turn_stage_seconds_(sum|count)\{stage="(\w+)"\} ([0-9.e+-]+)', line)
        if m:
            (sums if m.group(1) == "sum" else counts)[m.group(2)] = float(m.group(3))
    return {stage: (sums.get(stage, 0.0), counts[stage]) for stage in counts}


def metrics_lines(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> list[str]:
    """Turns and mean per stage observed between two scrapes."""
    lines = []
    for stage, (total, count) in after.items():
        t0, c0 = before.get(stage, (0.0, 0.0))
        if count > c0:
            lines.append(f"{stage}: {int(count - c0)} turns, mean {(total - t0) / (count - c0):.3f}s")
    return lines or ["no turns recorded by the worker's histograms"]


def fetch_metrics(target: "Target") -> str | None:
    """The worker's /metrics: over HTTP on loopback, or through SSH on a deployed node."""
    try:
        if target.metrics_ssh:
            proc = subprocess.run([*target.metrics_ssh, f"curl -fsS --max-time 5 {target.metrics_url}"],
                                  capture_output=True, text=True, timeout=30, check=False)
            if proc.returncode != 0:
                print(f"failed to scrape {target.metrics_url} on the node: {proc.stderr.strip()[-300:]}")
                return None
            return proc.stdout
        assert target.metrics_url
        with urllib.request.urlopen(target.metrics_url, timeout=5) as resp:
            return resp.read().decode()
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"failed to scrape {target.metrics_url}: {exc}")
        return None


def node_ssh(out: Any) -> list[str] | None:
    """ssh argv to the first agent node of a deployed environment (for its loopback metrics)."""
    node = next((n for n in out.nodes if "agent" in n.roles), None)
    if node is None:
        return None
    known = out.deploy.known_hosts or str(out.paths.known_hosts)
    return ["ssh", "-i", node.ssh_key, "-p", str(node.ssh_port), "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            f"{node.ssh_user}@{node.public_ip}"]


@dataclass
class Target:
    url: str
    api_key: str
    api_secret: str
    ca_bundle: str | None
    netns: str | None
    metrics_url: str | None
    metrics_ssh: list[str] | None = None   # the URL is on this node's loopback


@contextmanager
def loopback(agent_env: dict[str, str], speech_env: dict[str, str], logdir: Path) -> Iterator[Target]:
    from tests.unit.test_agent_roundtrip import API_KEY, API_SECRET, Stack

    stack = Stack(logdir)
    metrics_port = _free_port()
    print(f"starting a loopback stack (logs in {logdir}) ...", flush=True)
    try:
        stack.start(agent_env={"AGENT_METRICS_PORT": str(metrics_port), **agent_env},
                    speech_env=speech_env)
        yield Target(stack.url, API_KEY, API_SECRET, None, None,
                     f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        stack.stop()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        print(json.dumps(asyncio.run(client_main(json.loads(sys.stdin.read())))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--loopback", action="store_true", help="start livekit-server, speech server and worker here")
    where.add_argument("--env", help="a deployed environment: reads .stack/<env>/outputs.json")
    ap.add_argument("--conditions", default=None,
                    help="comma list of infra/probes/netcond.py conditions (default: all with --env, normal with --loopback)")
    ap.add_argument("--round-trips", type=int, default=30, help="at least this many turns per condition")
    ap.add_argument("--voices", default=",".join(VOICES))
    ap.add_argument("--barge-ins", type=int, default=10)
    ap.add_argument("--phrases", type=Path, default=PHRASES)
    ap.add_argument("--limit", type=int, default=0, help="only the first N phrases (quick runs)")
    ap.add_argument("--agent-name", default="", help="dispatch this named agent through the token")
    ap.add_argument("--agent-env", action="append", default=[], metavar="KEY=VALUE",
                    help="--loopback: worker setting (repeatable)")
    ap.add_argument("--speech-env", action="append", default=[], metavar="KEY=VALUE",
                    help="--loopback: speech server setting (repeatable)")
    ap.add_argument("--gap", type=float, default=1.0, help="silence (s) that ends an agent answer")
    ap.add_argument("--json", type=Path, help="write every turn as JSON here")
    ap.add_argument("--logdir", type=Path, help="--loopback: keep the services' logs here")
    args = ap.parse_args()

    from agent.tokens import mint

    phrases = load_phrases(args.phrases)[: args.limit or None]
    voices = [v.strip() for v in args.voices.split(",") if v.strip()]
    conditions = (args.conditions.split(",") if args.conditions
                  else (["normal"] if args.loopback else ["normal", "udp-blocked", "tcp443-only"]))
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f} at start; {len(phrases)} phrases x {voices}; conditions {conditions}",
          flush=True)

    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-voice-") as tmp:
        clipdir = Path(tmp) / "clips"
        clipdir.mkdir()
        started = time.monotonic()
        clips = synthesize_clips(phrases, voices, clipdir)
        extra = synthesize_clips([{"text": BARGE_TRIGGER, "intent": "help"},
                                  {"text": BARGE_PHRASE, "intent": "lights state=on room=kitchen"}],
                                 ["joe"], Path(tmp))
        clip_for = {"trigger": extra[0].path, "barge": extra[1].path}
        print(f"synthesised {len(clips) + 2} clips in {time.monotonic() - started:.1f}s", flush=True)

        out = None  # the deployed environment's outputs (None on loopback)
        if args.loopback:
            logdir = args.logdir or Path(tmp) / "logs"
            logdir.mkdir(parents=True, exist_ok=True)
            if any(c != "normal" for c in conditions):
                raise SystemExit("--loopback has no client namespace: only the normal condition runs")
            target = stack.enter_context(
                loopback(_env_pairs(args.agent_env), _env_pairs(args.speech_env), logdir))
        else:
            if args.agent_env or args.speech_env:
                raise SystemExit("--agent-env/--speech-env only apply to --loopback; a deployed "
                                 "environment takes its settings from /etc/voicestack/agent.env")
            from infra.outputs import read

            out = read(args.env)
            if not out.client_netns and conditions != ["normal"]:
                raise SystemExit(f"{args.env} has no client_netns: run with --conditions normal")
            ssh = node_ssh(out)
            metrics = out.spec.port("agent-metrics").start if out.spec.has_port("agent-metrics") else None
            target = Target(out.livekit_url, out.api_key, out.api_secret, out.ca_bundle,
                            out.client_netns, f"http://127.0.0.1:{metrics}/metrics" if ssh and metrics else None,
                            ssh)

        def mint_for(room: str) -> str:
            return mint(target.api_key, target.api_secret, f"bench-{secrets.token_hex(3)}",
                        f"bench-{room}-{secrets.token_hex(3)}", ttl=1800,
                        agent_name=args.agent_name or None)

        scraped = fetch_metrics(target) if target.metrics_url else None
        metrics_before = parse_metrics(scraped) if scraped is not None else {}
        results = []
        for condition in conditions:
            rooms = plan_rooms(clips, condition, args.round_trips, args.barge_ins if condition == "normal" else 0,
                               clip_for, mint_for)
            payload = {"url": target.url, "ca_bundle": target.ca_bundle, "rooms": rooms,
                       "timeout": 30, "gap": args.gap}
            n_turns = sum(len(r["turns"]) + len(r.get("barge_ins", [])) for r in rooms)
            print(f"\n[{condition}] {n_turns} turns in {len(rooms)} rooms ...", flush=True)
            # Each network condition has a client namespace of its own (infra/probes/netcond.py).
            netns = out.netns_for(condition) if out is not None else target.netns
            prefix = ["ip", "netns", "exec", netns] if netns else []
            data = run_client(prefix, payload, timeout=120 + 60 * n_turns)
            results.append(report_condition(condition, data["rooms"]))
            results[-1]["rooms"] = data["rooms"]
        if target.metrics_url:
            where = " on the node" if target.metrics_ssh else ""
            print(f"\nworker Prometheus endpoint {target.metrics_url}{where}, turns of this run:")
            scraped = fetch_metrics(target)
            for line in metrics_lines(metrics_before, parse_metrics(scraped)) if scraped is not None else []:
                print(f"   {line}")
        la = os.getloadavg()
        print(f"\nload average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} at the end "
              f"(the machine is shared: figures move with it); {time.monotonic() - started:.0f}s in all")
        if args.json:
            args.json.write_text(json.dumps({"argv": sys.argv[1:], "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
