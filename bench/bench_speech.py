"""Speech backend figures: STT latency per phrase, TTS latency, memory at idle.

    python bench/bench_speech.py [--repeat 3] [--beam-sizes 5,1]

Reports numbers, asserts nothing. Runs the same backends as agent.speech_server, in process.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.speech.stt import SttConfig, Transcriber  # noqa: E402
from agent.speech.tts import Synthesizer, TtsConfig  # noqa: E402

PHRASES = [
    "turn on the lights",
    "turn off the lights in the kitchen",
    "set the thermostat to 21 degrees",
    "what time is it",
    "Hello, I am your voice assistant. How can I help?",
]


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn, *args):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--beam-sizes", default="5,1")
    args = parser.parse_args()

    print(f"cpus={os.cpu_count()} baseline_rss_mb={rss_mb():.0f}")
    tts, load_tts = timed(Synthesizer, TtsConfig.from_env())
    print(f"tts_load_s={load_tts:.2f} rss_mb={rss_mb():.0f}")
    stt, load_stt = timed(Transcriber, SttConfig.from_env())
    print(f"stt_load_s={load_stt:.2f} idle_rss_mb_both_models={rss_mb():.0f}")

    print("\nTTS (piper en_US-joe-medium -> 24 kHz wav), median of repeats")
    clips: dict[str, bytes] = {}
    for phrase in PHRASES:
        runs = []
        for _ in range(args.repeat):
            clips[phrase], seconds = timed(tts.wav, phrase)
            runs.append(seconds)
        audio_s = (len(clips[phrase]) - 44) / 2 / 24000
        med = statistics.median(runs)
        print(f"  {med:6.3f} s for {audio_s:4.2f} s audio (RTF {med / audio_s:.2f})  {phrase!r}")

    for beam in (int(b) for b in args.beam_sizes.split(",")):
        stt.config = SttConfig(stt.config.model_dir, stt.config.cpu_threads, beam)
        print(f"\nSTT (faster-whisper tiny.en int8, beam_size={beam}), median of repeats")
        for phrase in PHRASES:
            runs, text = [], ""
            for _ in range(args.repeat):
                text, seconds = timed(stt.transcribe, clips[phrase])
                runs.append(seconds)
            print(f"  {statistics.median(runs):6.3f} s  {phrase!r} -> {text!r}")

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nrss_mb_after={rss_mb():.0f} peak_rss_mb={peak:.0f}")


if __name__ == "__main__":
    main()
