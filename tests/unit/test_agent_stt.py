"""The short Whisper encoder window and its fallback to the full 30 s window (real tiny.en)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.speech.stt import FULL_WINDOW_S, SttConfig, Transcriber, repeats_itself, said_once
from agent.speech.tts import OUTPUT_SAMPLE_RATE, Synthesizer, TtsConfig, wav_bytes


@pytest.fixture(scope="module")
def tts() -> Synthesizer:
    return Synthesizer(TtsConfig.from_env())


@pytest.fixture(scope="module")
def stt() -> Transcriber:
    return Transcriber(SttConfig.from_env())


def _with_silence(pcm: bytes, after_s: float) -> bytes:
    return wav_bytes(pcm + bytes(2 * int(after_s * OUTPUT_SAMPLE_RATE)))


def test_agent_stt_short_clip_is_decoded_on_the_short_window(stt: Transcriber, tts: Synthesizer) -> None:
    result = stt.transcribe_detailed(wav_bytes(tts.pcm("set the thermostat to 21 degrees")))
    assert result.window_s == stt.config.window_s < FULL_WINDOW_S
    assert result.fallback == ""
    assert "thermostat to 21" in result.text.lower()


def test_agent_stt_clip_longer_than_the_window_uses_the_full_window(stt: Transcriber,
                                                                   tts: Synthesizer) -> None:
    # 9 s: longer than the 10 s window allows with its headroom.
    pcm = tts.pcm("turn off the lights in the kitchen")
    result = stt.transcribe_detailed(_with_silence(pcm, 9.0 - len(pcm) / 2 / OUTPUT_SAMPLE_RATE))
    assert (result.window_s, result.fallback) == (FULL_WINDOW_S, "long")
    assert "turn off the lights in the kitchen" in result.text.lower()


def test_agent_stt_window_zero_is_the_plain_faster_whisper_path(tts: Synthesizer) -> None:
    base = SttConfig.from_env()
    full = Transcriber(SttConfig(base.model_dir, base.cpu_threads, 1, base.initial_prompt, 0))
    result = full.transcribe_detailed(wav_bytes(tts.pcm("what time is it")))
    assert (result.window_s, result.fallback) == (FULL_WINDOW_S, "")
    assert "what time is it" in result.text.lower()


@pytest.mark.parametrize(("text", "loops"), [
    ("Set the thermostat to. Set the thermostat to.", True),
    ("No, no, no, no.", True),
    ("Turn on the lights. Turn on the lights. Turn on the lights. Turn on the lights.", True),
    ("Turn on the lights in the kitchen.", False),
    ("I am going to bed now, so please turn off all the lights in the living room.", False),
    ("Thanks, thanks.", False),
], ids=["phrase-twice", "word-four-times", "sentence-loop", "command", "long-command", "word-twice"])
def test_agent_stt_detects_a_decode_that_repeats_itself(text: str, loops: bool) -> None:
    assert repeats_itself(text) is loops


@pytest.mark.parametrize(("text", "once"), [
    ("What time is it? What time is it?", "What time is it?"),
    ("How can you help me? How can you help me? How can you he", "How can you help me?"),
    ("Hello. Goodbye. Hello. Goodbye. Hel", "Hello. Goodbye."),
    ("Turn on the lights.", None),
    ("Hello? Hello? Goodbye.", None),
    ("No, no, no, no.", None),
    ("Set the thermostat to 21. Set the thermostat to 22.", None),
], ids=["twice", "cut-off-third", "two-sentences", "once-already", "then-other", "in-one-sentence",
        "different-numbers"])
def test_agent_stt_keeps_a_repeated_sentence_once(text: str, once: str | None) -> None:
    assert said_once(text) == once


@pytest.mark.parametrize("phrase", ["what time is it", "how can you help me", "switch on the lamp",
                                    "what's the time"])
def test_agent_stt_short_clip_that_whisper_repeats_stays_on_the_short_window(
        stt: Transcriber, tts: Synthesizer, phrase: str) -> None:
    # On the 10 s window tiny.en says these again into the padding after the voice (the text
    # twice, or until the token bound); the 30 s retry cost ~0.6 s each.
    result = stt.transcribe_detailed(wav_bytes(tts.pcm(phrase)))
    assert (result.window_s, result.fallback) == (stt.config.window_s, "")
    words = [w.strip("?.,!").replace("’", "'") for w in result.text.lower().split()]
    assert words == phrase.split()


def test_agent_stt_window_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STT_WINDOW_S", "ten")
    with pytest.raises(ValueError, match="STT_WINDOW_S='ten'"):
        SttConfig.from_env()


def test_agent_stt_silence_gives_no_words(stt: Transcriber) -> None:
    # The domain prompt must not be "heard" in silence (a prompt can leak into the output).
    result = stt.transcribe_detailed(wav_bytes(np.zeros(OUTPUT_SAMPLE_RATE, np.int16).tobytes()))
    assert "lights" not in result.text.lower() and "thermostat" not in result.text.lower()
