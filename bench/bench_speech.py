"""Speech backend figures: STT latency per phrase, TTS latency, memory at idle; or the STT
alone over the voice benchmark's phrase set.

    python bench/bench_speech.py [--repeat 3] [--beam-sizes 5,1]
    # every phrase of the sets in piper's and espeak-ng's voice, straight into the Transcriber
    # (no LiveKit, no VAD): request time, windows and fallbacks, WER and intent accuracy
    [STT_WINDOW_S=0] python bench/bench_speech.py --phrase-set bench/phrases.yaml bench/phrases-heldout.yaml

Reports numbers, asserts nothing. Runs the same backends as agent.speech_server, in process.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.speech.stt import SttConfig, Transcriber  # noqa: E402
from agent.speech.tts import Synthesizer, TtsConfig  # noqa: E402
from bench import bench_voice  # noqa: E402

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


def phrase_set(paths: list[Path], voices: list[str]) -> None:
    """The Transcriber on every phrase of `paths` in every voice, as the speech server runs it."""
    phrases = [p for path in paths for p in bench_voice.load_phrases(path)]
    stt = Transcriber(SttConfig.from_env())
    with tempfile.TemporaryDirectory() as tmp:
        clips = bench_voice.synthesize_clips(phrases, voices, Path(tmp))
        stt.warm_up(Path(clips[0].path).read_bytes())
        results = [(c, stt.transcribe_detailed(Path(c.path).read_bytes())) for c in clips]
    print(f"STT window {stt.config.window_s:g} s, beam {stt.config.beam_size}, "
          f"{stt.config.cpu_threads} threads; {len(clips)} clips ({len(phrases)} phrases x {voices})")
    print(f"  {'voice':8s} {'clips':>5s} {'WER':>6s} {'intent':>7s} {'p50':>7s} {'p95':>7s} {'max':>7s}")
    misses: list[str] = []
    for voice in [*voices, "all"]:
        mine = [(c, r) for c, r in results if voice in ("all", c.voice)]
        acc = bench_voice.accuracy([(c.phrase, c.label, r.text) for c, r in mine])
        secs = [r.seconds for _, r in mine]
        print(f"  {voice:8s} {acc.n:5d} {100 * acc.wer:5.1f}% {100 * acc.intent_accuracy:6.1f}% "
              f"{statistics.median(secs):6.3f}s {bench_voice.pct(secs, 0.95):6.3f}s {max(secs):6.3f}s")
        if voice != "all":
            misses += [f"{voice}: {phrase!r} heard {heard!r}" for phrase, heard, _ in acc.misses]
    how = Counter(r.fallback or ("kept once" if r.kept_once else f"{r.window_s:g} s window")
                  for _, r in results)
    print("  requests: " + ", ".join(f"{n} {k}" for k, n in how.most_common()))
    for m in misses:
        print(f"  missed: {m}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--beam-sizes", default="5,1")
    parser.add_argument("--phrase-set", type=Path, nargs="+", metavar="YAML",
                        help="only the STT over these phrase sets (bench/phrases*.yaml)")
    parser.add_argument("--voices", default=",".join(bench_voice.VOICES))
    args = parser.parse_args()
    if args.phrase_set:
        phrase_set(args.phrase_set, args.voices.split(","))
        return

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
