"""One spoken round trip from the client side; prints a JSON result. Runs in .venv-agent.

    ip netns exec <client_netns> .venv-agent/bin/python -m agent.roundtrip_cli '<json>'

The client's own voice and ears are the offline models in-process (piper, faster-whisper), so
it needs nothing but the LiveKit URL: its traffic is exactly what a user's would be.
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


class LocalSpeech:
    def __init__(self) -> None:
        self.tts = Synthesizer(TtsConfig.from_env())
        self.stt = Transcriber(SttConfig.from_env())

    async def synthesize(self, text: str) -> bytes:
        return await asyncio.to_thread(self.tts.wav, text)

    async def transcribe(self, wav: bytes) -> str:
        return await asyncio.to_thread(self.stt.transcribe, wav)


async def main_async(args: dict[str, Any]) -> dict[str, Any]:
    speech = LocalSpeech()
    results = []
    for token in args["tokens"]:
        started = time.monotonic()
        try:
            r = await round_trip(args["url"], token, speech=speech, phrase=args.get("phrase", "turn on the lights"),
                                 ca_bundle=args.get("ca_bundle"), timeout=float(args.get("timeout", 60)))
            results.append({"ok": True, "greeting": r.greeting, "answer": r.answer, "latency_s": r.latency_s,
                            "agent_join_s": r.agent_join_s})
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the caller as text
            results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}",
                            "elapsed": time.monotonic() - started})
    return {"results": results}


def main() -> int:
    print(json.dumps(asyncio.run(main_async(json.loads(sys.argv[1])))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
