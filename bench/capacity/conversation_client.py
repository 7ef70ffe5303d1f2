"""Concurrent spoken conversations with the deployed agent, from the client side. Runs in .venv-agent.

    ip netns exec <client_netns> .venv-agent/bin/python -m bench.capacity.conversation_client < args.json

args (stdin, JSON; the key and secret never go through argv): url, api_key, api_secret,
ca_bundle, concurrency, seconds, phrase, prefix, timeout. `concurrency` callers each hold one
conversation at a time, back to back, for `seconds`: join a fresh room, wait for the agent and
its greeting, say `phrase`, time the answer (agent.roundtrip: end of our speech -> first voiced
answer frame, as a user hears it), leave. The phrase is synthesised once up front and the
answers are transcribed only after the window, so the client's own speech models never
compete with the agent during the measurement. Prints one JSON object: every round trip's
latency or error, and whether the answer was understood.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from agent.roundtrip import round_trip
from agent.speech.stt import SttConfig, Transcriber
from agent.speech.tts import Synthesizer, TtsConfig
from agent.tokens import mint

EXPECTED = "turned on the lights"


class CannedSpeech:
    """The client's voice is one pre-made WAV; its ears are deferred (transcribed later)."""

    def __init__(self, wav: bytes) -> None:
        self.wav = wav

    async def synthesize(self, text: str) -> bytes:
        return self.wav

    async def transcribe(self, wav: bytes) -> str:
        return ""


async def caller(args: dict[str, Any], speech: CannedSpeech, index: int, stop_at: float,
                 results: list[dict[str, Any]]) -> None:
    n = 0
    while time.monotonic() < stop_at:
        room = f"{args['prefix']}-c{index:02d}-{n:03d}"
        token = mint(args["api_key"], args["api_secret"], f"caller-{index}-{n}", room, preset="speaker",
                     ttl=600)
        started = time.monotonic()
        try:
            r = await round_trip(args["url"], token, speech=speech, phrase=args["phrase"],
                                 ca_bundle=args.get("ca_bundle"), timeout=float(args["timeout"]))
            results.append({"ok": True, "caller": index, "latency_s": r.latency_s,
                            "agent_join_s": r.agent_join_s, "answer_wav": r.answer_wav,
                            "started": started})
        except Exception as exc:  # noqa: BLE001 - every failure is reported as text
            results.append({"ok": False, "caller": index, "error": f"{type(exc).__name__}: {exc}",
                            "elapsed_s": time.monotonic() - started, "started": started})
        n += 1


async def main_async(args: dict[str, Any]) -> dict[str, Any]:
    wav = await asyncio.to_thread(Synthesizer(TtsConfig.from_env()).wav, args["phrase"])
    speech = CannedSpeech(wav)
    results: list[dict[str, Any]] = []
    t0 = time.monotonic()
    print(json.dumps({"event": "window_start"}), flush=True)
    stop_at = t0 + float(args["seconds"])
    await asyncio.gather(*(caller(args, speech, i, stop_at, results) for i in range(int(args["concurrency"]))))
    print(json.dumps({"event": "window_end", "seconds": time.monotonic() - t0}), flush=True)
    stt = Transcriber(SttConfig.from_env())
    for r in results:
        wav_bytes = r.pop("answer_wav", b"")
        if r["ok"]:
            answer = await asyncio.to_thread(stt.transcribe, wav_bytes)
            r["answer"] = answer
            r["understood"] = EXPECTED in answer.lower()
        r.pop("started", None)
    return {"event": "results", "results": results}


def main() -> int:
    args = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(main_async(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
