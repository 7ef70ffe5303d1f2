"""The latency settings of the worker and the speech server, with their tuned defaults.

One table for both sides: the agent reads its defaults from it (agent/worker.py WorkerConfig,
agent/speech/stt.py SttConfig, agent/speech/tts.py TtsConfig) and the deploy writes every
entry into /etc/voicestack/agent.env (deploy/tasks/agent.py), so a node runs the measured
values explicitly and an operator sees and changes them in one file. Stdlib only: the
operator's venv imports it without livekit, faster-whisper or piper.

Figures: bench/bench_voice.py through a deployed local stack on a shared 2-core machine
(issue 15; the before/after tables are in docs/latency.md).
"""

from __future__ import annotations

# --- turn taking (the worker) ---------------------------------------------------------------
# AGENT_VAD_MIN_SILENCE: silence (s) after which silero ends a speech segment and the STT
# request starts. livekit's 0.55 fires END_OF_SPEECH 0.60-0.69 s after the voice ends;
# 0.30 fires after 0.35-0.43 s. It only segments: committing the turn is min_delay's job, but
# the reply (preemptive generation) waits for this request. Through the deployed stack 0.15
# brought the transcript from 0.41 s to 0.25 s after the end of speech, voice to voice p50
# 0.71 -> 0.65 s, intent 100 % (docs/latency.md). A pause inside a sentence then splits the
# request in two; the turn still waits for min_delay.
VAD_MIN_SILENCE_S = 0.15
# AGENT_VAD_PREFIX_PADDING: audio kept before the detected start of speech in each segment
# (livekit's 0.5, kept). After a split at a pause the next segment starts inside the last word,
# which Whisper may hear twice ("bed now. Now, so please"; the intent holds). 0.2 s removed that
# but clipped onsets silero detects late ("lights off" -> "Wipe off"): intent 97.8 % vs 100 %.
VAD_PREFIX_PADDING_S = 0.5
# AGENT_ENDPOINT_MIN_DELAY: the turn commits this long after the VAD's estimate of the end of
# speech (not after END_OF_SPEECH: the two overlap). With the STT above it is the deciding wait
# (e2e 0.42 s of which 0.40 s is this); a pause shorter than it inside a sentence does not end
# the turn. 0.3 answered once at piper's ~0.28 s comma pause, before the user had finished.
ENDPOINT_MIN_DELAY_S = 0.4
# AGENT_PREEMPTIVE_TTS: start the LLM *and* TTS on the final transcript before the turn
# commits (cancelled if the user goes on), so the reply is ready when min_delay ends.
PREEMPTIVE_TTS = True
# AGENT_INTERRUPT_MIN_SPEECH: speech (s) over the agent before it stops talking (barge-in).
INTERRUPT_MIN_SPEECH_S = 0.5

# --- speech to text (the speech server) -----------------------------------------------------
# STT_WINDOW_S: Whisper encoder window for short clips; 0 = always faster-whisper's 30 s.
# 10 s: requests 0.06-0.11 s instead of 0.46-0.67 s with the same transcripts; 5 s loops.
STT_WINDOW_S = 10.0
# STT_BEAM_SIZE: 1 (greedy) gave the same transcripts as 5 on the phrase set, 0.05-0.27 s sooner.
STT_BEAM_SIZE = 1
# STT_CPU_THREADS: CTranslate2 threads; a node has 2 cores shared with LiveKit and the worker.
STT_CPU_THREADS = 2

# --- text to speech (the speech server) -----------------------------------------------------
# TTS_STREAM_CLAUSES: send each clause as soon as piper has made it (first audio ~0.09 s
# after the request instead of 0.21-0.41 s for the whole answer).
TTS_STREAM_CLAUSES = True
# TTS_TRIM_LEADING_SILENCE: cut piper's 50-60 ms of silence before the first voice.
TTS_TRIM_LEADING_SILENCE = True
# TTS_NOISE_SCALE / TTS_NOISE_W_SCALE: 0 makes piper deterministic (same text, same audio).
TTS_NOISE_SCALE = 0.0
TTS_NOISE_W_SCALE = 0.0

# --- observability (the worker) -------------------------------------------------------------
# AGENT_METRICS_PORT: the per-turn Prometheus histograms; the deploy takes the port from the
# spec (port "agent-metrics", loopback). 0 disables the endpoint.
METRICS_PORT = 8082
# AGENT_TURN_METRICS_TO_ROOM: publish each turn's breakdown (timings only) on the room's
# "voicestack.turn-metrics" text stream, for clients such as bench/bench_voice.py.
TURN_METRICS_TO_ROOM = True


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return f"{value:g}" if isinstance(value, float) else str(value)


def env() -> dict[str, str]:
    """The tuned settings as agent.env lines (AGENT_METRICS_HOST/PORT come from the spec)."""
    return {
        "AGENT_VAD_MIN_SILENCE": _text(VAD_MIN_SILENCE_S),
        "AGENT_VAD_PREFIX_PADDING": _text(VAD_PREFIX_PADDING_S),
        "AGENT_ENDPOINT_MIN_DELAY": _text(ENDPOINT_MIN_DELAY_S),
        "AGENT_PREEMPTIVE_TTS": _text(PREEMPTIVE_TTS),
        "AGENT_INTERRUPT_MIN_SPEECH": _text(INTERRUPT_MIN_SPEECH_S),
        "AGENT_TURN_METRICS_TO_ROOM": _text(TURN_METRICS_TO_ROOM),
        "STT_WINDOW_S": _text(STT_WINDOW_S),
        "STT_BEAM_SIZE": _text(STT_BEAM_SIZE),
        "STT_CPU_THREADS": _text(STT_CPU_THREADS),
        "TTS_STREAM_CLAUSES": _text(TTS_STREAM_CLAUSES),
        "TTS_TRIM_LEADING_SILENCE": _text(TTS_TRIM_LEADING_SILENCE),
        "TTS_NOISE_SCALE": _text(TTS_NOISE_SCALE),
        "TTS_NOISE_W_SCALE": _text(TTS_NOISE_W_SCALE),
    }
